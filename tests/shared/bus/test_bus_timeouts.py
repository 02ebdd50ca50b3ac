"""Blocking reads wait as long as asked (past redis-py's 5 s socket timeout); a Redis that stops answering
is still reported as unreachable, soon after the block should have ended."""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from shared.bus import TOOL_REQUESTS, TOOL_RESULTS, Bus, BusUnreachable, Consumer, RedisServer, ToolRequest, ToolResult
from shared.bus import streams


def test_a_blocking_read_of_8_s_waits_8_s_without_error(bus):
    start = time.monotonic()
    assert bus.read("nobody.writes.here", block_ms=8000) == []
    assert 7.9 < time.monotonic() - start < 12


def test_a_request_answered_after_8_s_gets_its_reply(bus):
    def slow(message: ToolRequest) -> None:
        time.sleep(8)
        bus.reply(message.reply_to, ToolResult(request_id=message.request_id, ok=True, output="late but fine"))

    consumer = Consumer(bus, TOOL_REQUESTS, "tools", "slow", slow, block_ms=50)
    consumer.start()
    try:
        request = ToolRequest(request_id="r8", name="python", arguments={}, reply_to=bus.reply_stream(TOOL_RESULTS, "r8"))
        assert bus.request(TOOL_REQUESTS, request, request.reply_to, timeout_s=30).output == "late but fine"
    finally:
        consumer.stop()


def test_a_consumer_blocking_longer_than_the_socket_timeout_keeps_reading(bus):
    seen = []
    consumer = Consumer(bus, TOOL_REQUESTS, "tools", "patient", seen.append, block_ms=7000)
    consumer.start()
    try:
        time.sleep(8)  # one XREADGROUP BLOCK 7000 ended empty, the next one is waiting
        bus.publish(TOOL_REQUESTS, ToolRequest(name="calculator", reply_to="x"))
        deadline = time.monotonic() + 5
        while not seen and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(seen) == 1 and consumer._thread.is_alive()
    finally:
        consumer.stop(timeout=10)


def test_a_redis_that_stops_answering_mid_read_is_reported_after_block_plus_margin(tmp_path, monkeypatch):
    monkeypatch.setattr(streams, "BLOCK_MARGIN_S", 1.0)
    with RedisServer(tmp_path) as server:
        bus = Bus(server.url)
        bus.ping()
        frozen = threading.Timer(0.2, os.kill, (server.process.pid, signal.SIGSTOP))
        frozen.start()
        start = time.monotonic()
        try:
            with pytest.raises(BusUnreachable, match=rf"Redis at {server.url} is unreachable.*redis-server"):
                bus.read("x", block_ms=1000)
        finally:
            frozen.join()
            os.kill(server.process.pid, signal.SIGCONT)
        # 1 s block + 1 s margin, times redis-py's own retries of a timed-out read: bounded, not forever
        assert 1.9 < time.monotonic() - start < 20
        assert bus.read("x", block_ms=100) == []  # answers again once it does
        bus.close()
