"""The client side of a chat turn on the bus: publish a ``ChatRequest``, stream its ``ChatEvent``s back.

``stream_chat(bus, request, timeout_s)`` publishes the request to ``chat.requests`` and reads the
request's ``reply_to`` stream with blocking XREAD, yielding events in ``seq`` order until ``done``
or ``error``. It always ends with one of those two: when the gateway stays silent for
``timeout_s`` or the bus fails (Redis unreachable), it yields an ``error`` event it made itself (status 504
or 503) whose text says what to check, so a caller has one ending to handle, never a hang.
Delivery is at-least-once, so an event whose ``seq`` was already yielded (a gateway replica that
retried the turn) is dropped, and one that arrives early waits for the gap before it.

``ChatTurn`` folds the events into what a client shows: the answer so far, the sources, the tool
calls with their results, the metrics and the ending. The Gradio frontend and ``journey chat``
(the terminal client) both use this module; it knows nothing about either's display.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from shared.bus.messages import ChatEvent, ChatMessage, ChatRequest, new_id
from shared.bus.streams import CHAT_EVENTS, CHAT_REQUESTS, Bus, BusError

log = logging.getLogger(__name__)

REPLY_KEEP_S = 60  # a finished turn's reply stream is kept this long (to inspect), then Redis drops it
POLL_MS = 1000  # longest single XREAD block: keeps the deadline check and a Redis outage noticed promptly
STATUS_UNAVAILABLE, STATUS_TIMEOUT = 503, 504


def make_request(bus: Bus, messages: str | list[ChatMessage] | list[dict[str, str]], *,
                 conversation_id: str | None = None, **options: Any) -> ChatRequest:
    """A ``ChatRequest`` with a fresh ``request_id`` and its ``reply_to`` stream on ``bus``.

    ``messages`` is the new user text, or a list of turns. With a ``conversation_id`` the gateway
    keeps the earlier turns itself, so a client sends only the new one. ``options`` are the other
    ``ChatRequest`` fields (``model``, ``max_tokens``, ``temperature``, ``use_rag``, ...).
    """
    if isinstance(messages, str):
        messages = [ChatMessage(role="user", content=messages)]
    request_id = new_id()
    return ChatRequest(request_id=request_id, conversation_id=conversation_id, messages=messages,
                       reply_to=bus.reply_stream(CHAT_EVENTS, request_id), **options)


def _client_error(request: ChatRequest, seq: int, text: str, status: int) -> ChatEvent:
    return ChatEvent(request_id=request.request_id, trace_id=request.trace_id, seq=seq, kind="error", text=text,
                     data={"status": status, "from": "client"})


def stream_chat(bus: Bus, request: ChatRequest, timeout_s: float = 60.0) -> Iterator[ChatEvent]:
    """Publish ``request`` and yield its events in ``seq`` order; the last one is ``done`` or ``error``.

    ``timeout_s`` bounds the wait for each next event (not the whole answer, which may be long).
    """
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}; pass the seconds to wait for the gateway")
    expected, published = 0, False
    try:
        bus.publish(CHAT_REQUESTS, request)
        published = True
        early: dict[int, ChatEvent] = {}
        for event in _read_events(bus, request, timeout_s):
            if event.seq < expected or event.seq in early:
                continue  # a redelivered duplicate: at-least-once delivery, the first copy counts
            early[event.seq] = event
            while expected in early:
                ready = early.pop(expected)
                expected += 1
                yield ready
                if ready.kind in ("done", "error"):
                    return
        yield _client_error(request, expected, f"the gateway did not answer in {timeout_s:g} s: is `journey up` "
                            f"running? (waited on {request.reply_to} for event {expected})", STATUS_TIMEOUT)
    except BusError as exc:  # its text names the Redis URL and how to fix it
        yield _client_error(request, expected, f"the bus failed: {exc}", STATUS_UNAVAILABLE)
    finally:
        if published:  # also when the caller stops early: the gateway may still be writing
            _expire_quietly(bus, request.reply_to)


def _read_events(bus: Bus, request: ChatRequest, timeout_s: float) -> Iterator[ChatEvent]:
    """This request's events as they arrive on ``reply_to``; stops after ``timeout_s`` without one."""
    last_id, deadline = "0-0", time.monotonic() + timeout_s
    while (left_ms := int((deadline - time.monotonic()) * 1000)) > 0:
        entries = bus.read(request.reply_to, last_id, block_ms=min(left_ms, POLL_MS))
        for last_id, message in entries:  # last_id advances: the next XREAD starts after it
            if not isinstance(message, ChatEvent) or message.request_id != request.request_id:
                log.warning("ignoring %s on %s: not an event of request %s", type(message).__name__,
                            request.reply_to, request.request_id)
                continue
            deadline = time.monotonic() + timeout_s
            yield message


def _expire_quietly(bus: Bus, stream: str) -> None:
    try:
        bus.expire(stream, REPLY_KEEP_S)
    except BusError as exc:  # the turn's outcome is already reported
        log.warning("could not set a TTL on %s (%s); it stays until Redis trims it", stream, exc)


@dataclass
class ToolStep:
    """One tool call of a turn and, once it arrived, its result (``ok``, ``output``, ``error``)."""
    name: str
    arguments: dict[str, Any]
    result: dict[str, Any] | None = None


@dataclass
class ChatTurn:
    """What a client shows of one turn, folded from its events with ``apply``."""
    answer: str = ""
    sources: list[dict[str, Any]] = field(default_factory=list)
    tools: list[ToolStep] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    finish_reason: str | None = None
    error: str | None = None
    status: int | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None or self.error is not None

    def apply(self, event: ChatEvent) -> ChatTurn:
        """Fold one event in; returns self so a loop can render the result directly."""
        kind, data = event.kind, event.data
        if kind == "token":
            self.answer += event.text
        elif kind == "sources":
            self.sources = list(data.get("sources", []))
        elif kind == "tool_call":  # a call the model wrote malformed has no name/arguments, only its raw text
            arguments = data.get("arguments")
            self.tools.append(ToolStep(name=str(data.get("name") or f"unparsed call {data.get('raw') or ''}".strip()),
                                       arguments=arguments if isinstance(arguments, dict) else {}))
        elif kind == "tool_result":
            pending = next((t for t in self.tools if t.result is None), None)
            if pending is None:  # a result without its call still deserves to be seen
                pending = ToolStep(name=str(data.get("name", "?")), arguments={})
                self.tools.append(pending)
            pending.result = dict(data)
        elif kind == "metrics":
            self.metrics.update(data)
        elif kind == "done":
            self.answer = event.text or self.answer  # the gateway's final text is authoritative
            self.finish_reason = str(data.get("finish_reason", "stop"))
        elif kind == "error":
            self.error = event.text or "the gateway reported an error without a message"
            self.status = data.get("status")
        return self
