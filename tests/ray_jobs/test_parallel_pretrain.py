"""The pretrain stage under each ``parallelism`` strategy with 2 CPU workers (gloo): the artifact is the same HF
checkpoint whatever the strategy, and a worker failure resumes from the gathered checkpoint (model and optimizer
state) onto the loss curve of an uninterrupted DDP run."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from shared.model.hf import load_gpt


def _losses(art) -> dict[int, float]:
    rows = [json.loads(line) for line in open(art.dir / "metrics.jsonl")]
    return {r["step"]: r["train_loss"] for r in rows if "train_loss" in r}


COMMON = dict(num_workers=2, cpus_per_worker=1, precision="fp32", train__max_steps=8, train__ckpt_every=4,
              train__eval_every=8, train__log_every=4, train__snapshot_every=0, train__eval_batches=1)


@pytest.fixture(scope="module")
def ddp_curve(smoke_tokenizer, ray_session, pretrain_config):
    """The reference: an uninterrupted DDP run's train loss per step."""
    from shared.training.runner import run_pretraining
    return _losses(run_pretraining(pretrain_config(smoke_tokenizer, "p-ddp", **COMMON)))


def _check(smoke_tokenizer, pretrain_config, strategy: str, ddp_curve: dict[int, float]) -> None:
    from shared.training.runner import run_pretraining
    art = run_pretraining(pretrain_config(smoke_tokenizer, f"p-{strategy}", parallelism=strategy, fail_at_step=6,
                                          **COMMON))
    assert (art.dir / "_failed_once").exists()  # the failure fired and the run resumed from step 4
    ids = torch.arange(40).reshape(2, 20) % 500
    with torch.no_grad():
        hf = AutoModelForCausalLM.from_pretrained(art.dir).eval()(ids).logits
        ours, _ = load_gpt(art.dir).eval()(ids)
    torch.testing.assert_close(hf, ours, rtol=1e-5, atol=1e-5)
    got = _losses(art)
    assert sorted(got) == sorted(ddp_curve) == list(range(1, 9))
    assert [got[s] for s in sorted(got)] == pytest.approx([ddp_curve[s] for s in sorted(got)], rel=1e-4)


@pytest.mark.slow  # ~90 s on 2 cores; tests/shared/training/test_parallel.py covers fsdp's checkpoint by default
@pytest.mark.chaos
def test_fsdp_stage_resumes_after_a_failure_onto_the_ddp_curve(smoke_tokenizer, pretrain_config, ddp_curve):
    _check(smoke_tokenizer, pretrain_config, "fsdp", ddp_curve)


@pytest.mark.slow
@pytest.mark.chaos
@pytest.mark.parametrize("strategy", ["zero1", "zero2", "zero3"])
def test_zero_stage_resumes_after_a_failure_onto_the_ddp_curve(smoke_tokenizer, pretrain_config, ddp_curve, strategy):
    _check(smoke_tokenizer, pretrain_config, strategy, ddp_curve)
