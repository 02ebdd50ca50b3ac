"""shared.bus.chat_client against a real redis-server: streaming, ordering, dedupe, timeouts, outages."""
from __future__ import annotations

import pytest

from shared.bus import CHAT_EVENTS, CHAT_REQUESTS, Bus, ChatEvent, free_port
from shared.bus.chat_client import REPLY_KEEP_S, ChatTurn, make_request, stream_chat


def test_make_request_replies_on_its_own_stream(bus):
    request = make_request(bus, "hi", conversation_id="c1", model="run/sft", max_tokens=7)
    assert request.reply_to == bus.reply_stream(CHAT_EVENTS, request.request_id)
    assert [(m.role, m.content) for m in request.messages] == [("user", "hi")]
    assert (request.conversation_id, request.model, request.max_tokens) == ("c1", "run/sft", 7)
    assert make_request(bus, "hi").request_id != request.request_id


def test_a_turn_streams_in_order_and_folds_into_what_a_client_shows(bus, gateway):
    request = make_request(bus, "what is 6 * 7?", conversation_id="conv-1")
    events = list(stream_chat(bus, request, timeout_s=10))
    assert [e.kind for e in events] == ["sources", "tool_call", "tool_result"] + ["token"] * 4 + ["metrics", "done"]
    assert [e.seq for e in events] == list(range(len(events)))
    turn = ChatTurn()
    answers = [turn.apply(e).answer for e in events]
    assert answers[3:7] == ["The", "The answer", "The answer is", gateway.ANSWER]  # grows token by token
    assert (turn.sources, turn.metrics, turn.finish_reason, turn.error) == (gateway.SOURCES, gateway.METRICS, "stop",
                                                                            None)
    call = gateway.TOOL_CALL
    assert [(t.name, t.arguments, t.result) for t in turn.tools] == [(call["name"], call["arguments"],
                                                                      gateway.TOOL_RESULT)]
    assert turn.finished
    [received] = gateway.requests
    assert (received.request_id, received.conversation_id) == (request.request_id, "conv-1")


def test_the_reply_stream_expires_after_the_turn(bus, gateway):
    request = make_request(bus, "hi")
    list(stream_chat(bus, request, timeout_s=10))
    assert 0 < bus.redis.ttl(bus.key(request.reply_to)) <= REPLY_KEEP_S


def test_a_gateway_error_ends_the_stream(bus, gateway):
    events = list(stream_chat(bus, make_request(bus, gateway.FAIL), timeout_s=10))
    assert [e.kind for e in events] == ["token", "error"]
    turn = ChatTurn()
    for event in events:
        turn.apply(event)
    assert (turn.answer, turn.error, turn.status, turn.finished) == ("Par", "generator crashed: out of memory",
                                                                     500, True)


def test_a_silent_gateway_is_a_timeout_error_with_a_hint(bus):
    request = make_request(bus, "anyone there?")
    [event] = list(stream_chat(bus, request, timeout_s=0.3))
    assert (event.kind, event.seq, event.data["status"], event.request_id) == ("error", 0, 504, request.request_id)
    assert "did not answer in 0.3 s" in event.text and "journey up" in event.text
    # the request did go out: a gateway started later finds it
    assert [m.request_id for _, m in bus.read(CHAT_REQUESTS)] == [request.request_id]


def test_duplicates_are_dropped_gaps_wait_and_strangers_are_ignored(bus):
    request = make_request(bus, "hi")

    def event(seq, kind="token", text="", request_id=request.request_id):
        return ChatEvent(request_id=request_id, seq=seq, kind=kind, text=text)

    # what at-least-once delivery and a retried turn can leave on a reply stream
    for e in (event(1, text="b"), event(0, text="a"), event(0, text="a"), event(0, request_id="other", text="x"),
              event(1, text="b"), event(2, "done", "ab")):
        bus.reply(request.reply_to, e)
    events = list(stream_chat(bus, request, timeout_s=2))
    assert [(e.seq, e.kind, e.text) for e in events] == [(0, "token", "a"), (1, "token", "b"), (2, "done", "ab")]


def test_a_gap_that_never_fills_times_out_naming_the_missing_event(bus):
    request = make_request(bus, "hi")
    bus.reply(request.reply_to, ChatEvent(request_id=request.request_id, seq=0, kind="token", text="a"))
    bus.reply(request.reply_to, ChatEvent(request_id=request.request_id, seq=2, kind="done", text="a?"))
    events = list(stream_chat(bus, request, timeout_s=0.3))
    assert [(e.seq, e.kind) for e in events] == [(0, "token"), (1, "error")]
    assert "event 1" in events[-1].text


def test_an_unreachable_redis_is_an_error_event_naming_the_url():
    url = f"redis://127.0.0.1:{free_port()}/0"
    bus = Bus(url)
    [event] = list(stream_chat(bus, make_request(bus, "hi"), timeout_s=5))
    assert (event.kind, event.data["status"]) == ("error", 503)
    assert url in event.text and "REDIS_URL" in event.text


def test_timeout_must_be_positive(bus):
    with pytest.raises(ValueError, match="timeout_s"):
        next(stream_chat(bus, make_request(bus, "hi"), timeout_s=0))


def _event(seq, kind, text="", **data):
    return ChatEvent(request_id="r", seq=seq, kind=kind, text=text, data=data)


def test_tool_results_pair_with_their_calls_in_order():
    turn = ChatTurn()
    for e in (_event(0, "tool_call", name="a", arguments={"x": 1}), _event(1, "tool_call", name="b"),
              _event(2, "tool_result", ok=True, output="A"), _event(3, "tool_result", ok=False, error="B failed"),
              _event(4, "tool_result", ok=True, output="orphan")):
        turn.apply(e)
    assert [(t.name, t.result["ok"]) for t in turn.tools] == [("a", True), ("b", False), ("?", True)]
    assert turn.tools[0].arguments == {"x": 1} and turn.tools[2].result["output"] == "orphan"


def test_a_malformed_tool_call_is_still_listed_with_its_raw_text():
    turn = ChatTurn().apply(_event(0, "tool_call", name=None, arguments=None, raw='{"nam', error="bad JSON"))
    turn.apply(_event(1, "tool_result", ok=False, error="bad JSON"))
    assert [(t.name, t.arguments, t.result["error"]) for t in turn.tools] == [('unparsed call {"nam', {}, "bad JSON")]


def test_done_text_is_authoritative_and_an_empty_one_keeps_the_streamed_answer():
    turn = ChatTurn().apply(_event(0, "token", "draft"))
    assert turn.apply(_event(1, "done", "final", finish_reason="length")).answer == "final"
    assert turn.finish_reason == "length"
    kept = ChatTurn().apply(_event(0, "token", "streamed")).apply(_event(1, "done"))
    assert (kept.answer, kept.finish_reason) == ("streamed", "stop")


def test_an_error_without_text_still_says_something():
    turn = ChatTurn().apply(_event(0, "error"))
    assert turn.error and turn.status is None and turn.finished
    assert not ChatTurn().apply(_event(0, "token", "x")).finished
