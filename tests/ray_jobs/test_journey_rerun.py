"""``journey run`` on a run that exists: what it skips, what it reruns and why (``plan_stages``).

The registry here is real (manifests written by ``Registry.register``) with the configs the smoke
preset resolves to, so "up to date" means exactly what a finished smoke run would record.
"""
from __future__ import annotations

import json
import os
import time

import pytest

from ray_jobs import journey
from shared.config import ConfigError, load_config, parse_overrides, to_dict
from shared.registry import Registry
from shared.stages import BY_NAME, DEFAULT_JOURNEY

RUN = "r"


def _journey_config(tmp_path, *overrides: str):
    return load_config(journey.JourneyConfig, "journey", None, base=parse_overrides(
        ["preset=smoke", f"run={RUN}", f"runs_dir={tmp_path}", *overrides]))


def _plans(tmp_path, *overrides: str) -> dict[str, tuple[str, str]]:
    jc = _journey_config(tmp_path, *overrides)
    configs = journey.stage_configs(jc, RUN)
    return {p.stage: (p.action, p.reason) for p in journey.plan_stages(Registry(tmp_path), jc, RUN, configs)}


def _finish(registry: Registry, stage: str, config) -> None:
    """Register ``stage`` as a finished run would: its config, and the stages it consumes as parents."""
    registry.stage_dir(RUN, stage, overwrite=True)
    parents = [c for c in BY_NAME[stage].consumes if (registry.root / RUN / c / "journey.json").exists()]
    registry.register(RUN, stage, BY_NAME[stage].produces, parents=parents, config=config)


@pytest.fixture
def finished(tmp_path):
    """A registry holding every default stage of the smoke journey, finished in order."""
    registry = Registry(tmp_path)
    configs = journey.stage_configs(_journey_config(tmp_path), RUN)
    for stage in DEFAULT_JOURNEY:
        _finish(registry, stage, configs[stage])
    return registry


def test_a_new_run_runs_every_stage(tmp_path):
    plans = _plans(tmp_path)
    assert list(plans) == list(DEFAULT_JOURNEY)
    assert set(plans.values()) == {("run", "not run yet")}


def test_a_finished_run_runs_nothing(finished, tmp_path):
    assert {action for action, _ in _plans(tmp_path).values()} == {"skip"}


def test_a_changed_config_reruns_that_stage_and_what_consumes_it(finished, tmp_path):
    plans = _plans(tmp_path, "sft.train.max_steps=7")
    assert plans["sft"][0] == "run" and "train.max_steps" in plans["sft"][1] and "-> 7" in plans["sft"][1]
    assert plans["prefs"] == ("run", "its input sft runs again")
    assert plans["dpo"][0] == "run" and plans["eval"][0] == "run" and plans["quantize"][0] == "run"
    for stage in ("tokenizer", "pretrain", "cpt", "index"):
        assert plans[stage][0] == "skip", stage


def test_a_stage_that_was_interrupted_runs_again_without_overwriting(tmp_path):
    registry = Registry(tmp_path)
    configs = journey.stage_configs(_journey_config(tmp_path), RUN)
    for stage in ("tokenizer", "pretrain", "cpt"):
        _finish(registry, stage, configs[stage])
    (tmp_path / RUN / "sft").mkdir()  # started, no journey.json: killed mid-training
    jc = _journey_config(tmp_path)
    configs = journey.stage_configs(jc, RUN)
    plans = {p.stage: p for p in journey.plan_stages(registry, jc, RUN, configs)}
    assert plans["sft"].reason == "interrupted before it finished"
    assert configs["sft"].overwrite is False  # an unfinished stage keeps its checkpoints to resume from
    assert plans["cpt"].action == "skip" and plans["prefs"].reason == "not run yet"


def test_a_rerun_of_a_finished_stage_overwrites_it(finished, tmp_path):
    jc = _journey_config(tmp_path, "dpo.beta=0.5")
    configs = journey.stage_configs(jc, RUN)
    journey.plan_stages(finished, jc, RUN, configs)
    assert configs["dpo"].overwrite is True and configs["sft"].overwrite is False


def test_a_parent_remade_after_its_child_makes_the_child_stale(finished, tmp_path):
    configs = journey.stage_configs(_journey_config(tmp_path), RUN)
    time.sleep(0.01)
    _finish(finished, "pretrain", configs["pretrain"])  # e.g. `journey pretrain ... overwrite=true` by hand
    plans = _plans(tmp_path)
    assert plans["pretrain"][0] == "skip"
    assert plans["cpt"] == ("run", f"its input {RUN}/pretrain was remade after it")


def test_a_local_data_file_changed_after_the_stage_makes_it_stale(tmp_path):
    data = tmp_path / "corpus.txt"
    data.write_text("some text " * 100)
    registry = Registry(tmp_path)
    source = f"tokenizer.sources=[file:{data}]"
    configs = journey.stage_configs(_journey_config(tmp_path, source), RUN)
    _finish(registry, "tokenizer", configs["tokenizer"])
    assert _plans(tmp_path, source)["tokenizer"][0] == "skip"
    future = time.time() + 5
    os.utime(data, (future, future))
    action, reason = _plans(tmp_path, source)["tokenizer"]
    assert action == "run" and reason == f"data file {data} changed after it was made"


def test_a_changed_local_copy_of_a_hub_dataset_makes_the_stage_stale(finished, tmp_path):
    copy = tmp_path / "dolly.jsonl"
    copy.write_text('{"instruction": "q", "context": "", "response": "a", "category": "qa"}\n')
    source = f"sft.data=hf:databricks/databricks-dolly-15k@{copy}"
    configs = journey.stage_configs(_journey_config(tmp_path, source), RUN)
    _finish(finished, "sft", configs["sft"])
    assert _plans(tmp_path, source)["sft"][0] == "skip"
    future = time.time() + 5
    os.utime(copy, (future, future))
    assert _plans(tmp_path, source)["sft"] == ("run", f"data file {copy} changed after it was made")


def test_only_and_from_rerun_what_they_name_even_when_up_to_date(finished, tmp_path):
    only = _plans(tmp_path, "only=[eval,interpret]")
    assert only == {"eval": ("run", "asked for (only=['eval', 'interpret'])"),
                    "interpret": ("run", "asked for (only=['eval', 'interpret'])")}
    start = _plans(tmp_path, "from_stage=quantize")
    assert list(start) == list(DEFAULT_JOURNEY[DEFAULT_JOURNEY.index("quantize"):])
    assert all(action == "run" for action, _ in start.values())


@pytest.mark.parametrize("overrides, message", [
    (["from=sfft"], "unknown stage 'sfft'; did you mean 'sft'?"),
    (["from=rl"], "from= names ['rl'], which this journey's stages="),
    (["only=[eval]", "from=sft"], "give from= or only=, not both"),
])
def test_bad_from_and_only_are_one_line(overrides, message, tmp_path, capsys):
    assert journey.main(["preset=smoke", f"runs_dir={tmp_path}", *overrides]) == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_from_is_the_from_stage_key():
    with pytest.raises(ConfigError, match="unknown stage"):
        load_config(journey.JourneyConfig, "journey", None, base={"from_stage": "nope"})


def test_init_from_replaces_pretraining_with_your_model(tmp_path):
    jc = _journey_config(tmp_path, "init_from=imported/import")
    assert jc.stages == [s for s in DEFAULT_JOURNEY if s not in ("tokenizer", "pretrain")]
    cpt = journey.stage_configs(jc, RUN)["cpt"]
    assert cpt.init_from == "imported/import" and cpt.tokenizer == "imported/import"
    given = journey.stage_configs(_journey_config(tmp_path, "init_from=imported/import", "cpt.tokenizer=tokenizer"),
                                  RUN)["cpt"]
    assert given.tokenizer == "tokenizer"  # what is given for the stage wins


def test_a_config_field_added_since_at_its_default_is_no_change(finished, tmp_path):
    """Code that grows a config class (a new option, default unchanged behaviour) keeps finished stages."""
    manifest = tmp_path / RUN / "cpt" / "journey.json"
    stored = json.loads(manifest.read_text())
    del stored["config"]["eval_text_field"]  # as written before the field existed
    manifest.write_text(json.dumps(stored))
    assert _plans(tmp_path)["cpt"][0] == "skip"
    action, reason = _plans(tmp_path, "cpt.eval_text_field=text")["cpt"]
    assert action == "run" and reason == "config changed: eval_text_field: '<absent>' -> 'text'"
