"""The OpenAI legacy completions wire format (``POST /v1/completions``): request in, response out.

``parse_completion_request(body, limits)`` turns raw bytes into a ``CompletionRequest`` or raises
``ApiError`` (400, or 413 for a body over the limit) naming the field and the fix. ``prompts()``
lists the request's prompts: ``prompt`` may be a string, a list of strings (a batch: one choice
per prompt), a list of token ids, or a list of token-id lists, as lm-eval's ``local-completions``
sends. ``completion_response`` builds the ``text_completion`` body from one result per prompt
(``Generator.complete_prompt``'s dicts).

What works: ``echo``, ``logprobs`` (0-20; 0-5 in OpenAI's API, vLLM allows 20), ``max_tokens``
(0 allowed: score the prompt only), ``temperature``, ``top_p``, ``seed``, ``stop`` (a string or up
to 16 strings). Refused with a 400 that names them: ``n`` > 1, ``best_of`` > 1, ``stream``,
``suffix``, ``logit_bias``, non-zero ``presence_penalty`` / ``frequency_penalty``. ``user`` and
fields OpenAI does not define are accepted and have no effect (lm-eval and other clients add their own).
"""
from __future__ import annotations

import json
import time
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.chat.openai_api import ApiError, Limits

MAX_LOGPROBS = 20
MAX_PROMPTS = 64
MAX_STOPS = 16  # OpenAI allows 4; lm-eval's local-completions sends a task's `until` list whole


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(max_length=256)
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(default=None, ge=0)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    n: int = Field(default=1, ge=1)
    best_of: int | None = Field(default=None, ge=1)
    stream: bool = False
    suffix: str | None = None
    logit_bias: dict[str, float] | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    user: str | None = None

    def prompts(self) -> list[str | list[int]]:
        """One entry per choice: a string or a list of token ids."""
        if isinstance(self.prompt, str):
            return [self.prompt]
        if not self.prompt:
            return []
        if all(isinstance(p, int) for p in self.prompt):
            return [list(self.prompt)]
        return list(self.prompt)

    def limit(self, default: int) -> int:
        """``max_tokens``, or ``default`` when the request gives none (0 is a real value: score only)."""
        return default if self.max_tokens is None else self.max_tokens

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


def parse_completion_request(body: bytes, limits: Limits, default_max_tokens: int) -> CompletionRequest:
    """A validated request, or ``ApiError`` (see the module docstring)."""
    if len(body) > limits.max_request_bytes:
        raise ApiError(413, f"request body is {len(body)} bytes; the limit is {limits.max_request_bytes}: send "
                            "fewer or shorter prompts")
    try:
        raw = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ApiError(400, f"request body is not valid JSON ({type(exc).__name__}); send a JSON object like "
                            '{"model": ..., "prompt": "Once upon a time", "max_tokens": 16}') from None
    if not isinstance(raw, dict):
        raise ApiError(400, f"request body must be a JSON object, got {type(raw).__name__}")
    try:
        request = CompletionRequest.model_validate(raw)
    except (ValidationError, RecursionError) as exc:
        if isinstance(exc, RecursionError):
            raise ApiError(400, "request body is nested too deeply") from None
        first = exc.errors()[0]
        param = ".".join(map(str, first["loc"][:1]))
        problems = "; ".join(f"{'.'.join(map(str, e['loc'][:2])) or 'body'}: {e['msg']}" for e in exc.errors()[:3])
        raise ApiError(400, f"invalid request: {problems}", param=param or None) from None
    _check(request, limits, default_max_tokens)
    return request


def _check(request: CompletionRequest, limits: Limits, default_max_tokens: int) -> None:
    refused = {"n": request.n > 1, "best_of": (request.best_of or 1) > 1, "stream": request.stream,
               "suffix": bool(request.suffix), "logit_bias": bool(request.logit_bias),
               "presence_penalty": request.presence_penalty != 0, "frequency_penalty": request.frequency_penalty != 0}
    for name, asked in refused.items():
        if asked:
            raise ApiError(400, f"{name} is not supported by this server's /v1/completions; "
                                f"{'send one request per sample' if name in ('n', 'best_of') else 'leave it out'}",
                           param=name, code="unsupported_parameter")
    prompts = request.prompts()
    if not prompts:
        raise ApiError(400, "prompt is empty; give a string, a list of strings, or token ids", param="prompt")
    if len(prompts) > MAX_PROMPTS:
        raise ApiError(400, f"{len(prompts)} prompts in one request; the limit is {MAX_PROMPTS}", param="prompt")
    for i, prompt in enumerate(prompts):
        if not prompt:
            raise ApiError(400, f"prompt[{i}] is empty; give at least one character or token", param="prompt")
        if isinstance(prompt, str) and len(prompt) > limits.max_message_chars:
            raise ApiError(400, f"prompt[{i}] has {len(prompt)} characters; the limit is {limits.max_message_chars}",
                           param="prompt", code="context_length_exceeded")
        if isinstance(prompt, str) and any(0xD800 <= ord(c) <= 0xDFFF for c in prompt):
            raise ApiError(400, f"prompt[{i}] holds a lone surrogate (invalid Unicode); send valid UTF-8 text",
                           param="prompt")
        if isinstance(prompt, list) and any(t < 0 for t in prompt):
            raise ApiError(400, f"prompt[{i}] has a negative token id; token ids come from the model's tokenizer",
                           param="prompt")
    stops = request.stops()
    if len(stops) > MAX_STOPS or not all(stops):
        raise ApiError(400, f"stop takes up to {MAX_STOPS} non-empty strings", param="stop")
    if request.limit(default_max_tokens) > limits.max_tokens:
        raise ApiError(400, f"max_tokens={request.max_tokens} is over this server's limit of {limits.max_tokens}",
                       param="max_tokens")


def sampling_params(request: CompletionRequest, default_max_tokens: int) -> dict[str, Any]:
    """The generator's ``params`` dict for this request."""
    params: dict[str, Any] = {"max_tokens": request.limit(default_max_tokens), "temperature": request.temperature,
                              "top_p": request.top_p, "seed": request.seed, "stop": request.stops()}
    if request.logprobs is not None:
        params["logprobs"] = request.logprobs
    return params


def completion_response(model: str, results: list[dict]) -> dict[str, Any]:
    """The ``text_completion`` body: one choice per prompt, usage summed."""
    usage = {k: sum(r["usage"][k] for r in results) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
    return {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
            "model": model, "usage": usage,
            "choices": [{"index": i, "text": r["text"], "logprobs": r.get("logprobs"),
                         "finish_reason": r["finish_reason"]} for i, r in enumerate(results)]}


__all__ = ["CompletionRequest", "parse_completion_request", "sampling_params", "completion_response"]
