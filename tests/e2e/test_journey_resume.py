"""Ctrl-C during SFT, then the same ``journey run`` again: the earlier stages are kept and SFT continues
from its last checkpoint (the capstone's promise that a crash in stage 7 does not cost stages 1-6)."""
from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from shared.training.posttrain import latest_trainer_checkpoint
from shared.training.resume import checkpoint_root
from tests.processes import run, start, stop, wait_for

EARLIER = ("tokenizer", "pretrain", "cpt")


@pytest.mark.e2e
@pytest.mark.chaos
def test_journey_interrupted_during_sft_resumes_sft_from_its_checkpoint(tmp_path):
    runs = tmp_path / "runs"
    argv = ["-m", "ray_jobs.journey", "preset=smoke", "run=r", f"runs_dir={runs}", "stages=[tokenizer,pretrain,cpt,sft]",
            "sft.train.max_steps=60", "sft.train.ckpt_every=10", "sft.train.eval_every=30"]
    root = checkpoint_root(runs, "r", "sft")
    first = tmp_path / "first.log"
    proc = start(argv, first)
    wait_for(lambda: latest_trainer_checkpoint(root), proc, first, 600, "an SFT checkpoint")
    assert stop(proc, signal.SIGINT, first) == 130, first.read_text()[-3000:]
    out = first.read_text()
    assert "interrupted during sft: `journey run run=r` continues from there" in out, out[-3000:]
    assert not (runs / "r" / "sft" / "journey.json").exists()
    made = {s: json.loads((runs / "r" / s / "journey.json").read_text())["created_at"] for s in EARLIER}
    _, step = latest_trainer_checkpoint(root)

    again, _ = run(argv, tmp_path / "second.log")
    for stage in EARLIER:
        assert f"  {stage:<10} skip  up to date" in again, again[-3000:]
    assert "  sft        run   interrupted before it finished" in again
    assert "1 stage(s) run (sft)" in again
    assert {s: json.loads((runs / "r" / s / "journey.json").read_text())["created_at"] for s in EARLIER} == made
    sft = json.loads((runs / "r" / "sft" / "journey.json").read_text())
    assert sft["extra"]["resumed_from_step"] == step > 0
    assert f"resuming sft from step {step}" in (runs / "r" / "logs" / "sft.log").read_text()
    assert sft["metrics"]["steps"] == 60
    assert Path(runs / "r" / "report" / "index.html").exists()
