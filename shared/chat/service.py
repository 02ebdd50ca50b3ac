"""The gateway's work without the HTTP: conversation memory around a turn, tools over the bus, bus requests.

``ChatService.answer(messages, options, conversation_id, scope=...)`` runs
``shared.chat.turn.run_turn`` with the conversation's memory around it. ``answer_request(ChatRequest)``
does the same for a request that came over the bus (scope ``BUS_SCOPE``) and writes every event to
the request's ``reply_to`` stream as a numbered ``ChatEvent`` (an error becomes one ``error`` event
with its status, so the client never hangs).

The memory rule: a request is answered with memory only when it names a conversation
(``conversation_id``, the OpenAI ``user``) and carries no history of its own, i.e. at most one
non-system message. Then the stored history of ``(scope, conversation_id)`` is put before it, and
when the turn completes the new message and everything the turn added are stored. A request that
resends its history (more than one non-system message) is answered from that history alone and
leaves memory untouched, so a client that both resends and names ``user`` never gets each turn
twice. ``scope`` is whose conversations these are (``shared.chat.memory.scope_for_key`` of the
caller's API key): another key's ``user`` ids are different conversations.

Degrading instead of failing: when Redis is down, memory is skipped (logged) and the turn is
answered without it; a blank last user message skips retrieval (there is nothing to search for);
lone UTF-16 surrogates in any text (valid JSON, ``"\\ud800"``, but not encodable as UTF-8) become
U+FFFD before anything else sees them.

``bus_tool_caller(bus)`` is the ``call_tool`` that sends a ``ToolRequest`` to the tool executor on
``tools.requests`` and waits for its ``ToolResult``.
"""
from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Sequence
from typing import Any

import redis

from shared.bus import TOOL_REQUESTS, TOOL_RESULTS, Bus, BusError
from shared.bus.messages import ChatEvent, ChatRequest, ToolRequest, new_id
from shared.chat.memory import ANONYMOUS_SCOPE, BUS_SCOPE, ConversationMemory
from shared.chat.turn import GenerateFn, RetrieveFn, ToolFn, TurnEvent, TurnOptions, run_turn
from shared.serving.errors import ServingError

REPLY_TTL_S = 600
_SURROGATE = re.compile("[\ud800-\udfff]")  # what is left of them in a str is unpaired: json.loads joins pairs
log = logging.getLogger(__name__)


def clean_text(value: Any) -> Any:
    """``value`` with every lone surrogate in its strings (nested dicts and lists too) replaced by U+FFFD."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {clean_text(k): clean_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean_text(v) for v in value]
    return value


def uses_memory(messages: Sequence[dict]) -> bool:
    """The memory rule of the module docstring: at most one non-system message (the request has no history)."""
    return sum(1 for m in messages if m.get("role") not in ("system", "developer")) <= 1


def bus_tool_caller(bus: Bus, timeout_s: float = 30.0, max_waiting: int = 64) -> ToolFn:
    """``call_tool(name, arguments) -> {"ok", "output", "error"}`` through the tool executor on the bus.

    Waits up to ``timeout_s`` (the gateway's ``tool_timeout_s``) for the result; after that the call is
    an ``ok=False`` answer saying it timed out (with ``"status": 504``; Redis unreachable: 503). A result that arrives later is discarded, never handed to
    another call: each request has its own reply stream (``tools.results.<request_id>``), which only this
    call reads, and the request's ``deadline`` tells the executor not to start it, nor reply, once
    we have stopped waiting (a reply that slips through lands on that stream and expires unread).
    Up to ``max_waiting`` calls wait at once, each on a thread of this caller's own pool: the event
    loop's default pool (a few threads per CPU) would let a few slow calls queue every other one.
    """
    import time
    from concurrent.futures import ThreadPoolExecutor

    from shared.bus import BusUnreachable
    waiters = ThreadPoolExecutor(max_waiting, thread_name_prefix="tool-wait")

    async def call_tool(name: str, arguments: dict) -> dict:
        request_id = new_id()
        request = ToolRequest(request_id=request_id, name=name, arguments=arguments,
                              reply_to=bus.reply_stream(TOOL_RESULTS, request_id), deadline=time.time() + timeout_s)
        wait = lambda: bus.request(TOOL_REQUESTS, request, request.reply_to, timeout_s=timeout_s)  # noqa: E731
        try:
            result = await asyncio.get_running_loop().run_in_executor(waiters, wait)
        except BusUnreachable as exc:  # "status": what a direct call (/v1/tools/call) answers; a turn ignores it
            return {"ok": False, "output": "", "error": f"the tool call failed: {exc}", "status": 503}
        except BusError as exc:  # no reply in time
            return {"ok": False, "output": "", "error": f"the tool call timed out after {timeout_s:g} s "
                                                        f"(the gateway's tool_timeout_s): {exc}", "status": 504}
        return {"ok": result.ok, "output": result.output, "error": result.error}
    return call_tool


class ChatService:
    def __init__(self, generate: GenerateFn, *, retrieve: RetrieveFn | None = None, call_tool: ToolFn | None = None,
                 memory: ConversationMemory | None = None):
        self.generate, self.retrieve, self.call_tool, self.memory = generate, retrieve, call_tool, memory

    async def _retrieve_nonblank(self, query: str, top_k: int, threshold: float | None) -> list[dict]:
        if not query or not query.strip():  # e.g. a last message of only tool results or an empty string
            return []
        return await self.retrieve(query, top_k, threshold)

    def _load(self, scope: str, conversation_id: str) -> list[dict]:
        try:
            return self.memory.load(scope, conversation_id)
        except redis.RedisError as exc:  # Redis down: answer without memory rather than not at all
            log.warning("conversation memory unavailable, answering without it: %s: %s", type(exc).__name__, exc)
            return []

    def _store(self, scope: str, conversation_id: str, messages: list[dict]) -> None:
        try:
            self.memory.append(scope, conversation_id, messages)
        except redis.RedisError as exc:
            log.warning("conversation memory unavailable, this turn is not remembered: %s: %s",
                        type(exc).__name__, exc)

    async def answer(self, messages: Sequence[dict], options: TurnOptions, conversation_id: str | None = None,
                     *, scope: str = ANONYMOUS_SCOPE, store: bool = True) -> AsyncIterator[TurnEvent]:
        """The turn's events, with memory by the rule of the module docstring. ``store=False`` reads memory but
        adds nothing to it (the 2nd..nth of ``n`` samples of one request, so the conversation keeps one answer)."""
        new = [clean_text(dict(m)) for m in messages]
        conversation_id = clean_text(conversation_id)
        remember = bool(self.memory and conversation_id and uses_memory(new))
        history = self._load(scope, conversation_id) if remember else []
        retrieve = self._retrieve_nonblank if self.retrieve is not None else None
        async for event in run_turn(history + new, options, generate=self.generate, retrieve=retrieve,
                                    call_tool=self.call_tool):
            if event.kind == "done" and remember and store:
                self._store(scope, conversation_id, new + clean_text(event.data.get("added", [])))
            yield event

    async def answer_request(self, bus: Bus, request: ChatRequest, options: TurnOptions) -> None:
        """Answer a bus ``ChatRequest`` onto its ``reply_to`` stream (see the module docstring)."""
        seq = 0

        def emit(kind: str, text: str = "", data: dict | None = None) -> None:
            nonlocal seq
            bus.publish(request.reply_to, ChatEvent(request_id=request.request_id, trace_id=request.trace_id,
                                                    seq=seq, kind=kind, text=text, data=data or {}))
            seq += 1

        try:
            messages = [m.model_dump() for m in request.messages]
            async for event in self.answer(messages, options, request.conversation_id, scope=BUS_SCOPE):
                data = dict(event.data)
                data.pop("added", None)
                emit(event.kind, event.text, data)
        except ServingError as exc:
            emit("error", str(exc), {"status": exc.status})
        except Exception as exc:  # noqa: BLE001 - the client gets the reason; the consumer keeps serving
            emit("error", f"the gateway failed on this request: {type(exc).__name__}: {exc}", {"status": 500})
        bus.expire(request.reply_to, REPLY_TTL_S)
