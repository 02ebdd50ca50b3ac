"""The unit every corpus loader yields, plus the text helpers the loaders share.

A :class:`Document` is one piece of text with an id that is stable across runs (the train/val
split hashes it) and the source spec it came from. This module knows nothing about where text
comes from; the loaders (``builtin``, ``local``, ``hub``) build on it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path


class DataError(ValueError):
    """A corpus or shard problem. The message names the problem and the fix."""


@dataclass(frozen=True)
class Document:
    """One document: ``id`` is unique and stable within ``source`` (the spec it was read from)."""

    id: str
    text: str
    source: str


def decode_utf8(data: bytes, where: str | Path, base_offset: int = 0) -> str:
    """Decode ``data`` strictly; on failure name the file and byte offset instead of guessing.

    ``base_offset`` is where ``data`` starts inside the file, for callers reading line by line.
    We never fall back to ``errors="replace"``: replacement characters would be trained on
    silently, and the user can fix the file with one command.
    """
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = base_offset + exc.start
        bad = data[exc.start : exc.start + 1].hex()
        raise DataError(
            f"{where} is not valid UTF-8 (byte 0x{bad} at offset {offset}); re-encode it as UTF-8, "
            f"e.g. `iconv -f latin1 -t utf-8 {where} > fixed.txt`, or remove it from the corpus"
        ) from None


def missing_field(where: str, field: str, available: list) -> DataError:
    """The error for a record or table without the configured text field."""
    return DataError(f"{where} has no field {field!r} (it has {available}); pass text_field=<field>")


def as_text(value: object, where: str, field: str) -> str:
    """A field's value as text: UTF-8 bytes are decoded strictly, anything else is an error."""
    if isinstance(value, bytes):
        return decode_utf8(value, where)
    if not isinstance(value, str):
        raise DataError(f"{where}: field {field!r} holds {type(value).__name__}, not text; point text_field at a string field")
    return value


# A blank line (possibly holding only spaces) ends a section; the separator stays attached to
# the section before it so that joining the sections gives back the file exactly.
_BLANK_LINE = re.compile(r"(?<=\n)[ \t]*\n")


def split_sections(text: str, chunk_bytes: int) -> list[str]:
    """Cut ``text`` into pieces of about ``chunk_bytes`` UTF-8 bytes at blank lines.

    Pieces are packed greedily from blank-line-separated paragraphs; a paragraph longer than
    ``chunk_bytes`` is cut at line ends instead, and a single line longer than that stays whole.
    ``"".join(split_sections(t, n)) == t`` always holds, so nothing is lost or altered.
    """
    if len(text.encode("utf-8")) <= chunk_bytes:
        return [text]
    pieces: list[str] = []
    for paragraph in _split_keep(text, _BLANK_LINE):
        if len(paragraph.encode("utf-8")) > chunk_bytes:
            pieces.extend(paragraph.splitlines(keepends=True))
        else:
            pieces.append(paragraph)
    return _pack(pieces, chunk_bytes)


def _split_keep(text: str, separator: re.Pattern[str]) -> list[str]:
    """Split after each match of ``separator``, keeping the separator on the left piece."""
    parts, start = [], 0
    for match in separator.finditer(text):
        parts.append(text[start : match.end()])
        start = match.end()
    parts.append(text[start:])
    return [p for p in parts if p]


def _pack(pieces: list[str], chunk_bytes: int) -> list[str]:
    """Concatenate consecutive pieces while the running size stays within ``chunk_bytes``."""
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for piece in pieces:
        n = len(piece.encode("utf-8"))
        if current and size + n > chunk_bytes:
            chunks.append("".join(current))
            current, size = [], 0
        current.append(piece)
        size += n
    if current:
        chunks.append("".join(current))
    return chunks


def truncate_utf8(text: str, max_bytes: int) -> str:
    """The longest prefix of ``text`` whose UTF-8 encoding fits in ``max_bytes`` (no split chars)."""
    data = text.encode("utf-8")
    if len(data) <= max_bytes:
        return text
    # errors="ignore" only drops the partial multi-byte character at the cut, nothing else.
    return data[:max_bytes].decode("utf-8", errors="ignore")
