"""The row shapes of post-training data, their validation, and the held-out split rule.

An **SFT example** is a plain dict (so a list of them becomes a ``datasets.Dataset``)::

    {"id": "arithmetic:add:17:25:t0", "task": "arithmetic",
     "messages": [{"role": "user", "content": "What is 17 + 25?"},
                  {"role": "assistant", "content": "42"}],
     "check": {"kind": "exact", "answer": "42"}}

The last message is the assistant turn the model is trained on and scored against (the target).
``check.kind`` says how a generated reply is scored (``checks.score_response`` does it):

- ``exact``: the reply text equals ``answer`` after normalization (whitespace collapsed, case
  folded, a trailing period dropped, numbers compared as numbers);
- ``exact_case``: the same but case-sensitive (for "uppercase this word" tasks, where the plain
  ``exact`` rule would accept the unchanged word);
- ``refusal``: the reply must be a refusal; ``answer`` holds the reference refusal;
- ``tool_call``: the reply must be a tool call equal to ``answer``, a compact JSON string of
  ``{"name": ..., "arguments": {...}}``;
- ``none``: not checkable; ``answer`` is a reference reply for overlap scores.

``answer`` is always the target turn's own text (or call), so the target scores correct.

A **preference example** is TRL's conversational preference format plus ``id`` and ``margin``::

    {"id": ..., "prompt": [... ending with a user (or tool) turn],
     "chosen": [{"role": "assistant", ...}], "rejected": [{"role": "assistant", ...}], "margin": 1.0}

The held-out split: an example is held out when ``split_of(id, HELDOUT_FRACTION, SPLIT_SEED)``
says ``val``. It depends on the id only, so it is the same in every run and every loader.
This module does not generate, load or score data.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from shared.data.documents import DataError
from shared.data.split import split_of
from shared.chat_format import ASSISTANT, render_message

CHECK_KINDS = ("exact", "exact_case", "refusal", "tool_call", "none")
SPLITS = ("train", "heldout")
HELDOUT_FRACTION = 0.1
SPLIT_SEED = 0  # fixed on purpose: the same example is held out whatever seed generated it

SFT_FIELDS = ("id", "task", "messages", "check")
PREFERENCE_FIELDS = ("id", "prompt", "chosen", "rejected", "margin")
_SFT_NEEDS = ("an SFT example needs id, task, messages (ending with the assistant target) and "
              "check {kind, answer}")
_PREF_NEEDS = ("a preference example needs id, prompt (messages ending with a user or tool turn), chosen and "
               "rejected (assistant messages) and margin (a number)")


def sft_example(example_id: str, task: str, messages: list[dict], kind: str, answer: str) -> dict:
    """Build (and validate) one SFT example; generators and converters all go through here."""
    row = {"id": example_id, "task": task, "messages": messages, "check": {"kind": kind, "answer": answer}}
    validate_sft_example(row, example_id)
    return row


def split_name(example_id: str) -> str:
    """``"heldout"`` for about ``HELDOUT_FRACTION`` of ids, ``"train"`` for the rest; stable everywhere."""
    return "heldout" if split_of(example_id, HELDOUT_FRACTION, SPLIT_SEED) == "val" else "train"


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {list(SPLITS)}")


def target_response(example: Mapping[str, Any]) -> str:
    """The target turn as a model would generate it after ``<|assistant|>`` (ends with ``<|end|>``)."""
    return render_message(example["messages"][-1])[len(ASSISTANT):]


def tool_call_json(call: Mapping[str, Any]) -> str:
    """A tool call as the compact JSON the chat format writes (the ``tool_call`` check's answer)."""
    return json.dumps(dict(call), ensure_ascii=False, separators=(",", ":"))


def from_arrow_row(row: Any) -> Any:
    """``row`` without the null-valued keys Arrow adds when it unifies dicts of different shapes.

    ``datasets.Dataset.from_list`` gives every message a ``tool_call: None`` and every tool
    call the union of all tools' argument names (``{"query": "json", "expression": None}``),
    which would render as ``"expression":null``. Call this on a row read back from a Dataset
    before rendering it. (Our tools never take a null argument, so nothing real is lost.)
    """
    if isinstance(row, Mapping):
        return {k: from_arrow_row(v) for k, v in row.items() if v is not None}
    if isinstance(row, list):
        return [from_arrow_row(v) for v in row]
    return row


def validate_sft_example(row: Any, where: str) -> None:
    """Raise :class:`DataError` naming the problem in ``row`` (read from ``where``) and the fix."""
    _require_fields(row, SFT_FIELDS, where, _SFT_NEEDS)
    if not isinstance(row["id"], str) or not row["id"]:
        raise DataError(f"{where}: id must be a non-empty string, got {row['id']!r}; {_SFT_NEEDS}")
    messages = _messages(row["messages"], where, "messages", _SFT_NEEDS)
    last = messages[-1]
    if last["role"] != "assistant":
        raise DataError(f"{where}: the last message has role {last['role']!r}; {_SFT_NEEDS}")
    if not any(m["role"] == "user" for m in messages[:-1]):
        raise DataError(f"{where}: no user turn before the target; {_SFT_NEEDS}")
    check = row["check"]
    _require_fields(check, ("kind", "answer"), f"{where}: check", _SFT_NEEDS)
    if check["kind"] not in CHECK_KINDS:
        raise DataError(f"{where}: unknown check kind {check['kind']!r}; choose one of {list(CHECK_KINDS)}")
    if not isinstance(check["answer"], str):
        raise DataError(f"{where}: check.answer must be a string (compact JSON for tool calls)")
    _check_target(last, check, where)


def _check_target(last: Mapping[str, Any], check: Mapping[str, Any], where: str) -> None:
    """The target turn must be what its check scores: a call for ``tool_call``, text otherwise."""
    call = last.get("tool_call")
    if check["kind"] == "tool_call":
        try:
            expected = json.loads(check["answer"])
        except json.JSONDecodeError:
            expected = None
        if call is None or expected != call:
            raise DataError(f"{where}: check kind tool_call needs the last message to be that tool call; "
                            f"set check.answer to the compact JSON of the call")
    elif call is not None or not last.get("content", "").strip():
        raise DataError(f"{where}: check kind {check['kind']!r} needs a non-empty text target; "
                        "use kind tool_call for a tool-call target")


def validate_preference_example(row: Any, where: str) -> None:
    """Raise :class:`DataError` naming the problem in ``row`` (read from ``where``) and the fix."""
    _require_fields(row, PREFERENCE_FIELDS, where, _PREF_NEEDS)
    if not isinstance(row["id"], str) or not row["id"]:
        raise DataError(f"{where}: id must be a non-empty string, got {row['id']!r}; {_PREF_NEEDS}")
    prompt = _messages(row["prompt"], where, "prompt", _PREF_NEEDS)
    if prompt[-1]["role"] not in ("user", "tool"):
        raise DataError(f"{where}: the prompt ends with role {prompt[-1]['role']!r}; {_PREF_NEEDS}")
    for side in ("chosen", "rejected"):
        reply = _messages(row[side], where, side, _PREF_NEEDS)
        if reply[0]["role"] != "assistant":
            raise DataError(f"{where}: {side} starts with role {reply[0]['role']!r}; {_PREF_NEEDS}")
    if row["chosen"] == row["rejected"]:
        raise DataError(f"{where}: chosen and rejected are identical, so the pair teaches nothing; drop it")
    margin = row["margin"]
    if isinstance(margin, bool) or not isinstance(margin, (int, float)):
        raise DataError(f"{where}: margin must be a number, got {margin!r}; use 1.0 when only the order is known")


def check_nonempty(rows: Sequence[Any], what: str, noun: str = "preference pairs") -> None:
    """Fail loudly on an empty data set instead of letting a trainer start on nothing."""
    if len(rows) == 0:
        raise DataError(
            f"no {noun} in {what}; the fix: check the source name, split and max_examples, point "
            "data_files= at a non-empty copy, or (for pairs sampled from a model) lower min_margin "
            "or sample more responses per prompt"
        )


def _require_fields(row: Any, fields: Sequence[str], where: str, needs: str) -> None:
    if not isinstance(row, Mapping):
        raise DataError(f"{where} is a {type(row).__name__}, not a mapping; {needs}")
    for field in fields:
        if field not in row or row[field] is None:
            raise DataError(f"{where} has no field {field!r} (it has {sorted(row)}); {needs}")


def _messages(value: Any, where: str, field: str, needs: str) -> list[Mapping[str, Any]]:
    """``value`` as a non-empty list of messages the chat format renders; else a DataError."""
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: {field} must be a non-empty list of messages; {needs}")
    for k, message in enumerate(value):
        try:
            render_message(message)
        except ValueError as exc:
            raise DataError(f"{where}: {field}[{k}]: {exc}") from None
    return value
