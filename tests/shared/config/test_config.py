from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from shared.config import CONFIGS_DIR, ConfigError, from_dict, help_field, load_config, parse_overrides, to_dict


@dataclass
class Inner:
    lr: float = help_field(1e-3, "learning rate")
    steps: int = help_field(10, "steps")


@dataclass
class Outer:
    name: str = help_field("x", "a name")
    mode: Literal["a", "b"] = help_field("a", "a mode")
    cap: Optional[int] = help_field(None, "optional cap")
    tags: list[str] = help_field([], "tags")
    inner: Inner = field(default_factory=Inner)


def test_overrides_nest_and_parse_yaml_scalars():
    assert parse_overrides(["inner.lr=3e-4", "tags=[a,b]", "name=run1", "cap=null"]) == {
        "inner": {"lr": 3e-4}, "tags": ["a", "b"], "name": "run1", "cap": None}


def test_from_dict_coerces_lossless_types():
    cfg = from_dict(Outer, {"inner": {"lr": 1, "steps": 5.0}, "cap": "1e6", "tags": "x, y"})
    assert cfg.inner.lr == 1.0 and isinstance(cfg.inner.lr, float)
    assert cfg.inner.steps == 5 and cfg.cap == 1_000_000 and cfg.tags == ["x", "y"]


@pytest.mark.parametrize("data, message", [
    ({"inner": {"lrr": 1}}, "unknown config key inner.lrr; did you mean inner.lr?"),
    ({"mode": "c"}, "mode: 'c' is not one of ['a', 'b']"),
    ({"inner": {"steps": 2.5}}, "inner.steps: expected an integer"),
    ({"inner": {"steps": True}}, "inner.steps: expected an integer"),
    ({"inner": 3}, "inner: expected a mapping of Inner fields"),
])
def test_bad_values_name_the_key(data, message):
    with pytest.raises(ConfigError) as err:
        from_dict(Outer, data)
    assert message in str(err.value)


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\ninner: {lr: 1\n")
    with pytest.raises(ConfigError, match=r"malformed YAML in .*bad.yaml line \d+"):
        load_config(Outer, "pretrain", str(path))


def test_unknown_preset_lists_known_ones():
    with pytest.raises(ConfigError, match=r"unknown pretrain preset 'nope'; choose one of \[.*'tiny'"):
        load_config(Outer, "pretrain", "nope")


def test_resolved_config_round_trips():
    cfg = from_dict(Outer, {"name": "n", "inner": {"lr": 0.5}})
    assert from_dict(Outer, to_dict(cfg)) == cfg


def _job_classes():
    from shared.stages import STAGES  # each stage's presets dir and config class
    return {s.presets: s.config for s in STAGES if s.presets}


def test_every_preset_in_configs_validates():
    classes = _job_classes()
    presets = sorted(CONFIGS_DIR.glob("*/*.yaml"))
    assert presets, "no presets found"
    for path in presets:
        stage = path.parent.name
        assert stage in classes, f"{path}: no config class registered for stage {stage!r} in this test"
        assert path.read_text().startswith("# "), f"{path} must start with a comment giving its command"
        load_config(classes[stage], stage, path.stem)
