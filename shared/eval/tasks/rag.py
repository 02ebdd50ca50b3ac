"""``rag``: does the run's retriever find a question's document, and do its passages help this model answer?

Retrieval, which is the same for every model: hit rate@1/@4 and MRR.

The index is the newest ``index`` artifact in the evaluated model's run (``python -m ray_jobs.index``);
without one the task is skipped with ``REASON``. The questions are those whose source document is
known because they are asked about an indexed builtin Python docs document: for ``module:<file>``
one of ``RETRIEVAL_TEMPLATES`` ("Where do the docs describe the json.decoder module?", phrasings no
training family uses), for a language-reference ``topic:<name>`` "What does the Python reference say about <name>?". Each is
searched (top 4, the retriever's default) and scored by the rank of the first passage from its
document. Local documents in the index have no such questions and are only distractors.

Evaluations of several models may run at once in separate processes, and a local-mode index admits
one process at a time (``shared.rag.store``): the task holds it only while it searches and waits up
to ``LOCK_WAIT_S`` for another task to let go.

Answering, which is per model: for each indexed *held-out* builtin docs document (``is_heldout_doc``:
no stage trained on it) up to ``QUESTIONS_PER_DOC`` cloze questions about the head of its text
(``shared.data.instructions.passages``: "Complete this line from the docs: <six words>" -> the next
word), at most ``MAX_ANSWER_QUESTIONS`` in all. Each is asked twice, greedily, with at most
``ANSWER_TOKENS`` new tokens: bare (``answer_acc_without``) and over its retrieved top-``TOP_K``
passages in the format of ``rag_prompt.passages_message`` (``answer_acc_with_passages``), as many
of them, best first, as fit the model's context beside the reply (none fit a context of a few dozen
tokens: the question is then asked bare both times); the SFT family ``passages`` is trained in that
same format. ``passage_gain`` is the difference; ``answer_source_in_prompt`` is the
share of questions whose own document's passage made it into the prompt (retrieval and context
bound the gain). A reply is right when it equals the word (``checks.answers_match``: case and a
trailing period ignored). An index without held-out docs documents (``builtin_split: train``) has
none of these questions: the answer metrics are then left out; index ``val`` or ``all``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from shared.chat_format import render_chat
from shared.data.builtin import module_name
from shared.data.instructions.checks import answers_match, parse_response
from shared.data.instructions.passages import cloze_points, cloze_question
from shared.data.instructions.rag_prompt import clean_passage, fit_passages, passages_message
from shared.data.split import is_heldout_doc
from shared.eval.checkpoint import EvalError
from shared.eval.engine_backend import engine_context, engine_replies, engine_tokenizer, is_quantized
from shared.eval.generate import context_length, generate_replies
from shared.eval.tasks.base import EvalContext, EvalTask, present, share
from shared.rag.retriever import Passage, Retriever, read_metadata
from shared.rag.store import StoreLocked
from shared.registry import MANIFEST, Registry

TOP_K = 4
#: How a retrieval question names a module: phrasings no training family uses, so that the questions stay
#: held out even for the training documents the index also holds (tests/shared/data/test_heldout_overlap.py).
RETRIEVAL_TEMPLATES = ("Where do the docs describe the {m} module?", "Find the documentation of the {m} module.",
                       "Which docs page covers the {m} module?")
LOCK_WAIT_S = 120.0
QUESTIONS_PER_DOC = 4
MAX_ANSWER_QUESTIONS = 80  # two short generations each: a few seconds for the tiny model on 2 cores
ANSWER_TOKENS = 8  # a one-word answer and <|end|>; the rest of the context is the passages'
# Prompts per generate() call: each call costs about a second of set-up on a CPU whatever its size, and
# these prompts are short (a question and a few 100-character passages), so batches can be wide.
ANSWER_BATCH = 64

BUILTIN = "builtin:python-docs#"
REASON = ("no index artifact in this model's run for the retriever to search; build one with "
          "`python -m ray_jobs.index --config tiny run=<run>` and the task scores retrieval hit rate")


def run_index_dir(model_path: str | Path) -> Path | None:
    """The newest ``index`` artifact of the run that holds the artifact ``model_path``, if any."""
    if not (Path(model_path) / MANIFEST).exists():
        return None  # not a registered artifact: it has no run to look in
    model = Registry.load(model_path)
    indexes = [a for a in Registry(model.dir.parent.parent).artifacts(model.run) if a.kind == "index"]
    return indexes[-1].dir if indexes else None


def questions(index_dir: Path) -> list[dict[str, str]]:
    """One question per indexed builtin docs document (sorted by source), with that source as the answer."""
    chunks = index_dir / read_metadata(index_dir)["chunks_file"]
    sources = sorted({json.loads(line)["source"] for line in chunks.read_text(encoding="utf-8").splitlines()
                      if line.strip()})
    out = []
    for n, source in enumerate(s for s in sources if s.startswith(BUILTIN)):
        kind, _, name = source[len(BUILTIN):].partition(":")
        if kind == "module":
            question = RETRIEVAL_TEMPLATES[n % len(RETRIEVAL_TEMPLATES)].format(m=module_name(Path(name)))
        else:
            question = f"What does the Python reference say about {name.replace('-', ' ')}?"
        out.append({"id": f"rag:{source[len(BUILTIN):]}", "question": question, "source": source})
    return out


def answer_questions(index_dir: Path) -> list[dict[str, Any]]:
    """Cloze questions about the indexed held-out builtin docs documents (module doc), round-robin over documents.

    Each is ``{"id", "question", "answer", "source"}``; a document gives at most ``QUESTIONS_PER_DOC``,
    spread over its head, and the list is ordered so that any first ``limit`` covers as many documents
    as it can. The head is the document's first chunk (``start == 0``), shown as ``clean_passage``.
    """
    heads = {}
    for line in (index_dir / read_metadata(index_dir)["chunks_file"]).read_text(encoding="utf-8").splitlines():
        chunk = json.loads(line) if line.strip() else None
        if chunk and chunk["start"] == 0 and chunk["source"].startswith(BUILTIN) \
                and is_heldout_doc(chunk["source"][len(BUILTIN):]):
            heads[chunk["source"]] = clean_passage(chunk["text"])
    rounds: list[list[dict[str, Any]]] = []
    for source in sorted(heads):
        points = cloze_points(heads[source])
        step = max(1, len(points) / QUESTIONS_PER_DOC)
        for r, (prefix, answer, word) in enumerate(points[int(i * step)] for i in range(min(len(points),
                                                                                             QUESTIONS_PER_DOC))):
            if len(rounds) <= r:
                rounds.append([])
            rounds[r].append({"id": f"rag-answer:{source[len(BUILTIN):]}:w{word}", "source": source,
                              "question": cloze_question(prefix, word), "answer": answer})
    return [q for round_ in rounds for q in round_][:MAX_ANSWER_QUESTIONS]


def search_passages(index_dir: Path, queries: list[str]) -> list[list[Passage]]:
    """The top-``TOP_K`` passages for each query; waits while another process holds a local index (module doc)."""
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            retriever = Retriever.from_index(index_dir)
            try:
                # One batched embedding pass: one query at a time is several times slower on a CPU.
                vectors = retriever.embedder.encode(queries)
                return [retriever.search_vector(v, top_k=TOP_K) for v in vectors]
            finally:
                retriever.store.release()
        except StoreLocked:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def search_all(index_dir: Path, queries: list[str]) -> list[list[str]]:
    """The sources of ``search_passages``: the top-``TOP_K`` documents for each query, best first."""
    return [[p.source for p in found] for found in search_passages(index_dir, queries)]


def answer_replies(ctx: EvalContext, conversations: list[list[dict[str, str]]]) -> list[str]:
    """Greedy replies of at most ``ANSWER_TOKENS`` tokens: transformers (``ANSWER_BATCH`` or more a batch), or
    our engine / llama.cpp for a quantized artifact, or ``ctx.reply_fn`` for a scripted stand-in."""
    if ctx.reply_fn is None:
        model, tokenizer = ctx.model_and_tokenizer()
        replies = generate_replies(model, tokenizer, conversations, max_new_tokens=ANSWER_TOKENS,
                                   batch_size=max(ctx.batch_size, ANSWER_BATCH), seed=ctx.seed)
        return [r[0] for r in replies]
    if is_quantized(ctx.model_path):  # the same budget as its parent, not the suite's max_new_tokens
        return engine_replies(ctx.model_path, ANSWER_TOKENS)(conversations)
    return ctx.replies(conversations)


def prompt_fits(ctx: EvalContext):
    """``fits(message)`` for ``fit_passages``: the rendered prompt leaves ``ANSWER_TOKENS`` in the model's context.

    A quantized artifact is measured with its runtime's tokenizer and context, so it sees the prompts its
    parent sees; with a scripted ``ctx.reply_fn`` (no model) every message fits: all ``TOP_K`` are shown.
    """
    if ctx.reply_fn is None:
        model, tokenizer = ctx.model_and_tokenizer()
        room = context_length(model) - ANSWER_TOKENS
    elif is_quantized(ctx.model_path):
        tokenizer, room = engine_tokenizer(ctx.model_path), engine_context(ctx.model_path) - ANSWER_TOKENS
    else:
        return lambda message: True
    return lambda message: len(tokenizer(render_chat([{"role": "user", "content": message}], add_generation_prompt=True),
                                         add_special_tokens=False).input_ids) <= room


def shown_passages(question: str, passages: list[Passage], fits) -> list[str]:
    """The passages ``fit_passages`` puts in the prompt; none when not even one word of one fits.

    Only a model with a context of a few dozen tokens (the smoke preset's 64) gets none: its question
    is then asked bare both times, and its gain is 0 by construction rather than an error.
    """
    try:
        return fit_passages(question, [clean_passage(p.text) for p in passages], fits)
    except ValueError:
        return []


def score_answers(ctx: EvalContext, asked: list[dict[str, Any]], found: list[list[Passage]]) -> list[dict[str, Any]]:
    """One row per question: its replies without and with passages, whether each is right, what the prompt held."""
    fits = prompt_fits(ctx)
    shown = [shown_passages(q["question"], passages, fits) for q, passages in zip(asked, found)]
    replies = answer_replies(ctx, [[{"role": "user", "content": q["question"]}] for q in asked]
                             + [[{"role": "user", "content": passages_message(q["question"], s) if s else q["question"]}]
                                for q, s in zip(asked, shown)])
    bare, helped = replies[:len(asked)], replies[len(asked):]
    rows = []
    for q, passages, s, without, with_ in zip(asked, found, shown, bare, helped):
        rows.append({**q, "passage_sources": [p.source for p in passages[:len(s)]],
                     "source_in_prompt": q["source"] in [p.source for p in passages[:len(s)]],
                     "reply_without": without, "reply_with": with_,
                     "right_without": answers_match(parse_response(without)["text"], q["answer"]),
                     "right_with": answers_match(parse_response(with_)["text"], q["answer"])})
    return rows


class Rag(EvalTask):
    name = "rag"
    description = (f"For questions about indexed Python docs documents, share whose document is the run index's top "
                   f"passage (hit_rate_at_1) or among the top {TOP_K} (hit_rate_at_{TOP_K}), and the mean reciprocal "
                   f"rank of its first passage in the top {TOP_K} (mrr); for cloze questions about held-out docs "
                   f"documents, the share of greedy one-word answers that are right with the retrieved passages in "
                   f"the prompt (answer_acc_with_passages), without them (answer_acc_without), and the difference "
                   f"(passage_gain).")
    metrics = ("n", "hit_rate_at_1", f"hit_rate_at_{TOP_K}", "mrr", "n_answer", "answer_acc_with_passages",
               "answer_acc_without", "passage_gain", "answer_source_in_prompt")

    def unavailable(self, ctx: EvalContext) -> str | None:
        index_dir = run_index_dir(ctx.model_path)
        if index_dir is None:
            return REASON
        if not questions(index_dir):
            return f"the run's index {index_dir} holds no builtin:python-docs documents to ask about"
        return None

    def run(self, ctx: EvalContext) -> dict[str, float]:
        index_dir = run_index_dir(ctx.model_path)
        if index_dir is None:
            raise EvalError(f"the rag task cannot run: {REASON}")
        asked = ctx.take(questions(index_dir))
        answer_asked = ctx.take(answer_questions(index_dir))
        found = search_passages(index_dir, [q["question"] for q in asked + answer_asked])
        rows: list[dict[str, Any]] = []
        for q, passages in zip(asked, found):
            sources = [p.source for p in passages]
            rank = sources.index(q["source"]) + 1 if q["source"] in sources else None
            rows.append({**q, "retrieved": sources, "rank": rank})
        answers = score_answers(ctx, answer_asked, found[len(asked):]) if answer_asked else []
        ctx.record(self.name, rows + answers)
        ranks = [r["rank"] for r in rows]
        with_ = share([r["right_with"] for r in answers])
        without = share([r["right_without"] for r in answers])
        return present({"n": len(rows), "hit_rate_at_1": share([r == 1 for r in ranks]),
                        f"hit_rate_at_{TOP_K}": share([r is not None for r in ranks]),
                        "mrr": sum(1 / r for r in ranks if r) / len(ranks) if ranks else None,
                        "n_answer": len(answers) if answers else None,
                        "answer_acc_with_passages": with_, "answer_acc_without": without,
                        "passage_gain": with_ - without if answers else None,
                        "answer_source_in_prompt": share([r["source_in_prompt"] for r in answers])})
