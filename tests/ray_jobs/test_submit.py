"""``journey submit``: the ``ray job submit`` command it builds, and the errors it raises before submitting."""
from __future__ import annotations

import json
import shlex

import pytest

from ray_jobs import cli, submit


def _dry_run(capsys, *argv) -> list[str]:
    assert cli.main(["submit", *argv, "--dry-run"]) == 0
    return shlex.split(capsys.readouterr().out.strip())


def test_dry_run_is_ray_job_submit_of_the_stage_module(capsys, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cmd = _dry_run(capsys, "pretrain", "--config", "tiny", "run=demo", "train.max_steps=5")
    assert cmd[0].endswith("ray") and cmd[1:3] == ["job", "submit"]
    assert cmd[cmd.index("--address") + 1] == submit.DEFAULT_ADDRESS
    assert cmd[cmd.index("--working-dir") + 1] == str(submit.ROOT)
    env = json.loads(cmd[cmd.index("--runtime-env-json") + 1])
    assert {"runs/", ".venv/", ".git/", ".env"} <= set(env["excludes"])
    assert cmd[cmd.index("--submission-id") + 1].startswith("journey-pretrain-")
    assert cmd[cmd.index("--") + 1:] == ["python", "-m", "ray_jobs.pretrain", "--config", "tiny", "run=demo",
                                         "train.max_steps=5"]
    assert "--no-wait" not in cmd


def test_aliases_address_no_wait_and_runtime_env_merge(capsys, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "http://from-env:8265")
    cmd = _dry_run(capsys, "run", "preset=tiny", "run=x", "--no-wait", "--runtime-env-json",
                   '{"pip": ["rich"], "excludes": ["data/"], "env_vars": {"A": "1"}}')
    assert cmd[cmd.index("--address") + 1] == "http://from-env:8265" and "--no-wait" in cmd
    assert cmd[cmd.index("--") + 1:] == ["python", "-m", "ray_jobs.journey", "preset=tiny", "run=x"]
    env = json.loads(cmd[cmd.index("--runtime-env-json") + 1])
    assert env["pip"] == ["rich"] and "data/" in env["excludes"] and "runs/" in env["excludes"]
    assert env["env_vars"] == {"PYTHONUNBUFFERED": "1", "A": "1"}
    cmd = _dry_run(capsys, "eval", "all", "--config", "tiny", "--address", "http://head:8265")
    assert cmd[cmd.index("--address") + 1] == "http://head:8265"
    assert cmd[cmd.index("--") + 1:] == ["python", "-m", "ray_jobs.evaluate", "--config", "tiny", "all"]


@pytest.mark.parametrize("argv, message", [
    (["pretrian"], "unknown stage 'pretrian'; did you mean 'pretrain'? submit one of"),
    (["pretrain", "--config", "huge"], "no preset configs/pretrain/huge.yaml; presets: ["),
    (["pretrain", "--config", "/etc/passwd.yaml"], "not a file inside the working dir"),
    (["run", "--config", "tiny"], "takes no --config"),
    (["sft", "--runtime-env-json", "{pip"], "--runtime-env-json is not JSON"),
])
def test_bad_input_fails_before_submitting(argv, message, capsys):
    assert cli.main(["submit", *argv, "--dry-run"]) == 2
    assert message in capsys.readouterr().err


def test_every_stage_of_the_journey_can_be_submitted():
    from shared.stages import JOURNEY
    modules = {submit.resolve_stage(stage) for stage in JOURNEY}
    assert "evaluate" in modules and all((submit.ROOT / "ray_jobs" / f"{m}.py").is_file() for m in modules)
    assert "submit" not in submit.entry_points() and "cli" not in submit.entry_points()


def test_a_module_missing_from_the_working_dir_fails_before_submitting(tmp_path):
    (tmp_path / "ray_jobs").mkdir()
    with pytest.raises(ValueError, match="has no ray_jobs/evaluate.py"):
        submit.resolve_stage("eval", tmp_path)


def test_the_token_turns_token_auth_on():
    assert submit.submit_env({"RAY_AUTH_TOKEN": "t"})["RAY_AUTH_MODE"] == "token"
    assert submit.submit_env({"RAY_AUTH_TOKEN": "t", "RAY_AUTH_MODE": "disabled"})["RAY_AUTH_MODE"] == "disabled"
    assert "RAY_AUTH_MODE" not in submit.submit_env({})
