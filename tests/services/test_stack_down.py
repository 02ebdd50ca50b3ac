"""``journey down`` stops what ``journey up`` started, all of it, and returns only once it is gone; the
``journey`` serving commands answer ``--help``, missing ``redis-server`` and Ctrl-C without a traceback.

Two real heads (``ray start --head``) on free ports: one stands for the stack's, one for a cluster the
user runs beside it. ``ray stop``, which ``down`` used to call, would end both. Its agents
(``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``, which rename themselves) used to outlive ``down``.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from ray._private.utils import read_ray_address

from services.stack import SUPERVISOR, alive, down, main, ray_head_pids, stop_ray_head
from shared.bus.redis_server import free_port

REPO = Path(__file__).resolve().parents[2]

RAY = str(Path(sys.executable).parent / "ray")


def start_head(port: int) -> None:
    # Every port a second head would otherwise take from the first one's defaults is set apart.
    ports = {flag: free_port() for flag in ("--ray-client-server-port", "--dashboard-agent-listen-port",
                                             "--dashboard-agent-grpc-port", "--runtime-env-agent-port",
                                             "--metrics-export-port")}
    cmd = [RAY, "start", "--head", "--port", str(port), "--num-cpus", "1", "--disable-usage-stats",
           "--include-dashboard=false"] + [x for flag, p in ports.items() for x in (flag, str(p))]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)


def test_stop_ray_head_ends_that_head_only():
    ours, theirs = free_port(), free_port()
    try:
        start_head(theirs)
        start_head(ours)
        assert read_ray_address().endswith(f":{ours}")  # `ray start` made ours the machine's current cluster
        ours_before, theirs_before = ray_head_pids(ours), ray_head_pids(theirs)
        assert len(ours_before) >= 2 and len(theirs_before) >= 2  # at least the GCS server and the raylet
        assert not set(ours_before) & set(theirs_before)
        titles = [Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0] for pid in ours_before]
        assert b"ray::RuntimeEnvAgent" in titles  # the raylet's renamed children are part of the head

        assert stop_ray_head(ours) == len(ours_before)
        assert alive(ours_before) == []  # every one gone when it returns, not a minute later
        assert ray_head_pids(ours) == []
        assert sorted(ray_head_pids(theirs)) == sorted(theirs_before)  # the other cluster runs on, untouched
        # The record of the stopped head is gone, so a later plain ray.init() does not dial a dead address.
        assert read_ray_address() is None
    finally:
        stop_ray_head(ours)
        stop_ray_head(theirs)
    assert ray_head_pids(theirs) == []


def _session(code: str) -> subprocess.Popen:
    """A Python process in a session of its own (as `up` starts the web chat), running ``code``."""
    return subprocess.Popen([sys.executable, "-c", code], start_new_session=True)


def test_down_returns_only_when_every_process_it_started_is_gone(tmp_path, capsys):
    if not __import__("shutil").which("redis-server"):
        pytest.skip("redis-server is not on PATH")
    # the web chat stand-in has a child that ignores SIGTERM: down waits, then kills it, and says so
    frontend = _session("import signal, subprocess, sys, time\n"
                        "subprocess.Popen([sys.executable, '-c', 'import signal, time; "
                        "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)'])\n"
                        "time.sleep(600)")
    port = free_port()
    supervisor = subprocess.Popen([sys.executable, "-c", SUPERVISOR, "--supervise", "--port",
                                   str(port), "--dir", str(tmp_path / "redis")], start_new_session=True, cwd=REPO,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 30
    while True:
        try:
            client.set("kept", "yes")
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline and supervisor.poll() is None, "the supervised redis-server never came up"
            time.sleep(0.1)
    time.sleep(0.5)
    from services.stack import _proc_table, descendants
    started = [frontend.pid, supervisor.pid] + descendants([frontend.pid, supervisor.pid], _proc_table())
    assert len(started) == 4  # the two roots, the stubborn child, redis-server
    state = tmp_path / "runs" / "_stack" / "state.json"
    state.parent.mkdir(parents=True)
    state.write_text(json.dumps({"frontend_pid": frontend.pid, "redis_supervisor_pid": supervisor.pid}))

    down(str(tmp_path / "runs"), timeout_s=2)
    assert alive(started) == [] and not state.exists()
    assert supervisor.wait(1) == 0  # it stopped redis-server cleanly and exited on its own
    out = capsys.readouterr().out
    assert "the web chat: 1 process(es) still running 2 s after SIGTERM; sending SIGKILL" in out
    assert "stopped redis-server and its supervisor" in out
    client.close()


def test_up_help_lists_every_setting_with_its_default(capsys):
    from dataclasses import fields

    from services.stack import UpConfig
    assert main(["up", "--help"]) == 0
    out = capsys.readouterr().out
    for f in fields(UpConfig):
        line = next(line for line in out.splitlines() if line.strip().startswith(f"{f.name} ("))
        assert "default" in line and len(line.split("): ", 1)[1]) > 10, line


def test_up_without_redis_server_says_how_to_get_it_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no redis-server anywhere
    monkeypatch.delenv("REDIS_URL", raising=False)
    code = main(["up", f"runs_dir={tmp_path / 'runs'}", f"redis_port={free_port()}", "ui=false"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert err.strip().count("\n") == 0, err
    assert "redis-server is not on PATH" in err and "scripts/system_deps.sh" in err and "apt-get install redis-server" in err


def test_ctrl_c_in_journey_chat_exits_130_without_a_traceback(redis_url):
    proc = subprocess.Popen([sys.executable, "-m", "ray_jobs.cli", "chat", f"redis_url={redis_url}"], cwd=REPO,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        banner = proc.stdout.readline()  # at the prompt now
        assert b"GPT Journey chat" in banner
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and b"Traceback" not in err, err.decode()
