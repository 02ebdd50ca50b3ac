"""A stub gateway for the frontend's tests: a real ``Consumer`` on ``chat.requests`` answering a scripted turn."""
from __future__ import annotations

import time

import pytest

from shared.bus import CHAT_REQUESTS, Bus, ChatEvent, ChatRequest, Consumer

class StubGateway:
    """Answers every ``ChatRequest`` like the real gateway would: sources, a tool call and its result,
    the answer token by token (``token_delay_s`` apart, so streaming is visible), metrics, done.
    The script is in class attributes, so tests (which cannot import this conftest) compare against them."""

    TOKENS = ("The", " answer", " is", " 42.")
    ANSWER = "".join(TOKENS)
    SOURCES = [{"source": "docs/arith.md", "text": "Six times seven is forty-two.", "score": 0.875}]
    TOOL_CALL = {"name": "calculator", "arguments": {"expression": "6 * 7"}}
    TOOL_RESULT = {"ok": True, "output": "42", "error": ""}
    METRICS = {"ttft_s": 0.125, "decode_tokens_per_s": 31.5, "completion_tokens": 4}
    FAIL = "please fail"  # a user message answered with one token, then an error

    def __init__(self, bus: Bus, token_delay_s: float = 0.0):
        self.bus, self.token_delay_s = bus, token_delay_s
        self.requests: list[ChatRequest] = []
        self.consumer = Consumer(bus, CHAT_REQUESTS, "stub-gateway", "stub-1", self.answer, block_ms=100)

    def answer(self, request: ChatRequest) -> None:
        self.requests.append(request)
        seq = 0

        def emit(kind: str, text: str = "", data: dict | None = None) -> None:
            nonlocal seq
            self.bus.reply(request.reply_to, ChatEvent(request_id=request.request_id, trace_id=request.trace_id,
                                                       seq=seq, kind=kind, text=text, data=data or {}))
            seq += 1

        if request.messages[-1].content == self.FAIL:
            emit("token", "Par")
            emit("error", "generator crashed: out of memory", {"status": 500})
            return
        emit("sources", data={"sources": self.SOURCES})
        emit("tool_call", data=self.TOOL_CALL)
        emit("tool_result", data=self.TOOL_RESULT)
        for token in self.TOKENS:
            time.sleep(self.token_delay_s)
            emit("token", token)
        emit("metrics", data=self.METRICS)
        emit("done", self.ANSWER, {"finish_reason": "stop"})


@pytest.fixture
def gateway(bus):
    """A running stub gateway with no delay between tokens (``token_delay_s`` can be raised per test)."""
    stub = StubGateway(bus)
    stub.consumer.start()
    yield stub
    stub.consumer.stop()
