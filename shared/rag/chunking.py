"""Cut documents into overlapping chunks with stable ids.

A chunk is ``text == document[start:end]`` (character offsets into the document's text) plus
the document's ``source`` (``<corpus>#<document id>``, e.g. ``builtin:python-docs#topic:pass``).
Windows are ``chunk_chars`` long and consecutive ones share about ``overlap`` characters, so a
sentence cut at one boundary is whole in the neighbour. Cuts prefer a paragraph break, then a line
break, then a sentence end, then a space, within the last quarter of the window; a chunk never
starts or ends in whitespace. Nothing here knows about embeddings or Qdrant.

Ids are ``uuid5(NAMESPACE, f"{source}:{start}:{end}:{sha256(text)}")``: the same document chunked
the same way gives the same ids on every machine and every run, so upserting again replaces
points instead of adding copies; a changed text or chunking gives new ids.
"""
from __future__ import annotations

import hashlib
import uuid
from dataclasses import asdict, dataclass

#: Namespace of chunk ids; fixed forever (changing it would orphan every stored point).
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "gpt-journey/rag/chunk")
# Preferred cut points, best first: the cut goes right after the separator.
_SEPARATORS = ("\n\n", "\n", ". ", " ")


@dataclass(frozen=True)
class Chunk:
    """One piece of one document, as stored in ``chunks.jsonl`` and in the point payload."""

    chunk_id: str
    source: str
    start: int
    end: int
    text: str

    def to_dict(self) -> dict:
        return asdict(self)


def chunk_id(source: str, start: int, end: int, text: str) -> str:
    """The deterministic point id of a chunk (see the module docstring)."""
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return str(uuid.uuid5(NAMESPACE, f"{source}:{start}:{end}:{digest}"))


def chunk_spans(text: str, chunk_chars: int, overlap: int) -> list[tuple[int, int]]:
    """``(start, end)`` character spans covering every non-space character of ``text`` at least once."""
    if chunk_chars < 1 or not 0 <= overlap < chunk_chars:
        raise ValueError(f"need chunk_chars >= 1 and 0 <= overlap < chunk_chars, got {chunk_chars}, {overlap}")
    spans: list[tuple[int, int]] = []
    start = _skip_space(text, 0)
    while start < len(text):
        end = _cut(text, start, min(start + chunk_chars, len(text)), chunk_chars)
        trimmed = len(text[start:end].rstrip())
        spans.append((start, start + trimmed))
        if end >= len(text):
            break
        # Step back by the overlap, then forward to a word start; always move on by at least one character.
        nxt = _skip_space(text, _word_start(text, max(end - overlap, start + 1), end))
        start = nxt if nxt > start else _skip_space(text, end)
    return spans


def chunk_document(text: str, source: str, chunk_chars: int, overlap: int) -> list[Chunk]:
    """The chunks of one document, in order."""
    return [Chunk(chunk_id(source, s, e, text[s:e]), source, s, e, text[s:e])
            for s, e in chunk_spans(text, chunk_chars, overlap)]


def _cut(text: str, start: int, limit: int, chunk_chars: int) -> int:
    """Where the window ``[start, limit)`` should end: after the best separator in its last quarter."""
    if limit >= len(text):
        return len(text)
    floor = start + (3 * chunk_chars) // 4
    for sep in _SEPARATORS:
        at = text.rfind(sep, floor, limit)
        if at != -1:
            return at + len(sep)
    return limit  # one long token: cut it


def _word_start(text: str, pos: int, end: int) -> int:
    """``pos`` moved forward to the start of a word (not past ``end``), so an overlap does not begin mid-word."""
    if pos == 0 or text[pos - 1].isspace():
        return pos
    while pos < end and not text[pos - 1].isspace():
        pos += 1
    return pos


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos
