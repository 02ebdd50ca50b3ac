"""Processes the way a user runs them, stopped the way a terminal stops them (tests of resuming after Ctrl-C)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shared.config import REPO_ROOT


def start(argv: list[str], log: Path) -> subprocess.Popen:
    """``python <argv>`` in its own session (so a signal to its group reaches Ray's processes too), on a
    fresh local Ray instance (never a cluster another process left running); output appended to ``log``."""
    env = {**os.environ, "RAY_ADDRESS": "local", "JOURNEY_NO_PROGRESS": "1"}
    with open(log, "ab") as fh:
        return subprocess.Popen([sys.executable, *argv], cwd=REPO_ROOT, env=env, stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)


def wait_for(predicate, proc: subprocess.Popen, log: Path, timeout: float, what: str):
    """Poll ``predicate()`` until it returns something truthy; fail (with the log's tail) on timeout or exit."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc.poll() is not None:
            pytest.fail(f"the process exited ({proc.returncode}) before {what}:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail(f"no {what} within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def session(sid: int) -> list[int]:
    """Pids of the processes in session ``sid`` (the fifth field after the command in /proc/<pid>/stat)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # it exited while we looked
        if int(fields[3]) == sid:
            pids.append(int(stat.parent.name))
    return pids


def stop(proc: subprocess.Popen, sig: int, log: Path, timeout: float = 120) -> int:
    """Send ``sig`` to the process group (as a terminal's Ctrl-C does), wait for the process to exit and then
    for every process of its session to be gone: Ray's workers lead groups of their own and outlive the
    driver by seconds (they stop when their raylet is gone), writing checkpoints meanwhile. Its return code."""
    os.killpg(proc.pid, sig)
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail(f"the process did not exit within {timeout} s of signal {sig}:\n{log.read_text()[-3000:]}")
    deadline = time.monotonic() + timeout
    while (left := session(proc.pid)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"processes of the stopped run still alive {timeout} s later: {left}"
    return rc


def run(argv: list[str], log: Path, timeout: float = 540) -> tuple[str, float]:
    """Run to completion; (its output, wall seconds). Fails with the output when it does not exit 0."""
    t0 = time.perf_counter()
    log.write_text("")
    proc = start(argv, log)
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    out = log.read_text()
    assert rc == 0, out[-4000:]
    return out, time.perf_counter() - t0
