"""Data for our own lm-eval tasks, so even the tiny journey model gets benchmark numbers that move.

Two multiple-choice tasks (four choices each, at most ``MAX_DOCS`` rows), built from what ships
with the repo and the running Python, so they need no download:

- ``journey_docs_cloze``: passages of the *held-out* split of ``builtin:python-docs`` (the split
  pretraining never trains on: same rule and defaults as ``shared.training.pretrain_config``).
  Context = a passage up to a cut point (at most ``MAX_CONTEXT_WORDS`` words), right answer = the
  next word (``SPAN_WORDS``), distractors = words at cut points of *other* held-out documents,
  drawn with their corpus frequencies so knowing common words alone scores chance. Only prose
  paragraphs are used (no code, grammar or doctest lines).
- ``journey_facts_mc``: one question per fact of the shipped fact table
  (``shared/data/instructions/facts.py``) that has a held-out phrasing, in our chat format,
  ``<|user|>question<|end|><|assistant|>``; choices are whole replies (``answer<|end|>``): the right
  answer and answers of other facts of the same relation. The question is always a phrasing the SFT
  split holds out (``facts:<table>:<slug>:t<k>`` with ``split_name`` "heldout"), so no row is a
  question SFT trained on; facts none of whose phrasings is held out (about 60% of them, so about
  120 rows remain) are not asked. The facts themselves are taught in SFT in other phrasings: this
  measures recall of taught facts asked in new words, not general knowledge.

Rows are ``{"id", "context", "choices", "gold"}``; the same ``seed`` gives the same rows (row
selection, distractors and answer positions all derive from it). ``task_data_file`` writes them as
``test.jsonl`` under a cache directory once and reuses the file; the path names the data version,
the Python version (the docs corpus is the running Python's) and the seed, so a change in any of
them builds a new file. The task definitions themselves are YAMLs in ``lm_eval_tasks/``; running
them is ``shared.eval.harness``.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import sys
from collections.abc import Callable
from pathlib import Path

from shared.data.instructions.facts import TABLES
from shared.data.instructions.schema import split_name
from shared.data.sources import iter_documents
from shared.data.split import is_heldout_doc
from shared.eval.checkpoint import EvalError
from shared.chat_format import render_chat, render_reply

JOURNEY_TASKS: tuple[str, ...] = ("journey_docs_cloze", "journey_facts_mc")
DATA_VERSION = 2  # bump when a builder changes: old cache files then stop matching
MAX_DOCS = 300  # the tiny model evaluates on CPU; a few hundred rows give a usable stderr (~0.03)
N_CHOICES = 4

DOCS_SOURCE = "builtin:python-docs"
# The continuation is the next word: the context decides it most. Longer spans mostly add the
# span's own fluency, which the context does not decide (measured on tiny4's pretrain model:
# acc 0.43 with one word, 0.32-0.35 with two or three; chance is 0.25).
SPAN_WORDS = 1
CUT_STRIDE_WORDS = 3  # cut points this far apart, so rows of one paragraph share less context
MIN_CONTEXT_WORDS = 8
MAX_CONTEXT_WORDS = 32  # ~50 tokens: context plus continuation fit the tiny model's 128 positions
MIN_PROSE_SHARE = 0.85  # share of letters and spaces below which a paragraph is code or tables


def build_docs_cloze(seed: int = 0, max_docs: int = MAX_DOCS) -> list[dict]:
    """Cloze rows over the held-out Python docs (see the module docstring)."""
    candidates = []  # (doc id, row id, context words, answer words)
    for doc in iter_documents(DOCS_SOURCE):
        if not is_heldout_doc(doc.id):
            continue
        for p, words in enumerate(_prose_paragraphs(doc.text)):
            for cut in range(MIN_CONTEXT_WORDS, len(words) - SPAN_WORDS + 1, CUT_STRIDE_WORDS):
                candidates.append((doc.id, f"{doc.id}#p{p}w{cut}", words[max(0, cut - MAX_CONTEXT_WORDS):cut],
                                   words[cut:cut + SPAN_WORDS]))
    rows = []
    for doc_id, row_id, context, answer in _pick(candidates, seed, max_docs, key=lambda c: c[1]):
        rng = random.Random(f"{seed}:{row_id}")
        # Distractors are drawn with the spans' own frequencies (not from the set of distinct
        # spans), so a model that only knows which words are common gains nothing over chance.
        others = [" ".join(a) for d, _, _, a in candidates if d != doc_id and a != answer]
        rng.shuffle(others)
        distractors = list(dict.fromkeys(others))[:N_CHOICES - 1]
        if len(distractors) < N_CHOICES - 1:
            raise EvalError(f"only {len(distractors)} distractor spans for {row_id}; the held-out docs are too "
                            "small for journey_docs_cloze (is the Python stdlib complete?)")
        rows.append(_row(row_id, " ".join(context), " ".join(answer), distractors, rng))
    return rows


def _prose_paragraphs(text: str) -> list[list[str]]:
    """Words of each prose paragraph: indented lines (code, grammar) and qualname headers dropped."""
    paragraphs = []
    for block in re.split(r"\n\s*\n", text):
        lines = [line for line in block.splitlines() if line.strip() and not line[0].isspace()]
        if lines and len(lines[0].split()) == 1:
            lines = lines[1:]  # "logging.config.fileConfig": the docs corpus heads each docstring so
        if any(">>>" in line for line in lines):
            continue
        words = " ".join(lines).split()
        if len(words) < MIN_CONTEXT_WORDS + SPAN_WORDS:
            continue
        joined = " ".join(words)
        if sum(c.isalpha() or c == " " for c in joined) / len(joined) >= MIN_PROSE_SHARE:
            paragraphs.append(words)
    return paragraphs


def build_facts_mc(seed: int = 0, max_docs: int = MAX_DOCS) -> list[dict]:
    """One chat-format question per fact with a held-out phrasing, answers of the same relation as distractors."""
    rows = []
    for table in TABLES:
        answers = sorted({answer for _, answer in table.rows})
        for subject, answer in table.rows:
            row_id = f"{table.name}:{subject}"
            rng = random.Random(f"{seed}:{row_id}")
            # The SFT generator names a phrasing facts:<table>:<slug>:t<k> (shared.data.instructions.families)
            # and trains on it unless its split holds it out: only a held-out phrasing is new to the model.
            slug = subject.lower().replace(" ", "_")
            held_out = [k for k in range(len(table.templates))
                        if split_name(f"facts:{table.name}:{slug}:t{k}") == "heldout"]
            if not held_out:
                continue  # every phrasing of this fact may be a training question
            question = table.templates[rng.choice(held_out)].format(s=subject)
            context = render_chat([{"role": "user", "content": question[:1].upper() + question[1:]}],
                                  add_generation_prompt=True)
            others = [a for a in answers if a != answer]
            rows.append(_row(row_id, context, _reply(answer), [_reply(a) for a in rng.sample(others, N_CHOICES - 1)],
                             rng))
    return _pick(rows, seed, max_docs, key=lambda r: r["id"])


def _reply(answer: str) -> str:
    return render_reply([{"role": "assistant", "content": answer}])


def _row(row_id: str, context: str, answer: str, distractors: list[str], rng: random.Random) -> dict:
    choices = [answer, *distractors]
    rng.shuffle(choices)
    return {"id": row_id, "context": context, "choices": choices, "gold": choices.index(answer)}


def _pick(items: list, seed: int, max_docs: int, key: Callable) -> list:
    """At most ``max_docs`` items in an order set by a seeded hash of their id.

    Shuffled, not in source order, because lm-eval's ``limit`` takes the first rows: any prefix is
    then a fair sample (in source order ``limit=200`` of the facts would be capitals and symbols).
    """
    return sorted(items, key=lambda item: hashlib.sha256(f"{seed}\x00{key(item)}".encode()).digest())[:max_docs]


BUILDERS: dict[str, Callable[..., list[dict]]] = {
    "journey_docs_cloze": build_docs_cloze,
    "journey_facts_mc": build_facts_mc,
}


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/gpt_journey/lm_eval`` (``~/.cache/...`` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "gpt_journey" / "lm_eval"


def task_data_file(task: str, cache_dir: str | Path | None = None, seed: int = 0) -> Path:
    """The ``test.jsonl`` of journey task ``task``, built into ``cache_dir`` first if missing."""
    if task not in BUILDERS:
        raise EvalError(f"unknown journey task {task!r}; choose one of {list(JOURNEY_TASKS)}")
    python = f"py{sys.version_info.major}.{sys.version_info.minor}"
    path = Path(cache_dir or default_cache_dir()) / task / f"v{DATA_VERSION}-{python}-seed{seed}" / "test.jsonl"
    if path.exists():
        return path
    rows = BUILDERS[task](seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # whole file or nothing, even with two writers
    tmp.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    os.replace(tmp, path)
    return path
