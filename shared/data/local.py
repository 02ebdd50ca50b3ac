"""Documents from local files: ``.txt``/``.md``, ``.jsonl``, ``.parquet``, or a directory of them.

- ``.txt``/``.md``: one document per file; a file larger than ``chunk_bytes`` (64 KiB by default)
  is cut at blank lines into sections of about that size (ids ``<file>#<k>``). Why: the document
  is the unit of the train/val split, so one big file (a book, tiny-shakespeare) would otherwise
  land wholly in train or wholly in val. The sections join back to the file exactly; the cost is
  an end-of-text token between sections, one per ~16k tokens.
- ``.jsonl``: one document per non-blank line, text in field ``text_field`` (ids ``<file>:<line>``).
- ``.parquet``: one document per row, text in column ``text_field`` (ids ``<file>:<row>``).
- a directory: its files with those suffixes, recursively, sorted by relative path; ids are
  relative to the directory.

Text is decoded strictly as UTF-8: a bad file is an error naming the file and byte offset, never
silently dropped or "fixed". Rows whose text is null or only whitespace carry nothing to learn and
are skipped. This module does not read from the network (see ``hub``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from shared.data.documents import DataError, Document, as_text, decode_utf8, missing_field, split_sections

TEXT_SUFFIXES = (".txt", ".md")
SUFFIXES = (*TEXT_SUFFIXES, ".jsonl", ".parquet")
DEFAULT_CHUNK_BYTES = 64 * 1024


def iter_local(
    path: str | Path,
    source: str,
    *,
    text_field: str = "text",
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> Iterator[Document]:
    """Documents of one file or of every supported file under a directory (sorted)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"corpus path {path} does not exist; check the path (relative paths are from {Path.cwd()})")
    if chunk_bytes <= 0:
        raise DataError(f"chunk_bytes must be positive, got {chunk_bytes}")
    if path.is_dir():
        for file in find_files(path, SUFFIXES):
            name = file.relative_to(path).as_posix()
            yield from _iter_file(file, name, source, text_field, chunk_bytes)
    else:
        if path.suffix.lower() not in SUFFIXES:
            raise DataError(f"{path} has unsupported suffix {path.suffix!r}; use one of {list(SUFFIXES)} or a directory")
        yield from _iter_file(path, path.name, source, text_field, chunk_bytes)


def find_files(directory: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Files under ``directory`` (recursively) with one of ``suffixes``, sorted by relative path."""
    files = (p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    return sorted(files, key=lambda p: p.relative_to(directory).as_posix())


def _iter_file(path: Path, name: str, source: str, text_field: str, chunk_bytes: int) -> Iterator[Document]:
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        sections = split_sections(decode_utf8(path.read_bytes(), path), chunk_bytes)
        for k, text in enumerate(sections):
            doc_id = name if len(sections) == 1 else f"{name}#{k}"
            yield Document(id=doc_id, text=text, source=source)
    elif suffix == ".jsonl":
        for line_no, text in _jsonl_texts(path, text_field):
            yield Document(id=f"{name}:{line_no}", text=text, source=source)
    else:
        for row, text in enumerate(parquet_texts(path, text_field)):
            if text is not None:
                yield Document(id=f"{name}:{row}", text=text, source=source)


def jsonl_records(path: Path) -> Iterator[tuple[int, object]]:
    """(1-based line number, parsed JSON value) for every non-blank line, decoded strictly as UTF-8.

    Streams the file; a bad byte or a line that is not JSON is an error naming the file and line.
    """
    offset = 0
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            line = decode_utf8(raw, path, base_offset=offset)
            offset += len(raw)
            if not line.strip():
                continue
            try:
                yield line_no, json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{line_no} is not valid JSON ({exc.msg}); fix or remove that line") from None


def _jsonl_texts(path: Path, text_field: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, text) for every non-blank line with a non-null text field."""
    for line_no, record in jsonl_records(path):
        if not isinstance(record, dict) or text_field not in record:
            keys = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise missing_field(f"{path}:{line_no}", text_field, keys)
        text = record[text_field]
        if text is not None:
            yield line_no, as_text(text, f"{path}:{line_no}", text_field)


def parquet_texts(path: Path, text_field: str) -> Iterator[str | None]:
    """The ``text_field`` column of a parquet file, one row at a time, read in batches."""
    import pyarrow.parquet as pq

    file = pq.ParquetFile(path)
    columns = file.schema_arrow.names
    if text_field not in columns:
        raise missing_field(str(path), text_field, columns)
    for batch in file.iter_batches(columns=[text_field], batch_size=1024):
        for text in batch.column(0).to_pylist():
            yield None if text is None else as_text(text, str(path), text_field)

