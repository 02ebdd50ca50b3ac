"""The finetune-methods experiment on a tiny GPT built here: real arms in real worker processes.

What is checked is what the table claims: LoRA trains a small, rank-proportional share of the weights,
every arm that ran reached a finite eval loss with measured memory and step time, and QLoRA is
reported as skipped (never emulated) on a machine without CUDA.
"""
from __future__ import annotations

import json
import math

import pytest
import torch

from ray_jobs import experiments as cli
from shared.config import load_config
from shared.model.gpt import GPT, GPTConfig
from shared.model.hf import save_hf_checkpoint
from shared.registry import Registry
from shared.tokenizer.train import train_tokenizer
from shared.training.experiments import ExperimentConfig
from shared.training.finetune_experiment import NO_GPU, STAGE, arm_method, finetune_methods_experiment

TEXT = ("Write a function that adds two numbers. def add(a, b): return a + b. "
        "Answer briefly: the capital of France is Paris. Translate 'hello' to French: bonjour. ") * 40


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A 2-layer GPT (d=64) with a 320-token BPE tokenizer, saved as an HF checkpoint dir."""
    root = tmp_path_factory.mktemp("tiny")
    stats = train_tokenizer([TEXT], vocab_size=320, out_dir=root / "tokenizer")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=stats["vocab_size"], block_size=64, n_layer=2, n_head=2, n_embd=64))
    return save_hf_checkpoint(model, root / "model", tokenizer_dir=root / "tokenizer")


def _cfg(runs, init_from, **extra) -> ExperimentConfig:
    base = {"run": "t", "runs_dir": str(runs), "preset": "smoke", "steps": 3, "init_from": str(init_from),
            "methods": ["full", "lora-r8", "lora-r16", "qlora-r16"],
            "finetune": {"max_examples": 24, "eval_examples": 8, "cpus_per_worker": 1,
                         "train": {"batch_size": 4, "max_length": 32}}}
    return load_config(ExperimentConfig, "experiment", None, base={**base, **extra})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU rows (QLoRA skipped)")
def test_full_vs_lora_table(tmp_path, tiny_checkpoint, ray_session):
    art = finetune_methods_experiment(_cfg(tmp_path, tiny_checkpoint))
    rows = {r["method"]: r for r in json.loads((art.dir / f"{STAGE}.json").read_text())}
    assert list(rows) == ["full", "lora-r8", "lora-r16", "qlora-r16"]
    full, r8, r16 = rows["full"], rows["lora-r8"], rows["lora-r16"]
    assert full["trainable_params"] == full["total_params"]  # full fine-tuning trains every weight
    assert r8["trainable_params"] * 3 < full["trainable_params"]
    assert r16["trainable_params"] == 2 * r8["trainable_params"]  # r * (in + out) per adapted matrix
    assert r8["total_params"] == full["total_params"] + r8["trainable_params"]  # base + adapters
    for row in (full, r8, r16):
        assert row["status"] == "ok" and row["steps"] == 3
        assert math.isfinite(row["eval_loss"]) and 0 < row["eval_loss"] < 10
        assert row["step_s"] > 0 and row["peak_memory_mb"] > 0
        assert row["memory_measure"] == "CPU peak RSS increase"
    assert rows["qlora-r16"]["status"] == NO_GPU and rows["qlora-r16"]["eval_loss"] is None
    assert NO_GPU in (art.dir / f"{STAGE}.md").read_text()
    assert (art.dir / f"{STAGE}.png").stat().st_size > 5000
    assert Registry(tmp_path).resolve(f"t/{STAGE}").kind == "experiment"


def test_arm_names_parse_and_bad_ones_fail_with_the_fix(tmp_path, capsys):
    assert arm_method("lora-r16") == {"method": "lora", "lora_r": 16}
    assert arm_method("qlora-r8") == {"method": "qlora", "lora_r": 8}
    assert arm_method("full") == {"method": "full"}
    assert cli.main(["finetune-methods", f"runs_dir={tmp_path}", "methods=[full,lora-8]"]) == 2
    assert "unknown finetune method arm 'lora-8'; write full, lora-r<rank>" in capsys.readouterr().err


def test_preset_validates():
    cfg = load_config(ExperimentConfig, "experiment", "finetune-methods-tiny")
    assert cfg.methods == ["full", "lora-r8", "lora-r16", "lora-r32", "qlora-r16"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU rows (QLoRA skipped)")
def test_benchmark_runs_the_arms_without_ray(tmp_path, tiny_checkpoint):
    """benchmarks/finetune_methods.py: the same arms in spawned processes, for GPU boxes with no Ray cluster."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    cmd = [sys.executable, str(root / "benchmarks" / "finetune_methods.py"), "--model", str(tiny_checkpoint),
           "--arms", "full,lora-r8,qlora-r8", "--preset", "smoke", "--steps", "3", "--batch-size", "4",
           "--max-length", "32", "--max-examples", "24", "--eval-examples", "8", "--threads", "1",
           "--no-packing", "--out", str(tmp_path)]
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {r["method"]: r for r in json.loads((tmp_path / "finetune_methods.json").read_text())["rows"]}
    full, r8 = rows["full"], rows["lora-r8"]
    assert full["status"] == r8["status"] == "ok" and full["steps"] == r8["steps"] == 3
    assert full["trainable_params"] == full["total_params"] == r8["total_params"] - r8["trainable_params"]
    assert math.isfinite(r8["eval_loss"]) and r8["peak_memory_mb"] > 0
    assert rows["qlora-r8"]["status"].startswith("skipped") and "CUDA" in rows["qlora-r8"]["status"]
    table = (tmp_path / "finetune_methods.md").read_text()
    assert "| full | ok |" in table and "1.00x" in table  # each arm's ratios against the first
    assert (tmp_path / "finetune_methods.png").stat().st_size > 5000
