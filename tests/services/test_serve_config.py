"""``services.serve_config``: a Serve config naming what the graph does not have fails with a clear message."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from services.serve_config import main, validate_serve_config
from shared.registry import Registry

CONFIG = Path(__file__).resolve().parents[2] / "services" / "serve_config.yaml"


@pytest.fixture()
def config() -> dict:
    return copy.deepcopy(yaml.safe_load(CONFIG.read_text()))


def _app(cfg: dict) -> dict:
    return cfg["applications"][0]


def test_the_repositorys_serve_config_is_valid():
    assert validate_serve_config(CONFIG) == []
    assert main([str(CONFIG)]) == 0


def test_an_unknown_deployment_is_named_with_the_known_ones(config):
    _app(config)["deployments"][0]["name"] = "Generater"
    [problem] = validate_serve_config(config)
    assert "unknown deployment 'Generater'" in problem and "Generator" in problem and "ToolExecutor" in problem


def test_unknown_args_and_bad_values_are_errors(config):
    _app(config)["args"]["modle"] = "x"
    assert "unknown args ['modle']" in validate_serve_config(config)[0]
    del _app(config)["args"]["modle"]
    _app(config)["args"]["rag"] = "sometimes"
    assert "rag must be auto, true or false" in validate_serve_config(config)[0]
    _app(config)["args"]["rag"] = "auto"
    _app(config)["args"]["gateway"]["max_inflite"] = 3
    assert "bad args" in validate_serve_config(config)[0]


def test_keys_serve_would_ignore_silently_are_errors(config):
    _app(config)["deployments"][0]["num_replica"] = 2
    _app(config)["deployments"][1]["ray_actor_options"]["num_cpu"] = 1
    config["http_option"] = {}
    problems = "\n".join(validate_serve_config(config))
    for key in ("num_replica", "num_cpu", "http_option"):
        assert f"unknown key {key!r}" in problems


def test_schema_errors_and_foreign_apps_are_reported(config):
    _app(config)["deployments"][0]["num_replicas"] = -1
    config["applications"].append({"name": "other", "import_path": "mymod:app", "route_prefix": "/other"})
    problems = "\n".join(validate_serve_config(config))
    assert "num_replicas" in problems and "greater than 0" in problems
    assert "import_path 'mymod:app' is not the serving graph" in problems


def test_named_artifacts_must_exist_in_runs_dir(config, tmp_path):
    registry = Registry(tmp_path)
    registry.stage_dir("r1", "sft")
    registry.register("r1", "sft", "model")
    _app(config)["args"].update(run="r1", model="r1/sft", rag="false")
    assert validate_serve_config(config, runs_dir=tmp_path) == []
    _app(config)["args"].update(model="r1/dpo", rag="true")
    problems = "\n".join(validate_serve_config(config, runs_dir=tmp_path))
    assert "model: no artifact named 'r1/dpo'" in problems and "r1/sft" in problems
    assert "index: no index artifact" in problems and "journey index" in problems
    _app(config)["args"].update(run="r2", model=None, rag="auto")
    assert "run 'r2' has no artifacts" in validate_serve_config(config, runs_dir=tmp_path)[0]
    assert "does not exist" in validate_serve_config(config, runs_dir=tmp_path / "nope")[0]


def test_the_cli_exits_1_and_prints_each_problem(tmp_path, capsys):
    bad = tmp_path / "serve.yaml"
    bad.write_text("applications:\n  - name: journey\n    import_path: services.app:build_app\n"
                   "    deployments: [{name: Nope}]\n")
    assert main([str(bad)]) == 1
    assert "unknown deployment 'Nope'" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.yaml")]) == 1
    assert "no such file" in capsys.readouterr().err
