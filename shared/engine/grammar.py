"""Constrained decoding: a request's grammar as a mask over the vocabulary at every step (llguidance).

Why a library, and why llguidance: constrained decoding has two hard parts, compiling a JSON schema
(or a grammar) into something that can be matched, and turning the matcher's state into the set of
tokens that keep the output valid, for a byte-level BPE vocabulary where a token spans parts of
several grammar terminals. llguidance does both (an Earley parser over a lexer, walked against a
token trie; a mask costs tens of microseconds), takes JSON schemas and Lark grammars, and knows
special tokens by name. What stays ours is the engine loop: when a mask applies (after logprobs are
read, before sampling), how the sampled token is fed back, and that a complete grammar ends the
reply. We do not hand-write a JSON grammar.

Contract:
- ``grammar_for(params)``: the llguidance grammar of ``SamplingParams.response_format`` /
  ``grammar``, or None when decoding is free; ``EngineError`` naming the problem for an unknown
  format type, a missing or invalid schema, an invalid Lark grammar.
- ``Vocabulary.of(tokenizer, vocab_size, eos_ids)``: the tokenizer as llguidance sees it, built once
  per tokenizer (about a second for a 50k vocabulary). ``eos_ids`` are the engine's stop tokens.
- ``GrammarMatcher(vocabulary, grammar)``: one request's matcher. ``mask_(logits_row)`` sets the
  disallowed tokens to -inf in place; ``consume(token)`` advances it; ``complete`` is true once the
  grammar accepts nothing but the end; ``error`` says what went wrong, if anything.
- ``tool_call_grammar(tools, name)``: a Lark grammar forcing
  ``<|tool_call|>{"name": <a tool's name>, "arguments": <JSON matching its parameters>}<|end|>``;
  ``name`` picks one tool (OpenAI's named ``tool_choice``), None lets the model choose among them.

JSON is generated compact (no optional whitespace): it is the format our chat data uses, and a
small model allowed free whitespace can spend its whole budget on newlines.
"""
from __future__ import annotations

import json
import threading
import weakref
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from shared.chat_format import END, TOOL_CALL
from shared.engine.errors import EngineError

COMPACT = {"whitespace_flexible": False}


def _llguidance():
    try:
        import llguidance
        import llguidance.hf
    except ImportError:  # pragma: no cover - it is a dependency; say what to do if it is missing
        raise EngineError("constrained decoding (response_format, grammar, forced tool calls) needs the "
                          "llguidance package: pip install llguidance") from None
    return llguidance


def grammar_for(params) -> str | None:
    """The llguidance grammar ``params`` ask for, or None (see the module docstring)."""
    if params.grammar is not None:
        return _llguidance().LLMatcher.grammar_from_lark(params.grammar)
    fmt = params.response_format
    if not fmt:
        return None
    kind = fmt.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return json_schema_grammar({"type": "object"})
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
            raise EngineError('response_format json_schema needs {"type": "json_schema", "json_schema": '
                              '{"name": ..., "schema": {...}}}; the schema must be a JSON object')
        return json_schema_grammar(spec.get("schema") or {"type": "object"})
    raise EngineError(f"response_format type {kind!r} is unknown; use 'text', 'json_object' or 'json_schema'")


def json_schema_grammar(schema: dict) -> str:
    """The grammar of compact JSON matching ``schema``; ``EngineError`` if llguidance refuses it."""
    try:
        grammar = _llguidance().LLMatcher.grammar_from_json_schema(schema, defaults=COMPACT)
    except Exception as exc:  # noqa: BLE001 - whatever the compiler rejects is the client's schema
        raise EngineError(f"response_format json_schema is not a valid JSON schema: {exc}") from None
    check_grammar(grammar, what="the JSON schema")
    return grammar


def check_grammar(grammar: str, *, what: str = "the grammar") -> None:
    """``EngineError`` naming the problem when llguidance cannot compile ``grammar``."""
    try:
        is_error, messages = _llguidance().LLMatcher.validate_grammar_with_warnings(grammar)
    except Exception as exc:  # noqa: BLE001 - e.g. a schema nested past the compiler's limits
        is_error, messages = True, [f"{type(exc).__name__}: {exc}"]
    if is_error:
        raise EngineError(f"{what} cannot be used for constrained decoding: {'; '.join(messages)[:500]}")


def tool_call_grammar(tools: Sequence[dict], name: str | None = None) -> str:
    """A Lark grammar forcing one tool call in our chat format (see the module docstring).

    ``tools``: OpenAI function definitions, ``{"name", "parameters"}`` (a ``{"type": "function",
    "function": {...}}`` wrapper is unwrapped). ``EngineError`` if ``name`` is not among them.
    """
    functions = [t.get("function", t) if isinstance(t, dict) else t for t in tools]
    if not functions or not all(isinstance(f, dict) and isinstance(f.get("name"), str) for f in functions):
        raise EngineError("tool_call_grammar needs OpenAI function definitions, each with a 'name'")
    if name is not None:
        functions = [f for f in functions if f["name"] == name]
        if not functions:
            raise EngineError(f"tool {name!r} is not among the request's tools; name one of them")
    options = [{"type": "object",
                "properties": {"name": {"const": f["name"]},
                               "arguments": f.get("parameters") or {"type": "object"}},
                "required": ["name", "arguments"], "additionalProperties": False} for f in functions]
    schema = options[0] if len(options) == 1 else {"anyOf": options}
    schema = {**schema, "x-guidance": COMPACT}
    # Special tokens are written <|name|> in llguidance's Lark: they match that one token, never its text.
    lark = f"start: {TOOL_CALL} call {END}\ncall: %json {json.dumps(schema)}\n"
    check_grammar(_llguidance().LLMatcher.grammar_from_lark(lark), what="the tools' parameter schemas")
    return lark


class Vocabulary:
    """A tokenizer as llguidance sees it, cached per tokenizer object (see the module docstring)."""

    _cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
    _lock = threading.Lock()

    def __init__(self, tokenizer, vocab_size: int, eos_ids: Iterable[int]):
        lib = _llguidance()
        eos = sorted(eos_ids) or None
        try:
            self.ll = lib.hf.from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=eos)
        except ValueError as exc:
            raise EngineError(f"constrained decoding needs a fast (Rust) HF tokenizer: {exc}") from None
        self.vocab_size = vocab_size

    @classmethod
    def of(cls, tokenizer, vocab_size: int, eos_ids: Iterable[int]) -> Vocabulary:
        eos_ids = frozenset(eos_ids)
        with cls._lock:
            cached = cls._cache.setdefault(tokenizer, {})
            key = (vocab_size, eos_ids)
            if key not in cached:
                cached[key] = cls(tokenizer, vocab_size, eos_ids)
            return cached[key]


class GrammarMatcher:
    """One request's position in its grammar (see the module docstring)."""

    def __init__(self, vocabulary: Vocabulary, grammar: str):
        self.vocab_size = vocabulary.vocab_size
        self._matcher = _llguidance().LLMatcher(vocabulary.ll, grammar, log_level=0)
        if self._matcher.is_error():
            raise EngineError(f"the grammar cannot be used for constrained decoding: {self._matcher.get_error()}")

    @property
    def complete(self) -> bool:
        """The grammar is satisfied and allows nothing more (only the end of the reply)."""
        return self._matcher.is_stopped()

    @property
    def error(self) -> str | None:
        return self._matcher.get_error() or None if self._matcher.is_error() else None

    def allowed(self) -> torch.Tensor:
        """Bool ``[vocab]``: the tokens that keep the output valid at this step."""
        bits = np.frombuffer(self._matcher.compute_bitmask(), dtype=np.uint8)
        return torch.from_numpy(np.unpackbits(bits, bitorder="little")[:self.vocab_size].astype(bool))

    def mask_(self, logits: torch.Tensor) -> None:
        """Disallowed tokens of one logit row to -inf, in place."""
        logits.masked_fill_(~self.allowed().to(logits.device), float("-inf"))

    def consume(self, token: int) -> bool:
        """Advance past ``token``; False (and ``error`` set) if the grammar does not allow it."""
        return self._matcher.consume_token(token)


__all__ = ["GrammarMatcher", "Vocabulary", "grammar_for", "json_schema_grammar", "check_grammar",
           "tool_call_grammar"]
