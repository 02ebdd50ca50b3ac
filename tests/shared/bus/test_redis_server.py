"""RedisServer: AOF survives a SIGKILL, and the errors say what to do."""
import pytest
import redis

from shared.bus import BusError, RedisServer


def test_kill_and_restart_replays_the_aof(tmp_path):
    server = RedisServer(tmp_path, appendfsync="always").start()
    try:
        with redis.Redis.from_url(server.url) as client:
            client.set("k", "v")
        server.kill()
        assert not server.running()
        server.start()
        with redis.Redis.from_url(server.url) as client:
            assert client.get("k") == b"v"
            assert client.config_get("appendfsync") == {"appendfsync": "always"}
    finally:
        server.stop()
    assert not server.running() and (tmp_path / "redis.log").exists()


def test_missing_binary_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BusError, match=r"redis-server is not on PATH.*apt-get install redis-server.*REDIS_URL"):
        RedisServer(tmp_path).start()


def test_a_taken_port_is_reported_with_the_server_output(tmp_path, redis_server):
    with pytest.raises(BusError, match=f"exited with code .* on port {redis_server.port}.*port taken"):
        RedisServer(tmp_path, port=redis_server.port).start()


def test_supervise_restarts_a_crashed_server_with_its_data_until_stopped(tmp_path):
    import threading
    import time

    from shared.bus.redis_server import supervise
    server = RedisServer(tmp_path, appendfsync="always")
    stop, pids = threading.Event(), []
    thread = threading.Thread(target=supervise, args=(server, stop), kwargs={"on_start": lambda s: pids.append(s.process.pid)})
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not pids:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with redis.Redis.from_url(server.url) as client:
            client.set("k", "v")
        server.process.kill()  # a crash, behind the supervisor's back
        while len(pids) < 2:
            assert time.monotonic() < deadline + 10, "not restarted"
            time.sleep(0.05)
        with redis.Redis.from_url(server.url) as client:
            assert client.get("k") == b"v"
    finally:
        stop.set()
        thread.join(15)
    assert not thread.is_alive() and not server.running() and pids[0] != pids[1]


def test_supervise_cli_without_redis_server_is_one_line(tmp_path):
    import subprocess
    import sys
    from pathlib import Path
    out = subprocess.run([sys.executable, "-m", "shared.bus.redis_server", "--supervise", "--dir", str(tmp_path)],
                         capture_output=True, text=True, env={"PATH": str(tmp_path)}, timeout=60,
                         cwd=Path(__file__).resolve().parents[3])
    assert out.returncode == 1 and "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]  # above it at most runpy's warning about `-m` on an imported module
    assert last.startswith("error: redis-server is not on PATH") and "apt-get install redis-server" in last
