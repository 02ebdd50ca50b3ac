"""The OpenAI chat-completions wire format: request validation in, responses and SSE chunks out.

``parse_request(body, limits)`` turns raw request bytes into a ``ChatCompletionRequest`` or raises
``ApiError`` with the status and an OpenAI-style error body (``{"error": {"message", "type",
"param", "code"}}``) naming what is wrong: malformed JSON, wrong fields, too many or too long
messages, ``max_tokens`` over the limit, unknown tools. Fields OpenAI clients send that we do not
use (``presence_penalty``, ``logprobs``...) are accepted and ignored; ``n`` > 1 is refused.

Our extensions ride in the request body (``use_rag``) and in an extra ``journey`` object on the
response (retrieved sources, tool calls and results, TTFT and decode speed), which OpenAI clients
ignore. ``tools`` takes OpenAI function definitions; their names select which of our tools the
model may call in this request (it cannot define new ones).
"""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


@dataclass(frozen=True)
class Limits:
    max_request_bytes: int = 256_000
    max_messages: int = 64
    max_message_chars: int = 16_000
    max_tokens: int = 512


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        if self.status == 401:
            kind = "authentication_error"
        elif self.status in (429, 503):
            kind = "rate_limit_error" if self.status == 429 else "overloaded_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


class ContentPart(BaseModel):
    type: Literal["text"]
    text: str


class ApiMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ApiFunction(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str


class ApiTool(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["function"] = "function"
    function: ApiFunction


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1)
    messages: list[ApiMessage] = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = None
    n: int = 1
    user: str | None = Field(None, max_length=128, description="conversation id: the gateway remembers its turns")
    tools: list[ApiTool] | None = None
    use_rag: bool = True

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int) -> int:
        if n != 1:
            raise ValueError("only n=1 is supported; send several requests for several samples")
        return n

    def limit(self, default: int) -> int:
        return self.max_completion_tokens or self.max_tokens or default


def parse_request(body: bytes, limits: Limits, known_tools: set[str]) -> ChatCompletionRequest:
    """A validated request, or ``ApiError`` (see the module docstring)."""
    if len(body) > limits.max_request_bytes:
        raise ApiError(413, f"request body is {len(body)} bytes; the limit is {limits.max_request_bytes}: send "
                            "fewer or shorter messages")
    try:
        raw = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"request body is not valid JSON ({exc}); send a JSON object like "
                            '{"model": ..., "messages": [{"role": "user", "content": "hi"}]}') from None
    if not isinstance(raw, dict):
        raise ApiError(400, f"request body must be a JSON object, got {type(raw).__name__}")
    try:
        request = ChatCompletionRequest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(map(str, first["loc"]))
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()[:5])
        raise ApiError(400, f"invalid request: {problems}", param=param) from None
    if len(request.messages) > limits.max_messages:
        raise ApiError(400, f"{len(request.messages)} messages; the limit is {limits.max_messages}: drop old turns "
                            "(the gateway remembers them when you pass `user`)", param="messages")
    for i, message in enumerate(request.messages):
        if len(message.text()) > limits.max_message_chars:
            raise ApiError(400, f"messages[{i}] has {len(message.text())} characters; the limit is "
                                f"{limits.max_message_chars}", param=f"messages.{i}.content",
                           code="context_length_exceeded")
    if request.limit(0) > limits.max_tokens:
        raise ApiError(400, f"max_tokens={request.limit(0)} is over this server's limit of {limits.max_tokens}",
                       param="max_tokens")
    unknown = [t.function.name for t in request.tools or [] if t.function.name not in known_tools]
    if unknown:
        raise ApiError(400, f"unknown tool {unknown[0]!r}; this server's tools are {sorted(known_tools)}",
                       param="tools", code="unknown_tool")
    return request


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


FINISH = {"stop": "stop", "length": "length", "tool_call": "stop", "tool_rounds": "stop", "abort": "stop",
          "context": "length", "cache_full": "length"}


def completion(cid: str, model: str, answer: str, finish_reason: str | None, usage: dict, extra: dict) -> dict:
    """A non-streamed ``chat.completion`` object."""
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer},
                         "finish_reason": FINISH.get(finish_reason or "stop", "stop")}],
            "usage": {**usage, "total_tokens": usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0)},
            "journey": {**extra, "finish_reason": finish_reason}}


def chunk(cid: str, model: str, delta: dict, finish_reason: str | None = None, extra: dict | None = None) -> str:
    """One SSE ``data:`` line of a streamed ``chat.completion.chunk``."""
    body: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()),
                            "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}
    if extra:
        body["journey"] = extra
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


SSE_DONE = "data: [DONE]\n\n"
