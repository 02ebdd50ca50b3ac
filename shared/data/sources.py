"""One entry point for every pretraining corpus: ``iter_documents(source, max_bytes, **opts)``.

Source specs (see the loader modules for the details of each):

- ``builtin:python-docs`` / ``builtin:python-code``: English docs / code from the running Python
  (``builtin``); no download.
- ``file:<path>`` or a plain existing path: ``.txt``/``.md``/``.jsonl``/``.parquet`` or a
  directory of them (``local``).
- ``hf:<dataset>[:<config>]``: a streamed Hugging Face dataset, or a local copy through
  ``data_files=`` (``hub``).

Contract: the order is deterministic; documents whose text is empty or only whitespace are
skipped; with ``max_bytes`` the UTF-8 size of the yielded texts never exceeds it (the document
that crosses the budget is cut at a character boundary and iteration stops); a corpus that yields
nothing raises :class:`DataError` ("corpus <x> is empty; ...") once iteration ends. Instruction
data (chat, preferences) is not read here.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

from shared.data.builtin import iter_python_code, iter_python_docs
from shared.data.documents import DataError, Document, truncate_utf8
from shared.data.hub import iter_hub
from shared.data.local import SUFFIXES, iter_local

BUILTINS: dict[str, Callable[[str], Iterator[Document]]] = {
    "python-docs": iter_python_docs,
    "python-code": iter_python_code,
}
VALID_FORMS = (
    [f"builtin:{name}" for name in BUILTINS]
    + [f"file:<path> (or a plain existing path; {'/'.join(SUFFIXES)} or a directory)", "hf:<dataset>[:<config>]"]
)


def iter_documents(source: str, max_bytes: int | None = None, **opts) -> Iterator[Document]:
    """Documents of ``source`` in a fixed order, at most ``max_bytes`` UTF-8 bytes of text in all.

    ``opts`` go to the loader (``text_field=``, ``chunk_bytes=``, ``data_files=``, ...); an
    option the loader does not take is an error naming the ones it does. A bad spec or option
    raises here; problems with the data itself raise while iterating.
    """
    if max_bytes is not None and max_bytes <= 0:
        raise DataError(f"max_bytes must be positive or None (no limit), got {max_bytes}")
    loader = _loader(source)
    unknown = sorted(set(opts) - set(loader.options))
    if unknown:
        raise DataError(f"option(s) {unknown} do not apply to {source!r}; its options are {loader.options or 'none'}")
    return _budgeted(loader(**opts), source, max_bytes)


@dataclass(frozen=True)
class _Loader:
    """A loader function with its spec bound; ``options`` are its keyword-only parameters."""

    fn: Callable[..., Iterator[Document]]
    target: tuple
    source: str

    @property
    def options(self) -> list[str]:
        params = inspect.signature(self.fn).parameters.values()
        return [p.name for p in params if p.kind is p.KEYWORD_ONLY]

    def __call__(self, **opts) -> Iterator[Document]:
        return self.fn(*self.target, self.source, **opts)


def _loader(source: str) -> _Loader:
    """The loader for ``source``; unknown forms get an error listing the valid ones."""
    prefix, sep, rest = source.partition(":")
    if sep and prefix == "builtin":
        if rest not in BUILTINS:
            raise DataError(f"unknown builtin corpus {source!r}; choose one of {[f'builtin:{n}' for n in BUILTINS]}")
        return _Loader(BUILTINS[rest], (), source)
    if sep and prefix == "file":
        return _Loader(iter_local, (rest,), source)
    if sep and prefix == "hf":
        return _Loader(iter_hub, (rest,), source)
    path = Path(source)
    if path.exists() or path.suffix.lower() in SUFFIXES:
        return _Loader(iter_local, (path,), source)  # a missing *.txt gets the missing-path error
    raise DataError(
        f"unknown corpus source {source!r}: not a known prefix and no such path; valid forms: {', '.join(VALID_FORMS)}"
    )


def _budgeted(docs: Iterator[Document], source: str, max_bytes: int | None) -> Iterator[Document]:
    """Skip blank documents, enforce ``max_bytes``, and fail on a corpus that yields nothing."""
    used = yielded = 0
    for doc in docs:
        if not doc.text.strip():
            continue
        size = len(doc.text.encode("utf-8"))
        if max_bytes is not None and used + size > max_bytes:
            doc = replace(doc, text=truncate_utf8(doc.text, max_bytes - used))
            size = max_bytes - used
        if doc.text.strip():  # only a cut document can be blank here
            yielded += 1
            yield doc
        used += size
        if max_bytes is not None and used >= max_bytes:
            break  # stop before pulling the next document: a streamed source reads no further
    if yielded == 0:
        raise DataError(
            f"corpus {source} is empty; it yielded no text that is not whitespace. Check the path or "
            "dataset, and text_field= if the text lives in another field"
        )


def iter_corpus(source: str, max_bytes: int | None = None, text_field: str = "text") -> Iterator[Document]:
    """``iter_documents`` with a job config's options: ``text_field`` reaches only the loaders that read fields.

    Job configs carry one ``text_field`` for whatever source the user names; builtin corpora have no
    fields, so passing it to them would be an error the user did nothing to cause.
    """
    opts = {"text_field": text_field} if "text_field" in _loader(source).options else {}
    return iter_documents(source, max_bytes, **opts)
