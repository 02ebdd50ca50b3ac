"""The run report from a small registry: every section, every number, the colour table, the lineage
picture, and a run with stages missing or a file broken still gets a report that says so."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from shared.registry import ArtifactNotFound, Registry
from shared.report import collect, write_report
from shared.report.lineage_svg import lineage_svg
from shared.report.table import tone
from tests.shared.report.small_run import RUN, SCORECARD, build

SECTIONS = ("Headline", "Lineage", "Stages", "What each stage changed", "Quantization and serving speed",
            "Environment and wall time")


def test_every_section_and_number_appears_in_both_files(small_run):
    path = write_report(small_run, RUN)
    assert path == small_run.root / RUN / "report" / "index.html"
    page, md = path.read_text(), (path.parent / "report.md").read_text()
    for title in SECTIONS:
        assert f">{title}</h2>" in page and f"## {title}" in md
    for sentence in (  # each stage's sentence, its figures from the manifests above
            "lowered held-out loss from 8.325 to 5.096 nats (2.029 bits per byte) in 600 steps over 1.23 M tokens, "
            "14.5 k tokens/s",
            "(5433 examples, 1200 steps): held-out instruction exact match 0.0% → 19.2%; replies in the chat format "
            "0% → 100%; eval loss 7.670 → 0.660",
            "held-out exact match 19.2% (sft) → 17.7%; its replies against sft's: 9 wins, 274 ties, 17 losses, "
            "win rate 48.7%; harmful prompts refused 50% → 75%; helpful prompts answered 100% → 90%; implicit reward "
            "ranks 56.2% of held-out pairs right",
            "measured 2 variants of `r/dpo`: int8 decodes fastest at 14,400 tokens/s (12.0× HF generate()'s 1200); "
            "int8 is the smallest at 2.60\u00a0MB (2.0× smaller than FP32), with perplexity +0.656 against FP32 and "
            "the same top-1 token as FP32 98.8% of the time",
            "put 4 models on 3 metrics; dpo is better than pretrain on 2 of them, worse on 1 and level on 0",
            "the strongest induction head is L1H2 of pretrain at 0.420 (20.0× chance); induction heads formed at "
            "step 120 of pretrain; pretrain → sft changed the model most (last-layer cosine 0.625, mean weight "
            "change 0.312)",
            "learned a 4096-token vocabulary (7 special tokens)"):
        assert sentence in md, sentence
        assert sentence.replace("`r/dpo`", "<code>r/dpo</code>") in page.replace("&#x27;", "'"), sentence
    # the headline tiles and the total wall time: 4 + 113 + 338 + 63 + 35 + 49 + 14 s
    for tile in ("8.325 → 5.096", "0.0% → 19.2%", "48.7%", "int8: 14,400 tok/s", "better on 2 of 3 metrics",
                 "formed at step 120", "10 min 16 s over 7 stages"):
        assert tile in md and tile in page, tile
    # per stage: data from the config, timings, its curve, its headline numbers
    assert "data `builtin:python-docs (first 3.00\u00a0MB)`" in md
    assert "It took 1 min 53 s (data 13 s, train 1 min 40 s)." in md
    assert "![pretrain: loss curve](pretrain-loss_curve.png)" in md
    assert "| val bpb | 2.029 |" in md and "| n_params | 1,334,016 |" in md
    # quantization table and environment
    # size, smaller than FP32, TTFT ms, prefill, decode, vs HF, 1 and 4 requests, Δppl, top-1 (no exponents)
    assert "| int8 | engine | 2.60\u00a0MB | 2.00× | 1 | 30,000 | 14,400 | 12.00× | 12,000 | 22,000 | +0.656 | 98.8% |" \
        in md
    assert "timed with quantize" in md
    # the DPO stage's hard safety set is a row of its before/after table
    assert "| hard set: indirect harmful prompts refused | 0.2 | 0.22 (+0.02) ▲ |" in md
    env = small_run.artifacts(RUN)[0].environment
    assert f"| Python | {env['python']} |" in md and f"| CPUs | {env['cpu_count']} |" in md


def test_the_scorecard_is_one_colour_table_against_each_parent(small_run):
    page = write_report(small_run, RUN).read_text()
    by_cell = {title: cls for cls, title in re.findall(r'<td class="([a-z-]+)" title="([^"]+)">', page)}
    assert by_cell["perplexity/general_bpb: r/sft"] == "worse"  # bpb went up: lower is better
    assert by_cell["perplexity/general_bpb: r/dpo"] == "better"
    assert by_cell["perplexity/general_bpb: r/quantize-int8"] == "same"
    assert by_cell["instructions/exact_match: r/sft"] == "better"
    assert by_cell["journey_facts_mc/acc: r/dpo"] == "worse-faint"  # -0.05 within 1.96 * hypot(0.03, 0.03)
    assert by_cell["journey_facts_mc/acc: r/sft"] == "better"
    assert "perplexity/general_bpb: r/pretrain" not in by_cell  # the first model has nothing to compare with
    assert "scorecard.png" not in (small_run.root / RUN / "report" / "report.md").read_text()  # no 28 bar charts
    md = (small_run.root / RUN / "report" / "report.md").read_text()
    assert "| perplexity | general_bpb ↓ | 2.25 | 2.5 (+0.25) ▼ | 2.375 (−0.125) ▲ | 2.375 (+0) |" in md


def test_tone_follows_the_direction_and_the_noise():
    card = {**SCORECARD, "deltas": {**SCORECARD["deltas"]}}
    assert tone(card, "journey_facts_mc/acc", "r/pretrain") is None
    assert tone(card, "journey_facts_mc/acc", "r/sft") == "better"
    card["deltas"] = {**card["deltas"], "journey_facts_mc/acc": {"r/dpo": -0.09}}
    assert tone(card, "journey_facts_mc/acc", "r/dpo") == "worse"  # beyond 1.96 standard errors


def test_the_lineage_picture_has_a_box_per_artifact_and_an_arrow_per_parent(small_run):
    data = collect(small_run, RUN)
    svg = lineage_svg(data)
    assert [v.stage for v in data.stages][:4] == ["tokenizer", "pretrain", "sft", "dpo"]
    for view in data.stages:
        assert f"<title>{view.id} ({view.kind})</title>" in svg
        for parent in view.artifact.parents:
            assert f"<title>{parent} → {view.id}</title>" in svg
    assert svg.count("<rect") == len(data.stages)
    assert "val loss 5.096" in svg and "2.60\u00a0MB, Δppl +0.656" in svg and "4 models scored" in svg


def test_a_run_without_eval_quantize_and_interpret_says_what_is_missing(tmp_path):
    registry = build(tmp_path / "runs", with_eval=False, with_quantize=False)
    md = (write_report(registry, RUN).parent / "report.md").read_text()
    assert "No scorecard: run r has no `eval` artifact. Run `journey eval all run=r` to get it." in md
    assert "No quantization measured: run r has no `quantize` artifact. Run `journey quantize run=r` to get it." in md
    assert "No interpretability: run r has no `interpret` artifact. Run `journey interpret run=r` to get it." in md
    assert "`journey cpt run=r`" in md and "`journey index run=r`" in md  # default stages the run lacks
    assert "lowered held-out loss from 8.325 to 5.096" in md  # what is there is still reported


def test_an_unreadable_stage_file_is_named_not_fatal(small_run):
    (small_run.root / RUN / "eval" / "scorecard.json").write_text("{not json")
    md = (write_report(small_run, RUN).parent / "report.md").read_text()
    assert "scorecard.json could not be read" in md and "rerun its stage" in md
    assert "No scorecard" in md


def test_a_manifest_from_before_environments_still_reports(small_run):
    manifest = small_run.root / RUN / "tokenizer" / "journey.json"
    manifest.write_text(re.sub(r',\s*"environment": \{.*\}\s*\}\s*$', "\n}", manifest.read_text(), flags=re.S))
    assert Registry.load(manifest.parent).environment == {}
    md = (write_report(small_run, RUN).parent / "report.md").read_text()
    assert "Not recorded for tokenizer" in md


def test_rewriting_replaces_the_old_report_and_every_picture_is_beside_it(small_run):
    out = write_report(small_run, RUN).parent
    (out / "stale.png").write_bytes(b"old")
    write_report(small_run, RUN)
    assert not (out / "stale.png").exists()
    md = (out / "report.md").read_text()
    for name in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        assert (out / name).is_file(), name
    assert "lineage.svg" in md and (out / "lineage.svg").read_text().startswith("<svg")


def test_no_artifacts_is_a_clear_error(tmp_path):
    with pytest.raises(ArtifactNotFound, match=r"run 'nope' has no finished artifacts under .*journey run run=nope"):
        write_report(Registry(tmp_path), "nope")


def test_the_report_loads_no_torch():
    code = "import sys\nimport shared.report\nprint('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


def test_an_experiments_arms_are_a_table_with_its_plots(tmp_path):
    from tests.shared.report.small_run import _stage
    registry = build(tmp_path / "runs", with_eval=False, with_quantize=False)
    rows = [{"arm": "dense", "val_loss": 5.355, "dropped_pct": None},
            {"arm": "moe-top2", "val_loss": 5.267, "dropped_pct": 3.006}]
    _stage(registry, "experiment-moe", "experiment", metrics={"rows": rows}, pngs=["experiment-moe.png"])
    md = (write_report(registry, RUN).parent / "report.md").read_text()
    assert "| arm | val_loss | dropped_pct |" in md
    assert "| dense | 5.355 | – |" in md and "| moe-top2 | 5.267 | 3.006 |" in md
    assert "experiment-moe-experiment-moe.png" in md  # its picture, beside report.md
    assert "{'arm'" not in md  # the rows are not dumped as a metric
