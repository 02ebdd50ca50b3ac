"""An interrupted training stage, rerun in the same run, continues from its last checkpoint.

Real processes where it matters: ``python -m ray_jobs.sft`` stopped by Ctrl-C (SIGINT to its process
group, as a terminal sends it) and ``python -m ray_jobs.pretrain`` killed outright (SIGKILL), each
then rerun with the same command. In-process: an injected failure with no restarts left, then a
rerun with the same config (resumes, the same loss curve as an uninterrupted run) and with a
changed one (starts at 0, the old checkpoints gone). Plus the rules of ``shared.training.resume``
themselves, without Ray.
"""
from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from shared.progress import progress_file, read_progress
from shared.registry import Registry
from shared.training.posttrain import latest_trainer_checkpoint
from shared.training.pretrain_loop import checkpoint_step
from shared.training.resume import RESUME_FILE, checkpoint_root, discard, plan_resume, resume_key
from shared.training.runner import _latest_checkpoint, run_pretraining
from tests.processes import run, start, stop, wait_for
from tests.ray_jobs.conftest import register_random_model


# ----------------------------------------------------------------------------- helpers

def _metrics(art) -> list[dict]:
    return [json.loads(line) for line in open(art.dir / "metrics.jsonl", encoding="utf-8")]


# ----------------------------------------------------------------------------- the rules, without Ray

def _fake_latest(directory: Path):
    steps = sorted(int(p.name.split("-")[1]) for p in directory.glob("ckpt-*"))
    return (directory / f"ckpt-{steps[-1]}", steps[-1]) if steps else None


def test_plan_resumes_only_an_unfinished_stage_with_the_same_config(tmp_path):
    from shared.training.posttrain_config import SFTJobConfig
    cfg = SFTJobConfig(run="r")
    key = resume_key(cfg, {"model": "r/cpt@2026-01-01"})
    lines: list[str] = []
    first = plan_resume(tmp_path / "sft", "sft", key, _fake_latest, log=lines.append)
    assert not first.resuming and first.step == 0 and lines == []  # nothing there: fresh, nothing to say
    assert json.loads((tmp_path / "sft" / RESUME_FILE).read_text()) == key
    (tmp_path / "sft" / "ckpt-10").mkdir()
    (tmp_path / "sft" / "ckpt-20").mkdir()

    # overwrite (and runs_dir) do not change what is trained: still the same key
    same = resume_key(SFTJobConfig(run="r", overwrite=True, runs_dir="elsewhere"), {"model": "r/cpt@2026-01-01"})
    plan = plan_resume(tmp_path / "sft", "sft", same, _fake_latest, log=lines.append)
    assert plan.resuming and plan.step == 20 and plan.checkpoint == tmp_path / "sft" / "ckpt-20"
    assert lines == [f"resuming sft from step 20 (checkpoint {tmp_path / 'sft' / 'ckpt-20'})"]

    # a finished artifact being replaced never resumes, even under the same config
    lines.clear()
    plan = plan_resume(tmp_path / "sft", "sft", key, _fake_latest, finished=True, log=lines.append)
    assert not plan.resuming and not (tmp_path / "sft" / "ckpt-20").exists()
    assert len(lines) == 1 and "overwrite=true" in lines[0] and "removed them" in lines[0]


@pytest.mark.parametrize("change, why", [
    ({"train": {"lr": 0.5}}, "train.lr: 0.002 -> 0.5"),
    ({"input": "r/cpt@2026-02-02"}, "input model: 'r/cpt@2026-01-01' -> 'r/cpt@2026-02-02'"),
])
def test_plan_starts_clean_when_the_config_or_an_input_changed(tmp_path, change, why):
    from shared.training.posttrain_config import PostTrainLoopConfig, SFTJobConfig
    old = resume_key(SFTJobConfig(run="r", train=PostTrainLoopConfig(lr=0.002)), {"model": "r/cpt@2026-01-01"})
    plan_resume(tmp_path, "sft", old, _fake_latest, log=lambda _: None)
    (tmp_path / "ckpt-5").mkdir()
    new = resume_key(SFTJobConfig(run="r", train=PostTrainLoopConfig(lr=change.get("train", {}).get("lr", 0.002))),
                     {"model": change.get("input", "r/cpt@2026-01-01")})
    lines: list[str] = []
    plan = plan_resume(tmp_path, "sft", new, _fake_latest, log=lines.append)
    assert not plan.resuming and plan.step == 0
    assert [p.name for p in tmp_path.iterdir()] == [RESUME_FILE]  # the old checkpoints are gone
    assert json.loads((tmp_path / RESUME_FILE).read_text()) == new
    assert len(lines) == 1 and why in lines[0] and "starting from step 0" in lines[0], lines


def test_checkpoints_without_a_readable_record_or_incomplete_are_not_resumed(tmp_path):
    key = resume_key({"run": "r"}, {})
    (tmp_path / "ckpt-5").mkdir(parents=True)  # no resume.json: who wrote it is unknown
    lines: list[str] = []
    assert not plan_resume(tmp_path, "x", key, _fake_latest, log=lines.append).resuming
    assert "no readable resume.json" in lines[0]
    (tmp_path / "partial").mkdir()  # the same config, but nothing complete to resume from
    lines.clear()
    assert not plan_resume(tmp_path, "x", key, lambda d: None, log=lines.append).resuming
    assert "no complete checkpoint" in lines[0] and "removed what it left" in lines[0]
    discard(tmp_path)
    assert not tmp_path.exists()


def test_complete_checkpoints_are_told_from_ones_cut_short(tmp_path):
    # pretraining: the marker names the state file's size
    good, short = tmp_path / "ray" / "s" / "checkpoint_a", tmp_path / "ray" / "s" / "checkpoint_b"
    for path, step, size in ((good, 8, 100), (short, 12, 40)):
        path.mkdir(parents=True)
        (path / "train_state.pt").write_bytes(b"x" * size)
        (path / "checkpoint.json").write_text(json.dumps({"step": step, "bytes": 100}))
    assert checkpoint_step(good) == 8 and checkpoint_step(short) is None
    assert _latest_checkpoint(tmp_path) == (good, 8)
    # the HF Trainer's: trainer_state.json is written last
    for step, state in ((5, True), (10, True), (15, False)):
        path = tmp_path / "trainer" / f"checkpoint-{step}"
        path.mkdir(parents=True)
        if state:
            (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    assert latest_trainer_checkpoint(tmp_path) == (tmp_path / "trainer" / "checkpoint-10", 10)


# ----------------------------------------------------------------------------- pretraining, in process

@pytest.mark.chaos
def test_pretraining_interrupted_resumes_with_the_same_curve_and_a_changed_config_does_not(
        smoke_tokenizer, ray_session, pretrain_config, capsys):
    common = dict(train__max_steps=12, train__ckpt_every=4, train__eval_every=6, train__log_every=4)
    clean = run_pretraining(pretrain_config(smoke_tokenizer, "clean", **common))
    assert clean.extra["resumed_from_step"] == 0
    assert not checkpoint_root(smoke_tokenizer, "t", "clean").exists()  # deleted once registered

    # fail after step 6 with no restarts left: the stage stops, its step-4 checkpoint stays
    interrupted = pretrain_config(smoke_tokenizer, "resumed", fail_at_step=6, max_failures=0, **common)
    with pytest.raises(Exception):
        run_pretraining(interrupted)
    out_dir = Path(smoke_tokenizer) / "t" / "resumed"
    assert (out_dir / "_failed_once").read_text() == "6"  # it was the injected failure that stopped it
    root = checkpoint_root(smoke_tokenizer, "t", "resumed")
    assert _latest_checkpoint(root)[1] == 4
    assert not (out_dir / "journey.json").exists()

    capsys.readouterr()
    resumed = run_pretraining(interrupted)  # the failure fired once (its marker): this attempt goes through
    assert "resuming resumed from step 4 (checkpoint" in capsys.readouterr().out
    assert resumed.extra["resumed_from_step"] == 4 and not root.exists()
    a = {r["step"]: r["train_loss"] for r in _metrics(clean) if "train_loss" in r}
    b = {r["step"]: r["train_loss"] for r in _metrics(resumed) if "train_loss" in r}
    assert sorted(b) == list(range(1, 13))  # the history before step 4 came with the checkpoint
    for step in a:
        assert b[step] == pytest.approx(a[step], abs=1e-4), f"step {step}: {b[step]} vs {a[step]}"
    print(f"pretraining: uninterrupted train_s {clean.timings['train_s']:.1f}, "
          f"resumed at step 4 of 12: train_s {resumed.timings['train_s']:.1f}")

    # replaced (overwrite=true) and interrupted again; then rerun with another learning rate (the failure
    # has fired: its marker stays): from step 0, the old checkpoints removed
    (out_dir / "_failed_once").unlink()
    with pytest.raises(Exception):
        run_pretraining(pretrain_config(smoke_tokenizer, "resumed", fail_at_step=6, max_failures=0,
                                        overwrite=True, **common))
    assert _latest_checkpoint(root)[1] == 4
    capsys.readouterr()
    changed = run_pretraining(pretrain_config(smoke_tokenizer, "resumed", fail_at_step=6, max_failures=0,
                                              overwrite=True, **{**common, "train__lr": 0.001}))
    out = capsys.readouterr().out
    assert (f"resumed: starting from step 0, not from the checkpoints in {root}: they were written under another "
            "config: train.lr: 0.003 -> 0.001; removed them") in out, out  # the one difference, in one line
    assert changed.extra["resumed_from_step"] == 0 and not root.exists()
    assert [r["step"] for r in _metrics(changed)][:2] == [0, 1]


# ----------------------------------------------------------------------------- real processes

@pytest.fixture(scope="module")
def smoke_run(smoke_tokenizer):
    """Run ``t`` with the smoke tokenizer and a random tiny GPT-2 registered as its ``cpt``: what SFT starts from."""
    register_random_model(smoke_tokenizer, "cpt")
    return Path(smoke_tokenizer)


@pytest.mark.slow
@pytest.mark.chaos
def test_sft_stopped_by_ctrl_c_resumes_from_its_last_checkpoint(smoke_run, tmp_path):
    args = ["--config", "smoke", "run=t", f"runs_dir={smoke_run}", "train.max_steps=80", "train.ckpt_every=10",
            "train.eval_every=40", "train.log_every=5", "eval_examples=20"]
    root = checkpoint_root(smoke_run, "t", "sft")
    log = tmp_path / "first.log"
    t0 = time.perf_counter()
    proc = start(["-m", "ray_jobs.sft", *args], log)
    wait_for(lambda: latest_trainer_checkpoint(root), proc, log, 420, "a checkpoint")
    rc = stop(proc, signal.SIGINT, log)
    first_s = time.perf_counter() - t0
    assert rc != 0, log.read_text()[-3000:]
    assert not (smoke_run / "t" / "sft" / "journey.json").exists()
    _, step = latest_trainer_checkpoint(root)  # training may have gone on a little after the first one
    assert step >= 10 and step % 10 == 0

    out, second_s = run(["-m", "ray_jobs.sft", *args], tmp_path / "second.log")
    assert f"resuming sft from step {step} (checkpoint {root / 'trainer' / f'checkpoint-{step}'})" in out, out[-3000:]
    art = Registry(smoke_run).resolve("t/sft")
    assert art.extra["resumed_from_step"] == step > 0
    rows = _metrics(art)
    steps = [r["step"] for r in rows if "loss" in r]
    assert steps == list(range(5, 81, 5)), steps  # logged before the interruption and after, each once
    evals = [r["step"] for r in rows if "eval_loss" in r]
    assert evals.count(0) == 1 and set(evals) == {0, 40, 80}, evals  # no second step-0 evaluation on resume
    assert art.metrics["steps"] == 80
    assert not root.exists(), list(root.rglob("*"))
    progress = read_progress(progress_file(smoke_run, "t", "sft"))  # rank 0 reported every log line
    assert (progress["step"], progress["total"]) == (80, 80) and progress["metrics"]["loss"] > 0, progress
    print(f"sft: interrupted at step {step} after {first_s:.0f} s; the rerun took {second_s:.0f} s "
          f"(train_s {art.timings['train_s']:.0f})")


@pytest.mark.slow
@pytest.mark.chaos
def test_pretraining_killed_resumes_from_its_last_checkpoint(smoke_run, tmp_path):
    args = ["--config", "smoke", "run=t", f"runs_dir={smoke_run}", "data.max_bytes=150000", "train.max_steps=120",
            "train.ckpt_every=20", "train.eval_every=60", "train.log_every=10", "train.snapshot_every=0"]
    root = checkpoint_root(smoke_run, "t", "pretrain")
    log = tmp_path / "first.log"
    proc = start(["-m", "ray_jobs.pretrain", *args], log)
    wait_for(lambda: _latest_checkpoint(root), proc, log, 420, "a checkpoint")
    stop(proc, signal.SIGKILL, log)
    _, step = _latest_checkpoint(root)
    assert step >= 20 and step % 20 == 0

    out, _ = run(["-m", "ray_jobs.pretrain", *args], tmp_path / "second.log")
    assert f"resuming pretrain from step {step} (checkpoint" in out, out[-3000:]
    art = Registry(smoke_run).resolve("t/pretrain")
    assert art.extra["resumed_from_step"] == step
    rows = _metrics(art)
    assert [r["step"] for r in rows] == list(range(0, 121))  # one row per step, none repeated or lost
    assert not root.exists()
    progress = read_progress(progress_file(smoke_run, "t", "pretrain"))
    assert (progress["step"], progress["total"]) == (120, 120) and progress["metrics"]["loss"] > 0, progress
