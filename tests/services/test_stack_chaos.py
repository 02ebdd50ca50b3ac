"""Chaos on the serving stack: a generator replica killed under load; clients that retry still get answers."""
from __future__ import annotations

import threading
import time

import openai
import pytest
import ray

from tests.services.conftest import HELLO_ANSWER

pytestmark = [pytest.mark.chaos, pytest.mark.e2e]


def _generator_replica():
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["namespace"] == "serve" and "#Generator#" in actor["name"]:
            return ray.get_actor(actor["name"], namespace="serve")
    raise AssertionError("no Generator replica found")


def test_a_killed_generator_replica_costs_clients_a_retry_not_an_answer(stack):
    base, _, _ = stack
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=8, timeout=60)
    answers: list[str] = []
    errors: list[Exception] = []
    started = threading.Event()

    def worker() -> None:
        for _ in range(6):
            try:
                out = client.chat.completions.create(model="journey", messages=[{"role": "user", "content": "Say hello"}])
                answers.append(out.choices[0].message.content)
            except Exception as exc:  # noqa: BLE001 - collected and asserted on below
                errors.append(exc)
            started.set()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    started.wait(60)
    ray.kill(_generator_replica(), no_restart=True)
    killed_at = time.monotonic()
    for t in threads:
        t.join(180)
    assert not errors, errors[:3]
    assert answers == [HELLO_ANSWER] * 24
    assert time.monotonic() - killed_at < 180
    assert _generator_replica() is not None  # Serve replaced it


def test_a_killed_redis_under_journey_up_comes_back_with_its_data(tmp_path):
    """`journey up`'s Redis is supervised: SIGKILL it (a crash) and it is back, AOF replayed, without anyone
    restarting it by hand; `down` then stops it for good."""
    import json
    import os
    import shutil
    import signal

    import redis

    from services.stack import UpConfig, _proc_table, _start_supervised_redis, alive, descendants, down
    from shared.bus import Bus, free_port
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not on PATH (apt-get install redis-server)")
    stack_dir = tmp_path / "runs" / "_stack"
    stack_dir.mkdir(parents=True)
    state: dict = {}
    url = _start_supervised_redis(UpConfig(redis_port=free_port()), stack_dir, state)
    supervisor = state["redis_supervisor_pid"]
    try:
        bus = Bus(url)
        for i in range(100):
            bus.redis.set(f"k{i}", i)
        time.sleep(1.5)  # appendfsync everysec: what was acked a second ago is on disk
        [server] = descendants([supervisor], _proc_table())
        os.kill(server, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while True:
            try:
                assert [int(bus.redis.get(f"k{i}")) for i in range(100)] == list(range(100))
                break
            except (redis.ConnectionError, redis.BusyLoadingError):
                assert time.monotonic() < deadline, "redis-server was not restarted"
                time.sleep(0.1)
        [restarted] = descendants([supervisor], _proc_table())
        assert restarted != server and not alive([server])
        assert "exited (code -9); restarting it" in (stack_dir / "redis-supervisor.log").read_text()
        bus.close()
    finally:
        (stack_dir / "state.json").write_text(json.dumps(state))
        down(str(tmp_path / "runs"))
    assert alive([supervisor]) == []
