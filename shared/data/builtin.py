"""Corpora that ship with the running Python, so a run needs no download.

- ``builtin:python-docs`` (English): every ``pydoc_data.topics`` entry (the language reference
  pages behind ``help('assert')``), then one document per stdlib module holding its docstrings
  (module, classes, functions, methods, in source order), each cleaned with
  ``inspect.cleandoc`` and headed by its qualified name.
- ``builtin:python-code`` (the domain corpus for continued pretraining): one document per stdlib
  ``.py`` file, verbatim.

Both corpora name a module's document ``module:<path>`` (``module:json/decoder.py``): its docstrings
in the docs corpus and its source in the code corpus share one id. The held-out split hashes ids
(``shared.data.split.is_heldout_doc``), so a module is held out of both corpora or of neither: the
code file holds every docstring of the docs document, and a module held out of pretraining but
trained on in continued pretraining would not be unseen by the final model.

Text repeated across documents is held out with its held-out copy (:func:`heldout_paragraphs`): a
pydoc topic can contain another topic's whole section (``specialnames`` holds ``customization``),
and a docstring can be copied into a twin module (``_py_abc.py`` repeats ``abc.py``). A document
outside the held-out split therefore loses every paragraph (at least ``MIN_SHARED_PARAGRAPH_CHARS``
long, whitespace aside) that a held-out docs document holds; a code file cannot lose a paragraph
without changing the program, so a training code file whose docstrings hold one is left out. Held-out
documents themselves are never changed.

Docstrings are read with ``ast`` from the sources, never by importing modules (importing runs
code, needs optional C extensions and is slow). The stdlib is found with
``sysconfig.get_paths()['stdlib']``; files are visited in sorted order so the corpus, and any
``max_bytes`` prefix of it, is the same on every machine with the same Python version.

What is left out, and why (see :data:`EXCLUDED_DIRS`): third-party code, test suites (huge,
repetitive, some files are deliberately broken), ``lib2to3`` (deprecated, ships grammar test
data), ``encodings`` (mostly generated codec tables: hex literals, not code people write) and
build artefacts. Code files that are not valid UTF-8 are skipped (none are in CPython 3.11).
"""
from __future__ import annotations

import ast
import inspect
import re
import sysconfig
from functools import lru_cache
from pathlib import Path
from typing import Iterator

from shared.data.documents import Document
from shared.data.split import is_heldout_doc

#: Directory names skipped anywhere under the stdlib (see the module docstring for why).
EXCLUDED_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idle_test", "lib2to3", "encodings",
     "__pycache__", "lib-dynload", "ensurepip"}
)

_DEF_NODES = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
#: Shorter paragraphs ("Return the value.", "Deprecated.") recur between unrelated documents by
#: chance and tell nothing about one document, so only paragraphs this long are kept unique.
MIN_SHARED_PARAGRAPH_CHARS = 80
_BLANK_LINES = re.compile(r"(\n\s*\n)")  # a paragraph break, captured so a text can be put back together


def stdlib_root() -> Path:
    """Where this interpreter's pure-Python standard library lives."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: Path | None = None) -> list[Path]:
    """The stdlib ``.py`` files we use, sorted by their path relative to ``root``."""
    root = root or stdlib_root()
    files = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if _excluded(rel):
            continue
        files.append(rel)
    return [root / rel for rel in sorted(files, key=lambda p: p.as_posix())]


def _excluded(rel: Path) -> bool:
    parts = rel.parts
    if any(part in EXCLUDED_DIRS for part in parts[:-1]):
        return True
    # config-3.11-<platform>/ holds the build's Makefile helpers; _sysconfigdata_* is a generated
    # dict of compiler flags; test_*.py outside test dirs are still tests.
    return parts[0].startswith("config-") or rel.name.startswith(("_sysconfigdata", "test_"))


def module_id(rel: Path) -> str:
    """The id of a stdlib file's document in both builtin corpora: ``json/decoder.py`` -> ``module:json/decoder.py``."""
    return f"module:{rel.as_posix()}"


def iter_python_code(source: str) -> Iterator[Document]:
    """One document per stdlib file, id ``module:<path>``: its full source text.

    Non-UTF-8 files are skipped, and so is a training file whose docstrings repeat a paragraph of a
    held-out docs document (see the module docstring).
    """
    root = stdlib_root()
    held = heldout_paragraphs(root)
    for path in stdlib_files(root):
        rel = path.relative_to(root)
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            continue  # the brief for this corpus: skip, do not guess an encoding
        if not is_heldout_doc(module_id(rel)) and not held.isdisjoint(
                _paragraphs(module_docstrings(path, module_name(rel)))):
            continue  # a copy of held-out text (_py_abc.py of abc.py): training on it would see the held-out module
        yield Document(id=module_id(rel), text=text, source=source)


def iter_python_docs(source: str) -> Iterator[Document]:
    """Language-reference topics first, then one docstring document per stdlib module.

    A document outside the held-out split comes without the paragraphs a held-out one holds (see
    the module docstring); a document left with no text is skipped by ``iter_documents``.
    """
    from pydoc_data.topics import topics  # data only: a dict of str, importing runs nothing

    root = stdlib_root()
    held = heldout_paragraphs(root)
    for name in sorted(topics):
        doc_id = f"topic:{name}"
        yield Document(id=doc_id, text=_without(held, doc_id, topics[name].strip() + "\n"), source=source)
    for path in stdlib_files(root):
        rel = path.relative_to(root)
        text = module_docstrings(path, module_name(rel))
        if text:
            yield Document(id=module_id(rel), text=_without(held, module_id(rel), text), source=source)


@lru_cache(maxsize=4)
def heldout_paragraphs(root: Path) -> frozenset[str]:
    """The paragraphs of ``builtin:python-docs``' held-out documents, whitespace collapsed.

    Only paragraphs of at least ``MIN_SHARED_PARAGRAPH_CHARS`` count. Reading them parses only the
    held-out modules (about 5% of the stdlib), so both corpora stay quick to start streaming.
    """
    from pydoc_data.topics import topics

    texts = [text for name, text in topics.items() if is_heldout_doc(f"topic:{name}")]
    texts += [module_docstrings(path, module_name(path.relative_to(root))) for path in stdlib_files(root)
              if is_heldout_doc(module_id(path.relative_to(root)))]
    return frozenset(p for text in texts for p in _paragraphs(text))


def _paragraphs(text: str) -> list[str]:
    """``text``'s paragraphs (split at blank lines) of at least ``MIN_SHARED_PARAGRAPH_CHARS``, whitespace collapsed."""
    blocks = (" ".join(b.split()) for b in _BLANK_LINES.split(text)[::2])  # odd items are the breaks
    return [p for p in blocks if len(p) >= MIN_SHARED_PARAGRAPH_CHARS]


def _without(held: frozenset[str], doc_id: str, text: str) -> str:
    """``text`` less the paragraphs in ``held`` (and the break after each), unless ``doc_id`` is held out itself."""
    if is_heldout_doc(doc_id):
        return text
    parts = _BLANK_LINES.split(text)  # paragraph, break, paragraph, ..., paragraph
    kept = [(parts[i], parts[i + 1] if i + 1 < len(parts) else "") for i in range(0, len(parts), 2)
            if " ".join(parts[i].split()) not in held]
    if len(kept) * 2 - 1 == len(parts):
        return text  # nothing repeated: the usual case
    return "".join(block + brk for block, brk in kept).rstrip() + "\n" if kept else ""


def module_name(rel: Path) -> str:
    """``json/decoder.py`` -> ``json.decoder``; ``json/__init__.py`` -> ``json``."""
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def module_docstrings(path: Path, module: str) -> str:
    """All docstrings of one file in source order, joined by blank lines; "" if it has none.

    Files that are not UTF-8 or do not parse with this interpreter are skipped (returns ""):
    the corpus is best-effort English prose, and CPython's own sources always parse.
    """
    try:
        tree = ast.parse(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, SyntaxError, ValueError):
        return ""
    sections = [f"{qualname}\n{doc}" for qualname, doc in _docstrings(tree, module)]
    return "\n\n".join(sections) + "\n" if sections else ""


def _docstrings(node: ast.AST, qualname: str) -> Iterator[tuple[str, str]]:
    """(qualified name, cleaned docstring) for ``node`` and the definitions inside it, in order."""
    doc = ast.get_docstring(node, clean=False)
    if doc and doc.strip():
        yield qualname, inspect.cleandoc(doc)
    yield from _definitions_below(node, qualname)


def _definitions_below(node: ast.AST, qualname: str) -> Iterator[tuple[str, str]]:
    # Definitions nested in if/try/with blocks (platform-specific variants) count too; nothing
    # inside an expression can carry a docstring, so expressions are not walked.
    for child in ast.iter_child_nodes(node):
        if isinstance(child, _DEF_NODES):
            yield from _docstrings(child, f"{qualname}.{child.name}")
        elif not isinstance(child, ast.expr):
            yield from _definitions_below(child, qualname)
