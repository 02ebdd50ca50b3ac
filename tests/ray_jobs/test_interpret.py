"""The interpret stage on a run of toy models, and the attention / induction / diff commands."""
from __future__ import annotations

import json

import pytest

from ray_jobs import cli
from ray_jobs.interpret import main
from shared.interp.toy import char_tokenizer, plant_induction, random_model
from shared.model.hf import save_hf_checkpoint
from shared.registry import Registry

SMALL = ["induction_len=20", "prompt=abc abc", "prompts=[hello world]", "chat_prompts=[hi]"]


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """Run ``r``: pretrain (planted induction, with a random step-0 snapshot) -> sft (random) -> dpo (planted)."""
    runs = tmp_path_factory.mktemp("runs")
    reg = Registry(runs)
    tok = char_tokenizer(reg.stage_dir("r", "tokenizer"))
    reg.register("r", "tokenizer", "tokenizer")
    parent = "r/tokenizer"
    for stage, model in (("pretrain", plant_induction()), ("sft", random_model()), ("dpo", plant_induction(1.5))):
        out = reg.stage_dir("r", stage)
        save_hf_checkpoint(model, out, tokenizer_dir=tok)
        if stage == "pretrain":
            save_hf_checkpoint(random_model(2), out / "snapshots" / "step_000000")
        reg.register("r", stage, "hf-model", parents=[parent], metrics={"steps": 30})
        parent = f"r/{stage}"
    return runs


def test_stage_writes_the_report_artifact(toy_run, capsys):
    assert main(["--config", "smoke", "run=r", f"runs_dir={toy_run}", *SMALL]) == 0
    art = Registry(toy_run).resolve("r/interpret")
    assert art.kind == "report" and art.parents == ["r/pretrain", "r/sft", "r/dpo"]
    m = art.metrics
    assert m["pretrain/max_induction_score"] > 0.8 and m["sft/max_induction_score"] < 0.2
    assert m["induction_formed_at_step"] == 30 and m["pretrain/induction_heads"] == 1
    assert m["sft->dpo/final_cosine"] < 0.9  # diffs follow the lineage: pretrain -> sft -> dpo
    md = (art.dir / "interpret.md").read_text()
    for section in ("## Attention patterns", "## Induction and previous-token heads", "## When induction heads form",
                    "## What each stage changed", "## Logit lens", "Not in run r: cpt", "| pretrain → sft |"):
        assert section in md, section
    for png in ("attention/dpo/grid.png", "attention/dpo/layer_1.png", "induction_pretrain.png", "phase_change.png",
                "diff_residual.png", "diff_heads.png", "diff_weights.png", "logit_lens.png"):
        assert (art.dir / png).stat().st_size > 2000, png
    assert json.loads((art.dir / "interpret.json").read_text())["missing"] == ["cpt"]


def test_commands(toy_run, tmp_path, capsys):
    common = [f"runs_dir={toy_run}", "run=r"]
    assert cli.main(["interpret", "attention", "pretrain", "prompt=abc abc", "layer=1", "head=0",
                     f"out={tmp_path / 'a'}", *common]) == 0
    assert (tmp_path / "a" / "head_1_0.png").exists() and (tmp_path / "a" / "attention.html").exists()
    capsys.readouterr()
    assert main(["induction", "r/pretrain", "induction_len=20", f"out={tmp_path / 'i'}", *common]) == 0
    printed = capsys.readouterr().out
    result = json.loads(printed[printed.index("{"):])
    assert result["induction_heads"] == ["L1H0"] and result["formed_at_step"] == 30
    assert main(["diff", "pretrain", "dpo", *SMALL, *common]) == 0
    assert (toy_run / "_interp" / "diff-pretrain-dpo" / "diff.md").read_text().startswith("## What each stage changed")


@pytest.mark.parametrize("argv, message", [
    (["attention", "pretrain", "layer=5"], "layer 5 is out of range"),
    (["attention", "pretrain", "prompt=" + "a" * 60], "context of 48"),
    (["diff", "pretrain"], "takes 2 artifact name"),
    (["attention", "nope"], "no artifact named 'nope'"),
    (["--config", "smoke", "models=[nope]"], "none of the models"),
])
def test_bad_input_is_one_line(toy_run, capsys, argv, message):
    assert main([*argv, f"runs_dir={toy_run}", "run=r", f"out={toy_run / '_interp' / 'bad'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("journey: error:") and message in err and "Traceback" not in err
