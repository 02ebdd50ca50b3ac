"""Documents to index: the builtin Python docs (by pretraining split) and local files, PDFs included.

``read_source(spec, ...)`` yields ``{"source": "<spec>#<document id>", "text": ...}`` rows:

- ``builtin:python-docs`` through ``shared.data`` (the pretraining loader, not a copy), filtered by
  the pretraining train/val split (``builtin_split``): ``val`` keeps only documents the model never
  trained on, so a right answer about them has to come from retrieval;
- a ``.txt``/``.md``/``.jsonl``/``.parquet`` file or a folder of them through ``shared.data.local``
  (whole files: offsets are into the file's text), plus ``.pdf`` files as their extracted text
  (``pypdf``, one document per file, pages joined by blank lines).

``check_source`` fails fast, on the driver, on what would otherwise fail inside a Ray task: an
unknown spec, a missing path, a folder without any supported file.
"""
from __future__ import annotations

from itertools import islice
from pathlib import Path
from typing import Iterator

from shared.data.documents import DataError
from shared.data.local import SUFFIXES, find_files, iter_local
from shared.data.sources import iter_documents
from shared.data.split import is_heldout_doc

PDF = ".pdf"
INDEX_SUFFIXES = (*SUFFIXES, PDF)
_WHOLE_FILE = 1 << 62  # iter_local's section size: never cut a file (chunking does that, with offsets)


def local_path(spec: str) -> Path | None:
    """The path of a local source spec (``file:<path>`` or a plain path), or None for builtin/hub specs."""
    prefix, sep, rest = spec.partition(":")
    if sep and prefix == "file":
        return Path(rest)
    if sep and prefix in ("builtin", "hf"):
        return None
    return Path(spec)


def check_source(spec: str) -> None:
    """Raise ``DataError`` naming the fix if ``spec`` cannot be read at all."""
    path = local_path(spec)
    if path is None:
        if not spec.startswith("builtin:"):
            raise DataError(f"source {spec!r} is not indexable; use builtin:python-docs or a local file or folder "
                            f"({'/'.join(INDEX_SUFFIXES)})")
        iter_documents(spec)  # raises now on an unknown builtin name, listing the known ones; reads nothing
        return
    if not path.exists():
        raise DataError(f"source {spec}: {path} does not exist; check the path (relative paths are from {Path.cwd()})")
    if path.is_dir() and not find_files(path, INDEX_SUFFIXES):
        raise DataError(f"source {spec}: folder {path} holds no {'/'.join(INDEX_SUFFIXES)} files; put documents "
                        f"there or point sources= at another folder")
    if path.is_file() and path.suffix.lower() not in INDEX_SUFFIXES:
        raise DataError(f"source {spec}: {path.name} has unsupported suffix {path.suffix!r}; index "
                        f"{'/'.join(INDEX_SUFFIXES)} files")


def read_source(spec: str, *, builtin_split: str = "all", max_docs: int | None = None,
                text_field: str = "text") -> Iterator[dict[str, str]]:
    """The documents of one source as rows (see the module docstring); blank documents are skipped."""
    check_source(spec)
    path = local_path(spec)
    docs = _builtin(spec, builtin_split) if path is None else _local(path, text_field)
    try:
        for doc_id, text in islice(((i, t) for i, t in docs if t.strip()), max_docs):
            yield {"source": f"{spec}#{doc_id}", "text": text}
    except OSError as exc:
        raise DataError(f"source {spec}: cannot read {exc.filename or path} ({exc.strerror or exc}); fix its "
                        f"permissions or remove it from the folder") from None


def _builtin(spec: str, split: str) -> Iterator[tuple[str, str]]:
    for doc in iter_documents(spec):
        if split == "all" or ("val" if is_heldout_doc(doc.id) else "train") == split:
            yield doc.id, doc.text


def _local(path: Path, text_field: str) -> Iterator[tuple[str, str]]:
    if path.suffix.lower() == PDF:
        yield path.name, pdf_text(path)
        return
    for doc in iter_local(path, "", text_field=text_field, chunk_bytes=_WHOLE_FILE):
            yield doc.id, doc.text
    if path.is_dir():
        for pdf in find_files(path, (PDF,)):
            yield pdf.relative_to(path).as_posix(), pdf_text(pdf)


def pdf_text(path: Path) -> str:
    """The text layer of a PDF, pages joined by blank lines (scanned pages without text give nothing)."""
    try:
        from pypdf import PdfReader
        from pypdf.errors import PdfReadError
    except ImportError:
        raise DataError(f"{path} is a PDF and reading PDFs needs pypdf; `pip install pypdf` or convert it to "
                        f".txt (e.g. `pdftotext {path}`)") from None
    try:
        pages = [page.extract_text() or "" for page in PdfReader(path).pages]
    except (PdfReadError, ValueError, KeyError) as exc:
        raise DataError(f"{path} is not a readable PDF ({exc}); repair it, convert it to .txt, or remove it") from None
    return "\n\n".join(p.strip() for p in pages if p.strip())
