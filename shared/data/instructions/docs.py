"""One-sentence summaries of stdlib modules, from the running Python's own docstrings.

``module_summaries()`` maps a public module name (``json``, ``urllib.parse``; at most one dot)
to the first sentence of its module docstring, cut at a word boundary to ``max_chars`` so a
whole conversation stays short. The ``docs`` and ``tool`` tasks use it as answers and as search
results. Files come from ``shared.data.builtin`` (same stdlib, same exclusions, same order).

Only the leading string literal of each file is read, with ``tokenize``, which is ~10x faster
than ``ast.parse`` of whole files; nothing is imported. Docstrings that are only a title
("curses", "ast ~~~") or a file name are skipped: there is nothing to learn from them.
This module does not read function or class docstrings.
"""
from __future__ import annotations

import ast
import re
import tokenize
from functools import lru_cache
from pathlib import Path

from shared.data.builtin import module_name, stdlib_files, stdlib_root

MAX_SUMMARY_CHARS = 120
_SKIP_TOKENS = (tokenize.ENCODING, tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE)
_SENTENCE_END = re.compile(r"(?<=[A-Za-z0-9)\]]{2})[.!?](?=\s|$)")
_RULE = re.compile(r"[~=\-*#]{3}")
_URL = re.compile(r"\s*<?https?://\S+")


@lru_cache(maxsize=4)
def module_summaries(max_chars: int = MAX_SUMMARY_CHARS) -> dict[str, str]:
    """``{module name: first sentence}`` for public stdlib modules with a usable docstring."""
    summaries = {}
    for name, doc in _module_docstrings().items():
        sentence = first_sentence(doc, max_chars)
        if _informative(sentence, name):
            summaries[name] = sentence
    return summaries


@lru_cache(maxsize=1)
def _module_docstrings() -> dict[str, str]:
    """``{module name: docstring}`` of public modules (at most one dot), read once per process."""
    root = stdlib_root()
    docs = {}
    for path in stdlib_files(root):
        name = module_name(path.relative_to(root))
        if name.count(".") > 1 or any(part.startswith("_") for part in name.split(".")):
            continue
        doc = leading_docstring(path)
        if doc:
            docs[name] = doc
    return docs


def leading_docstring(path: Path) -> str | None:
    """The module docstring of ``path`` (its first statement, if a string literal), unimported."""
    try:
        with path.open("rb") as f:
            for token in tokenize.tokenize(f.readline):
                if token.type in _SKIP_TOKENS:
                    continue
                if token.type != tokenize.STRING:
                    return None
                value = ast.literal_eval(token.string)
                return value if isinstance(value, str) else None
    except (tokenize.TokenError, SyntaxError, ValueError, UnicodeDecodeError):
        return None  # best effort, like shared.data.builtin: CPython's own files never get here
    return None


def first_sentence(doc: str, max_chars: int) -> str:
    """The first sentence of the first paragraph, whitespace collapsed, at most ``max_chars``."""
    paragraph = " ".join(_URL.sub("", doc.strip().split("\n\n")[0]).split())
    match = _SENTENCE_END.search(paragraph)
    sentence = paragraph[: match.end()] if match else paragraph
    if len(sentence) <= max_chars:
        return sentence
    cut = sentence[: max_chars - 3].rsplit(" ", 1)[0]
    return cut.rstrip(",;:") + "..."


def _informative(sentence: str, name: str) -> bool:
    words = sentence.split()
    return len(words) >= 3 and not _RULE.search(sentence) and words[0].rstrip(":") != name
