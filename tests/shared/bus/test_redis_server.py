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
