"""The vocab-size and LR-schedule experiments on the smoke preset: real runs, real tables and charts."""
from __future__ import annotations

import json

import pytest

from shared.config import load_config
from shared.training.experiments import ExperimentConfig, lr_schedule_experiment, vocab_size_experiment


def _cfg(runs, **extra):
    base = {"run": "exp", "preset": "smoke", "steps": 12, "runs_dir": str(runs),
            "tokenizer": {"max_bytes_per_source": 60_000},
            "pretrain": {"data": {"max_bytes": 120_000, "engine": "local"}, "train": {"eval_batches": 2}}}
    return load_config(ExperimentConfig, "experiment", None, base={**base, **extra})


@pytest.mark.e2e
def test_vocab_size_experiment_compares_bits_per_byte(tmp_path, ray_session):
    art = vocab_size_experiment(_cfg(tmp_path, vocab_sizes=[512, 1024]))
    rows = json.loads((art.dir / "experiment-vocab-size.json").read_text())
    assert [r["vocab_size"] for r in rows] == [512, 1024]
    # a bigger vocabulary spends a bigger share of the parameters on embeddings
    assert rows[1]["embedding_share"] > rows[0]["embedding_share"]
    assert all(0 < r["val_bpb"] < 8 for r in rows)
    assert (art.dir / "experiment-vocab-size.png").stat().st_size > 5000
    assert art.parents == ["exp/pretrain-v512", "exp/pretrain-v1024"]


@pytest.mark.e2e
def test_lr_schedule_experiment_plots_each_arm(tmp_path, ray_session):
    art = lr_schedule_experiment(_cfg(tmp_path, schedules=["cosine", "constant"]))
    rows = {r["schedule"]: r for r in json.loads((art.dir / "experiment-lr-schedules.json").read_text())}
    assert set(rows) == {"cosine", "constant"}
    assert rows["cosine"]["final_val_loss"] != rows["constant"]["final_val_loss"]  # the schedule changed training
    assert (art.dir / "experiment-lr-schedules.png").stat().st_size > 5000


def test_experiment_config_rejects_unknown_schedule(tmp_path):
    with pytest.raises(ValueError, match="unknown schedule 'step'"):
        _cfg(tmp_path, schedules=["step"])


@pytest.mark.e2e
def test_moe_experiment_compares_moe_with_dense_arms(tmp_path):
    from transformers import AutoModelForCausalLM

    from shared.registry import Registry
    from shared.training.moe_experiment import ARMS, moe_experiment

    cfg = _cfg(tmp_path, steps=10, pretrain={"data": {"max_bytes": 120_000, "engine": "local"}, "cpus_per_worker": 1,
                                             "train": {"eval_batches": 2, "batch_size": 8, "eval_every": 5}},
               moe={"n_experts": 4, "expert_hidden": 32})
    art = moe_experiment(cfg)
    rows = {r["arm"]: r for r in json.loads((art.dir / "experiment-moe.json").read_text())}
    assert set(rows) == set(ARMS)
    # equal active parameters (top-1 adds only the router) and equal total parameters (up to the router)
    top1, active, total = rows["moe-top1"], rows["dense-active"], rows["dense-total"]
    assert top1["active_params"] - active["active_params"] == 2 * 4 * 32  # 2 layers x (4 experts x 32 wide router)
    assert abs(top1["total_params"] - total["total_params"]) == 2 * 4 * 32
    assert top1["flops_per_token"] < rows["moe-top2"]["flops_per_token"] < total["flops_per_token"]
    for arm in ("moe-top1", "moe-top2", "moe-fine"):
        assert 0 <= rows[arm]["dropped_pct"] < 100 and rows[arm]["expert_load_max"] > 0
    assert rows["moe-fine"]["dropped_pct"] is not None and rows["dense-active"]["dropped_pct"] is None
    assert all(r["final_val_loss"] < 6.3 and r["tokens_per_s"] > 0 for r in rows.values())  # ln(512) = 6.24
    curves = json.loads((art.dir / "curves.json").read_text())
    assert [p["step"] for p in curves["moe-top1"]] == [0, 5, 10] and "load" in curves["moe-top1"][-1]
    for png in ("experiment-moe.png", "experiment-moe-experts.png"):
        assert (art.dir / png).stat().st_size > 5000
    # each saved arm is a model artifact of its own (so journey quantize / serve take it), loadable by transformers
    reg = Registry(tmp_path)
    assert reg.resolve("exp/moe-top1").kind == "hf-model" and reg.resolve("exp/moe-top1").parents == ["exp/tokenizer"]
    assert AutoModelForCausalLM.from_pretrained(reg.resolve("exp/moe-top1").dir).config.model_type == "qwen2_moe"
    assert AutoModelForCausalLM.from_pretrained(reg.resolve("exp/moe-fine").dir).config.model_type == "ernie4_5_moe"
    # llama.cpp reads each saved arm's GGUF export and picks the same next tokens as transformers
    assert rows["moe-top1"]["llama_top1"] > 0.9 and rows["moe-fine"]["llama_top1"] > 0.9
    assert art.kind == "experiment" and art.parents == ["exp/tokenizer"]


def test_moe_experiment_rejects_an_unknown_arm(tmp_path):
    from shared.config import ConfigError
    from shared.training.moe_experiment import moe_settings

    with pytest.raises(ConfigError, match="unknown moe arm 'sparse'"):
        moe_settings(_cfg(tmp_path, moe={"arms": ["sparse"]}))


def test_parallelism_experiment_measures_every_strategy(tmp_path, ray_session):
    """`journey experiment parallelism` for real: 2 CPU ranks, every strategy, table + chart beside the planner."""
    from shared import stages
    cfg = load_config(ExperimentConfig, "experiment", None, base={
        "run": "exp", "runs_dir": str(tmp_path),
        "parallel": {"workers": 2, "steps": 3, "warmup_steps": 1, "batch_size": 2, "block_size": 16, "n_embd": 128,
                     "vocab_size": 256, "batch_search": {"memory_budget_gb": 0.012, "max_micro_batch": 32}}})
    art = stages.get("experiment").commands["parallelism"](cfg)
    rows = {r["arm"]: r for r in json.loads((art.dir / "experiment-parallelism.json").read_text())}
    assert list(rows) == ["ddp", "zero1", "zero2", "fsdp-noreshard", "fsdp", "zero3"]
    ddp, fsdp = rows["ddp"], rows["fsdp"]
    params = ddp["params"]
    # fp32 AdamW: DDP holds 16 bytes per parameter on each rank, FSDP exactly half of it on 2 ranks
    assert ddp["state_bytes_per_rank"] == 16 * params
    assert fsdp["state_bytes_per_rank"] == 8 * params
    assert ddp["planner_state_bytes"] == ddp["state_bytes_per_rank"]  # the planner, handed in by the stage table
    # every sharded strategy holds less than DDP, and ZeRO-3 less than ZeRO-1
    assert all(r["state_bytes_per_rank"] < ddp["state_bytes_per_rank"] for a, r in rows.items() if a != "ddp")
    assert rows["zero3"]["state_bytes_per_rank"] < rows["zero1"]["state_bytes_per_rank"]
    # communication per step (ring): DDP all-reduces the fp32 gradients, 2Ψ·4·(N-1)/N; FSDP moves 3Ψ
    assert ddp["comm_bytes_per_step"] == pytest.approx(4 * params, rel=0.01)
    assert fsdp["comm_bytes_per_step"] == pytest.approx(1.5 * ddp["comm_bytes_per_step"], rel=0.02)
    assert rows["fsdp-noreshard"]["comm_bytes_per_step"] < fsdp["comm_bytes_per_step"]  # no re-gather in backward
    # the same computation laid out differently: the losses agree
    assert all(r["final_loss"] == pytest.approx(ddp["final_loss"], rel=1e-4) for r in rows.values())
    assert all(r["step_s"] > 0 and len(r["per_rank"]) == 2 for r in rows.values())
    # the largest micro-batch, found by training under 12 MB per rank (CPU allocator peak): a width-128 model,
    # so the state (20Ψ under DDP with its buckets, 8.6 MB) weighs against 0.3 MB per sequence: sharding fits more
    assert 0 < ddp["max_batch_measured"] < fsdp["max_batch_measured"] < 32
    assert ddp["peak_at_max_batch"] <= 12e6 and all(not r["max_batch_capped"] for r in rows.values())
    for r in rows.values():  # the ranks agreed, and each tried no more than the search's bound
        assert len({pr["search"]["largest"] for pr in r["per_rank"]}) == 1 and len(r["search_trials"]) <= 11
    # the planner (shared.plan.memory.largest_micro_batch) within a factor 1.5 either way: it adds the gradients
    # to every stored activation, while backward frees a layer's activations as its gradients appear (here it
    # under-promises DDP: 11 planned, 14 trained), and it leaves out the backward's temporaries (the logits'
    # gradient: on the default model it over-promises). ZeRO-1/2/3 fit too: their reduce buckets are capped at the
    # model's size (DeepSpeed's 5e8-element default, 2 GB in fp32, is allocated whole: no batch would fit in 12 MB).
    # ZeRO-3 is left out of the measured side: on CPU DeepSpeed's ZeRO-3 frees gathered parameters on threads the
    # profiler does not hear, and its measured largest batch varied from run to run here (0, 7, 10, 11 against 11
    # planned), so only its planner answer and the ranks' agreement are checked.
    TOLERANCE = 1.5
    steady = {a: r for a, r in rows.items() if a != "zero3"}
    for r in steady.values():
        measured, planned = r["max_batch_measured"], r["max_batch_planned"]
        assert planned / TOLERANCE <= measured <= planned * TOLERANCE, (r["arm"], measured, planned)
    assert all(r["max_batch_measured"] > 0 for r in steady.values())
    assert all(r["max_batch_planned"] > 0 for r in rows.values())
    assert (art.dir / "experiment-parallelism.png").stat().st_size > 5000
    assert "max_batch_measured" in (art.dir / "experiment-parallelism.md").read_text()
