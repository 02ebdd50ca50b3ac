"""Held-out prompts, answers and documents stay out of every training set of the tiny journey (issue 20).

The training sets are built the way the tiny presets build them: the pretraining corpus
(``configs/pretrain/tiny.yaml``) and the continued-pretraining corpus (``configs/cpt/tiny.yaml``),
each split by ``SplitPlanner`` exactly as ``build_shards`` splits it, and the SFT examples of
``builtin:instructions``' training split (``configs/sft/tiny.yaml``), which are also where the
preference prompts come from (``configs/prefs/tiny.yaml``, ``prefs.pick_examples(..., "train")``), with
the whole hard safety training pool the preference stage may add (``prefs.pick_hard_safety``).
The held-out sets are what every evaluation asks or reads: the held-out instructions (the
``instructions``, ``chat_format`` and ``tool_use`` tasks), both safety sets, the ``rag`` task's
retrieval and answer questions (over an index laid out as ``configs/index/tiny.yaml`` builds it),
``journey_docs_cloze``'s held-out documents and ``journey_facts_mc``'s questions, and the held-out
documents of held-out perplexity.

A prompt overlaps when the text a model is asked (a user message; for several turns the whole
conversation) is a training prompt; a document overlaps when it is in a training split, or when a
paragraph of it (at least ``MIN_PARAGRAPH_CHARS``, whitespace collapsed) is inside training text.

Overlaps found and not yet fixed are ``xfail(strict=True)`` with their size in the reason: they
show in every run, and the test fails (XPASS) once the overlap is gone, so the marker goes too.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

from shared.chat_format import render_chat
from shared.data.documents import Document
from shared.data.instructions import generate_instructions, safety_prompts, split_name
from shared.data.instructions.safety import hard_examples, hard_safety_prompts
from shared.data.sources import iter_corpus
from shared.data.split import DOC_SPLIT_SEED, DOC_VAL_FRACTION, SplitPlanner, is_heldout_doc
from shared.eval.journey_tasks import build_facts_mc
from shared.rag.chunking import chunk_document
from shared.training.prefs import pick_hard_safety

ROOT = Path(__file__).resolve().parents[3]
MIN_PARAGRAPH_CHARS = 80  # shorter paragraphs ("Return the value.") recur everywhere by chance
BUILTIN_DOCS = "builtin:python-docs"


def preset(stage: str) -> dict:
    return yaml.safe_load((ROOT / "configs" / stage / "tiny.yaml").read_text(encoding="utf-8"))


def norm(text: str) -> str:
    return " ".join(text.split())


def paragraphs(text: str) -> list[str]:
    return [p for p in (norm(b) for b in re.split(r"\n\s*\n", text)) if len(p) >= MIN_PARAGRAPH_CHARS]


@lru_cache(maxsize=None)
def _whole(source: str) -> tuple[Document, ...]:
    return tuple(iter_corpus(source))


def corpus(source: str, max_bytes: int | None = None) -> tuple[Document, ...]:
    """``iter_corpus(source, max_bytes)``, read once per source (the docs take seconds to parse)."""
    docs = _whole(source)
    if max_bytes is None or sum(len(d.text.encode("utf-8")) for d in docs) <= max_bytes:
        return docs  # the budget cuts nothing
    return tuple(iter_corpus(source, max_bytes=max_bytes))


def planned_split(docs: Iterable[Document], val_fraction: float, seed: int) -> dict[str, str]:
    """``{doc id: "train" | "val"}`` as ``build_shards`` assigns it, the empty-side repair included."""
    docs = list(docs)
    planner = SplitPlanner(val_fraction, seed)
    sides = [planner.add(i, d.id, len(d.text.encode("utf-8"))) for i, d in enumerate(docs)]
    for i, side in planner.finish().items():
        sides[i] = side
    return {d.id: side for d, side in zip(docs, sides)}


def corpus_train(stage: str) -> tuple[list[Document], dict[str, str]]:
    """The stage's corpus as its tiny preset reads it, and its training documents."""
    data = preset(stage)["data"]
    assert data.get("val_fraction", DOC_VAL_FRACTION) == DOC_VAL_FRACTION and data.get("seed", DOC_SPLIT_SEED) == \
        DOC_SPLIT_SEED, f"the {stage} preset must use the journey's held-out split (shared/data/split.py)"
    docs = list(corpus(data["source"], data.get("max_bytes")))
    split = planned_split(docs, DOC_VAL_FRACTION, DOC_SPLIT_SEED)
    return [d for d in docs if split[d.id] == "train"], split


@pytest.fixture(scope="module")
def instructions() -> dict[str, list[dict]]:
    assert preset("sft")["data"] == preset("prefs")["data"] == "builtin:instructions"
    rows = generate_instructions()  # load_instructions' split, without generating twice
    return {split: [e for e in rows if split_name(e["id"]) == split] for split in ("train", "heldout")}


@pytest.fixture(scope="module")
def train_prompts(instructions) -> dict[str, set[str]]:
    """What SFT and DPO train on: every user message and every whole prompt of the SFT training split,
    plus every prompt the preference stage may add from the hard safety pool (``pick_hard_safety``)."""
    assert preset("prefs").get("hard_safety_prompts", 0) <= sum(len(v) for v in hard_examples("train").values())
    train = instructions["train"] + pick_hard_safety(10**6, seed=0)
    return {"user": {m["content"] for e in train for m in e["messages"] if m["role"] == "user"},
            "prompt": {render_chat(e["messages"][:-1]) for e in train}}


@pytest.fixture(scope="module")
def heldout_docs() -> list[Document]:
    return [d for d in corpus(BUILTIN_DOCS) if is_heldout_doc(d.id)]


def overlapping(asked: Iterable[str], trained: set[str]) -> list[str]:
    return sorted({a for a in asked if a in trained})


# ---------------------------------------------------------------- prompts


def test_heldout_instructions_are_never_training_prompts(instructions, train_prompts):
    held = instructions["heldout"]
    assert held and not {e["id"] for e in held} & {e["id"] for e in instructions["train"]}
    whole = overlapping((render_chat(e["messages"][:-1]) for e in held), train_prompts["prompt"])
    assert not whole, f"{len(whole)} held-out prompts are SFT training prompts: {whole[:3]}"
    # tool questions are asked alone by tool_use: test_tool_use_questions_are_not_trained
    single = overlapping((e["messages"][0]["content"] for e in held if len(e["messages"]) == 2 and e["task"] != "tool"),
                         train_prompts["user"])
    assert not single, f"{len(single)} held-out one-turn questions are SFT training questions: {single[:3]}"


def test_tool_use_questions_are_not_trained(instructions, train_prompts):
    asked = [e["messages"][0]["content"] for e in instructions["heldout"] if e["task"] == "tool"]
    assert len(asked) >= 50 and {len(e["messages"]) for e in instructions["heldout"] if e["task"] == "tool"} == {2, 4}
    # the cause, whatever the split: one question is one example (call-only or full), so one id decides its side
    questions = Counter(e["messages"][0]["content"] for side in instructions.values() for e in side
                        if e["task"] == "tool")
    assert max(questions.values()) == 1, [q for q, n in questions.items() if n > 1][:3]
    found = overlapping(asked, train_prompts["user"])
    assert not found, f"{len(found)} of {len(asked)} tool_use questions are SFT training questions: {found[:3]}"


def test_safety_sets_easy_and_hard_are_not_trained(train_prompts):
    sets = {**safety_prompts("heldout"), **hard_safety_prompts("heldout")}
    assert set(sets) == {"harmful", "helpful", "harmful_hard", "helpful_hard"}
    for side, examples in sets.items():
        asked = [render_chat(e["messages"][:-1]) for e in examples]
        assert len(asked) == 50 and not overlapping(asked, train_prompts["prompt"]), side
    hard = [e["messages"][0]["content"] for side in ("harmful_hard", "helpful_hard") for e in sets[side]]
    assert not overlapping(hard, train_prompts["user"])


def test_facts_mc_questions_are_not_trained(train_prompts):
    asked = [re.search(r"<\|user\|>(.*?)<\|end\|>", row["context"], re.S).group(1) for row in build_facts_mc()]
    assert len(asked) >= 100, "journey_facts_mc asks too few questions for a usable standard error"
    found = overlapping(asked, train_prompts["user"])
    assert not found, f"{len(found)} of {len(asked)} journey_facts_mc questions are trained: {found[:3]}"


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory) -> Path:
    """The chunk list of the tiny index (every builtin doc's first chunks), which the rag task reads its questions
    from; no embeddings are needed for the questions."""
    cfg = preset("index")
    assert cfg["sources"] == [BUILTIN_DOCS] and cfg["builtin_split"] == "all"
    out = tmp_path_factory.mktemp("index")
    lines = [json.dumps(c.to_dict()) for d in corpus(BUILTIN_DOCS)
             for c in chunk_document(d.text, f"{BUILTIN_DOCS}#{d.id}", cfg["chunk_chars"],
                                     cfg["chunk_overlap"])[: cfg["max_chunks_per_doc"]]]
    (out / "chunks.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "index.json").write_text(json.dumps({"chunks_file": "chunks.jsonl"}), encoding="utf-8")
    return out


def test_rag_answer_questions_are_on_heldout_documents_and_not_trained(index_dir, train_prompts, instructions):
    from shared.eval.tasks import rag

    questions = rag.answer_questions(index_dir)
    assert questions and all(is_heldout_doc(q["source"].split("#", 1)[1]) for q in questions)
    found = overlapping((q["question"] for q in questions), train_prompts["user"])
    assert not found, f"{len(found)} rag answer questions are SFT training questions: {found[:3]}"
    # no passage of a held-out document is shown in a training example (the passages family)
    heads = {q["source"] for q in questions}
    shown = "\n".join(norm(m["content"]) for e in instructions["train"] if e["task"] == "passages"
                      for m in e["messages"] if m["role"] == "user")
    leaked = [s for s in heads if any(p in shown for p in paragraphs(next(
        d.text for d in corpus(BUILTIN_DOCS) if f"{BUILTIN_DOCS}#{d.id}" == s)))]
    assert not leaked, f"held-out documents shown as passages in SFT training: {leaked[:3]}"


def test_rag_retrieval_questions_are_not_trained(index_dir, train_prompts):
    from shared.eval.tasks import rag

    asked = [q["question"] for q in rag.questions(index_dir)]
    found = overlapping(asked, train_prompts["user"])
    assert not found, f"{len(found)} of {len(asked)} rag retrieval questions are SFT training questions: {found[:3]}"


# ---------------------------------------------------------------- documents


def test_pretraining_trains_on_no_heldout_document(heldout_docs):
    train, split = corpus_train("pretrain")
    assert train and split
    assert not [d.id for d in train if is_heldout_doc(d.id)], "the planner moved a held-out document into train"
    # every held-out document read is on the validation side (one past max_bytes is not read at all)
    assert all(split.get(d.id, "val") == "val" for d in heldout_docs)


def test_continued_pretraining_trains_on_no_heldout_document():
    train, _ = corpus_train("cpt")
    assert train and not [d.id for d in train if is_heldout_doc(d.id)]


def test_heldout_docs_text_is_not_in_pretraining_text(heldout_docs):
    train, _ = corpus_train("pretrain")
    text = "\n".join(norm(d.text) for d in train)
    leaked = [d.id for d in heldout_docs if any(p in text for p in paragraphs(d.text))]
    assert not leaked, f"{len(leaked)} held-out docs documents have a paragraph in pretraining text: {leaked[:5]}"


def test_heldout_docs_text_is_not_in_continued_pretraining_code(heldout_docs):
    train, _ = corpus_train("cpt")
    text = "\n".join(norm(d.text) for d in train)
    leaked = [d.id for d in heldout_docs if any(p in text for p in paragraphs(d.text))]
    assert not leaked, f"{len(leaked)} held-out docs documents have a paragraph in cpt training code: {leaked[:5]}"


def test_sft_replays_no_heldout_text(heldout_docs, instructions):
    """The text the tiny SFT replays (its preset's corpora, as much as its chat mix asks for) holds no
    held-out document and none of a held-out document's paragraphs."""
    from shared.training.replay import replay_chars_needed, replay_documents

    sft = preset("sft")
    chats = [{"messages": e["messages"]} for e in instructions["train"]]
    texts = replay_documents(sft["replay"], replay_chars_needed(chats, sft["replay_fraction"]), seed=1234)
    assert texts
    text = "\n".join(norm(t) for t in texts)
    leaked = [d.id for d in heldout_docs if any(p in text for p in paragraphs(d.text))]
    assert not leaked, f"{len(leaked)} held-out docs documents have a paragraph in SFT's replayed text: {leaked[:5]}"
