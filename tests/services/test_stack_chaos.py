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
