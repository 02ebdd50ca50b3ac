"""The ``passages`` family: answer a docs question by copying a word from the right passage.

Each example gives one or two passages (the heads of ``builtin:python-docs`` documents, as
``rag_prompt.clean_passage`` shows them) and a cloze question about one of them: "Complete this
line from the docs: Generate a salt for the specified" -> "method". The answer is the word that
follows the question's words in that passage, so it is read off the passage, not recalled; the
other passage, in two examples of three, is a distractor from another document of the same side
(one without the question's words: "String literals are described by the following lexical
definitions" would answer a question about imaginary literals too), and the right one is first or
second at random. The message is ``rag_prompt.passages_message``, the format the eval's
``rag`` task asks the same kind of question in over *retrieved* passages, and :func:`cloze_points`
and :func:`cloze_question` are the question builders both use.

Held-out documents (``shared.data.split.is_heldout_doc``) never reach the train split: an example
is built from documents of one side only, and its id carries a salt (``:s<j>``, the smallest ``j``)
that puts it on the matching side of the id-hash split (``schema.split_name``). Held-out documents
are drawn for ``HELDOUT_DOC_SHARE`` of examples, about the split's share of every other family.

A cloze point is a word of at least four characters (letters, digits, ``_``; or a number of two
digits or more), not a common function word, not among the question's words, after ``PREFIX_WORDS``
words that occur once in the passage: one right answer, and one that guessing can rarely find.
"""
from __future__ import annotations

import random
import re
from functools import lru_cache

from shared.data.documents import DataError
from shared.data.instructions.families import assistant, draw_unique, phrase, user
from shared.data.instructions.rag_prompt import clean_passage, passages_message
from shared.data.instructions.schema import HELDOUT_FRACTION, sft_example, split_name
from shared.data.sources import iter_documents
from shared.data.split import is_heldout_doc
from shared.chat_format import render_chat

SOURCE = "builtin:python-docs"
PREFIX_WORDS = 6  # enough words for the retriever to find the document and for the answer to be unique
MAX_PREFIX_CHARS = 48  # six words of code-like text (`a.b.c`) would crowd the passages out of 128 tokens
HELDOUT_DOC_SHARE = HELDOUT_FRACTION
# Rendered characters at most; about 90 tokens of the tiny tokenizer on average (~3.6 characters a
# token), two-passage examples held to it by dropping the distractor. A rare code-heavy pair still
# reaches ~130 tokens (2 of 750 measured) and loses its last tokens to SFT's max_length of 128.
MAX_EXAMPLE_CHARS = 360
MAX_SALT = 1000  # a held-out id needs ~10 tries on average: 1000 failing is a broken split rule, not bad luck

CLOZE_TEMPLATES = ("Complete this line from the docs: {p}", "Which word comes next in the docs: {p}",
                   "Continue the docs text: {p}")
STOPWORDS = frozenset("""
    that this with from have been which when will would there their them then than into also only such
    other these those some more most should could must were what where while each does being used uses
    using over under about after before between both same very they your itself given just like make
    made many much need needs none not once upon whether within without
    """.split())
_ANSWER = re.compile(r"([A-Za-z][A-Za-z0-9_]{3,}|[0-9]{2,})[.,;:)!?]?")


def cloze_points(passage: str) -> list[tuple[str, str, int]]:
    """``(prefix, answer, word index)`` of every cloze point of a cleaned ``passage``, in text order."""
    words = passage.split(" ")
    points = []
    for i in range(PREFIX_WORDS, len(words)):
        match = _ANSWER.fullmatch(words[i])
        if not match:
            continue
        answer = match.group(1)
        before = words[i - PREFIX_WORDS:i]
        prefix = " ".join(before)
        if len(prefix) > MAX_PREFIX_CHARS:
            continue
        if answer.lower() in STOPWORDS or answer.lower() in {w.strip(".,;:()\"'").lower() for w in before}:
            continue
        if passage.count(prefix) != 1:
            continue  # the prefix must point at one place, or the answer is ambiguous
        points.append((prefix, answer, i))
    return points


def cloze_question(prefix: str, k: int) -> str:
    """Question ``k`` (modulo the templates) asking for the word after ``prefix``."""
    text = CLOZE_TEMPLATES[k % len(CLOZE_TEMPLATES)].format(p=prefix)
    return text[:1].upper() + text[1:]


@lru_cache(maxsize=1)
def doc_passages() -> dict[str, tuple[tuple[str, str, tuple[tuple[str, str, int], ...]], ...]]:
    """``{"train"|"heldout": ((doc id, head passage, cloze points), ...)}`` over the docs with cloze points.

    Reads the whole docs corpus once per process (a few seconds: every stdlib file's docstrings).
    """
    sides: dict[str, list] = {"train": [], "heldout": []}
    for doc in iter_documents(SOURCE):
        passage = clean_passage(doc.text)
        points = cloze_points(passage)
        if points:
            sides["heldout" if is_heldout_doc(doc.id) else "train"].append((doc.id, passage, tuple(points)))
    if len(sides["train"]) < 2 or len(sides["heldout"]) < 2:
        raise DataError(f"{SOURCE} has too few documents with a cloze point (train {len(sides['train'])}, held-out "
                        f"{len(sides['heldout'])}) for the passages family; is the Python stdlib complete?")
    return {side: tuple(docs) for side, docs in sides.items()}


def salted_id(base: str, side: str) -> str:
    """``base:s<j>`` with the smallest ``j`` whose id-hash split is ``side``: the example lands where its docs belong."""
    for j in range(MAX_SALT):
        example_id = f"{base}:s{j}"
        if split_name(example_id) == side:
            return example_id
    raise DataError(f"no salt up to {MAX_SALT} puts {base!r} in the {side} split; check schema.HELDOUT_FRACTION")


def _passages(rng: random.Random) -> dict:
    side = "heldout" if rng.random() < HELDOUT_DOC_SHARE else "train"
    docs = doc_passages()[side]
    gold = rng.randrange(len(docs))
    doc_id, passage, points = docs[gold]
    prefix, answer, word = rng.choice(points)
    k, question = phrase(rng, CLOZE_TEMPLATES, p=prefix)
    shown = [gold]
    if rng.random() < 2 / 3:  # a distractor in two examples of three; the right passage first or second
        other = rng.choice([d for d in range(len(docs)) if d != gold and prefix not in docs[d][1]])
        shown.insert(rng.randrange(2), other)
    message = passages_message(question, [docs[d][1] for d in shown])
    if len(render_chat([user(message), assistant(answer)])) > MAX_EXAMPLE_CHARS:
        shown = [gold]  # two long passages overflow the tiny model's context: keep only the right one
        message = passages_message(question, [passage])
    base = f"passages:{doc_id}:w{word}:t{k}:" + "+".join(docs[d][0] if d != gold else "gold" for d in shown)
    return sft_example(salted_id(base, side), "passages", [user(message), assistant(answer)], "exact", answer)


def passages(rng: random.Random, count: int) -> list[dict]:
    return draw_unique("passages", count, _passages, rng)
