"""The gateway's work without the HTTP: conversation memory around a turn, tools over the bus, bus requests.

``ChatService.answer(messages, options, conversation_id)`` loads the conversation's history from
memory, runs ``shared.chat.turn.run_turn`` and, when the turn completes, stores the new user
message and everything the turn added. ``answer_request(ChatRequest)`` does the same for a request
that came over the bus and writes every event to the request's ``reply_to`` stream as a numbered
``ChatEvent`` (an error becomes one ``error`` event with its status, so the client never hangs).
``bus_tool_caller(bus)`` is the ``call_tool`` that sends a ``ToolRequest`` to the tool executor on
``tools.requests`` and waits for its ``ToolResult``.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from shared.bus import TOOL_REQUESTS, TOOL_RESULTS, Bus, BusError
from shared.bus.messages import ChatEvent, ChatRequest, ToolRequest, new_id
from shared.chat.memory import ConversationMemory
from shared.chat.turn import GenerateFn, RetrieveFn, ToolFn, TurnEvent, TurnOptions, run_turn
from shared.serving.errors import ServingError

REPLY_TTL_S = 600


def bus_tool_caller(bus: Bus, timeout_s: float = 30.0) -> ToolFn:
    """``call_tool(name, arguments) -> {"ok", "output", "error"}`` through the tool executor on the bus."""
    async def call_tool(name: str, arguments: dict) -> dict:
        request_id = new_id()
        request = ToolRequest(request_id=request_id, name=name, arguments=arguments,
                              reply_to=bus.reply_stream(TOOL_RESULTS, request_id))
        try:
            result = await asyncio.to_thread(bus.request, TOOL_REQUESTS, request, request.reply_to,
                                             timeout_s=timeout_s)
        except BusError as exc:
            return {"ok": False, "output": "", "error": f"the tool executor did not answer: {exc}"}
        return {"ok": result.ok, "output": result.output, "error": result.error}
    return call_tool


class ChatService:
    def __init__(self, generate: GenerateFn, *, retrieve: RetrieveFn | None = None, call_tool: ToolFn | None = None,
                 memory: ConversationMemory | None = None):
        self.generate, self.retrieve, self.call_tool, self.memory = generate, retrieve, call_tool, memory

    async def answer(self, messages: Sequence[dict], options: TurnOptions,
                     conversation_id: str | None = None) -> AsyncIterator[TurnEvent]:
        history = self.memory.load(conversation_id) if self.memory and conversation_id else []
        new = [dict(m) for m in messages]
        async for event in run_turn(history + new, options, generate=self.generate, retrieve=self.retrieve,
                                    call_tool=self.call_tool):
            if event.kind == "done" and self.memory and conversation_id:
                self.memory.append(conversation_id, new + event.data.get("added", []))
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
            async for event in self.answer(messages, options, request.conversation_id):
                data = dict(event.data)
                data.pop("added", None)
                emit(event.kind, event.text, data)
        except ServingError as exc:
            emit("error", str(exc), {"status": exc.status})
        except Exception as exc:  # noqa: BLE001 - the client gets the reason; the consumer keeps serving
            emit("error", f"the gateway failed on this request: {type(exc).__name__}: {exc}", {"status": 500})
        bus.expire(request.reply_to, REPLY_TTL_S)
