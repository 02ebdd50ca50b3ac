"""What a caller may ask of the engine: ``SamplingParams`` per request, ``EngineConfig`` per engine.

Both are frozen dataclasses whose ``validate`` raises ``EngineError`` naming the field, the bad
value and the allowed range, so a bad request fails at ``submit`` and never inside a decode step
shared with other requests. Defaults follow the OpenAI-style API the gateway exposes
(temperature 1, no top-k/top-p cut, 16 tokens).

This module holds no logic beyond validation; sampling lives in ``shared.engine.sampling``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from shared.engine.errors import EngineError

LINEAR_BACKENDS = ("auto", "dense", "onednn", "gemv")
DTYPES = ("float32", "bfloat16")
MAX_LOGPROBS = 20  # alternatives per token, as OpenAI's top_logprobs


@dataclass(frozen=True)
class SamplingParams:
    """How to generate one request's continuation.

    - ``max_tokens``: most tokens to generate (the stop token, when one ends the reply, counts).
    - ``temperature``: 0 means greedy (argmax); otherwise logits are divided by it before sampling.
    - ``top_k``: keep only the k most likely tokens (0: off). ``top_p``: keep the smallest set of most
      likely tokens whose probability reaches p (1.0: off). Both apply only when sampling.
    - ``repetition_penalty``: HF/CTRL style, over prompt and generated tokens: a seen token's logit is
      divided by it when positive and multiplied when negative (1.0: off). Applies to greedy too.
    - ``stop``: strings that end the reply; the text is cut before the earliest match.
    - ``stop_token_ids``: token ids that end the reply, in addition to the engine's defaults
      (``<|end|>`` and ``<|endoftext|>`` when the tokenizer has them) unless ``ignore_eos``.
    - ``ignore_eos``: do not stop at the default stop tokens (benchmarks generate exactly ``max_tokens``).
    - ``seed``: seeds this request's own random generator, so a sampled reply is the same whatever
      else shares its batches. None: the engine draws one from its own seeded sequence.
    - ``parse_tool_calls``: treat ``<|tool_call|>{json}<|end|>`` as a tool call (finish_reason
      "tool_call", JSON parsed); False leaves those tokens in the text like any other.
    - ``logprobs``: None, or k in [0, 20]: each generated token's logprob and the k most likely
      alternatives, from ``log_softmax`` of the model's raw logits (before penalty, temperature,
      top-k/p and grammar mask; what OpenAI and vLLM report).
    - ``prompt_logprobs``: None, or k in [0, 20]: the same for every prompt token after the first,
      given the tokens before it (scoring; the prompt's logits are computed for every position).
    - ``response_format``: OpenAI's object, ``{"type": "text"}`` (free), ``{"type": "json_object"}``
      or ``{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}``; ``grammar``: a raw
      llguidance Lark grammar. Either constrains decoding (``shared.engine.grammar``); the reply
      ends ("stop") when the grammar is complete. Not both at once.
    """

    max_tokens: int = 16
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    seed: int | None = None
    parse_tool_calls: bool = True
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    response_format: dict | None = None
    grammar: str | None = None

    def __post_init__(self):
        # Accept lists (JSON bodies) but store tuples, so params stay hashable and immutable.
        for name in ("stop", "stop_token_ids"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = (value,)
            if isinstance(value, (list, tuple)):
                object.__setattr__(self, name, tuple(value))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def validate(self, vocab_size: int) -> None:
        """Raise ``EngineError`` for the first field out of range."""
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens <= 0:
            raise EngineError(f"max_tokens must be a positive int, got {self.max_tokens!r}; "
                              "ask for at least one token")
        _check_number("temperature", self.temperature, low=0.0, hint="use 0 for greedy decoding")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise EngineError(f"top_k must be an int >= 0, got {self.top_k!r}; use 0 to turn top-k off")
        _check_number("top_p", self.top_p, low=0.0, high=1.0, low_open=True, hint="use 1.0 to turn top-p off")
        _check_number("repetition_penalty", self.repetition_penalty, low=0.0, low_open=True,
                      hint="use 1.0 for no penalty, values > 1 discourage repeats")
        if not isinstance(self.stop, tuple) or not all(isinstance(s, str) and s for s in self.stop):
            raise EngineError(f"stop must be a list of non-empty strings, got {self.stop!r}")
        bad = [t for t in self.stop_token_ids
               if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab_size]
        if not isinstance(self.stop_token_ids, tuple) or bad:
            raise EngineError(f"stop_token_ids must be ints in [0, {vocab_size}) (the model's vocabulary), "
                              f"got {list(self.stop_token_ids)!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or not -2**63 <= self.seed < 2**64):
            raise EngineError(f"seed must be an int in [-2**63, 2**64) (a 64-bit seed) or None, got {self.seed!r}")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or not 0 <= value <= MAX_LOGPROBS):
                raise EngineError(f"{name} must be None or an int in [0, {MAX_LOGPROBS}] (how many alternatives "
                                  f"per token), got {value!r}")
        if self.response_format is not None and not isinstance(self.response_format, dict):
            raise EngineError(f"response_format must be an object like {{'type': 'json_object'}}, "
                              f"got {self.response_format!r}")
        if self.grammar is not None and (not isinstance(self.grammar, str) or not self.grammar.strip()):
            raise EngineError(f"grammar must be a non-empty Lark grammar string, got {self.grammar!r}")
        if self.grammar is not None and (self.response_format or {}).get("type", "text") != "text":
            raise EngineError("give either grammar or a response_format other than text, not both")


def _check_number(name: str, value, *, low: float, high: float = math.inf, low_open: bool = False,
                  hint: str) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and value <= high
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {high}{']' if math.isfinite(high) else ')'}"
        raise EngineError(f"{name} must be a number in {interval}, got {value!r}; {hint}")


@dataclass(frozen=True)
class EngineConfig:
    """Capacity and speed settings of one engine (one model replica).

    - ``max_batch_size``: KV-cache slots, i.e. most requests resident at once (decoding or prefilling).
    - ``max_seq_len``: tokens per slot (prompt + reply); None: the model's context length. The cache
      holds ``2 * n_layer * max_batch_size * max_seq_len * n_embd`` values, allocated up front.
    - ``max_tokens_per_step``: token budget of one forward pass (decode tokens first, then prompt
      chunks); bounds how long a new prompt can stall the running decodes. Must be >= max_batch_size.
    - ``prefill_chunk``: most prompt tokens of one request per step (None: the budget).
    - ``linear_backend``: "auto", "dense" (PyTorch matmul, transposed weights) or "onednn" (weights
      prepacked for oneDNN: about 2x faster for small batches on x86 CPUs) or "gemv" (our fp32 GEMV
      kernel for 1-4 rows, ~1.5x onednn at single-stream decode; oneDNN for more rows, holding the
      weights twice); "auto" picks gemv on CPU when our kernels build, else onednn when PyTorch has it.
    - ``dtype``: "float32" or "bfloat16" for weights, activations and the cache.
    - ``seed``: seeds the sequence the per-request seeds are drawn from when a request gives none.
    """

    max_batch_size: int = 16
    max_seq_len: int | None = None
    max_tokens_per_step: int = 512
    prefill_chunk: int | None = None
    linear_backend: str = "auto"
    dtype: str = "float32"
    seed: int = 0

    def validate(self, block_size: int) -> None:
        for name in ("max_batch_size", "max_tokens_per_step"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise EngineError(f"EngineConfig.{name} must be a positive int, got {value!r}")
        seq = self.max_seq_len
        if seq is not None and (isinstance(seq, bool) or not isinstance(seq, int) or not 0 < seq <= block_size):
            raise EngineError(f"EngineConfig.max_seq_len={self.max_seq_len!r} must be in [1, {block_size}] (the "
                              "model's context length: positions past it have no embedding); lower it or use None")
        if self.max_tokens_per_step < self.max_batch_size:
            raise EngineError(f"EngineConfig.max_tokens_per_step={self.max_tokens_per_step} is below max_batch_size="
                              f"{self.max_batch_size}: a full decode batch would not fit one step; raise the budget "
                              "or lower the batch size")
        if self.prefill_chunk is not None and not (isinstance(self.prefill_chunk, int) and self.prefill_chunk > 0):
            raise EngineError(f"EngineConfig.prefill_chunk must be a positive int or None, got {self.prefill_chunk!r}")
        if self.linear_backend not in LINEAR_BACKENDS:
            raise EngineError(f"EngineConfig.linear_backend={self.linear_backend!r} is unknown; choose one of "
                              f"{list(LINEAR_BACKENDS)}")
        if self.dtype not in DTYPES:
            raise EngineError(f"EngineConfig.dtype={self.dtype!r} is unsupported; choose 'float32' or 'bfloat16'")
