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
