"""The rag task's per-model part: cloze questions on held-out docs, answered with and without retrieved passages."""
from __future__ import annotations

import json
import re
from itertools import count
from pathlib import Path

import pytest

from shared.data.instructions.rag_prompt import HEADER, QUESTION, clean_passage
from shared.data.split import is_heldout_doc
from shared.eval.tasks import rag
from shared.eval.tasks.base import EvalContext
from shared.rag.retriever import Passage

TEXTS = [
    "alpha\nThe alpha module parses configuration files written in a simple format and reports errors "
    "with line numbers for every broken entry.",
    "beta\nThe beta package schedules periodic jobs inside a running interpreter and retries failed "
    "callbacks after a configurable delay.",
    "gamma\nThe gamma helpers compress archives with several algorithms and verify checksums before "
    "extracting members to disk.",
]


def doc_ids(heldout: bool, n: int) -> list[str]:
    """``n`` document ids that the journey's split puts on the held-out side (or on the train side)."""
    ids = (f"module:doc{i}.py" for i in count())
    out = []
    for doc_id in ids:
        if is_heldout_doc(doc_id) == heldout:
            out.append(doc_id)
        if len(out) == n:
            return out


@pytest.fixture()
def index_dir(tmp_path) -> Path:
    """A chunk list like the index stage writes: two held-out documents, one trained-on, each a first chunk."""
    held, trained = doc_ids(True, 2), doc_ids(False, 1)
    chunks = [{"chunk_id": f"c{i}", "source": f"{rag.BUILTIN}{doc_id}", "start": 0, "end": len(text), "text": text}
              for i, (doc_id, text) in enumerate(zip(held + trained, TEXTS))]
    chunks.append({"chunk_id": "late", "source": chunks[0]["source"], "start": 400, "end": 420, "text": "a later chunk"})
    (tmp_path / "chunks.jsonl").write_text("\n".join(json.dumps(c) for c in chunks) + "\n", encoding="utf-8")
    (tmp_path / "index.json").write_text(json.dumps({"chunks_file": "chunks.jsonl"}), encoding="utf-8")
    return tmp_path


def heads(index_dir: Path) -> dict[str, str]:
    rows = [json.loads(line) for line in (index_dir / "chunks.jsonl").read_text().splitlines()]
    return {r["source"]: clean_passage(r["text"]) for r in rows if r["start"] == 0}


def passage(source: str, text: str) -> Passage:
    return Passage(text=text, source=source, score=0.5, start=0, end=len(text), chunk_id=source)


def copier(conversations):
    """A "model" that copies: with passages, the word after the question's words in them; without, a guess."""
    replies = []
    for conversation in conversations:
        message = conversation[-1]["content"]
        if not message.startswith(HEADER):
            replies.append("configuration<|end|>")
            continue
        prefix = message.rsplit("\n" + QUESTION, 1)[1].split(": ", 1)[1]
        match = re.search(re.escape(prefix) + r" (\w+)", message.rsplit("\n" + QUESTION, 1)[0])
        replies.append(f"{match.group(1) if match else 'unknown'}.<|end|>")
    return replies


def test_answer_questions_ask_about_heldout_heads_only_round_robin(index_dir):
    questions = rag.answer_questions(index_dir)
    texts = heads(index_dir)
    held = [s for s in texts if is_heldout_doc(s[len(rag.BUILTIN):])]
    assert len(held) == 2 and {q["source"] for q in questions} == set(held)
    per_doc = {s: [q for q in questions if q["source"] == s] for s in held}
    assert all(0 < len(qs) <= rag.QUESTIONS_PER_DOC for qs in per_doc.values())
    assert questions[0]["source"] != questions[1]["source"]  # round-robin: a small limit still sees both
    for q in questions:
        prefix = q["question"].split(": ", 1)[1]
        assert f"{prefix} {q['answer']}" in texts[q["source"]]
    assert len({q["id"] for q in questions}) == len(questions)


def test_score_answers_with_and_without_passages(index_dir):
    questions = rag.answer_questions(index_dir)
    texts = heads(index_dir)
    distractor = next(s for s in texts if not is_heldout_doc(s[len(rag.BUILTIN):]))
    # the first question's document is retrieved second, behind a distractor; the others' not at all
    found = [[passage(distractor, texts[distractor])] + ([passage(q["source"], texts[q["source"]])] if i == 0 else [])
             for i, q in enumerate(questions)]
    ctx = EvalContext("scripted", limit=None, reply_fn=copier)
    rows = rag.score_answers(ctx, questions, found)
    assert [r["source_in_prompt"] for r in rows] == [True] + [False] * (len(rows) - 1)
    assert rows[0]["right_with"] and not any(r["right_with"] for r in rows[1:])
    assert [r["right_without"] for r in rows] == [q["answer"] == "configuration" for q in questions]
    assert rows[0]["reply_with"] == f"{questions[0]['answer']}.<|end|>"


def test_run_reports_retrieval_and_answer_metrics(index_dir, monkeypatch):
    texts = heads(index_dir)
    by_question = {q["question"]: q["source"] for q in rag.answer_questions(index_dir)}

    def search(_, queries):  # retrieval that always finds the document a question is about, first
        return [[passage(by_question[q], texts[by_question[q]])] if q in by_question else
                [passage(s, texts[s]) for s in texts] for q in queries]
    monkeypatch.setattr(rag, "run_index_dir", lambda _: index_dir)
    monkeypatch.setattr(rag, "search_passages", search)
    ctx = EvalContext("scripted", limit=None, reply_fn=copier)
    metrics = rag.Rag().run(ctx)
    n = len(by_question)
    without = sum(q["answer"] == "configuration" for q in rag.answer_questions(index_dir)) / n  # the bare guess
    assert metrics["n_answer"] == n and metrics["answer_source_in_prompt"] == 1.0
    assert metrics["answer_acc_with_passages"] == 1.0 and metrics["answer_acc_without"] == without
    assert metrics["passage_gain"] == pytest.approx(1.0 - without)
    assert metrics["n"] == 3 and set(rag.Rag.metrics) >= set(metrics)
    assert len(ctx.rows["rag"]) == 3 + n


def test_a_context_too_small_for_any_passage_asks_the_bare_question(index_dir):
    question = rag.answer_questions(index_dir)[0]
    texts = heads(index_dir)
    found = [passage(question["source"], texts[question["source"]])]
    assert rag.shown_passages(question["question"], found, lambda m: False) == []
    assert rag.shown_passages(question["question"], found, lambda m: True) == [texts[question["source"]]]
