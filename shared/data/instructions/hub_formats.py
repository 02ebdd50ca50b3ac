"""Converters from public post-training datasets' own row schemas to ours (``schema``).

One :class:`HubFormat` per dataset: the fields its rows must have, the hub split to read, and a
converter from an iterable of ``(row number, record)`` to our examples. Converters skip rows
that cannot become a valid example (empty text, a transcript that does not end with the
assistant) and count why in ``skipped``; the loader reports the counts. A missing *field* is
different: it means the file is not that dataset, and the loader raises before converting.

SFT examples from these sets get check kind ``none`` with the dataset's reply as the reference:
there is no exact answer to check. Ids are ``<short name>/<row>`` unless the dataset has ids.
This module reads nothing itself (``loaders`` streams the records).
"""
from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Callable

from shared.data.instructions.families import assistant, user
from shared.data.instructions.schema import sft_example

Rows = Iterable[tuple[int, dict[str, Any]]]
OASST_LANGS = ("en",)  # our tokenizer and model are English; other languages would be noise
SLIMORCA_ROLES = {"system": "system", "human": "user", "gpt": "assistant"}
_HH_MARKER = re.compile(r"\n\n(Human|Assistant):")


@dataclass(frozen=True)
class HubFormat:
    """How to read one hub dataset: ``kind`` is ``sft`` or ``preference``."""

    dataset: str
    kind: str
    fields: tuple[str, ...]
    convert: Callable[[Rows, Counter], Iterator[dict]]
    hub_split: str = "train"


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _ends_on_assistant(turns: list[dict]) -> list[dict]:
    """``turns`` without trailing non-assistant turns (an unanswered last question is no target)."""
    while turns and turns[-1]["role"] != "assistant":
        turns = turns[:-1]
    return turns


def _sft(example_id: str, task: str, turns: list[dict], skipped: Counter) -> dict | None:
    """An SFT example of ``turns`` (reference = the last reply), or None (counted) if unusable."""
    turns = _ends_on_assistant(turns)
    if not any(t["role"] == "user" for t in turns[:-1]) or any(not t["content"] for t in turns):
        skipped["no user turn, no reply or an empty turn"] += 1
        return None
    return sft_example(example_id, task, turns, "none", turns[-1]["content"])


def convert_dolly(rows: Rows, skipped: Counter) -> Iterator[dict]:
    """databricks-dolly-15k: instruction (+ context below it) -> response; task ``dolly:<category>``."""
    for row, record in rows:
        instruction, context = _text(record["instruction"]), _text(record["context"])
        prompt = f"{instruction}\n\n{context}" if instruction and context else instruction
        category = _text(record.get("category"))
        task = f"dolly:{category}" if category else "dolly"
        example = _sft(f"dolly/{row}", task, [user(prompt), assistant(_text(record["response"]))], skipped)
        if example:
            yield example


def convert_slimorca(rows: Rows, skipped: Counter) -> Iterator[dict]:
    """SlimOrca: ``conversations`` of ``{from: system|human|gpt, value}``."""
    for row, record in rows:
        turns = []
        for turn in record["conversations"] or []:
            role = SLIMORCA_ROLES.get(turn.get("from"))
            if role is None:
                skipped[f"unknown speaker {turn.get('from')!r}"] += 1
                break
            turns.append({"role": role, "content": _text(turn.get("value"))})
        else:
            example = _sft(f"slimorca/{row}", "slimorca", turns, skipped)
            if example:
                yield example


def convert_oasst(rows: Rows, skipped: Counter) -> Iterator[dict]:
    """oasst1 message trees: from each English root, follow the best-ranked reply (rank 0) down.

    The whole table is read first: a reply can come before its parent in the file.
    """
    roots, children = [], {}
    for _, record in rows:
        if record.get("deleted"):
            skipped["deleted message"] += 1
        elif record["parent_id"] is None:
            roots.append(record)
        else:
            children.setdefault(record["parent_id"], []).append(record)
    for root in roots:
        if root["lang"] not in OASST_LANGS:
            skipped[f"conversation not in {OASST_LANGS}"] += 1
            continue
        path = [root]
        while path[-1]["message_id"] in children:
            path.append(min(children[path[-1]["message_id"]], key=_rank_key))  # min keeps the first of ties
        turns = [{"role": "user" if m["role"] == "prompter" else "assistant", "content": _text(m["text"])}
                 for m in path]
        example = _sft(f"oasst1/{root['message_id']}", "oasst1", turns, skipped)
        if example:
            yield example


def _rank_key(record: dict) -> tuple[bool, float]:
    """Lower rank is better; unranked (None or NaN) replies come after every ranked one."""
    rank = record["rank"]
    missing = rank is None or (isinstance(rank, float) and math.isnan(rank))
    return missing, 0.0 if missing else float(rank)


def _pair(example_id: str, chosen: list[dict], rejected: list[dict], margin: float, skipped: Counter) -> dict | None:
    """A preference pair from two whole conversations sharing every turn but the last reply."""
    if not chosen or not rejected:
        skipped["a transcript that is not Human/Assistant turns"] += 1
        return None
    if chosen[:-1] != rejected[:-1]:
        skipped["chosen and rejected differ before the last turn"] += 1
        return None
    prompt = chosen[:-1]
    if not prompt or prompt[-1]["role"] != "user" or {chosen[-1]["role"], rejected[-1]["role"]} != {"assistant"}:
        skipped["not a user turn answered by two assistant replies"] += 1
        return None
    if not chosen[-1]["content"] or not rejected[-1]["content"] or chosen[-1] == rejected[-1]:
        skipped["an empty reply, or chosen equal to rejected"] += 1
        return None
    return {"id": example_id, "prompt": prompt, "chosen": [chosen[-1]], "rejected": [rejected[-1]],
            "margin": float(margin)}


def hh_turns(transcript: str) -> list[dict]:
    """``"\\n\\nHuman: hi\\n\\nAssistant: hello"`` -> user/assistant messages ([] if malformed)."""
    parts = _HH_MARKER.split(transcript if transcript.startswith("\n\n") else "\n\n" + transcript)
    if parts[0].strip():
        return []
    return [{"role": "user" if who == "Human" else "assistant", "content": text.strip()}
            for who, text in zip(parts[1::2], parts[2::2])]


def convert_hh(rows: Rows, skipped: Counter) -> Iterator[dict]:
    """hh-rlhf: two transcripts; the shared turns are the prompt, the last replies differ (margin 1.0)."""
    for row, record in rows:
        chosen, rejected = (hh_turns(record[side] if isinstance(record[side], str) else "")
                            for side in ("chosen", "rejected"))
        pair = _pair(f"hh-rlhf/{row}", chosen, rejected, 1.0, skipped)
        if pair:
            yield pair


def convert_ultrafeedback(rows: Rows, skipped: Counter) -> Iterator[dict]:
    """ultrafeedback_binarized: chosen/rejected message lists; margin = score_chosen - score_rejected."""
    for row, record in rows:
        chosen, rejected = ([{"role": m["role"], "content": _text(m["content"])} for m in record[side] or []]
                            for side in ("chosen", "rejected"))
        margin = record["score_chosen"] - record["score_rejected"]
        pair = _pair(str(record.get("prompt_id") or f"ultrafeedback/{row}"), chosen, rejected, margin, skipped)
        if pair:
            yield pair


FORMATS: dict[str, HubFormat] = {f.dataset: f for f in (
    HubFormat("databricks/databricks-dolly-15k", "sft", ("instruction", "context", "response"), convert_dolly),
    HubFormat("OpenAssistant/oasst1", "sft", ("message_id", "parent_id", "role", "text", "lang", "rank"),
              convert_oasst),
    HubFormat("Open-Orca/SlimOrca", "sft", ("conversations",), convert_slimorca),
    HubFormat("Anthropic/hh-rlhf", "preference", ("chosen", "rejected"), convert_hh),
    HubFormat("HuggingFaceH4/ultrafeedback_binarized", "preference",
              ("prompt", "chosen", "rejected", "score_chosen", "score_rejected"), convert_ultrafeedback,
              hub_split="train_prefs"),
)}
