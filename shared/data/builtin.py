"""Corpora that ship with the running Python, so a run needs no download.

- ``builtin:python-docs`` (English): every ``pydoc_data.topics`` entry (the language reference
  pages behind ``help('assert')``), then one document per stdlib module holding its docstrings
  (module, classes, functions, methods, in source order), each cleaned with
  ``inspect.cleandoc`` and headed by its qualified name.
- ``builtin:python-code`` (the domain corpus for continued pretraining): one document per stdlib
  ``.py`` file, verbatim.

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
import sysconfig
from pathlib import Path
from typing import Iterator

from shared.data.documents import Document

#: Directory names skipped anywhere under the stdlib (see the module docstring for why).
EXCLUDED_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idle_test", "lib2to3", "encodings",
     "__pycache__", "lib-dynload", "ensurepip"}
)

_DEF_NODES = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


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


def iter_python_code(source: str) -> Iterator[Document]:
    """One document per stdlib file: its full source text; non-UTF-8 files are skipped."""
    root = stdlib_root()
    for path in stdlib_files(root):
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            continue  # the brief for this corpus: skip, do not guess an encoding
        yield Document(id=path.relative_to(root).as_posix(), text=text, source=source)


def iter_python_docs(source: str) -> Iterator[Document]:
    """Language-reference topics first, then one docstring document per stdlib module."""
    from pydoc_data.topics import topics  # data only: a dict of str, importing runs nothing

    for name in sorted(topics):
        yield Document(id=f"topic:{name}", text=topics[name].strip() + "\n", source=source)
    root = stdlib_root()
    for path in stdlib_files(root):
        text = module_docstrings(path, module_name(path.relative_to(root)))
        if text:
            yield Document(id=f"module:{path.relative_to(root).as_posix()}", text=text, source=source)


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
