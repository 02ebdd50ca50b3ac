"""Chaos on the bus: a consumer SIGKILLed before it acks, and Redis SIGKILLed mid-stream (AOF, fsync always).

Both check the end state message by message: each of the 1,000 effects applied exactly once, nothing
pending, nothing dead-lettered. The consumers are real processes (``bus_worker.py`` beside this file).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import redis

from shared.bus import TOOL_REQUESTS, Bus, BusError, RedisServer, ToolRequest, encode

pytestmark = pytest.mark.chaos

N = 1000
WORKER = Path(__file__).with_name("bus_worker.py")
REPO = Path(__file__).resolve().parents[2]
GROUP = "chaos"


def start_worker(url: str, name: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([sys.executable, str(WORKER), url, name, *args], env=env, cwd=REPO)


def wait_for(condition, what: str, bus: Bus, timeout_s: float = 60.0, workers=()) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        for worker in workers:
            assert worker.poll() is None, f"worker exited with {worker.returncode} while waiting for {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}; {group_state(bus)}"
        time.sleep(0.05)


def message(n: int) -> ToolRequest:
    return ToolRequest(name="count", arguments={"n": n}, reply_to="unused")


def group_state(bus: Bus) -> dict:
    [info] = [g for g in bus.redis.xinfo_groups(bus.key(TOOL_REQUESTS)) if g["name"] == GROUP.encode()]
    return {"applied": int(bus.redis.get(bus.key("chaos:total")) or 0), "pending": info["pending"],
            "delivered_up_to": info["last-delivered-id"].decode(), "newest": bus.last_id(TOOL_REQUESTS)}


def settled(bus: Bus) -> bool:
    """All N effects applied and nothing left pending or unread in the group."""
    state = group_state(bus)
    return state["applied"] >= N and state["pending"] == 0 and state["delivered_up_to"] == state["newest"]


def assert_each_applied_once(bus: Bus) -> None:
    applied = bus.redis.hgetall(bus.key("chaos:applied"))
    assert len(applied) == N and set(applied.values()) == {b"1"}, \
        f"{N - len(applied)} missing, {sum(v != b'1' for v in applied.values())} applied more than once"
    assert int(bus.redis.get(bus.key("chaos:total"))) == N
    assert bus.redis.xlen(bus.key(f"{TOOL_REQUESTS}.dead")) == 0


def stop(worker: subprocess.Popen) -> None:
    worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(10)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()


@pytest.mark.parametrize("replacement", ["same-name", "other-name"])
def test_consumer_killed_before_ack_loses_nothing_and_applies_nothing_twice(redis_url, replacement):
    bus = Bus(redis_url)
    bus.redis.xgroup_create(bus.key(TOOL_REQUESTS), GROUP, id="0", mkstream=True)
    with bus.redis.pipeline(transaction=False) as pipe:
        for n in range(N):
            pipe.xadd(bus.key(TOOL_REQUESTS), encode(message(n)))
        pipe.execute()
    victim, trapped = start_worker(redis_url, "victim", "--trap", str(N // 2)), bus.key("chaos:trapped")
    try:
        wait_for(lambda: bus.redis.exists(trapped), "the victim to reach the trap", bus, workers=[victim])
        victim.send_signal(signal.SIGKILL)
        victim.wait()
    finally:
        victim.kill()
    trapped_id = bus.redis.get(trapped).decode()
    pending = bus.redis.xpending_range(bus.key(TOOL_REQUESTS), GROUP, "-", "+", count=N, consumername="victim")
    applied_before = int(bus.redis.get(bus.key("chaos:total")))
    assert pending and applied_before < N  # killed mid-stream, holding unacked entries
    pending_ids = [r["message_id"] for r in pending]
    trapped_entry = [i for i, f in bus.redis.xrange(bus.key(TOOL_REQUESTS), min=pending_ids[0], max=pending_ids[-1])
                     if trapped_id.encode() in f[b"data"]]
    assert trapped_entry and trapped_entry[0] in pending_ids  # its effect is applied but it was never acked

    name, args = ("victim", []) if replacement == "same-name" else ("heir", ["--claim-idle-ms", "200"])
    heir = start_worker(redis_url, name, *args)
    try:
        wait_for(lambda: settled(bus), "the replacement to finish", bus, workers=[heir])
    finally:
        stop(heir)
    assert_each_applied_once(bus)
    if replacement == "other-name":  # the heir took the victim's entries over with XAUTOCLAIM
        consumers = {c["name"]: c["pending"] for c in bus.redis.xinfo_consumers(bus.key(TOOL_REQUESTS), GROUP)}
        assert consumers[b"victim"] == 0


def publish_with_retries(bus: Bus, numbers: range, done: threading.Event | None = None) -> None:
    """A client that retries a publish that failed (same message, same message_id) until Redis is back."""
    for n in numbers:
        request = message(n)  # a retry resends this very message: same message_id
        while True:
            try:
                bus.publish(TOOL_REQUESTS, request)
                break
            except BusError:
                time.sleep(0.05)
    if done:
        done.set()


@pytest.fixture
def fast_dir(tmp_path):
    """A data directory on tmpfs when there is one: a SIGKILL of the process (unlike a power cut) keeps what
    Redis wrote before replying, fsynced or not, so tmpfs tests the same thing without ~4 ms per fsync."""
    if not os.path.isdir("/dev/shm"):
        yield tmp_path
        return
    path = Path(tempfile.mkdtemp(prefix="bus-chaos-", dir="/dev/shm"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_redis_killed_mid_stream_loses_no_acked_work(fast_dir):
    server = RedisServer(fast_dir, appendfsync="always").start()
    bus = Bus(server.url)
    bus.redis.xgroup_create(bus.key(TOOL_REQUESTS), GROUP, id="0", mkstream=True)
    published = threading.Event()
    publish_with_retries(bus, range(N // 2))
    worker = start_worker(server.url, "survivor")
    try:
        total = bus.key("chaos:total")
        wait_for(lambda: int(bus.redis.get(total) or 0) >= N // 4, "a quarter of the work", bus, workers=[worker])
        # the second half is published while Redis dies and comes back: its publishes fail and are retried
        threading.Thread(target=publish_with_retries, args=(bus, range(N // 2, N), published), daemon=True).start()
        applied_before = int(bus.redis.get(total))
        server.kill()
        time.sleep(0.3)
        server.start()
        with redis.Redis.from_url(server.url) as check:
            assert int(check.get(total)) >= applied_before  # the AOF kept every effect (and ack) made before
        wait_for(lambda: published.is_set() and settled(bus), "every message to be handled", bus, workers=[worker])
        assert applied_before < N  # the kill really was mid-stream
        assert_each_applied_once(bus)
    finally:
        stop(worker)
        server.stop()
