"""Shared fixtures: one local Ray session for the whole test run, an isolated runs directory."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("JOURNEY_NO_PROGRESS", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def pytest_collection_modifyitems(config, items):
    """Skip ``gpu`` tests on machines without CUDA."""
    try:
        import torch
        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    if has_gpu:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def ray_session():
    """``ray.init(num_cpus=2)`` once per test session (docs/architecture.md, Tests)."""
    import ray
    if not ray.is_initialized():
        # address="local": always a fresh local instance, never a cluster someone left running
        ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def runs_dir(tmp_path, monkeypatch):
    """An empty artifact root, also exported as JOURNEY_RUNS for code that reads it."""
    path = tmp_path / "runs"
    monkeypatch.setenv("JOURNEY_RUNS", str(path))
    return path


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """One real ``redis-server`` (AOF on, ``appendfsync everysec``) on a free port for the whole session."""
    import shutil

    from shared.bus.redis_server import RedisServer
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not on PATH (apt-get install redis-server)")
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def bus(redis_url):
    """A ``shared.bus.Bus`` on the session's (flushed) redis-server."""
    from shared.bus import Bus
    bus = Bus(redis_url)
    yield bus
    bus.close()


@pytest.fixture
def redis_url(redis_server):
    """The URL of the session's redis-server, with its database flushed so every test starts empty."""
    import redis
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    client.close()
    return redis_server.url
