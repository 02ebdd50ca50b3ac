"""Post-training under each ``parallelism`` strategy on 2 CPU processes (gloo): one HF checkpoint.

The same tiny GPT-2 fine-tunes (method=full, fp32) from the same start on the same batches under ddp and
fsdp (and, slow, zero2, zero3 and fsdp without resharding plus activation checkpointing). Each checkpoint
must load in transformers and in our own loader with identical logits, and every strategy must agree
with ddp on the losses and on the saved weights: they lay the same computation out differently, so a
gap beyond float reordering would be a wrong gather (a shard missing, a stale copy saved) or a
silently different strategy.

Default suite: ``trl_worker``'s pieces (``training_arguments``, the CPU FSDP state, ``load_model``, the
SFT trainer, ``save_model``) in 2 processes started by ``torch.distributed.run`` (this file's ``main``):
no Ray, so it stays cheap. Slow: the whole stage (``run_sft``) on 2 Ray Train workers per strategy.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from shared.config import load_config
from shared.training.posttrain_config import SFTJobConfig
from tests.ray_jobs.conftest import register_random_model

ROOT = Path(__file__).resolve().parents[2]

#: Losses and weights of two strategies agree to this (fp32; only the reduction order differs).
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def base_model(smoke_tokenizer):
    register_random_model(smoke_tokenizer, "base")
    return smoke_tokenizer


@pytest.fixture(scope="module")
def trained(base_model, ray_session):
    """Factory: the artifact of a 2-worker fine-tune of ``t/base`` under ``overrides`` (cached per arm)."""
    from shared.training.sft import run_sft
    cache = {}

    def train(name: str, *overrides: str):
        if name not in cache:
            base = {"run": "t", "stage": f"par-{name}", "runs_dir": str(base_model), "init_from": "t/base",
                    "overwrite": True, "num_workers": 2, "cpus_per_worker": 1, "precision": "fp32",
                    "max_examples": 64, "eval_examples": 8, "max_new_tokens": 4, "replay": [], "replay_fraction": 0,
                    "train": {"max_steps": 4, "batch_size": 4, "lr": 0.01, "max_length": 32, "eval_every": 4,
                              "log_every": 1, "warmup": 0, "ckpt_every": 100}}
            cache[name] = run_sft(load_config(SFTJobConfig, "sft", "smoke", overrides=list(overrides), base=base))
        return cache[name]
    return train


def _losses(art) -> list[float]:
    rows = [json.loads(line) for line in (art.dir / "metrics.jsonl").read_text().splitlines()]
    return [row["loss"] for row in rows if "loss" in row]


def _check_artifact(path) -> dict[str, torch.Tensor]:
    """The checkpoint loads in transformers and in our loader with identical logits; returns its weights."""
    from transformers import AutoModelForCausalLM

    from shared.model.hf import load_gpt
    hf = AutoModelForCausalLM.from_pretrained(path).eval()
    ours = load_gpt(path).eval()
    ids = torch.randint(0, hf.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hf_logits = hf(ids).logits
        our_logits = ours(ids)[0]
    torch.testing.assert_close(our_logits, hf_logits, rtol=0, atol=1e-5)
    return {k: v.detach().clone() for k, v in hf.state_dict().items()}


def _assert_same_training(art, ref, ref_weights) -> None:
    losses, ref_losses = _losses(art), _losses(ref)
    assert len(losses) == len(ref_losses) == 4
    assert max(abs(a - b) for a, b in zip(losses, ref_losses)) < TOLERANCE, (losses, ref_losses)
    assert _weights_gap(_check_artifact(art.dir), ref_weights) < TOLERANCE


def _weights_gap(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_fsdp_trainer_on_two_processes_saves_the_model_ddp_trains(base_model, tmp_path):
    """FSDP2 through accelerate's plugin (on CPU over gloo) and DDP, same start and batches: same losses,
    same gathered checkpoint; each loads in transformers and in our loader with identical logits."""
    from shared.registry import Registry
    start = Registry(base_model).resolve("t/base").dir
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(29400 + os.getpid() % 500), __file__, str(start), str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    losses = json.loads((tmp_path / "losses.json").read_text())
    assert losses["fsdp_enabled"] and len(losses["ddp"]) == len(losses["fsdp"]) == 4
    assert max(abs(a - b) for a, b in zip(losses["ddp"], losses["fsdp"])) < TOLERANCE, losses
    ddp, fsdp, base = (_check_artifact(p) for p in (tmp_path / "ddp", tmp_path / "fsdp", start))
    assert _weights_gap(ddp, base) > 1e-3  # it trained
    assert _weights_gap(fsdp, ddp) < TOLERANCE


def main(start: str, out: str) -> None:
    """Run by ``torch.distributed.run`` with 2 processes: fine-tune ``start`` under ddp, then fsdp."""
    import torch.distributed as dist

    from shared.training.finetune_config import MethodConfig
    from shared.training.posttrain_config import PostTrainLoopConfig
    from shared.training.sft import ALGORITHM
    from shared.training.trl_worker import (TrainRows, _accelerate_fsdp_on_cpu, _check_strategy, load_model,
                                            training_arguments)
    dist.init_process_group("gloo")  # as Ray Train does before the worker runs
    rank = dist.get_rank()
    words = "def return import class self value list dict print for while if else yield".split()
    rows = [{"text": " ".join(words[(i * 7 + j * 3) % len(words)] for j in range(24))} for i in range(64)]
    losses: dict = {}
    for strategy in ("ddp", "fsdp"):
        cfg = SFTJobConfig(parallelism=strategy, num_workers=2, cpus_per_worker=1, precision="fp32",
                           method=MethodConfig(method="full"),
                           train=PostTrainLoopConfig(max_steps=4, batch_size=4, lr=0.01, max_length=32, warmup=0,
                                                     log_every=1))
        args = training_arguments(cfg, f"{out}/trainer-{strategy}", has_eval=False)
        if strategy == "fsdp":
            _accelerate_fsdp_on_cpu(args)
        model, tokenizer = load_model(ALGORITHM, start, cfg)
        trainer = ALGORITHM.build_trainer(model, tokenizer, cfg, TrainRows(rows), args)
        _check_strategy(trainer, cfg)
        trainer.train()
        trainer.save_model(f"{out}/{strategy}")  # every rank: FSDP gathers the full state dict to rank 0
        losses[strategy] = [row["loss"] for row in trainer.state.log_history if "loss" in row]
        losses[f"{strategy}_enabled"] = trainer.is_fsdp_enabled
    if rank == 0:
        Path(out, "losses.json").write_text(json.dumps(losses))
    dist.destroy_process_group()


@pytest.mark.slow
def test_fsdp_fine_tune_gathers_the_same_model_as_ddp(trained, base_model):
    """The whole stage on 2 Ray Train workers: FSDP2 and DDP give the same losses and the same artifact."""
    ddp, fsdp = trained("ddp", "parallelism=ddp"), trained("fsdp", "parallelism=fsdp")
    from shared.registry import Registry
    ddp_weights = _check_artifact(ddp.dir)
    assert _weights_gap(ddp_weights, _check_artifact(Registry(base_model).resolve("t/base").dir)) > 1e-3
    _assert_same_training(fsdp, ddp, ddp_weights)
    assert fsdp.config["parallelism"] == "fsdp"


LORA = ["method.method=lora", "method.lora_r=4", "method.lora_dropout=0"]  # no dropout: same numbers


@pytest.mark.slow
@pytest.mark.parametrize("name,overrides,reference", [
    ("zero2", ["parallelism=zero2"], ("ddp", ["parallelism=ddp"])),
    ("zero3", ["parallelism=zero3"], ("ddp", ["parallelism=ddp"])),
    ("fsdp-noreshard-ckpt", ["parallelism=fsdp", "fsdp_reshard_after_forward=false", "activation_checkpointing=true"],
     ("ddp", ["parallelism=ddp"])),
    # the adapter is gathered, saved and merged as under ddp (FSDP's own checkpointing would empty it)
    ("lora-fsdp-ckpt", ["parallelism=fsdp", "activation_checkpointing=true", *LORA],
     ("lora-ddp", ["parallelism=ddp", *LORA])),
])
def test_other_strategies_match_ddp(trained, name, overrides, reference):
    ref = trained(reference[0], *reference[1])
    art = trained(name, *overrides)
    _assert_same_training(art, ref, _check_artifact(ref.dir))
    if "lora" in name:
        assert (art.dir / "adapter" / "adapter_model.safetensors").stat().st_size > 1000


if __name__ == "__main__":
    main(*sys.argv[1:])
