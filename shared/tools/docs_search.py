"""The ``search_docs`` tool, offline: the best-matching stdlib module summary for a query.

Until the retriever service (``shared.rag``) exists, this searches the same one-sentence module
summaries the builtin tool examples use as search results (``module_summaries`` at
``SEARCH_RESULT_CHARS``), so a model trained on those examples sees exactly the results it was
trained on: a query naming a module (``"json"``, ``"the urllib.parse module"``) returns that
module's summary verbatim. Other queries are ranked by word overlap with the module name (which
counts double) and the summary. This is a lookup table, not semantic search.
"""
from __future__ import annotations

import re

from shared.data.instructions.docs import module_summaries
from shared.data.instructions.families import SEARCH_RESULT_CHARS
from shared.tools import ToolError

NO_MATCH = "No documentation matches {query!r}."
_WORD = re.compile(r"[a-z0-9_]+")
_FILLER = frozenset({"the", "a", "an", "module", "python", "docs", "documentation", "of", "for", "in", "on"})
NAME_WEIGHT = 2  # a query word that is part of a module's name says more than one in its summary


def search_docs(query: str) -> str:
    """The summary of the module ``query`` names, else the best word-overlap match, else ``NO_MATCH``."""
    if not isinstance(query, str) or not query.strip():
        raise ToolError("search_docs needs a non-empty query, e.g. 'json' or 'parse URLs'")
    summaries = module_summaries(SEARCH_RESULT_CHARS)
    name = _module_named(query, summaries)
    if name is not None:
        return summaries[name]
    words = set(_WORD.findall(query.lower())) - _FILLER
    best, best_score = None, 0
    for module in sorted(summaries):  # sorted: ties go to the same module every time
        score = (NAME_WEIGHT * len(words & set(_WORD.findall(module.lower())))
                 + len(words & set(_WORD.findall(summaries[module].lower()))))
        if score > best_score:
            best, best_score = module, score
    return summaries[best] if best is not None else NO_MATCH.format(query=query)


def _module_named(query: str, summaries: dict[str, str]) -> str | None:
    """The module whose name is the whole query once filler words and punctuation are dropped."""
    words = [w for w in query.strip().strip(".?!'\"`").split() if w.lower() not in _FILLER]
    if len(words) != 1:
        return None
    lowered = {name.lower(): name for name in summaries}
    return lowered.get(words[0].strip("'\"`").lower())
