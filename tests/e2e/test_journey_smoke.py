"""The whole journey on the smoke preset, through the ``journey`` command, as a user runs it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared.stages import BY_NAME, DEFAULT_JOURNEY

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.e2e
def test_journey_run_smoke(tmp_path):
    runs = tmp_path / "runs"
    env = {**os.environ, "JOURNEY_RUNS": str(runs), "JOURNEY_NO_PROGRESS": "1"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([str(Path(sys.executable).parent / "journey"), "run", "preset=smoke", "run=smoke"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    stages = {p.parent.name: json.loads(p.read_text()) for p in (runs / "smoke").glob("*/journey.json")}
    variants = {f"quantize-{v}" for v in ("int8", "int4", "gguf-f16", "gguf-q8_0", "gguf-q4_0")}
    assert set(stages) == {"tokenizer", "pretrain", "cpt", "sft", "prefs", "dpo", "quantize", "index", "eval",
                           "interpret"} | variants
    assert set(stages) - variants == set(DEFAULT_JOURNEY)
    for name in DEFAULT_JOURNEY:  # each stage registered the kind of artifact the stage table says it produces
        assert stages[name]["kind"] == BY_NAME[name].produces, name
    assert stages["cpt"]["parents"] == ["smoke/tokenizer", "smoke/pretrain"]
    assert stages["sft"]["parents"] == ["smoke/cpt"]
    assert stages["prefs"]["parents"] == ["smoke/sft"]
    assert stages["dpo"]["parents"] == ["smoke/sft", "smoke/prefs"]
    for stage in ("pretrain", "cpt"):
        m = stages[stage]["metrics"]
        assert m["val_loss"] < m["initial_val_loss"], (stage, m)
    sft = stages["sft"]["metrics"]
    assert sft["eval_loss"] < sft["first_eval_loss"], sft
    assert sft["n_replay_docs"] > 0  # the preset replays pretraining text in the chat mix
    assert stages["prefs"]["metrics"]["train_pairs"] > 0
    assert (runs / "smoke" / "dpo" / "safety_helpfulness.md").exists()
    summary = (runs / "smoke" / "summary.md").read_text()
    assert "smoke/dpo" in summary and "└─ smoke/pretrain" in summary

    # Quantized variants: each an artifact of the DPO model, run and measured side by side.
    for v in variants:
        assert stages[v]["parents"] == ["smoke/dpo"], v
        assert 0.5 < stages[v]["metrics"]["top1_agreement"] <= 1.0, (v, stages[v]["metrics"])
        assert stages[v]["metrics"]["decode_tokens_per_s"] > 0
    assert stages["quantize"]["parents"][0] == "smoke/dpo"
    report = (runs / "smoke" / "quantize" / "quantize.md").read_text()
    assert "| hf-generate-fp32 |" in report and "| gguf-q4_0 | llama.cpp |" in report and "Prefill vs decode" in report
    sizes = {v: stages[v]["metrics"]["bytes"] for v in variants}
    assert sizes["quantize-gguf-q4_0"] < sizes["quantize-gguf-q8_0"] < sizes["quantize-gguf-f16"]

    # The scorecard: every model artifact on the same tasks, each compared with its parent.
    assert stages["eval"]["kind"] == "report"
    models = ["smoke/pretrain", "smoke/cpt", "smoke/sft", "smoke/dpo", "smoke/quantize-int8", "smoke/quantize-int4"]
    assert stages["eval"]["parents"] == models  # the INT8/INT4 variants too, run by our engine
    card = json.loads((runs / "smoke" / "eval" / "scorecard.json").read_text())
    assert card["parents"] == {"smoke/pretrain": None, "smoke/cpt": "smoke/pretrain", "smoke/sft": "smoke/cpt",
                               "smoke/dpo": "smoke/sft", "smoke/quantize-int8": "smoke/dpo",
                               "smoke/quantize-int4": "smoke/dpo"}
    for metric in ("perplexity/general_bpb", "perplexity/domain_bpb", "instructions/exact_match",
                   "chat_format/format_ok", "tool_use/valid_call", "safety/refusal_rate_harmful",
                   "journey_docs_cloze/acc", "journey_facts_mc/acc"):
        assert all(isinstance(card["metrics"][metric][a], float) for a in card["artifacts"]), metric
    cpt_bpb = card["metrics"]["perplexity/domain_bpb"]
    assert cpt_bpb["smoke/cpt"] < cpt_bpb["smoke/pretrain"]  # continued pretraining on code helps on code
    assert card["metrics"]["rag/hit_rate_at_4"]["smoke/sft"] > 0.5  # the run's index finds the docs it holds
    assert stages["index"]["kind"] == "index" and stages["index"]["metrics"]["points"] > 0
    assert (runs / "smoke" / "eval" / "scorecard.png").stat().st_size > 0
    assert "| metric | pretrain | cpt | sft | dpo | quantize-int8 | quantize-int4 |" in summary

    # Interpretability: attention grids, induction heads over pretraining snapshots, stage diffs.
    assert stages["interpret"]["kind"] == "report"
    interp = (runs / "smoke" / "interpret" / "interpret.md").read_text()
    assert "## Induction and previous-token heads" in interp and "## What each stage changed" in interp
    assert (runs / "smoke" / "interpret" / "attention" / "dpo" / "grid.png").stat().st_size > 0
    assert "No training snapshots" not in interp  # the phase-change plot read the pretraining snapshots

    # The report: one self-contained page made from the registry, its path printed at the end.
    report = runs / "smoke" / "report" / "index.html"
    assert f"report:  {report}" in proc.stdout
    assert report.stat().st_size > 0 and (runs / "smoke" / "report" / "report.md").exists()

    # A second run of the same command finds every stage up to date and runs nothing.
    made = {name: stage["created_at"] for name, stage in stages.items()}
    again = subprocess.run([str(Path(sys.executable).parent / "journey"), "run", "preset=smoke", "run=smoke"],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
    assert "0 stage(s) run (none: all up to date)" in again.stdout
    assert {p.parent.name: json.loads(p.read_text())["created_at"]
            for p in (runs / "smoke").glob("*/journey.json")} == made

    listing = subprocess.run([str(Path(sys.executable).parent / "journey"), "artifacts", "smoke"], cwd=REPO,
                             env=env, capture_output=True, text=True, timeout=120)
    assert "└─ smoke/cpt" in listing.stdout


@pytest.mark.e2e
@pytest.mark.parametrize("args, message", [
    (["run", "preset=nope"], "unknown tokenizer preset 'nope'"),
    (["run", "stages=[tokenizer,sft9]"], "unknown stage 'sft9'"),
    (["pretrain", "--config", "tiny", "train.lr=fast"], "train.lr: expected a number, got 'fast'"),
    (["pretrain", "--config", "tiny", "optim.lr=0.1"], "config key optim was renamed: use train instead"),
    (["pretrain", "--config", "tiny", "run=nowhere"], "no artifact named 'tokenizer'"),
    (["import", "/nonexistent/ckpt.pt"], "checkpoint /nonexistent/ckpt.pt not found"),
    (["eval", "all", "tasks=perplexity,hellaswagg"], "unknown eval task 'hellaswagg'"),
    (["eval", "all", "tasks=hellaswag"], "need data_dir="),
])
def test_cli_bad_input_is_one_clear_line(tmp_path, args, message):
    env = {**os.environ, "JOURNEY_RUNS": str(tmp_path / "runs")}
    proc = subprocess.run([str(Path(sys.executable).parent / "journey"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
