"""The typed messages that travel on the bus (docs/architecture.md, Bus), and their wire encoding.

Every message carries ``schema_version``, ``message_id`` (the dedupe key: a redelivered message has
the same id), ``trace_id`` (follows one chat turn through every service) and ``created_at`` (unix
seconds). On a Redis stream an entry has two fields: ``type`` (the message class's ``TYPE``) and
``data`` (the model as JSON). ``decode`` turns an entry back into its model and raises
``MalformedMessage`` naming what is wrong; consumers route such entries to the dead-letter stream.

Streams (``shared.bus.streams`` names them):
- ``chat.requests``: ``ChatRequest`` from the frontend (or any client) to the gateway;
- the request's ``reply_to`` stream: ``ChatEvent``s back, in ``seq`` order, ending with ``done`` or ``error``;
- ``tools.requests``: ``ToolRequest`` from the gateway to the tool executor, ``ToolResult`` on ``reply_to``;
- ``models.events``: ``ModelReload``, read by every generator replica (a broadcast, no consumer group).
"""
from __future__ import annotations

import json
import time
import uuid
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

SCHEMA_VERSION = 1
MAX_CONTENT_CHARS = 100_000  # one chat message; the gateway applies its own, tighter, limits


class MalformedMessage(ValueError):
    """A stream entry that is not a message this code understands (bad JSON, unknown type, bad fields)."""


def new_id() -> str:
    return uuid.uuid4().hex


class Message(BaseModel):
    """Base of every bus message."""
    model_config = ConfigDict(extra="forbid")
    TYPE: ClassVar[str] = ""

    schema_version: int = SCHEMA_VERSION
    message_id: str = Field(default_factory=new_id, min_length=1, max_length=128)
    trace_id: str = Field(default_factory=new_id, min_length=1, max_length=128)
    created_at: float = Field(default_factory=time.time)


class ChatMessage(BaseModel):
    """One turn of a conversation, OpenAI-style."""
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant", "tool"]
    content: str = Field(max_length=MAX_CONTENT_CHARS)


class ChatRequest(Message):
    """A chat turn to answer. ``reply_to`` is the stream the gateway writes ``ChatEvent``s to."""
    TYPE: ClassVar[str] = "chat.request"
    request_id: str = Field(default_factory=new_id, min_length=1, max_length=128)
    conversation_id: str | None = Field(None, max_length=128, description="memory key; None = stateless")
    model: str | None = Field(None, description="artifact name; None = the generator's current model")
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.0, ge=0.0, le=5.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    use_rag: bool = True
    use_tools: bool = True
    reply_to: str = Field(min_length=1, max_length=256)


ChatEventKind = Literal["token", "sources", "tool_call", "tool_result", "metrics", "done", "error"]


class ChatEvent(Message):
    """One event of a chat turn's answer.

    ``token``: ``text`` is the next piece of the answer. ``sources``: ``data["sources"]`` lists the
    retrieved passages (``source``, ``text``, ``score``). ``tool_call`` / ``tool_result``:
    ``data`` holds the call (``name``, ``arguments``) or the result (``ok``, ``output``, ``error``).
    ``metrics``: ``data`` holds ``ttft_s``, ``decode_tokens_per_s``, ... ``done``: ``text`` is the
    whole answer, ``data["finish_reason"]``. ``error``: ``text`` says what went wrong, ``data["status"]``
    is the HTTP-style status (4xx: the request, 5xx: us).
    """
    TYPE: ClassVar[str] = "chat.event"
    request_id: str = Field(min_length=1, max_length=128)
    seq: int = Field(ge=0)
    kind: ChatEventKind
    text: str = ""
    data: dict[str, Any] = Field(default_factory=dict)


class ToolRequest(Message):
    """Run one tool call; the result goes to ``reply_to`` as a ``ToolResult``."""
    TYPE: ClassVar[str] = "tool.request"
    request_id: str = Field(default_factory=new_id, min_length=1, max_length=128)
    name: str = Field(min_length=1, max_length=64)
    arguments: dict[str, Any] = Field(default_factory=dict)
    reply_to: str = Field(min_length=1, max_length=256)
    deadline: float | None = Field(None, description="time.time() after which the caller no longer waits: the "
                                   "executor neither starts the call nor replies after it; None = no limit")


class ToolResult(Message):
    """The answer to a ``ToolRequest``: ``output`` when ``ok``, else ``error`` saying what was wrong."""
    TYPE: ClassVar[str] = "tool.result"
    request_id: str = Field(min_length=1, max_length=128)
    ok: bool
    output: str = ""
    error: str = ""
    duration_s: float = 0.0


class ModelReload(Message):
    """Tell every generator replica to load ``artifact`` (a registry name or path) and switch to it."""
    TYPE: ClassVar[str] = "model.reload"
    artifact: str = Field(min_length=1, max_length=1024)


MESSAGE_TYPES: dict[str, type[Message]] = {cls.TYPE: cls for cls in (ChatRequest, ChatEvent, ToolRequest,
                                                                   ToolResult, ModelReload)}


def encode(message: Message) -> dict[str, str]:
    """The stream entry fields of ``message``."""
    if message.TYPE not in MESSAGE_TYPES:
        raise TypeError(f"{type(message).__name__} is not a registered bus message type")
    return {"type": message.TYPE, "data": message.model_dump_json()}


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def decode(fields: dict[Any, Any]) -> Message:
    """The message of a stream entry; ``MalformedMessage`` saying what is wrong with it."""
    fields = {_text(k): v for k, v in fields.items()}
    kind = _text(fields.get("type", ""))
    cls = MESSAGE_TYPES.get(kind)
    if cls is None:
        raise MalformedMessage(f"unknown message type {kind!r}; known types: {sorted(MESSAGE_TYPES)}")
    if "data" not in fields:
        raise MalformedMessage(f"{kind} entry has no 'data' field (fields: {sorted(fields)})")
    try:
        payload = json.loads(_text(fields["data"]))
    except json.JSONDecodeError as exc:
        raise MalformedMessage(f"{kind} entry's data is not JSON ({exc.msg} at char {exc.pos})") from None
    if not isinstance(payload, dict):
        raise MalformedMessage(f"{kind} entry's data must be a JSON object, got {type(payload).__name__}")
    if payload.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
        raise MalformedMessage(f"{kind} has schema_version {payload.get('schema_version')!r}; this code reads "
                               f"version {SCHEMA_VERSION}")
    try:
        return cls.model_validate(payload)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'data'}: {e['msg']}" for e in exc.errors()[:5])
        raise MalformedMessage(f"invalid {kind}: {problems}") from None
