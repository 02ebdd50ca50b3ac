"""Held-out text of a corpus: its documents in the journey's held-out split, for scoring models on.

``heldout_text(source, max_bytes)``: the held-out documents (``shared.data.split.is_heldout_doc``) of
``source`` in corpus order, joined by blank lines, up to about ``max_bytes`` of UTF-8 text; no
document any stage trained on is in it. ``HELDOUT_SETS`` names the journey's two corpora: ``general``
(the builtin Python docs, pretraining's) and ``domain`` (the builtin Python code, continued
pretraining's). Held-out perplexity (``shared.eval.perplexity``) and the quantize stage's quality
text (``shared.quantize.stage``) both read it here, so they score the same text.
"""
from __future__ import annotations

from shared.data.documents import DataError
from shared.data.sources import iter_documents
from shared.data.split import is_heldout_doc

HELDOUT_SETS = {"general": "builtin:python-docs", "domain": "builtin:python-code"}


def heldout_text(source: str, max_bytes: int) -> str:
    """Held-out documents of ``source`` joined by blank lines, up to about ``max_bytes`` of text."""
    parts, size = [], 0
    for doc in iter_documents(source):
        if not is_heldout_doc(doc.id) or not doc.text.strip():
            continue
        parts.append(doc.text)
        size += len(doc.text.encode("utf-8"))
        if size >= max_bytes:
            break
    if not parts:
        raise DataError(f"{source} has no held-out documents (the held-out split put none of them aside); "
                        "use a larger corpus for perplexity")
    return "\n\n".join(parts)
