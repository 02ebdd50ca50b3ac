"""Consumer in concurrent mode (``lanes``) on a real redis-server: a slow lane never holds up another, each
lane keeps its limit, and at-least-once delivery, dedupe and dead-lettering hold as in sequential mode."""
from __future__ import annotations

import threading
import time

import pytest

from shared.bus import TOOL_REQUESTS, Consumer, ToolRequest


def wait_for(condition, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def call(name: str, n: int = 0, **kw) -> ToolRequest:
    return ToolRequest(name=name, arguments={"n": n}, reply_to="tools.results.x", **kw)


class Recorder:
    """A handler that sleeps ``slow_s`` for ``python`` calls, records when each call ended and the peak
    number of calls of each lane running at once."""

    def __init__(self, slow_s: float = 0.0, fail_on: int | None = None):
        self.slow_s, self.fail_on = slow_s, fail_on
        self.done: dict[int, float] = {}
        self.calls: list[int] = []
        self.running: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.lock = threading.Lock()

    def __call__(self, message: ToolRequest) -> None:
        with self.lock:
            self.calls.append(message.arguments["n"])
            self.running[message.name] = self.running.get(message.name, 0) + 1
            self.peak[message.name] = max(self.peak.get(message.name, 0), self.running[message.name])
        try:
            if message.name == "python":
                time.sleep(self.slow_s)
            if message.arguments["n"] == self.fail_on:
                raise ValueError("this one always fails")
            self.done[message.arguments["n"]] = time.monotonic()
        finally:
            with self.lock:
                self.running[message.name] -= 1


def lanes_consumer(bus, handler, name="c1", **kw) -> Consumer:
    return Consumer(bus, TOOL_REQUESTS, "tools", name, handler, block_ms=20, lanes={"python": 2, "*": 8},
                    lane_of=lambda m: m.name, **kw)


def test_slow_calls_do_not_hold_up_fast_ones_and_each_lane_keeps_its_limit(bus):
    handler = Recorder(slow_s=2.0)
    consumer = lanes_consumer(bus, handler)
    consumer.start()
    try:
        start = time.monotonic()
        for i in range(4):
            bus.publish(TOOL_REQUESTS, call("python", 100 + i))
        for i in range(10):
            bus.publish(TOOL_REQUESTS, call("calculator", i))
        wait_for(lambda: all(i in handler.done for i in range(10)))
        assert max(handler.done[i] for i in range(10)) - start < 1.0  # while the python calls sleep
        wait_for(lambda: all(100 + i in handler.done for i in range(4)))
        assert handler.peak["python"] == 2  # four slow calls, two at a time
        assert time.monotonic() - start >= 3.9
        wait_for(lambda: bus.redis.xpending(bus.key(TOOL_REQUESTS), "tools")["pending"] == 0)
    finally:
        consumer.stop()


def test_a_failing_call_is_retried_then_dead_lettered_while_others_succeed(bus):
    handler = Recorder(fail_on=3)
    consumer = lanes_consumer(bus, handler, max_deliveries=3, retry_idle_ms=0)
    consumer.start()
    try:
        for i in range(6):
            bus.publish(TOOL_REQUESTS, call("calculator", i))
        wait_for(lambda: bus.redis.xlen(bus.key(consumer.dead_letter)) == 1)
        assert sorted(handler.done) == [0, 1, 2, 4, 5] and handler.calls.count(3) == 3
        [(_, dead)] = bus.redis.xrange(bus.key(consumer.dead_letter))
        assert b"handler failed 3 times" in dead[b"reason"]
        wait_for(lambda: bus.redis.xpending(bus.key(TOOL_REQUESTS), "tools")["pending"] == 0)
    finally:
        consumer.stop()


def test_a_message_published_twice_is_handled_once_even_while_the_first_runs(bus):
    handler = Recorder(slow_s=0.5)
    consumer = lanes_consumer(bus, handler)
    message = call("python", 7)
    bus.publish(TOOL_REQUESTS, message)
    bus.publish(TOOL_REQUESTS, message)  # same message_id: a retried publish
    consumer.start()
    try:
        wait_for(lambda: bus.redis.xpending(bus.key(TOOL_REQUESTS), "tools")["pending"] == 0)
        time.sleep(0.3)
        assert handler.calls == [7]
    finally:
        consumer.stop()


def test_entries_queued_at_stop_stay_pending_and_a_restart_handles_them(bus):
    first = Recorder(slow_s=1.0)
    consumer = lanes_consumer(bus, first)
    # Published before the start, so the first read takes all five. Published after it, a loaded
    # machine could stop the consumer before it read the last three: never delivered, so not pending.
    for i in range(5):
        bus.publish(TOOL_REQUESTS, call("python", i))
    consumer.start()
    wait_for(lambda: len(first.calls) == 2)  # two running, three queued in the lane
    consumer.stop(timeout=0.1)
    time.sleep(1.2)  # the two running ones finish and are acked
    assert sorted(first.done) == [0, 1]
    assert bus.redis.xpending(bus.key(TOOL_REQUESTS), "tools")["pending"] == 3

    second = Recorder()
    restarted = lanes_consumer(bus, second)  # same name: takes its own pending entries first
    restarted.start()
    try:
        wait_for(lambda: sorted(second.done) == [2, 3, 4])
        assert bus.redis.xpending(bus.key(TOOL_REQUESTS), "tools")["pending"] == 0
    finally:
        restarted.stop()


def test_a_long_call_is_not_claimed_by_another_consumer_while_it_runs(bus):
    handler = Recorder(slow_s=2.0)
    mine = lanes_consumer(bus, handler, name="mine", claim_idle_ms=300)
    other = lanes_consumer(bus, handler, name="other", claim_idle_ms=300)
    bus.publish(TOOL_REQUESTS, call("python", 1))
    mine.run_once()  # "mine" takes it (and starts it), then both loops run
    mine.start()
    other.start()
    try:
        wait_for(lambda: 1 in handler.done)
        time.sleep(0.5)
        assert handler.calls == [1]  # idle 2 s > claim_idle_ms, yet kept by the heartbeat
    finally:
        mine.stop()
        other.stop()


def test_the_backlog_cap_leaves_a_flood_in_the_stream(bus):
    release = threading.Event()
    handler = lambda message: release.wait(10)  # noqa: E731
    consumer = Consumer(bus, TOOL_REQUESTS, "tools", "c1", handler, block_ms=20, lanes={"*": 2}, max_backlog=4)
    consumer.start()
    try:
        for i in range(10):
            bus.publish(TOOL_REQUESTS, call("calculator", i))
        time.sleep(0.5)
        assert bus.redis.xpending(bus.key(TOOL_REQUESTS), "tools")["pending"] == 4  # the other 6 not yet read
        release.set()
        wait_for(lambda: bus.redis.xinfo_groups(bus.key(TOOL_REQUESTS))[0]["lag"] == 0
                 and bus.redis.xpending(bus.key(TOOL_REQUESTS), "tools")["pending"] == 0)
    finally:
        consumer.stop()


def test_bad_lane_settings_are_refused(bus):
    with pytest.raises(ValueError, match="each >= 1 worker"):
        Consumer(bus, TOOL_REQUESTS, "tools", "c1", print, lanes={"python": 0})
