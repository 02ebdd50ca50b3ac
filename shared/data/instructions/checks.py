"""Score a generated reply against an example's check: exact, refusal, tool call, or overlap.

The input is the model's reply as decoded *after* the prompt (the prompt ends with
``<|assistant|>``), special tokens kept: e.g. ``"42<|end|>"`` or
``'<|tool_call|>{"name":"calculator","arguments":{"expression":"2 + 3"}}<|end|>'``.

- :func:`parse_response` cuts the reply at its end (``<|end|>``; ``<|endoftext|>`` or a role
  token also stop it, but only ``<|end|>`` counts as a proper end), parses a tool call, and lists
  every format problem in words instead of raising.
- :func:`score_response` returns ``correct`` (``None`` for uncheckable ``none`` examples),
  ``format_ok``, ``refused``, ``overlap`` (unigram F1 with the reference, ``none`` only),
  ``problems`` and ``reward``, one number in [0, 1] for ranking replies (preference pairs, RL):
  0.8 x content (1/0 when checkable, else the overlap) + 0.2 x format_ok.
- :func:`is_refusal` is a phrase list, not a classifier: it is for our own short replies.

Pure Python on purpose (no torch, no transformers), so services and reports can score too.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping
from typing import Any

from shared.data.documents import DataError
from shared.chat_format import ASSISTANT, END, EOT, SPECIAL_TOKENS, TOOL_CALL

ROLE_TOKENS = tuple(t for t in SPECIAL_TOKENS if t not in (EOT, TOOL_CALL, END))
CONTENT_WEIGHT = 0.8  # reward = CONTENT_WEIGHT * content + (1 - CONTENT_WEIGHT) * format_ok
REFUSAL_WINDOW = 160  # refusals come first; later "I can't..." is usually part of an answer

_REFUSAL = re.compile(
    r"\bi\s?(?:can't|cannot|can not|won't|will not|am unable to|'m unable to|am not able to|'m not able to"
    r"|must decline|refuse to)\b"
    r"|\b(?:can't|cannot|won't|will not|not able to|unable to|not allowed to) (?:help|assist)\b"
    r"|\b(?:i'm|i am) sorry, but\b|\bsorry, but i\b"
)
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
_WORD = re.compile(r"\w+")


def parse_response(text: str) -> dict[str, Any]:
    """``{"text", "tool_call", "terminated", "problems"}`` of one generated reply; never raises."""
    body = text[len(ASSISTANT):] if text.startswith(ASSISTANT) else text
    stops = {token: body.find(token) for token in (END, EOT, *ROLE_TOKENS) if token in body}
    first = min(stops, key=stops.get) if stops else None
    if first == END or first is None:
        problems = [] if first else [f"the reply does not end with {END} (it ran to the end of the text)"]
    elif first in ROLE_TOKENS:
        problems = [f"a role token ({first}) comes before {END}: the reply ran into another turn"]
    else:
        problems = [f"the reply ends with {first}, not {END}"]
    body = body[: stops[first]] if first else body
    tool_call = None
    if TOOL_CALL in body:
        body, _, payload = body.partition(TOOL_CALL)
        if body.strip():
            problems.append(f"text before {TOOL_CALL}: a tool call must be the whole reply")
        tool_call, error = _parse_tool_call(payload)
        if error:
            problems.append(error)
    elif not body.strip():
        problems.append("the reply is empty")
    return {"text": body.strip(), "tool_call": tool_call, "terminated": first == END, "problems": problems}


def _parse_tool_call(payload: str) -> tuple[dict | None, str | None]:
    try:
        call = json.loads(payload)
    except json.JSONDecodeError as exc:
        return None, f"the tool call is not valid JSON ({exc.msg} at char {exc.pos})"
    if not (isinstance(call, dict) and isinstance(call.get("name"), str) and call["name"]
            and isinstance(call.get("arguments"), dict)):
        return None, 'the tool call must be {"name": str, "arguments": {...}}'
    return call, None


def score_response(example: Mapping[str, Any], response: str) -> dict[str, Any]:
    """Score ``response`` (the generated reply, see the module docstring) by ``example["check"]``."""
    check = example["check"]
    kind, answer = check["kind"], check["answer"]
    parsed = parse_response(response)
    text, call = parsed["text"], parsed["tool_call"]
    refused = call is None and is_refusal(text)
    correct: bool | None = None
    overlap = None
    if kind in ("exact", "exact_case"):
        correct = call is None and answers_match(text, answer, case_sensitive=kind == "exact_case")
    elif kind == "refusal":
        correct = refused
    elif kind == "tool_call":
        correct = call is not None and call == json.loads(answer)
    elif kind == "none":
        overlap = 0.0 if call is not None else reference_overlap(text, answer)
    else:
        raise DataError(f"example {example.get('id')!r} has unknown check kind {kind!r}; "
                        "validate it with schema.validate_sft_example")
    format_ok = not parsed["problems"]
    content = overlap if correct is None else float(correct)
    return {"correct": correct, "format_ok": format_ok, "refused": refused, "overlap": overlap,
            "problems": parsed["problems"], "reward": CONTENT_WEIGHT * content + (1 - CONTENT_WEIGHT) * format_ok}


def normalize_answer(text: str, case_sensitive: bool = False) -> str:
    """Whitespace collapsed, a trailing ``.``/``!`` dropped, case folded unless ``case_sensitive``."""
    text = " ".join(text.split()).rstrip(".!").rstrip()
    return text if case_sensitive else text.casefold()


def answers_match(response: str, answer: str, case_sensitive: bool = False) -> bool:
    """Equal after :func:`normalize_answer`, or both numbers with the same value (``1,000`` = ``1000.0``)."""
    a, b = normalize_answer(response, case_sensitive), normalize_answer(answer, case_sensitive)
    if _NUMBER.fullmatch(a) and _NUMBER.fullmatch(b):
        return float(a.replace(",", "")) == float(b.replace(",", ""))
    return a == b


def is_refusal(text: str) -> bool:
    """True when the start of ``text`` declines ("I can't help with that.", "I won't ...", ...)."""
    start = text[:REFUSAL_WINDOW].replace("\u2019", "'").lower()
    return bool(_REFUSAL.search(start))


def reference_overlap(response: str, reference: str) -> float:
    """Unigram F1 between the words of ``response`` and ``reference`` (case-insensitive), in [0, 1]."""
    got, want = Counter(_WORD.findall(response.lower())), Counter(_WORD.findall(reference.lower()))
    if not got or not want:
        return float(got == want)
    common = sum((got & want).values())
    if common == 0:
        return 0.0
    precision, recall = common / sum(got.values()), common / sum(want.values())
    return 2 * precision * recall / (precision + recall)
