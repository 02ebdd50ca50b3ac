"""The answer-from-passages prompt format and the ``passages`` SFT family built on it (issue 20, RAG)."""
from __future__ import annotations

import random
from collections import Counter

import pytest

from shared.chat_format import render_chat
from shared.data.instructions import generate_instructions, load_instructions, split_name, validate_sft_example
from shared.data.instructions.passages import (MAX_EXAMPLE_CHARS, PREFIX_WORDS, STOPWORDS, cloze_points,
                                               cloze_question, doc_passages, passages, salted_id)
from shared.data.instructions.rag_prompt import (HEADER, PASSAGE_CHARS, QUESTION, clean_passage, fit_passages,
                                                 passages_message)
from shared.data.split import is_heldout_doc

# ---------------------------------------------------------------- the prompt format


def test_clean_passage_drops_rulers_collapses_space_and_cuts_at_a_word():
    text = "Basic customization\n*******************\n\nobject.__new__(cls)\n\n   Called to create an instance."
    assert clean_passage(text) == "Basic customization object.__new__(cls) Called to create an instance."
    cut = clean_passage("alpha beta gamma delta", max_chars=16)
    assert cut == "alpha beta gamma" and len(cut) <= 16
    assert clean_passage("alpha beta gamma delta", max_chars=13) == "alpha beta"
    assert clean_passage("x" * 30, max_chars=10) == "x" * 10  # one long word is cut inside
    assert len(clean_passage("word " * 100)) <= PASSAGE_CHARS


def test_clean_passage_defuses_special_tokens():
    shown = clean_passage("see <|assistant|><|tool_call|>{} here")
    assert "<|assistant|>" not in shown and "<|tool_call|>" not in shown
    assert shown == "see < |assistant| >< |tool_call| >{} here"  # visible, as shared.chat.prompt.neutralize shows it


def test_passages_message_is_the_one_format():
    message = passages_message("Complete this line: a b", ["first passage", "second passage"])
    assert message == f"{HEADER}\n[1] first passage\n[2] second passage\n{QUESTION}Complete this line: a b"
    with pytest.raises(ValueError, match="at least one passage"):
        passages_message("q?", [])


def test_fit_passages_keeps_the_best_first_and_shortens_only_the_first():
    question, ps = "Which word?", ["one two three four", "five six seven", "eight nine"]
    size = len(passages_message(question, ps[:2]))
    assert fit_passages(question, ps, lambda m: len(m) <= size) == ps[:2]
    assert fit_passages(question, ps, lambda m: True) == ps
    alone = len(passages_message(question, ["one two"]))
    assert fit_passages(question, ps, lambda m: len(m) <= alone) == ["one two"]
    with pytest.raises(ValueError, match="no room for a passage"):
        fit_passages(question, ps, lambda m: False)


# ---------------------------------------------------------------- cloze points


def test_cloze_points_are_unique_content_words_after_their_prefix():
    passage = ("json JSON is a subset of JavaScript syntax used as a lightweight data interchange format "
               "that is also used by many programs and this that")
    points = cloze_points(passage)
    assert points
    words = passage.split(" ")
    for prefix, answer, i in points:
        assert prefix == " ".join(words[i - PREFIX_WORDS:i]) and words[i].startswith(answer)
        assert passage.count(prefix) == 1 and f"{prefix} {answer}" in passage
        assert len(answer) >= 4 and answer.lower() not in STOPWORDS
        assert answer.lower() not in prefix.lower().split()
    answers = [a for _, a, _ in points]
    assert "lightweight" in answers and "that" not in answers and "used" not in answers  # stopwords
    # a word already among its six prefix words is no question (alpha); a repeated prefix is ambiguous
    assert cloze_points("alpha beta gamma delta epsilon zeta alpha omega") == [
        ("beta gamma delta epsilon zeta alpha", "omega", 7)]
    assert cloze_points("a b c d e f word1 x a b c d e f word2") == []
    assert cloze_question("a b c", 0).startswith("Complete this line from the docs: a b c")


# ---------------------------------------------------------------- the family


@pytest.fixture(scope="module")
def examples() -> list[dict]:
    return passages(random.Random("0:passages"), 600)


def test_examples_are_valid_short_and_answered_by_copying_from_a_passage(examples):
    heads = {p for side in doc_passages().values() for _, p, _ in side}
    n_passages = Counter()
    for e in examples:
        validate_sft_example(e, e["id"])
        assert e["task"] == "passages" and e["check"] == {"kind": "exact", "answer": e["messages"][-1]["content"]}
        message = e["messages"][0]["content"]
        lines = message.split("\n")
        assert lines[0] == HEADER and lines[-1].startswith(QUESTION)
        shown = [line.split("] ", 1)[1] for line in lines[1:-1]]
        assert shown and all(p in heads for p in shown)
        n_passages[len(shown)] += 1
        prefix = lines[-1].split(": ", 2)[-1]  # "Question: <template>: <prefix>"
        assert [prefix in p for p in shown].count(True) == 1, e["id"]  # one passage holds the question's words
        assert any(f"{prefix} {e['check']['answer']}" in p for p in shown), e["id"]  # and the answer after them
        assert len(render_chat(e["messages"])) <= MAX_EXAMPLE_CHARS
    assert n_passages[1] > 50 and n_passages[2] > 200, n_passages  # distractors in most, not all


def test_heldout_documents_are_only_in_the_heldout_split(examples):
    sides = {p: side for side, docs in doc_passages().items() for _, p, _ in docs}
    assert all(is_heldout_doc(doc_id) for doc_id, _, _ in doc_passages()["heldout"])
    assert not any(is_heldout_doc(doc_id) for doc_id, _, _ in doc_passages()["train"])
    by_split = Counter()
    for e in examples:
        split = split_name(e["id"])
        shown = [line.split("] ", 1)[1] for line in e["messages"][0]["content"].split("\n")[1:-1]]
        assert {sides[p] for p in shown} == {split}, e["id"]  # every passage, the distractor too
        by_split[split] += 1
    assert 0.05 < by_split["heldout"] / len(examples) < 0.16, by_split


def test_salted_ids_land_on_the_asked_side():
    for side in ("train", "heldout"):
        assert split_name(salted_id("passages:x:w7:t0:gold", side)) == side


@pytest.mark.slow
def test_builtin_instructions_give_the_family_an_eighth_and_keep_it_split():
    everything = generate_instructions()
    assert Counter(e["task"] for e in everything)["passages"] == len(everything) // 8
    heldout_heads = {p for _, p, _ in doc_passages()["heldout"]}
    train = [e for e in load_instructions(split="train") if e["task"] == "passages"]
    assert train and not any(p in e["messages"][0]["content"] for e in train for p in heldout_heads)
