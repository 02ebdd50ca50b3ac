"""``ray job submit`` and ``journey submit`` against a real ``ray start --head`` (token auth).

The tokenizer goes through plain ``ray job submit`` (what the RayJob submitters run), pretraining
through ``journey submit`` (the same, wrapped): its artifact must appear, and a job that fails must
make ``journey submit`` exit non-zero.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray(*args, env, timeout=300, check=True):
    proc = subprocess.run([str(BIN / "ray"), *args], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"ray {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def ray_head():
    temp = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = {**os.environ, "RAY_AUTH_MODE": "token", "PATH": f"{BIN}:{os.environ['PATH']}", "HOME": temp}
    env.pop("RAY_ADDRESS", None)
    _ray("get-auth-token", "--generate", env=env)
    port, dash, agent = _free_port(), _free_port(), _free_port()
    # The agent's own port too: its default (52365) is taken by any other Ray on the machine, and an agent
    # that cannot bind it runs without its HTTP service, so every job submission answers "No available agent".
    _ray("start", "--head", f"--port={port}", f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1",
         f"--dashboard-agent-listen-port={agent}",
         "--num-cpus=2", f"--temp-dir={temp}", "--include-dashboard=true", env=env)
    try:
        yield env, f"http://127.0.0.1:{dash}"
    finally:
        _stop_cluster(temp)
        shutil.rmtree(temp, ignore_errors=True)


def _stop_cluster(temp: str) -> None:
    """Kill only this head's processes (they all carry its temp dir in their command line).

    ``ray stop --force`` would kill every Ray instance on the machine, including the test session's
    own and anything a developer is running.
    """
    import psutil
    procs = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(temp in arg for arg in proc.info["cmdline"] or []):
                procs.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=10)
    for proc in alive:
        proc.kill()


def _journey_submit(env, *args) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "journey"), "submit", *args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.e2e
def test_pretrain_via_ray_job_submit(ray_head, tmp_path):
    env, address = ray_head
    runs = tmp_path / "runs"
    args = ("job", "submit", f"--address={address}", "--working-dir", ".", "--",
            "python", "-m", "ray_jobs.tokenizer", "--config", "configs/tokenizer/smoke.yaml",
            "run=submitted", f"runs_dir={runs}", "max_bytes_per_source=100000")
    # Right after `ray start` the head's job agent may not have registered yet and Ray asks to retry;
    # on a loaded 2-core machine that has taken over a minute.
    deadline = time.monotonic() + 240
    while True:
        proc = _ray(*args, env=env, timeout=600, check=False)
        if "No available agent" not in proc.stdout + proc.stderr or time.monotonic() > deadline:
            break
        time.sleep(5)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "succeeded" in proc.stdout.lower(), proc.stdout[-3000:]

    # journey submit: from another directory, with a preset name and the token from the environment only.
    token = (Path(env["HOME"]) / ".ray" / "auth_token").read_text().strip()
    submit_env = {**env, "RAY_AUTH_TOKEN": token, "HOME": str(tmp_path)}
    submit_env.pop("RAY_AUTH_MODE")
    proc = _journey_submit(submit_env, "pretrain", "--config", "smoke", "--address", address,
                           "run=submitted", f"runs_dir={runs}", "train.max_steps=20")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "succeeded" in proc.stdout.lower(), proc.stdout[-3000:]
    manifest = json.loads((runs / "submitted" / "pretrain" / "journey.json").read_text())
    assert manifest["parents"] == ["submitted/tokenizer"]
    assert manifest["metrics"]["val_loss"] < manifest["metrics"]["initial_val_loss"]
    assert (runs / "submitted" / "pretrain" / "model.safetensors").exists()

    # A job that fails on the cluster (the finished artifact is not replaced) fails the command too.
    proc = _journey_submit(submit_env, "pretrain", "--config", "smoke", "--address", address,
                           "run=submitted", f"runs_dir={runs}", "train.max_steps=20")
    assert proc.returncode != 0, proc.stdout[-3000:]
    assert "failed" in (proc.stdout + proc.stderr).lower()
