"""Parallelism strategies (shared.training.parallel) under Ray Train with 2 CPU workers over gloo.

Each arm trains the same tiny GPT on the same batches; the gathered full state dict must be the model the
ranks trained (identical logits through the sharded model, our GPT and HF ``from_pretrained``), and the
losses must agree across strategies: they only lay the same computation out differently.
"""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from shared.config import ConfigError, load_config
from shared.model.gpt import GPT, GPTConfig
from shared.model.hf import load_gpt, save_hf_checkpoint
from shared.training.deepspeed_config import pretrain_deepspeed_dict
from shared.training.parallel import ParallelOptions
from shared.training.parallel_experiment import ParallelExperimentConfig, run_arms
from shared.training.pretrain_config import PretrainConfig


def _cfg(**kw) -> ParallelExperimentConfig:
    base = dict(workers=2, steps=3, warmup_steps=1, batch_size=2, block_size=16, n_layer=2, n_head=2, n_embd=16,
                vocab_size=64)
    return ParallelExperimentConfig(**{**base, **kw})


def test_unknown_or_unsupported_strategy_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"unknown strategy 'zero4'.*'ddp', 'fsdp', 'zero1', 'zero2', 'zero3'"):
        load_config(PretrainConfig, "pretrain", "smoke", base={"parallelism": "zero4"})
    with pytest.raises(ConfigError, match="fsdp_cpu_offload needs CUDA"):
        ParallelOptions("fsdp", fsdp_cpu_offload=True).validate(use_gpu=False)
    ParallelOptions("fsdp", fsdp_cpu_offload=True).validate(use_gpu=True)
    with pytest.raises(ConfigError, match="zero_offload_params needs parallelism=zero3"):
        ParallelOptions("zero2", zero_offload_params=True).validate(use_gpu=False)
    with pytest.raises(ConfigError, match="parallelism=zero1, zero2 or zero3"):
        ParallelOptions("ddp", zero_offload_optimizer=True).validate(use_gpu=False)
    with pytest.raises(ConfigError, match="compile=on works with parallelism=ddp only"):
        load_config(PretrainConfig, "pretrain", "smoke", base={"parallelism": "fsdp", "compile": "on"})


def test_deepspeed_config_comes_from_the_loop_config():
    ds = pretrain_deepspeed_dict(3, micro_batch=4, grad_accum=2, world=2, grad_clip=1.0, precision="bf16",
                                 on_cpu=True, offload_optimizer=True)
    assert ds["train_batch_size"] == 16 and ds["gradient_accumulation_steps"] == 2
    assert ds["bf16"] == {"enabled": True} and ds["fp16"] == {"enabled": False}
    assert ds["zero_optimization"]["stage"] == 3 and ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert "optimizer" not in ds  # the loop hands DeepSpeed its own AdamW
    with pytest.raises(ConfigError, match="zero_offload_params needs parallelism=zero3"):
        pretrain_deepspeed_dict(2, micro_batch=1, grad_accum=1, world=1, grad_clip=0, precision="fp32",
                                on_cpu=True, offload_params=True)


def _check_gathered_model(tmp_path, arm: str, probe_file) -> None:
    """The gathered state is the trained model: same logits as the sharded forward, in our GPT and in HF."""
    probe = torch.load(probe_file, weights_only=False)
    cfg = _cfg()
    model = GPT(GPTConfig(**cfg.model()))
    model.load_state_dict(probe["state"])
    model.eval()
    with torch.no_grad():
        ours, _ = model(probe["x"])
    torch.testing.assert_close(ours, probe["logits"], rtol=1e-5, atol=1e-5)
    out = tmp_path / f"hf-{arm}"
    save_hf_checkpoint(model, out)
    with torch.no_grad():
        hf = AutoModelForCausalLM.from_pretrained(out).eval()(probe["x"]).logits
        reloaded, _ = load_gpt(out).eval()(probe["x"])
    torch.testing.assert_close(hf, ours, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(reloaded, ours, rtol=0, atol=0)


def _run_arms(tmp_path, arms):
    """All arms in one worker group of 2 ranks; ``{arm: rank 0's losses}`` after checking each gathered model."""
    results = run_arms(_cfg(), arms, tmp_path, probe=True)
    for arm in arms:
        assert [r["rank"] for r in results[arm]] == [0, 1]
        _check_gathered_model(tmp_path, arm, tmp_path / f"{arm}.pt")
    return {arm: rows[0]["losses"] for arm, rows in results.items()}


def test_ddp_fsdp_zero2_gather_the_model_they_trained_and_agree_on_the_loss(tmp_path, ray_session):
    losses = _run_arms(tmp_path, ["ddp", "fsdp", "zero2"])
    for arm in ("fsdp", "zero2"):
        assert losses[arm] == pytest.approx(losses["ddp"], rel=1e-5), (arm, losses)
    assert losses["ddp"][-1] < losses["ddp"][0]  # and it trained


@pytest.mark.slow
def test_zero1_zero3_fsdp_without_reshard_gather_the_model_they_trained(tmp_path, ray_session):
    losses = _run_arms(tmp_path, ["zero1", "zero3", "fsdp-noreshard", "ddp"])
    for arm in ("zero1", "zero3", "fsdp-noreshard"):
        assert losses[arm] == pytest.approx(losses["ddp"], rel=1e-5), (arm, losses)
