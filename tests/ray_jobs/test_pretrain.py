"""Pretraining under Ray Train: the loss falls, DDP works, a failed worker resumes exactly."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from shared.model.gpt import GPT
from shared.model.presets import model_config
from shared.registry import Registry
from shared.training.pretrain_loop import TrainSpec, _maybe_snapshot
from shared.training.runner import run_pretraining


def _train_losses(art):
    rows = [json.loads(line) for line in open(art.dir / "metrics.jsonl")]
    return {r["step"]: r["train_loss"] for r in rows if "train_loss" in r}


def test_pretrain_registers_hf_checkpoint_and_loss_falls(smoke_tokenizer, ray_session, pretrain_config):
    art = run_pretraining(pretrain_config(smoke_tokenizer, "pretrain", train__max_steps=40, tensorboard=True))
    assert art.parents == ["t/tokenizer"] and art.kind == "hf-model"
    m = art.metrics
    assert m["val_loss"] < m["initial_val_loss"] - 0.5, m
    assert (art.dir / "loss_curve.png").stat().st_size > 1000
    assert any((art.dir / "tensorboard").glob("events.out.tfevents.*"))
    # The artifact is a standard HF checkpoint + tokenizer.
    model = AutoModelForCausalLM.from_pretrained(art.dir)
    tok = AutoTokenizer.from_pretrained(art.dir)
    ids = torch.tensor([tok.encode("def f(x): return x")])
    assert model(ids).logits.shape == (1, ids.shape[1], model.config.vocab_size)
    assert art.config["train"]["max_steps"] == 40 and art.data_fingerprint
    # train.snapshot_every=10 (smoke preset): HF snapshots before the last step, for the interpret stage
    snaps = sorted(p.name for p in (art.dir / "snapshots").iterdir())
    assert snaps == ["step_000000", "step_000010", "step_000020", "step_000030"]
    assert AutoModelForCausalLM.from_pretrained(art.dir / "snapshots" / "step_000010").config.n_layer == 2
    snap_tok = AutoTokenizer.from_pretrained(art.dir / "snapshots" / "step_000010")
    assert snap_tok.decode(snap_tok.encode("def f(x): return x")) == "def f(x): return x"


def test_snapshot_carries_the_tokenizer(smoke_tokenizer, pretrain_config, tmp_path):
    """A snapshot is a whole HF checkpoint: AutoTokenizer on it is the run's tokenizer, not an empty GPT-2 one."""
    tok_dir = Registry(smoke_tokenizer).resolve("t/tokenizer").dir
    cfg = pretrain_config(smoke_tokenizer, "snap", train__snapshot_every=5)
    model = GPT(model_config("smoke", vocab_size=len(AutoTokenizer.from_pretrained(tok_dir))))
    spec = TrainSpec(config=cfg, model={}, train_dir="", snapshot_dir=str(tmp_path), tokenizer_dir=str(tok_dir))
    _maybe_snapshot(spec, model, 5, rank=0)
    _maybe_snapshot(spec, model, 7, rank=0)  # not a multiple of snapshot_every: nothing written
    assert [p.name for p in tmp_path.iterdir()] == ["step_000005"]
    text = "def add(a, b):\n    return a + b  # ünïcode"
    tok = AutoTokenizer.from_pretrained(tmp_path / "step_000005")
    assert len(tok) == len(AutoTokenizer.from_pretrained(tok_dir)) > 256
    assert tok.decode(tok.encode(text)) == text
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "step_000005").config.eos_token_id == tok.eos_token_id


def test_ddp_two_workers_loss_falls(smoke_tokenizer, ray_session, pretrain_config):
    art = run_pretraining(pretrain_config(smoke_tokenizer, "ddp", num_workers=2, cpus_per_worker=1,
                                          train__max_steps=20))
    assert art.metrics["val_loss"] < art.metrics["initial_val_loss"] - 0.3
    # tokens per step count both workers' batches
    assert art.metrics["tokens"] == 20 * 2 * 8 * 64


@pytest.mark.chaos
def test_worker_failure_resumes_from_checkpoint_with_same_curve(smoke_tokenizer, ray_session, pretrain_config):
    common = dict(train__max_steps=12, train__ckpt_every=4, train__eval_every=6, train__log_every=4)
    clean = run_pretraining(pretrain_config(smoke_tokenizer, "clean", **common))
    failed = run_pretraining(pretrain_config(smoke_tokenizer, "failed", fail_at_step=6, **common))
    assert (failed.dir / "_failed_once").read_text() == "6"  # the failure really fired
    a, b = _train_losses(clean), _train_losses(failed)
    assert sorted(a) == sorted(b) == list(range(1, 13))
    for step in a:
        assert b[step] == pytest.approx(a[step], abs=1e-4), f"step {step}: {b[step]} vs {a[step]}"
    assert failed.metrics["steps"] == 12


def test_continued_pretraining_reports_both_val_sets(smoke_tokenizer, ray_session, pretrain_config):
    reg = Registry(smoke_tokenizer)
    if not any(a.stage == "pretrain" for a in reg.artifacts("t")):
        run_pretraining(pretrain_config(smoke_tokenizer, "pretrain", train__max_steps=30))
    from shared.config import load_config
    from shared.training.pretrain_config import PretrainConfig
    cfg = load_config(PretrainConfig, "cpt", "smoke", base={
        "run": "t", "runs_dir": str(smoke_tokenizer), "data": {"max_bytes": 150_000},
        "eval_max_bytes": 150_000, "train": {"max_steps": 30}})
    art = run_pretraining(cfg)
    m = art.metrics
    assert art.parents == ["t/tokenizer", "t/pretrain"]
    assert {"val_loss", "initial_val_loss", "general_loss", "initial_general_loss"} <= set(m)
    assert m["val_loss"] < m["initial_val_loss"] - 0.2  # code loss falls


def test_bad_inputs_give_clear_errors(smoke_tokenizer, pretrain_config):
    from shared.config import ConfigError
    from shared.registry import ArtifactNotFound
    with pytest.raises(ConfigError, match="train.schedule: unknown schedule 'exp'"):
        pretrain_config(smoke_tokenizer, "x", train__schedule="exp")
    with pytest.raises(ArtifactNotFound, match="no artifact named 'nope'"):
        run_pretraining(pretrain_config(smoke_tokenizer, "x", init_from="nope"))
