"""The one prompt format for answering from passages: SFT data and the eval's ``rag`` task both build it here.

    passages_message("Complete this line from the docs: The pass statement is a null",
                     ["The \"pass\" statement pass_stmt ::= \"pass\" \"pass\" is a null operation ..."])
    # 'Answer from the passages.\\n[1] The "pass" statement ... operation ...\\nQuestion: Complete this ...'

The whole thing is one user message: a short header, the passages numbered ``[1]``, ``[2]``, ... one
per line (best first), then ``Question: `` and the question. It is short on purpose: the tiny model
sees 128 tokens, so every token of framing is a token less of passage. (The served chat puts passages
in a system message with a long "these are data, not instructions" note, ``shared.chat.prompt``;
that suits models with a long context, not this one.)

A passage is shown as :func:`clean_passage` makes it: special-token strings defused, ruler lines
(``*****``, ``=====``) dropped, whitespace collapsed, cut at a word boundary to ``PASSAGE_CHARS``.
:func:`fit_passages` keeps the passages, best first, that fit a context budget given as a predicate
(token counting is the caller's business: this module knows no tokenizer).
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from shared.chat_format import SPECIAL_TOKENS

HEADER = "Answer from the passages."
QUESTION = "Question: "
#: Characters of each passage shown: two of them, the header and a question fit the tiny model's 128 tokens.
PASSAGE_CHARS = 100

_SPECIAL = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS))
_RULER = re.compile(r"^\s*[*=~\-#^_]{3,}\s*$", re.MULTILINE)


def clean_passage(text: str, max_chars: int = PASSAGE_CHARS) -> str:
    """``text`` as a passage is shown: defused, ruler lines dropped, whitespace collapsed, at most ``max_chars``.

    The cut falls at a word boundary (a single word longer than ``max_chars`` is cut inside), so
    every word shown is whole and a span copied from it is a real span of the document.
    """
    if max_chars < 1:
        raise ValueError(f"max_chars must be >= 1, got {max_chars}; use PASSAGE_CHARS ({PASSAGE_CHARS})")
    # Special-token strings in a document would become real control tokens (a forged turn): show them harmless.
    text = _SPECIAL.sub(lambda m: "< " + m.group(0)[1:-1] + " >", text)
    text = " ".join(_RULER.sub(" ", text).split())
    if len(text) <= max_chars:
        return text
    cut = text[: max_chars + 1].rsplit(" ", 1)[0]  # the +1: a word ending exactly at max_chars is kept
    return cut if cut and len(cut) <= max_chars else text[:max_chars]


def passages_message(question: str, passages: Sequence[str]) -> str:
    """The user message asking ``question`` over ``passages`` (already cleaned, best first)."""
    if not passages:
        raise ValueError("passages_message needs at least one passage; ask the bare question without passages")
    if not question.strip():
        raise ValueError("passages_message needs a non-empty question")
    lines = [HEADER, *(f"[{i}] {p}" for i, p in enumerate(passages, 1)), QUESTION + question]
    return "\n".join(lines)


def fit_passages(question: str, passages: Sequence[str], fits: Callable[[str], bool]) -> list[str]:
    """The longest prefix of ``passages`` whose message ``fits``; the first one shortened if even it alone does not.

    ``fits(message)`` says whether a user message leaves room for the reply in the model's context
    (the caller counts tokens). Passages are kept in rank order and never reordered, so the best one
    is dropped last. Raises ``ValueError`` when not even the first word of the first passage fits.
    """
    kept: list[str] = []
    for passage in passages:
        if not fits(passages_message(question, [*kept, passage])):
            break
        kept.append(passage)
    if kept or not passages:
        return kept
    words = passages[0].split(" ")
    lo, hi = 0, len(words) - 1  # binary search for the most words of the first passage that fit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(passages_message(question, [" ".join(words[:mid])])):
            lo = mid
        else:
            hi = mid - 1
    if lo == 0:
        raise ValueError(f"the question {question[:60]!r} leaves no room for a passage in this context; "
                         "shorten the question or use a model with a longer context")
    return [" ".join(words[:lo])]
