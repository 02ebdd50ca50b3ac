"""The OpenAI chat-completions wire format: request validation in, responses and SSE chunks out.

``parse_request(body, limits, known_tools)`` turns raw request bytes into a ``ChatCompletionRequest``
or raises ``ApiError`` with the status and an OpenAI-style error body (``{"error": {"message",
"type", "param", "code"}}``) naming what is wrong and how to fix it. ``to_chat(request)`` renders
the request's messages into our chat format (``shared.chat_format``); ``tool_specs`` /
``tool_grammar`` say which tools the model is offered and whether a call is forced.

Every field a client can send is implemented, accepted as having no effect (listed), or refused
with a 400 naming it; an unrecognised field is a 400 too (as OpenAI answers one). Nothing is
silently ignored.

Implemented:
- ``messages`` with roles ``system``, ``developer`` (treated as system), ``user``, ``assistant``
  (``content``, ``refusal``, ``tool_calls``) and ``tool`` (``tool_call_id`` must name a call of an
  earlier assistant message); text content parts. An assistant message with several ``tool_calls``
  becomes one assistant ``tool_call`` message per call, each followed by its tool message.
- ``max_tokens`` / ``max_completion_tokens``, ``temperature`` (default 0, greedy, where OpenAI's is
  1), ``top_p``, ``seed``, ``stop`` (a string or up to 4; the reply is cut before it, finish reason
  ``stop``), ``n`` (up to ``Limits.max_n`` independent samples; with ``seed``, choice i uses
  seed + i; streamed too, chunks carry each choice's ``index``), ``logprobs`` / ``top_logprobs``
  (0-20; ``choices[i].logprobs.content``, streamed per chunk; as the engine reports them, the stop
  token the model generated included), ``stream``,
  ``stream_options.include_usage`` (a last chunk with empty ``choices`` and ``usage``),
  ``response_format`` ``text`` / ``json_object`` / ``json_schema`` (constrained decoding in the
  engine; the SDK's ``parse()`` works).
- ``tools`` (the client's functions) and ``tool_choice`` ``none`` (no tool offered), ``auto``,
  ``required`` and named (the call is forced by a grammar). A call the model makes to a client
  function comes back as ``message.tool_calls`` with ``finish_reason: "tool_calls"`` (streamed as
  ``tool_calls`` deltas); the client runs it and sends the result as a ``tool`` message. Offered
  tools the model was not trained on are listed in the system message (``shared.chat.prompt``).
- ``user``: the conversation id of the gateway's memory (not with ``n`` > 1: a 400).

Accepted, no effect (and why): ``parallel_tool_calls`` (the model makes at most one call per reply,
which satisfies both values), ``store: false``, ``metadata`` (nothing is stored), ``service_tier``
``auto``/``default``, ``prompt_cache_key``, ``safety_identifier``, ``modalities: ["text"]``,
``presence_penalty`` / ``frequency_penalty`` of 0, an empty ``logit_bias``, a message's ``name``,
``stream_options.include_obfuscation`` (chunks carry no padding), a tool's ``strict`` (arguments
always match the schema when a call is forced; otherwise they are the model's, returned as written).

Refused with a 400 naming the field: non-zero penalties, a non-empty ``logit_bias``, ``store:
true``, ``audio`` and non-text ``modalities``, ``prediction``, ``reasoning_effort``, ``verbosity``,
``web_search_options``, the legacy ``functions`` / ``function_call`` (use ``tools``), non-text
content parts (images, audio, files), tool types other than ``function``, a ``tool_choice`` other
than none / auto / required / a named function (``allowed_tools``, custom tools), ``stream_options``
without ``stream``, ``top_logprobs`` without ``logprobs``, ``n`` > 1 with ``user``, a forced tool
call together with a JSON ``response_format``.

Our extensions ride in the request body and in an extra ``journey`` object on the response
(retrieved sources, server tool calls and results, TTFT and decode speed), which OpenAI clients
ignore:
- ``use_rag`` (default true): retrieve passages for the last user message when the stack has an index.
- ``journey_tools`` (default ``[]``): our server-side tools this request lets the model use
  (``calculator``, ``search_docs``, ``python``); the gateway runs them and feeds the result back.
  They are an opt-in extension: a client function of the same name is the client's (a 400 when
  both are asked for), and without ``journey_tools`` no server tool runs.

Also here: ``POST /v1/embeddings`` requests (``parse_embedding_request``: ``input`` a string or a list
of non-empty strings, ``encoding_format`` float or base64; token-id arrays and other ``dimensions``
than the model's are refused) and responses, and the ``/v1/models`` objects.
"""
from __future__ import annotations

import base64
import json
import re
import struct
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

MODEL_ALIAS = "journey"  # "the generator's default model", for clients that need a fixed model name
FUNCTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # OpenAI's rule for function names
MAX_STOP = 4
MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True)
class Limits:
    max_request_bytes: int = 256_000
    max_messages: int = 64
    max_message_chars: int = 16_000
    max_tokens: int = 512
    max_n: int = 8
    max_tools: int = 64


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


def quote(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters: client text echoed in an error stays short."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "...'"


# ---------------------------------------------------------------------------------------------- request

class ContentPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str
    text: str | None = None

    @field_validator("type")
    @classmethod
    def _text_only(cls, kind: str) -> str:
        if kind != "text":
            raise ValueError(f"content parts of type {quote(kind)} are not supported: this model reads text "
                             "only; send the text as a string or {\"type\": \"text\", \"text\": ...} parts")
        return kind


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    arguments: str


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=128)
    type: Literal["function"] = "function"
    function: FunctionCall


class ApiMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None  # a participant's name: accepted, no effect (the chat format has no names)
    refusal: str | None = None  # an assistant's refusal (what our responses carry as null)
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    # What the SDK's response message models hold; echoed back in a history, they must be null or empty.
    annotations: list | None = None
    audio: None = None
    function_call: None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text or "" for part in self.content)
        return self.content or self.refusal or ""


class ApiFunction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None  # accepted: see the module docstring

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not FUNCTION_NAME.match(name):
            raise ValueError(f"function name {quote(name)} must be 1-64 letters, digits, _ or -")
        return name


class ApiTool(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str = "function"
    function: ApiFunction

    @field_validator("type")
    @classmethod
    def _function(cls, kind: str) -> str:
        if kind != "function":
            raise ValueError(f"tools of type {quote(kind)} are not supported; only \"function\" tools are")
        return kind


class ChoiceFunction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str


class NamedToolChoice(BaseModel):
    """``tool_choice: {"type": "function", "function": {"name": ...}}``: that function must be called."""
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"] = "function"
    function: ChoiceFunction


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64)
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    description: str | None = None
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    def engine(self) -> dict | None:
        """The ``SamplingParams.response_format`` object (None: free text)."""
        if self.type == "text":
            return None
        if self.type == "json_object":
            return {"type": "json_object"}
        if self.json_schema is None:
            raise ValueError('type "json_schema" needs a json_schema object: {"name": ..., "schema": {...}}')
        schema = self.json_schema.schema_ if self.json_schema.schema_ is not None else {"type": "object"}
        return {"type": "json_schema", "json_schema": {"name": self.json_schema.name, "schema": schema,
                                                       "strict": self.json_schema.strict}}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False
    include_obfuscation: bool | None = None  # accepted: we add no padding to chunks, so nothing to turn off


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1, max_length=256)
    messages: list[ApiMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=-(2 ** 63), lt=2 ** 63)
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    response_format: ResponseFormat | None = None
    tools: list[ApiTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    user: str | None = Field(None, max_length=128, description="conversation id: the gateway remembers its turns")
    use_rag: bool = True
    journey_tools: list[str] = Field(default_factory=list)

    def limit(self, default: int) -> int:
        return self.max_completion_tokens or self.max_tokens or default

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def engine_logprobs(self) -> int | None:
        """``SamplingParams.logprobs``: None (none asked), else how many alternatives per token."""
        return (self.top_logprobs or 0) if self.logprobs else None

    def client_tools(self) -> list[ApiFunction]:
        return [t.function for t in self.tools or []]

    def named_tool(self) -> str | None:
        return None if isinstance(self.tool_choice, (str, type(None))) else self.tool_choice.function.name


# Fields OpenAI defines that we accept only at their no-op value: name -> (is it the no-op?, why refused).
_NO_OP_ONLY: dict[str, tuple[Any, str]] = {
    "presence_penalty": (lambda v: v in (None, 0, 0.0), "penalties are not implemented; send 0 or leave it out"),
    "frequency_penalty": (lambda v: v in (None, 0, 0.0), "penalties are not implemented; send 0 or leave it out"),
    "logit_bias": (lambda v: not v, "logit_bias is not implemented; leave it out"),
    "store": (lambda v: v in (None, False), "this server stores no completions; leave store out"),
    "metadata": (lambda v: v is None or isinstance(v, dict), "metadata must be an object"),
    "service_tier": (lambda v: v in (None, "auto", "default"), "this server has one service tier: auto"),
    "prompt_cache_key": (lambda v: v is None or isinstance(v, str), "prompt_cache_key must be a string"),
    "safety_identifier": (lambda v: v is None or isinstance(v, str), "safety_identifier must be a string"),
    "modalities": (lambda v: v in (None, ["text"]), "this model produces text only: send [\"text\"] or leave it out"),
    "audio": (lambda v: v is None, "audio output is not supported: this model produces text only"),
    "prediction": (lambda v: v is None, "predicted outputs are not implemented; leave prediction out"),
    "reasoning_effort": (lambda v: v is None, "this model does not reason in hidden steps; leave it out"),
    "verbosity": (lambda v: v is None, "verbosity is not implemented; leave it out"),
    "web_search_options": (lambda v: v is None, "web search is not available here; leave it out"),
    "functions": (lambda v: v is None, "the legacy functions field is not supported; send tools instead"),
    "function_call": (lambda v: v is None, "the legacy function_call field is not supported; send tool_choice"),
}


def _problem(error: dict) -> str:
    where = ".".join(map(str, error["loc"])) or "body"
    if error["type"] == "extra_forbidden":
        what = "request argument" if len(error["loc"]) == 1 else "field"
        return (f"unrecognized {what} {where!r}: this server does not implement it (the gateway's "
                "docs list what it does); leave it out")
    return f"{where}: {error['msg']}"


def _first_the_reasons(errors: list[dict]) -> list[dict]:
    """Our own explanations (value errors) before pydantic's per-branch type mismatches of a union."""
    return sorted(errors, key=lambda e: e["type"] != "value_error")


def parse_request(body: bytes, limits: Limits, known_tools: set[str]) -> ChatCompletionRequest:
    """A validated request, or ``ApiError`` (see the module docstring). ``known_tools``: our server tools."""
    if len(body) > limits.max_request_bytes:
        raise ApiError(413, f"request body is {len(body)} bytes; the limit is {limits.max_request_bytes}: send "
                            "fewer or shorter messages")
    raw = _json_object(body)
    for name, (ok, why) in _NO_OP_ONLY.items():
        if name in raw:
            if not ok(raw[name]):
                raise ApiError(400, f"{name}={quote(raw[name])} is not supported: {why}", param=name,
                               code="unsupported_parameter")
            raw.pop(name)
    try:
        request = ChatCompletionRequest.model_validate(raw)
    except ValidationError as exc:
        errors = _first_the_reasons(exc.errors())
        raise ApiError(400, f"invalid request: {'; '.join(_problem(e) for e in errors[:5])}",
                       param=".".join(map(str, errors[0]["loc"])) or None) from None
    _check_limits(request, limits)
    _check_features(request, limits, known_tools)
    return request


def _json_object(body: bytes) -> dict:
    try:
        raw = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"request body is not valid JSON ({exc}); send a JSON object like "
                            '{"model": ..., "messages": [{"role": "user", "content": "hi"}]}') from None
    except RecursionError:
        raise ApiError(400, "request body is nested too deeply to parse; send a flat chat request") from None
    if not isinstance(raw, dict):
        raise ApiError(400, f"request body must be a JSON object, got {type(raw).__name__}")
    return raw


def _check_limits(request: ChatCompletionRequest, limits: Limits) -> None:
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
    if request.n > limits.max_n:
        raise ApiError(400, f"n={request.n} is over this server's limit of {limits.max_n} choices per request",
                       param="n")
    if len(request.tools or []) > limits.max_tools:
        raise ApiError(400, f"{len(request.tools)} tools; the limit is {limits.max_tools}", param="tools")


def _check_features(request: ChatCompletionRequest, limits: Limits, known_tools: set[str]) -> None:
    """The combinations and references a field-by-field check cannot see."""
    stops = request.stops()
    if len(stops) > MAX_STOP or not all(stops):
        raise ApiError(400, f"stop takes a string or up to {MAX_STOP} non-empty strings, got {quote(request.stop)}",
                       param="stop")
    if request.top_logprobs is not None and not request.logprobs:
        raise ApiError(400, "top_logprobs needs logprobs=true", param="top_logprobs")
    if request.stream_options is not None and not request.stream:
        raise ApiError(400, "stream_options is only allowed with stream=true", param="stream_options")
    if request.n > 1 and request.user:
        raise ApiError(400, "n > 1 cannot be combined with `user` (conversation memory would get n answers to "
                            "one turn): send n=1 with `user`, or leave `user` out", param="n")
    if request.response_format is not None:
        try:
            request.response_format.engine()
        except ValueError as exc:
            raise ApiError(400, f"response_format: {exc}", param="response_format") from None
    unknown = [name for name in request.journey_tools if name not in known_tools]
    if unknown:
        raise ApiError(400, f"unknown tool {quote(unknown[0])} in journey_tools; this server's tools are "
                            f"{sorted(known_tools)}", param="journey_tools", code="unknown_tool")
    names = [f.name for f in request.client_tools()]
    if len(set(names)) != len(names):
        raise ApiError(400, f"tools: two functions share a name ({sorted(names)}); names must be unique",
                       param="tools")
    both = sorted(set(names) & set(request.journey_tools))
    if both:
        raise ApiError(400, f"{both[0]!r} is both a client function (tools) and a server tool (journey_tools): "
                            "a client function is the client's to run; rename it or drop it from journey_tools",
                       param="journey_tools")
    named = request.named_tool()
    if named is not None and named not in names:
        raise ApiError(400, f"tool_choice names {quote(named)}, which is not among the request's tools {names}",
                       param="tool_choice")
    if request.tool_choice == "required" and not names and not request.journey_tools:
        raise ApiError(400, "tool_choice=required needs tools (or journey_tools) to call", param="tool_choice")
    if forced(request) and request.response_format is not None and request.response_format.type != "text":
        raise ApiError(400, "a forced tool call (tool_choice required or named) and a JSON response_format cannot "
                            "both constrain one reply; drop one", param="tool_choice")
    _check_history(request)


def _check_history(request: ChatCompletionRequest) -> None:
    """Assistant tool calls parse as JSON objects; every tool message answers one of them."""
    call_ids: set[str] = set()
    for i, message in enumerate(request.messages):
        if message.tool_calls and message.role != "assistant":
            raise ApiError(400, f"messages[{i}]: only assistant messages carry tool_calls", param=f"messages.{i}")
        for j, call in enumerate(message.tool_calls or []):
            if not FUNCTION_NAME.match(call.function.name):
                raise ApiError(400, f"messages[{i}].tool_calls[{j}]: function name {quote(call.function.name)} "
                                    "must be 1-64 letters, digits, _ or -", param=f"messages.{i}.tool_calls")
            try:
                arguments = json.loads(call.function.arguments or "{}")
            except (json.JSONDecodeError, RecursionError):
                arguments = None
            if not isinstance(arguments, dict):
                raise ApiError(400, f"messages[{i}].tool_calls[{j}].function.arguments must be a JSON object "
                                    f"encoded as a string, got {quote(call.function.arguments)}",
                               param=f"messages.{i}.tool_calls.{j}.function.arguments")
            call_ids.add(call.id)
        if message.role == "tool":
            if not message.tool_call_id:
                raise ApiError(400, f"messages[{i}]: a tool message needs tool_call_id (the id of the call it "
                                    "answers)", param=f"messages.{i}.tool_call_id")
            if message.tool_call_id not in call_ids:
                raise ApiError(400, f"messages[{i}]: tool_call_id {quote(message.tool_call_id)} answers no tool call "
                                    "of an earlier assistant message", param=f"messages.{i}.tool_call_id")
        elif message.tool_call_id is not None:
            raise ApiError(400, f"messages[{i}]: only tool messages carry tool_call_id", param=f"messages.{i}")


def forced(request: ChatCompletionRequest) -> bool:
    return request.tool_choice == "required" or request.named_tool() is not None


# ---------------------------------------------------------------------------------------------- rendering

def to_chat(request: ChatCompletionRequest) -> list[dict]:
    """The request's messages in our chat format (see the module docstring)."""
    messages = request.messages
    results = {m.tool_call_id: m for m in messages if m.role == "tool"}
    placed: set[str] = set()
    out: list[dict] = []
    for message in messages:
        role = "system" if message.role == "developer" else message.role
        if role == "tool":
            if message.tool_call_id not in placed:  # already placed right after its call
                out.append({"role": "tool", "content": message.text()})
            continue
        if role == "assistant" and message.tool_calls:
            if message.text():
                out.append({"role": "assistant", "content": message.text()})
            for call in message.tool_calls:
                # Our format, as trained: each call is followed by its result, so results move up to their call.
                out.append({"role": "assistant", "content": "",
                            "tool_call": {"name": call.function.name,
                                          "arguments": json.loads(call.function.arguments or "{}")}})
                if call.id in results:
                    out.append({"role": "tool", "content": results[call.id].text()})
                    placed.add(call.id)
            continue
        out.append({"role": role, "content": message.text()})
    return out


def tool_specs(request: ChatCompletionRequest, server_tools: dict[str, dict]) -> list[dict]:
    """The tools offered to the model: ``{"name", "description", "parameters"}`` of the client's functions
    (none with ``tool_choice`` none) and of the request's ``journey_tools`` (``server_tools``: name -> spec)."""
    client = [] if request.tool_choice == "none" else [
        {"name": f.name, "description": f.description or "", "parameters": f.parameters or
         {"type": "object", "properties": {}}} for f in request.client_tools()]
    return client + [server_tools[name] for name in request.journey_tools]


def tool_grammar(request: ChatCompletionRequest, specs: list[dict]) -> str | None:
    """The llguidance grammar that forces a call (``tool_choice`` required or named), else None."""
    if not forced(request):
        return None
    from shared.engine.errors import EngineError
    from shared.engine.grammar import tool_call_grammar
    try:
        return tool_call_grammar(specs, request.named_tool())
    except EngineError as exc:
        raise ApiError(400, f"tools: {exc}", param="tools") from None


# ---------------------------------------------------------------------------------------------- responses

def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def tool_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


FINISH = {"stop": "stop", "length": "length", "tool_call": "stop", "tool_rounds": "stop", "abort": "stop",
          "context": "length", "cache_full": "length", "tool_calls": "tool_calls", "tool_call_error": "stop"}


def finish_reason(reason: str | None) -> str:
    return FINISH.get(reason or "stop", "stop")


def wire_tool_calls(calls: list[dict]) -> list[dict]:
    """Our tool calls (``{"name", "arguments": dict}``) as OpenAI's ``message.tool_calls``."""
    return [{"id": tool_call_id(), "type": "function",
             "function": {"name": c["name"], "arguments": json.dumps(c.get("arguments", {}), ensure_ascii=False)}}
            for c in calls]


def choice(index: int, answer: str, reason: str | None, tool_calls: list[dict] | None,
           logprobs: list[dict] | None, want_logprobs: bool) -> dict:
    """One ``choices[i]`` of a non-streamed completion."""
    message: dict[str, Any] = {"role": "assistant", "content": answer if answer or not tool_calls else None,
                               "refusal": None}
    if tool_calls:
        message["tool_calls"] = wire_tool_calls(tool_calls)
    return {"index": index, "message": message, "finish_reason": finish_reason(reason),
            "logprobs": {"content": logprobs or [], "refusal": None} if want_logprobs else None}


def usage_of(usage: dict) -> dict:
    prompt, completion_tokens = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
    return {"prompt_tokens": prompt, "completion_tokens": completion_tokens, "total_tokens": prompt + completion_tokens}


def completion(cid: str, model: str, choices: list[dict], usage: dict, extra: dict) -> dict:
    """A non-streamed ``chat.completion`` object."""
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": choices, "usage": usage_of(usage), "system_fingerprint": None, "journey": extra}


def chunk(cid: str, model: str, delta: dict, finish: str | None = None, extra: dict | None = None, *,
          index: int = 0, logprobs: list[dict] | None = None) -> str:
    """One SSE ``data:`` line of a streamed ``chat.completion.chunk`` (one choice's delta)."""
    one: dict[str, Any] = {"index": index, "delta": delta, "finish_reason": finish}
    if logprobs is not None:
        one["logprobs"] = {"content": logprobs, "refusal": None}
    body: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()),
                            "model": model, "choices": [one]}
    if extra:
        body["journey"] = extra
    return sse(body)


def usage_chunk(cid: str, model: str, usage: dict) -> str:
    """The last chunk of a stream with ``stream_options.include_usage``: no choices, the usage."""
    return sse({"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
                "choices": [], "usage": usage_of(usage)})


def tool_call_deltas(calls: list[dict]) -> dict:
    """A streamed delta carrying whole tool calls (one delta per call, OpenAI's ``index`` on each)."""
    return {"tool_calls": [{"index": i, **call} for i, call in enumerate(wire_tool_calls(calls))]}


def sse(body: dict) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


SSE_DONE = "data: [DONE]\n\n"


# ---------------------------------------------------------------------------------------------- embeddings

class EmbeddingRequest(BaseModel):
    """``POST /v1/embeddings``: ``input`` a string or a list of strings (token arrays are refused)."""
    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1, max_length=256)
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = Field(None, max_length=128)  # accepted, no effect (nothing is remembered)

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


def parse_embedding_request(body: bytes, limits: Limits, max_inputs: int = 256) -> EmbeddingRequest:
    if len(body) > limits.max_request_bytes:
        raise ApiError(413, f"request body is {len(body)} bytes; the limit is {limits.max_request_bytes}")
    try:
        request = EmbeddingRequest.model_validate(_json_object(body))
    except ValidationError as exc:
        errors = _first_the_reasons(exc.errors())
        problems = "; ".join(_problem(e) for e in errors[:5])
        hint = " (input takes a string or a list of strings; token-id arrays are not supported)" \
            if any(e["loc"] and e["loc"][0] == "input" for e in errors) else ""
        raise ApiError(400, f"invalid request: {problems}{hint}",
                       param=".".join(map(str, errors[0]["loc"])) or None) from None
    texts = request.texts()
    if not texts or len(texts) > max_inputs:
        raise ApiError(400, f"input holds {len(texts)} texts; send 1 to {max_inputs}", param="input")
    for i, text in enumerate(texts):
        if not text:
            raise ApiError(400, f"input[{i}] is empty; every input must be a non-empty string", param="input")
        if len(text) > limits.max_message_chars:
            raise ApiError(400, f"input[{i}] has {len(text)} characters; the limit is {limits.max_message_chars}",
                           param="input")
    return request


def embeddings_response(model: str, vectors: list[list[float]], encoding_format: str, prompt_tokens: int) -> dict:
    """OpenAI's embeddings list; ``base64`` is the float32 little-endian bytes, as the SDK decodes them."""
    def encode(vector: list[float]):
        if encoding_format == "base64":
            return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
        return vector
    return {"object": "list", "model": model,
            "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}


def model_object(model_id: str, default: bool = False) -> dict:
    """One entry of ``/v1/models`` (and the body of ``/v1/models/{id}``)."""
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "gpt-journey", "default": default}
