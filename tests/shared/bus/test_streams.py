"""Bus and Consumer on a real redis-server: round trips, dead letters, retries, restarts, claims, dedupe."""
from __future__ import annotations

import threading
import time

import pytest

from shared.bus import (CHAT_REQUESTS, MODEL_EVENTS, TOOL_REQUESTS, TOOL_RESULTS, Bus, BusError, ChatEvent,
                        ChatMessage, ChatRequest, Consumer, ModelReload, ToolRequest, ToolResult, free_port)


def wait_for(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def tool_request(n: int = 0, **kw) -> ToolRequest:
    return ToolRequest(name="calculator", arguments={"n": n}, reply_to="tools.results.x", **kw)


EXAMPLES = [
    ChatRequest(messages=[ChatMessage(role="user", content="héllo ✓")], reply_to="chat.events.1", temperature=0.7),
    ChatEvent(request_id="r1", seq=3, kind="sources", data={"sources": [{"source": "a.md", "score": 0.5}]}),
    tool_request(7),
    ToolResult(request_id="r1", ok=False, error="division by zero", duration_s=0.01),
    ModelReload(artifact="latest:dpo"),
]


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: m.TYPE)
def test_every_message_type_round_trips(bus, message):
    first = bus.publish(MODEL_EVENTS, message)
    [(entry, back)] = bus.read(MODEL_EVENTS)
    assert entry == first and type(back) is type(message) and back == message


def test_prefix_isolates_buses_on_one_redis(redis_url):
    a, b = Bus(redis_url, prefix="a:"), Bus(redis_url, prefix="b:")
    a.publish(MODEL_EVENTS, ModelReload(artifact="x"))
    assert a.key(MODEL_EVENTS) == "a:models.events" and len(a.read(MODEL_EVENTS)) == 1 and b.read(MODEL_EVENTS) == []


def test_group_consumer_hands_each_message_to_the_handler_and_acks(bus):
    seen = []
    consumer = Consumer(bus, TOOL_REQUESTS, "tools", "c1", seen.append, block_ms=10)
    sent = [tool_request(i) for i in range(5)]
    for message in sent:
        bus.publish(TOOL_REQUESTS, message)
    assert consumer.run_once() == 5 and seen == sent
    assert bus.redis.xpending(bus.key(TOOL_REQUESTS), "tools")["pending"] == 0
    assert consumer.run_once() == 0


def test_malformed_entries_are_dead_lettered_and_the_consumer_keeps_going(bus):
    seen = []
    consumer = Consumer(bus, TOOL_REQUESTS, "tools", "c1", seen.append, block_ms=10)
    key = bus.key(TOOL_REQUESTS)
    bad = [({"type": "nope", "data": "{}"}, "unknown message type 'nope'"),
           ({"type": "tool.request"}, "no 'data' field"),
           ({"type": "tool.request", "data": "{not json"}, "not JSON"),
           ({"type": "tool.request", "data": "[1]"}, "must be a JSON object"),
           ({"type": "tool.request", "data": '{"name": ""}'}, "invalid tool.request"),
           ({"type": "tool.request", "data": '{"schema_version": 99}'}, "schema_version 99"),
           ({"reason": "spoofed"}, "unknown message type ''")]
    ids = [bus.redis.xadd(key, fields).decode() for fields, _ in bad]
    good = tool_request(1)
    bus.publish(TOOL_REQUESTS, good)
    assert consumer.run_once() == len(bad) + 1 and seen == [good]
    dead = [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in bus.redis.xrange(
        bus.key(consumer.dead_letter))]
    assert [d["entry_id"] for d in dead] == ids
    for record, (fields, reason) in zip(dead, bad):
        assert reason in record["reason"] and record["reason"].startswith("malformed: ")
        assert record["stream"] == TOOL_REQUESTS and record["deliveries"] == "1" and record["group"] == "tools"
    assert dead[0]["type"] == "nope" and dead[-1]["original.reason"] == "spoofed"
    assert bus.redis.xpending(key, "tools")["pending"] == 0


def test_failing_handler_is_retried_then_dead_lettered(bus):
    calls = []

    def handler(message):  # n=0 always fails; n=1 fails on its first delivery only
        calls.append(message.arguments["n"])
        if message.arguments["n"] == 0 or calls.count(1) == 1:
            raise RuntimeError(f"boom {len(calls)}")

    consumer = Consumer(bus, TOOL_REQUESTS, "tools", "c1", handler, max_deliveries=3, retry_idle_ms=0, block_ms=10)
    bus.publish(TOOL_REQUESTS, tool_request(0))
    bus.publish(TOOL_REQUESTS, tool_request(1))
    for _ in range(6):
        consumer.run_once()
    assert calls.count(0) == 3 and calls.count(1) == 2
    [(_, dead)] = bus.redis.xrange(bus.key(consumer.dead_letter))
    assert dead[b"deliveries"] == b"3"
    assert dead[b"reason"].startswith(b"handler failed 3 times; last: RuntimeError: boom")
    assert b"tool.request" == dead[b"type"] and b'"n":0' in dead[b"data"]
    assert bus.redis.xpending(bus.key(TOOL_REQUESTS), "tools")["pending"] == 0


def test_entry_whose_consumer_keeps_dying_is_dead_lettered_without_running_again(bus):
    key = bus.key(TOOL_REQUESTS)
    Consumer(bus, TOOL_REQUESTS, "tools", "c1", lambda m: None)
    bus.publish(TOOL_REQUESTS, tool_request())
    bus.redis.xreadgroup("tools", "c1", {key: ">"})  # delivery 1, then "crash"
    for _ in range(2):
        bus.redis.xreadgroup("tools", "c1", {key: "0"})  # deliveries 2 and 3 of a poison message
    seen = []
    Consumer(bus, TOOL_REQUESTS, "tools", "c1", seen.append, max_deliveries=3, block_ms=10).run_once()
    assert seen == [] and bus.redis.xlen(bus.key(f"{TOOL_REQUESTS}.dead")) == 1


def test_restarted_consumer_takes_its_own_pending_entries_first(bus):
    key = bus.key(TOOL_REQUESTS)
    Consumer(bus, TOOL_REQUESTS, "tools", "c1", lambda m: None)
    old = [tool_request(i) for i in range(3)]
    for message in old:
        bus.publish(TOOL_REQUESTS, message)
    bus.redis.xreadgroup("tools", "c1", {key: ">"})  # c1 read them, then died before acking
    new = tool_request(9)
    bus.publish(TOOL_REQUESTS, new)
    seen = []
    restarted = Consumer(bus, TOOL_REQUESTS, "tools", "c1", seen.append, claim_idle_ms=60_000, block_ms=10)
    assert restarted.run_once() == 3 and seen == old
    assert restarted.run_once() == 1 and seen[-1] == new


def test_stale_entries_of_a_dead_consumer_are_claimed(bus):
    key = bus.key(TOOL_REQUESTS)
    Consumer(bus, TOOL_REQUESTS, "tools", "dead", lambda m: None)
    sent = [tool_request(i) for i in range(4)]
    for message in sent:
        bus.publish(TOOL_REQUESTS, message)
    bus.redis.xreadgroup("tools", "dead", {key: ">"})
    seen = []
    patient = Consumer(bus, TOOL_REQUESTS, "tools", "patient", seen.append, claim_idle_ms=60_000, block_ms=10)
    assert patient.run_once() == 0 and seen == []  # not idle for a minute yet: still the dead one's
    eager = Consumer(bus, TOOL_REQUESTS, "tools", "eager", seen.append, claim_idle_ms=0, block_ms=10)
    assert eager.run_once() == 4 and seen == sent
    assert bus.redis.xpending(key, "tools")["pending"] == 0


def test_a_message_is_handled_once_per_group_even_if_published_twice(bus):
    seen_a, seen_b = [], []
    a = Consumer(bus, TOOL_REQUESTS, "a", "c1", seen_a.append, block_ms=10)
    b = Consumer(bus, TOOL_REQUESTS, "b", "c1", seen_b.append, block_ms=10)
    message = tool_request()
    bus.publish(TOOL_REQUESTS, message)
    bus.publish(TOOL_REQUESTS, message)  # same batch
    assert a.run_once() == 2
    bus.publish(TOOL_REQUESTS, message)  # a later batch
    assert a.run_once() == 1 and seen_a == [message]
    assert b.run_once() == 3 and seen_b == [message]  # dedupe is per group
    assert bus.redis.ttl(a.done_key(message.message_id)) > 0


def test_once_survives_a_crash_between_effect_and_ack(bus):
    counter = bus.key("test.counter")
    consumer = None

    def handler(message):
        consumer.once(message, lambda pipe: pipe.incr(counter))
        raise SystemExit("killed after the effect, before the ack")  # not an Exception: escapes like a crash

    consumer = Consumer(bus, TOOL_REQUESTS, "tools", "c1", handler, block_ms=10)
    message = tool_request()
    bus.publish(TOOL_REQUESTS, message)
    with pytest.raises(SystemExit):
        consumer.run_once()
    assert bus.redis.xpending(bus.key(TOOL_REQUESTS), "tools")["pending"] == 1
    seen = []
    restarted = Consumer(bus, TOOL_REQUESTS, "tools", "c1", seen.append, block_ms=10)
    assert restarted.run_once() == 1 and seen == []  # already done: acked, not handled again
    assert bus.redis.get(counter) == b"1" and bus.redis.xpending(bus.key(TOOL_REQUESTS), "tools")["pending"] == 0


def test_once_applies_the_effect_once_under_racing_threads(bus):
    consumer = Consumer(bus, TOOL_REQUESTS, "tools", "c1", lambda m: None)
    counter, message = bus.key("test.counter"), tool_request()
    results = []
    barrier = threading.Barrier(8)

    def race():
        barrier.wait()
        results.append(consumer.once(message, lambda pipe: pipe.incr(counter)))

    threads = [threading.Thread(target=race) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True] and bus.redis.get(counter) == b"1"


def test_streams_are_bounded(redis_url):
    bus = Bus(redis_url, maxlen=100)
    for i in range(1000):
        bus.publish(MODEL_EVENTS, ModelReload(artifact=str(i)))
        bus.publish(CHAT_REQUESTS, ModelReload(artifact=str(i)), maxlen=1000)
    # approximate trimming keeps whole radix-tree nodes (100 entries each): at most one node extra
    assert 100 <= bus.redis.xlen(bus.key(MODEL_EVENTS)) <= 200
    assert bus.redis.xlen(bus.key(CHAT_REQUESTS)) == 1000


def test_unreachable_redis_names_the_url_and_the_fix():
    url = f"redis://127.0.0.1:{free_port()}/0"
    bus = Bus(url)
    for attempt in (bus.ping, lambda: bus.publish(MODEL_EVENTS, ModelReload(artifact="x")),
                    lambda: Consumer(bus, TOOL_REQUESTS, "g", "c", lambda m: None)):
        with pytest.raises(BusError, match="unreachable") as info:
            attempt()
        assert url in str(info.value) and "REDIS_URL" in str(info.value) and "redis-server" in str(info.value)
    with pytest.raises(BusError, match="bad Redis URL"):
        Bus("http://nowhere")


def test_listen_delivers_broadcasts_to_every_listener(bus):
    bus.publish(MODEL_EVENTS, ModelReload(artifact="before"))  # "$": not seen
    stop, got = threading.Event(), {0: [], 1: []}
    ready = threading.Barrier(3)

    def listen(i):
        stream = bus.listen(MODEL_EVENTS, block_ms=20, stop=stop)
        ready.wait()
        for _, message in stream:
            got[i].append(message.artifact)

    threads = [threading.Thread(target=listen, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    ready.wait()
    time.sleep(0.05)  # let the generators resolve "$" before publishing (they start on first next())
    for name in ("a", "b", "c"):
        bus.publish(MODEL_EVENTS, ModelReload(artifact=name))
    wait_for(lambda: all(len(v) == 3 for v in got.values()))
    stop.set()
    for t in threads:
        t.join(5)
    assert got == {0: ["a", "b", "c"], 1: ["a", "b", "c"]}


def test_request_gets_the_reply_and_times_out_with_a_clear_error(bus):
    def execute(message: ToolRequest):
        bus.reply(message.reply_to, ToolResult(request_id=message.request_id, ok=True, output="42"), ttl_s=600)

    consumer = Consumer(bus, TOOL_REQUESTS, "tools", "executor", execute, block_ms=20)
    consumer.start()
    try:
        reply_to = bus.reply_stream(TOOL_RESULTS, "req-1")
        request = ToolRequest(request_id="req-1", name="calculator", arguments={"expression": "6*7"}, reply_to=reply_to)
        result = bus.request(TOOL_REQUESTS, request, reply_to, timeout_s=10)
        assert isinstance(result, ToolResult) and result.output == "42" and reply_to == "tools.results.req-1"
        assert 0 < bus.redis.ttl(bus.key(reply_to)) <= 600
    finally:
        consumer.stop()
    with pytest.raises(BusError, match="no reply on 'tools.results.req-2'.*is a consumer of 'tools.requests' running"):
        bus.request(TOOL_REQUESTS, tool_request(), "tools.results.req-2", timeout_s=0.1)


def test_running_consumer_outlives_bad_entries_and_failing_handlers_and_stops(bus):
    seen = []

    def handler(message):
        if message.arguments["n"] < 0:
            raise ValueError("negative")
        seen.append(message.arguments["n"])

    consumer = Consumer(bus, TOOL_REQUESTS, "tools", "c1", handler, max_deliveries=2, retry_idle_ms=0, block_ms=20)
    thread = consumer.start()
    with pytest.raises(BusError, match="already running"):
        consumer.start()
    bus.publish(TOOL_REQUESTS, tool_request(-1))
    bus.redis.xadd(bus.key(TOOL_REQUESTS), {"type": "garbage"})
    for i in range(10):
        bus.publish(TOOL_REQUESTS, tool_request(i))
    wait_for(lambda: len(seen) == 10 and bus.redis.xlen(bus.key(consumer.dead_letter)) == 2)
    bus.redis.delete(bus.key(TOOL_REQUESTS))  # the group vanishes (Redis lost its data): recreated, keeps going
    bus.publish(TOOL_REQUESTS, tool_request(10))
    wait_for(lambda: seen[-1:] == [10])
    consumer.stop()
    assert not thread.is_alive() and seen == list(range(11))
