"""One request's life in the engine: its state, what each new token does to it, and what comes out.

``Request.accept(token, now, cache_full)`` is the only place a generated token is interpreted, in
this order: inside a tool call, a stop token closes the call (finish_reason "tool_call", the JSON
parsed into ``tool_call``); ``<|tool_call|>`` opens one; a stop token ends the reply ("stop");
otherwise the token's text goes through the detokenizer and the stop strings (a match: "stop").
A request decoding under a grammar (``shared.engine.grammar``) feeds each token to its matcher
first; once the grammar is complete the reply ends ("stop"), the token that completed it kept.
Then the limits: ``max_tokens`` reached or no cache position left for the next token: "length".

What a caller sees:
- ``StreamDelta`` per accepted token: the token id and the text it released (possibly "", when a
  character or a possible stop string is incomplete). The deltas' texts concatenate to the final
  ``text``; their token ids to ``token_ids``.
- ``RequestOutput`` at the end: token ids (the stop token included, as generated), text (stop
  token, stop string and tool-call tokens excluded), finish_reason ("stop", "length", "tool_call",
  "abort"), stop_reason (the stop token id or string), the tool call, and ``RequestMetrics``.
- ``TokenLogprob``s when asked (``SamplingParams.logprobs``): one per generated token, on the
  deltas and the output; ``prompt_logprobs`` on the output, None for the first prompt token.

Tool-call tokens are not streamed as text: the caller gets the parsed call at the end. The engine
only checks the shape ``{"name": str, "arguments": dict}``; argument schemas are ``shared.tools``'
job, before anything runs (DESIGN.md section 3).
"""
from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

import torch

from shared.engine.params import SamplingParams
from shared.engine.sampling import SamplingRow
from shared.engine.text import IncrementalDetokenizer, StopStrings


class Status(Enum):
    WAITING = "waiting"  # queued, no cache slot yet
    PREFILL = "prefill"  # has a slot, prompt partly in the cache
    DECODE = "decode"  # prompt cached, one token per step
    FINISHED = "finished"


@dataclass
class RequestMetrics:
    """Timestamps (``time.perf_counter`` seconds) and counts of one request, and the rates derived."""

    prompt_tokens: int
    arrival_time: float
    scheduled_time: float | None = None  # start of the step that began its prefill
    first_token_time: float | None = None
    finish_time: float | None = None
    output_tokens: int = 0

    @property
    def queue_s(self) -> float | None:
        return None if self.scheduled_time is None else self.scheduled_time - self.arrival_time

    @property
    def ttft_s(self) -> float | None:
        """Time to first token: arrival to the end of the step that sampled it (queueing included)."""
        return None if self.first_token_time is None else self.first_token_time - self.arrival_time

    @property
    def prefill_s(self) -> float | None:
        """From the start of its first prefill step to its first token (its prompt's compute time)."""
        if self.first_token_time is None or self.scheduled_time is None:
            return None
        return self.first_token_time - self.scheduled_time

    @property
    def prefill_tokens_per_s(self) -> float | None:
        return _rate(self.prompt_tokens, self.prefill_s)

    @property
    def decode_s(self) -> float | None:
        if self.finish_time is None or self.first_token_time is None:
            return None
        return self.finish_time - self.first_token_time

    @property
    def tpot_s(self) -> float | None:
        """Time per output token after the first (None with fewer than two tokens)."""
        if self.output_tokens < 2 or self.decode_s is None:
            return None
        return self.decode_s / (self.output_tokens - 1)

    @property
    def decode_tokens_per_s(self) -> float | None:
        return _rate(self.output_tokens - 1, self.decode_s) if self.output_tokens > 1 else None

    def as_dict(self) -> dict:
        keys = ("prompt_tokens", "output_tokens", "queue_s", "ttft_s", "prefill_s", "prefill_tokens_per_s",
                "decode_s", "tpot_s", "decode_tokens_per_s")
        return {k: getattr(self, k) for k in keys}


def parse_tool_call(raw: str) -> tuple[dict | None, str | None]:
    """``(call, None)`` for the JSON between ``<|tool_call|>`` and ``<|end|>``, else ``(None, what is wrong)``.

    ``raw`` may still start with the ``<|tool_call|>`` marker and end with ``<|end|>`` (both dropped).
    """
    raw = raw.removeprefix("<|tool_call|>").removesuffix("<|end|>")
    try:
        call = json.loads(raw)
    except json.JSONDecodeError as e:
        return None, f"the tool call is not valid JSON ({e.msg} at char {e.pos}): {raw[:200]!r}"
    if not (isinstance(call, dict) and isinstance(call.get("name"), str)
            and isinstance(call.get("arguments", {}), dict)):
        return None, f'a tool call must be {{"name": str, "arguments": object}}, got {raw[:200]!r}'
    return {"name": call["name"], "arguments": call.get("arguments", {})}, None


def _rate(count: int, seconds: float | None) -> float | None:
    return count / seconds if seconds else None


@dataclass(frozen=True)
class TokenLogprob:
    """A token's log-probability under the model and the ``k`` most likely tokens at its position
    (``top``: ``(token_id, logprob)`` pairs, most likely first)."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


def token_logprobs(logprobs: torch.Tensor, tokens: torch.Tensor | list[int], k: int) -> list[TokenLogprob]:
    """``TokenLogprob`` of ``tokens[i]`` under row i of ``logprobs [R, V]`` (log_softmax'ed), top-``k`` each."""
    tokens = torch.as_tensor(tokens, device=logprobs.device)
    chosen = logprobs.gather(1, tokens[:, None])[:, 0].tolist()
    if k:
        values, ids = logprobs.topk(k, dim=-1)
        tops = [tuple(zip(i, v)) for i, v in zip(ids.tolist(), values.tolist())]
    else:
        tops = [()] * len(chosen)
    return [TokenLogprob(t, lp, top) for t, lp, top in zip(tokens.tolist(), chosen, tops)]


@dataclass(frozen=True)
class StreamDelta:
    """What one step added to a request; ``finished`` on the last one, with its ``finish_reason``.
    ``logprobs``: one ``TokenLogprob`` per token of ``token_ids`` when the request asked for them."""

    request_id: str
    token_ids: tuple[int, ...]
    text: str
    finished: bool = False
    finish_reason: str | None = None
    logprobs: tuple[TokenLogprob, ...] | None = None


@dataclass
class RequestOutput:
    """A finished request (see the module docstring)."""

    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: str
    stop_reason: int | str | None
    tool_call: dict | None
    tool_call_text: str | None
    tool_call_error: str | None
    metrics: RequestMetrics
    logprobs: list[TokenLogprob] | None = None
    prompt_logprobs: list[TokenLogprob | None] | None = None


@dataclass(frozen=True)
class SpecialTokens:
    """Token ids the engine treats specially, resolved once from the tokenizer."""

    stop_ids: frozenset[int] = frozenset()  # default stops: <|end|>, <|endoftext|>
    tool_call: int | None = None  # <|tool_call|>


@dataclass
class Request:
    """Engine-internal state of one request (callers hold a ``RequestHandle``)."""

    request_id: str
    prompt: list[int]
    params: SamplingParams
    specials: SpecialTokens
    tokenizer: object | None
    metrics: RequestMetrics
    generator: torch.Generator | None = None
    seen: torch.Tensor | None = None
    on_delta: Callable[[StreamDelta], None] | None = None
    grammar: object | None = None  # a shared.engine.grammar.GrammarMatcher when decoding is constrained
    keep_deltas: bool = True  # queue deltas for an iterating caller (off for generate(), which reads outputs)
    status: Status = Status.WAITING
    slot: int | None = None
    num_cached: int = 0  # tokens whose K/V are in the cache
    output_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    deltas: deque = field(default_factory=deque)  # produced, not yet read by an iterating caller

    def __post_init__(self):
        p = self.params
        self.stop_ids = frozenset(p.stop_token_ids) | (frozenset() if p.ignore_eos else self.specials.stop_ids)
        self.detok = IncrementalDetokenizer(self.tokenizer) if self.tokenizer is not None else None
        self.stop_strings = StopStrings(p.stop)
        self.tool_ids: list[int] | None = None  # not None while inside <|tool_call|> ... <|end|>
        self.tool_call: dict | None = None
        self.tool_call_error: str | None = None
        self.sampling_row = SamplingRow(p, self.generator, self.seen)
        self.logprobs: list[TokenLogprob] | None = [] if p.logprobs is not None else None
        self.prompt_logprobs: list[TokenLogprob | None] | None = [None] if p.prompt_logprobs is not None else None

    @property
    def finished(self) -> bool:
        return self.status is Status.FINISHED

    # ------------------------------------------------------------------ tokens in

    def accept(self, token: int, now: float, cache_full: bool, logprob: TokenLogprob | None = None) -> StreamDelta:
        """Record a sampled token and return its delta (see the module docstring for the rules)."""
        self.output_ids.append(token)
        if self.logprobs is not None and logprob is not None:
            self.logprobs.append(logprob)
        self.metrics.output_tokens += 1
        if self.metrics.first_token_time is None:
            self.metrics.first_token_time = now
        if self.seen is not None:
            self.seen[token] = True
        grammar_done = False
        if self.grammar is not None:
            # A token the mask allowed always advances the matcher; False only if the mask allowed nothing.
            grammar_done = not self.grammar.consume(token) or self.grammar.complete
        text, reason = self._interpret(token)
        if reason is None and grammar_done:
            reason = "stop"
        if reason is None and (len(self.output_ids) >= self.params.max_tokens or cache_full):
            reason = "length"
            if self.tool_ids is not None:
                self.tool_call_error = ("the reply hit its length limit inside a tool call; raise max_tokens "
                                        "(or the engine's max_seq_len)")
        if reason is not None and not isinstance(self.stop_reason, str):
            # Release what was held back: a cut character, a tail that could have begun a stop string.
            tail, stop = self.stop_strings.feed(self.detok.flush() if self.detok else "")
            if stop is None:
                tail += self.stop_strings.flush()
            elif reason != "tool_call":  # a tool call stays a tool call; its text before it is cut all the same
                reason, self.stop_reason = "stop", stop
            text += tail
        self.text += text
        if reason is not None:
            self._finish(reason, now)
        return self._emit(StreamDelta(self.request_id, (token,), text, reason is not None, reason,
                                      (logprob,) if logprob is not None and self.logprobs is not None else None))

    def _interpret(self, token: int) -> tuple[str, str | None]:
        if self.tool_ids is not None:
            if token in self.stop_ids or token in self.specials.stop_ids:
                self._parse_tool_call()
                return "", "tool_call"
            self.tool_ids.append(token)
            return "", None
        if token == self.specials.tool_call and self.params.parse_tool_calls:
            self.tool_ids = []
            return "", None
        if token in self.stop_ids:
            self.stop_reason = token
            return "", "stop"
        text, stop = self.stop_strings.feed(self.detok.push(token) if self.detok else "")
        if stop is not None:
            self.stop_reason = stop
            return text, "stop"
        return text, None

    def _parse_tool_call(self) -> None:
        self.tool_call, self.tool_call_error = parse_tool_call(self.tool_call_text or "")

    @property
    def tool_call_text(self) -> str | None:
        if self.tool_ids is None:
            return None
        if self.tokenizer is None:
            return ""
        return self.tokenizer.decode(self.tool_ids, skip_special_tokens=False)

    # ------------------------------------------------------------------ ending and output

    def abort(self, now: float) -> StreamDelta:
        tail = (self.detok.flush() if self.detok else "")
        text, _ = self.stop_strings.feed(tail)
        text += self.stop_strings.flush()
        self.text += text
        self._finish("abort", now)
        return self._emit(StreamDelta(self.request_id, (), text, True, "abort"))

    def _finish(self, reason: str, now: float) -> None:
        self.finish_reason = reason
        self.status = Status.FINISHED
        self.metrics.finish_time = now

    def _emit(self, delta: StreamDelta) -> StreamDelta:
        # on_delta callbacks are the engine's to call, once its step is consistent (a raising
        # callback must not leave the scheduler half-updated).
        if self.keep_deltas:
            self.deltas.append(delta)
        return delta

    def output(self) -> RequestOutput:
        return RequestOutput(self.request_id, list(self.prompt), list(self.output_ids), self.text,
                             self.finish_reason, self.stop_reason, self.tool_call, self.tool_call_text,
                             self.tool_call_error, self.metrics, self.logprobs, self.prompt_logprobs)
