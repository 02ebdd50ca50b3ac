"""The stage table (``shared.stages``) against every way into a stage.

Adding a stage is one table entry plus its ``ray_jobs/<entry>.py``: these tests fail when
``journey --help``, ``journey submit``, ``journey run`` or the entry modules miss a stage of the
table, or list one it does not have.
"""
from __future__ import annotations

import dataclasses
import importlib
import subprocess
import sys

import pytest

from ray_jobs import cli, journey, submit
from shared import stages
from shared.config import CONFIGS_DIR, ConfigError, load_config, parse_overrides, read_yaml

RUNNABLE = [s for s in stages.STAGES if s.run is not None]


def test_the_table_names_each_stage_once_in_journey_order():
    names = [s.name for s in stages.STAGES]
    assert len(names) == len(set(names)) and list(stages.BY_NAME) == names
    assert journey.STAGES == stages.JOURNEY == tuple(s.name for s in stages.STAGES if s.in_journey)
    assert journey.DEFAULT_STAGES == stages.DEFAULT_JOURNEY
    assert set(stages.DEFAULT_JOURNEY) < set(stages.JOURNEY)
    # the journey's stages come first: a stage outside it never sits between two of them
    assert names[:len(stages.JOURNEY)] == list(stages.JOURNEY)
    for s in stages.STAGES:
        assert s.summary and s.produces and (s.run is not None or s.commands), s.name
        assert s.journey in ("default", "optional", "outside"), s.name


def test_what_a_stage_consumes_comes_before_it_and_is_what_its_presets_read():
    order = {name: i for i, name in enumerate(stages.JOURNEY)}
    for s in stages.STAGES:
        assert set(s.consumes) <= set(stages.BY_NAME), (s.name, s.consumes)
        if s.in_journey:
            assert all(order[c] < order[s.name] for c in s.consumes), f"{s.name} consumes a later stage"
        if not s.presets or not (CONFIGS_DIR / s.presets / "tiny.yaml").exists():
            continue
        preset = read_yaml(CONFIGS_DIR / s.presets / "tiny.yaml")
        named = [preset.get(k) for k in ("init_from", "tokenizer", "reward_model")]
        named += [preset["data"]] if isinstance(preset.get("data"), str) else []
        named += list(preset.get("models") or [])
        read = {n for n in named if isinstance(n, str) and n in stages.BY_NAME}
        assert read <= set(s.consumes), f"{s.name}'s tiny preset reads {sorted(read - set(s.consumes))}"


def test_journey_help_lists_every_stage_of_the_table(capsys):
    assert cli.main(["--help"]) == 0
    printed = capsys.readouterr().out
    for s in stages.STAGES:
        assert f"journey {s.name} {s.usage}" in printed and f"(ray_jobs.{s.entry})" in printed, s.name
    experiments = "|".join(stages.BY_NAME["experiment"].commands)
    assert experiments.startswith("vocab-size|lr-schedules|finetune-methods|")
    assert f"journey experiment {experiments} [--config P]" in printed
    assert "journey run " in printed and "journey submit STAGE" in printed


def test_journey_submit_takes_every_stage_of_the_table_and_nothing_else():
    assert submit.stage_names() == ["run", *stages.BY_NAME]
    for s in stages.STAGES:
        assert submit.resolve_stage(s.name) == s.entry
        assert submit.resolve_stage(s.entry) == s.entry  # the module name works too
        if s.presets:
            preset = sorted((CONFIGS_DIR / s.presets).glob("*.yaml"))[0].stem
            submit.check_config(s.entry, preset, submit.ROOT)
        else:
            with pytest.raises(ValueError, match="takes no --config"):
                submit.check_config(s.entry, "tiny", submit.ROOT)
    assert submit.resolve_stage("run") == "journey"
    with pytest.raises(ValueError, match="unknown stage 'cli'"):
        submit.resolve_stage("cli")


def test_every_entry_module_is_a_stage_of_the_table_and_the_reverse():
    assert set(submit.entry_points()) == {s.entry for s in stages.STAGES} | {"journey"}, \
        "ray_jobs/ and shared/stages.py disagree: add the table entry or the module"
    assert {p.name for p in CONFIGS_DIR.iterdir() if p.is_dir()} == {s.presets for s in stages.STAGES if s.presets}


@pytest.mark.parametrize("stage", stages.STAGES, ids=lambda s: s.name)
def test_each_entry_module_runs_its_table_stage(stage, capsys):
    """``python -m ray_jobs.<entry> --help``: the table's config, its keys listed (nothing runs)."""
    module = importlib.import_module(f"ray_jobs.{stage.entry}")
    try:
        code = module.main(["--help"])
    except SystemExit as exc:  # argparse's --help
        code = exc.code
    assert code == 0
    printed = capsys.readouterr().out
    if stage.commands:
        assert all(command in printed for command in stage.commands)
    else:
        assert f"python -m ray_jobs.{stage.entry}" in printed
        assert all(f"  {f.name} (" in printed for f in dataclasses.fields(stage.config)), stage.name


@pytest.mark.parametrize("stage", [s for s in stages.STAGES if s.presets], ids=lambda s: s.name)
def test_every_preset_loads_into_the_stage_config_and_names_the_stage(stage):
    for path in sorted((CONFIGS_DIR / stage.presets).glob("*.yaml")):
        cfg = load_config(stage.config, stage.presets, path.stem)
        if hasattr(cfg, "stage"):
            assert cfg.stage == stage.name, f"{path}: its artifact would be {cfg.stage!r}, not {stage.name!r}"


def test_journey_config_has_one_override_section_per_journey_stage():
    fields = [f.name for f in dataclasses.fields(journey.JourneyConfig)]
    assert fields == ["run", "preset", "stages", "runs_dir", "from_stage", "only", "init_from", "verbose", *stages.JOURNEY]
    jc = load_config(journey.JourneyConfig, "journey", None, base=parse_overrides(
        ["sft.train.max_steps=3", "pretrain.train.max_steps=7", "preset=smoke"]))
    assert jc.sft == {"train": {"max_steps": 3}} and jc.stages == list(stages.DEFAULT_JOURNEY)
    cfg = journey.stage_configs(jc, "r")["sft"]
    assert isinstance(cfg, stages.get("sft").config) and cfg.train.max_steps == 3 and cfg.run == "r"


@pytest.mark.parametrize("overrides, message", [
    (["sfft.train.max_steps=3"], "unknown config key sfft; did you mean sft?"),
    (["stages=[tokenizer,sft9]"], "unknown stage 'sft9'; did you mean 'sft'?"),
    (["stages=[tokenizer,finetune]"], "unknown stage 'finetune'"),  # a stage, but not one of the journey's
])
def test_journey_run_refuses_unknown_stages(overrides, message, capsys):
    assert journey.main(overrides) == 2
    assert message in capsys.readouterr().err


def test_journey_run_and_journey_cpt_refuse_cpt_without_init_from_alike(tmp_path, capsys):
    """The check lives in CPTConfig.validate, so both ways into the stage make it, before anything runs."""
    runs = tmp_path / "runs"
    assert journey.main(["preset=smoke", "run=r", f"runs_dir={runs}", "cpt.init_from=null"]) == 2
    from_run = capsys.readouterr().err
    assert cli.main(["cpt", "--config", "smoke", "run=r", f"runs_dir={runs}", "init_from=null"]) == 2
    from_cpt = capsys.readouterr().err
    assert from_run == from_cpt
    assert from_run.startswith("journey: error: continued pretraining needs init_from=<artifact>")
    assert not runs.exists()  # not even the tokenizer ran
    with pytest.raises(ConfigError, match="continued pretraining needs init_from"):
        journey.stage_config("cpt", "tiny", "r", {"init_from": None})


def test_help_and_the_table_import_no_heavy_library():
    """``journey --help`` and the table stay fast: no torch, transformers, Ray or TRL behind them."""
    code = ("import sys\nfrom ray_jobs import cli\nfrom shared import stages\ncli.usage()\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'ray', 'trl', "
            "'services'}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    code = ("import sys\nimport shared.stages\n"
            "print(sorted(m for m in sys.modules if m.startswith(('ray_jobs', 'services'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", "shared.stages is the library's: it never imports ray_jobs or services"
