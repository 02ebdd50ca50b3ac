"""``journey plan``: resolves every stage like ``journey run``, prints the plan, and exits 0 / 1 / 2."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from ray_jobs import plan as plan_cli
from shared.plan import visible_gpus
from shared.stages import DEFAULT_JOURNEY
from shared.registry import Registry

NO_GPU = not visible_gpus()


def _run(capsys, *argv):
    code = plan_cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_the_tiny_preset_plans_every_stage_with_no_problems(capsys, runs_dir):
    code, out, _ = _run(capsys, "preset=tiny", f"runs_dir={runs_dir}", "check_hub=false")
    assert code == 0, out
    assert "no problems found" in out
    for stage in DEFAULT_JOURNEY:
        assert f"\n{stage}:" in out
    assert "1.3M L4 d128 h4 V4096 T128" in out  # the tiny model, with the tiny tokenizer's vocabulary


def test_json_output_is_machine_readable(capsys, runs_dir):
    code, out, _ = _run(capsys, "preset=tiny", "stages=[tokenizer,pretrain]", f"runs_dir={runs_dir}", "--json")
    data = json.loads(out)
    assert code == 0 and data["problems"] == []
    pretrain = data["stages"][1]
    assert pretrain["stage"] == "pretrain" and pretrain["steps"] == 600
    assert pretrain["tokens"] == 600 * 16 * 128  # steps x batch x block
    mem = pretrain["memory"]
    assert mem["total"] == pytest.approx(mem["weights"] + mem["gradients"] + mem["optimizer"] + mem["activations"])


def test_a_missing_preset_is_a_problem_with_its_fix_and_exit_1(capsys, runs_dir):
    code, out, _ = _run(capsys, "preset=gpt2-350m", "stages=[tokenizer,pretrain]", f"runs_dir={runs_dir}",
                        "tokenizer.vocab_size=4096", "check_hub=false")
    assert code == 1
    assert "[tokenizer] no 'gpt2-350m' preset" in out
    assert "write configs/tokenizer/gpt2-350m.yaml" in out
    assert "pretrain.tokenizer=tokenizer" not in out  # no cascade: pretrain counts tokenizer as planned


def test_config_errors_exit_2(capsys, runs_dir):
    assert _run(capsys, "stages=[pretrian]", f"runs_dir={runs_dir}")[0] == 2
    code, _, err = _run(capsys, "pretrain.train.lrr=1", f"runs_dir={runs_dir}")
    assert code == 2 and "did you mean" in err


def test_help_states_the_exit_codes(capsys):
    code, out, _ = _run(capsys, "--help")
    assert code == 0 and "1 when problems were found" in out and "2 on a config error" in out


@pytest.mark.skipif(not NO_GPU, reason="checks the no-GPU problem")
def test_a_gpu_stage_on_a_machine_without_one_is_a_problem(capsys, runs_dir):
    code, out, _ = _run(capsys, "preset=tiny", "stages=[tokenizer,pretrain]", "pretrain.use_gpu=true",
                        f"runs_dir={runs_dir}")
    assert code == 1 and "[pretrain] use_gpu=true but this machine has no CUDA GPU" in out
    assert "pretrain.use_gpu=false" in out


def test_memory_above_the_gpu_is_a_problem(capsys, runs_dir):
    code, out, _ = _run(capsys, "preset=tiny", "stages=[tokenizer,pretrain]", "pretrain.use_gpu=true",
                        "pretrain.train.batch_size=8192", "gpu=L4", f"runs_dir={runs_dir}")
    assert code == 1 and "GB per GPU, the L4 has 24 GB" in out and "pretrain.train.grad_accum" in out


def test_a_model_whose_vocabulary_does_not_match_the_tokenizer_is_found(capsys, runs_dir):
    registry = Registry(runs_dir)
    out_dir = registry.stage_dir("imp", "import")
    (out_dir / "config.json").write_text(json.dumps({"model_type": "gpt2", "vocab_size": 4096, "n_positions": 128,
                                                     "n_layer": 4, "n_head": 4, "n_embd": 128}))
    registry.register("imp", "import", "hf-model")
    code, out, _ = _run(capsys, "preset=tiny", "stages=[tokenizer,cpt]", "tokenizer.vocab_size=8192",
                        "cpt.init_from=imp/import", f"runs_dir={runs_dir}")
    assert code == 1
    assert "vocabulary mismatch: the model (imp/import) has 4,096 tokens, the tokenizer (stage tokenizer of this " \
           "plan) 8,192" in out
    assert "cpt.tokenizer=imp/import" in out
    # the same model with a tokenizer of its size plans cleanly; init_from= drops tokenizer and pretrain
    code, out, _ = _run(capsys, "preset=tiny", "stages=[tokenizer,cpt]", "cpt.init_from=imp/import",
                        f"runs_dir={runs_dir}")
    assert code == 0, out
    assert plan_cli.load_config(plan_cli.PlanConfig, "journey", None, base={"init_from": "imp/import"}).stages == \
        [s for s in DEFAULT_JOURNEY if s not in ("tokenizer", "pretrain")]


GPT2_GGUF = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "tokenizers" / "ggml-vocab-gpt-2.gguf"


def _gpt2_1b_argv(runs_dir, *extra, preset="gpt2-1b"):
    """``journey plan preset=gpt2-1b`` offline: GPT-2's vocabulary from the local GGUF file when it is here."""
    tok = [f"tokenizer.pretrained={GPT2_GGUF}"] if GPT2_GGUF.is_file() else []
    return [f"preset={preset}", f"runs_dir={runs_dir}", "check_hub=false", *tok, *extra]


def _gpt2_1b_choice(n: int) -> str:
    """What ``choose_strategy`` picks for the preset's micro-batch and context on ``n`` x 80 GB (bf16: an H100)."""
    from shared.config import load_config
    from shared.model.presets import model_config
    from shared.plan.hardware import KNOWN_GPUS
    from shared.plan.memory import ModelShape, choose_strategy
    from shared.training.pretrain_config import PretrainConfig
    cfg = load_config(PretrainConfig, "pretrain", "gpt2-1b")
    g = model_config(cfg.model.preset, vocab_size=50263)  # GPT-2's 50,257 ids + our 6 special tokens
    shape = ModelShape(g.vocab_size, g.block_size, g.n_layer, g.n_head, g.n_embd)
    return choose_strategy(shape, n, KNOWN_GPUS["H100"], cfg.train.batch_size, g.block_size, "bf16") \
        .choice.strategy.label


def test_gpt2_1b_plan_prints_every_strategy_and_the_choice_for_1_4_8_gpus(capsys, runs_dir):
    code, out, _ = _run(capsys, *_gpt2_1b_argv(runs_dir))
    # exit 1: FineWeb-Edu is not checked (check_hub=false), and without a GPU use_gpu=true is a problem too
    assert code == 1 and "[pretrain] hub dataset HuggingFaceFW/fineweb-edu is not checked" in out
    assert "preset gpt2-1b has configs for stages [tokenizer,pretrain] only" in out
    assert "1.3B L24 d2048 h16 V50263 T1024" in out
    assert "parallelism of pretrain: 1.3B parameters, micro-batch 16 x 1024 tokens per GPU, bf16" in out
    header = next(line for line in out.splitlines() if line.startswith("gpus "))
    assert header.split() == ["gpus", "strategy", "weights", "grads", "optim", "buffers", "activ", "total", "host",
                              "fits", "max", "micro-batch"]
    for n in (1, 4, 8):
        for label in ("ddp", "zero1", "zero2", "fsdp (no reshard)", "fsdp", "zero3"):
            assert any(line.startswith(f"{n} x 80 GB") and f"  {label}  " in line for line in out.splitlines()), \
                (n, label)
        assert f"choice on {n} x H100 (80 GB): {_gpt2_1b_choice(n)}\n" in out
    assert "is the simplest that fits" in out


def test_gpt2_1b_8gpu_plan_json_has_the_choices_and_the_configured_strategy(capsys, runs_dir):
    code, out, _ = _run(capsys, *_gpt2_1b_argv(runs_dir, "--json", preset="gpt2-1b-8gpu"))
    data = json.loads(out)
    pretrain = next(s for s in data["stages"] if s["stage"] == "pretrain")
    settings = pretrain["parallelism"]["settings"]
    assert [s["setting"]["n_gpus"] for s in settings[:3]] == [1, 4, 8]
    assert [s["choice"]["choice"]["label"] for s in settings[:3]] == [_gpt2_1b_choice(n) for n in (1, 4, 8)]
    eight = settings[2]["choice"]["choice"]
    # the row's memory is the configured strategy on the job's 8 GPUs: the planner's choice for 8 x 80 GB
    assert pretrain["memory"]["total"] == pytest.approx(eight["total"])
    assert pretrain["workers"] == 8


def test_a_strategy_that_does_not_fit_gets_the_planners_choice_as_its_fix(capsys, runs_dir):
    from shared.plan.memory import STRATEGY_ROWS
    code, out, _ = _run(capsys, *_gpt2_1b_argv(runs_dir, "gpu=A100-40GB", preset="gpt2-1b-8gpu"))
    assert code == 1 and "[pretrain] needs ~" in out and "the A100-40GB has 40 GB" in out
    job = out[out.index("choice on this job: 8 x A100-40GB (40 GB): "):].splitlines()[0].rsplit(": ", 1)[1]
    assert job in {s.label for s in STRATEGY_ROWS} - {"ddp"}  # sharding is what makes it fit
    assert f"or set pretrain.parallelism={job.split()[0]}" in out
