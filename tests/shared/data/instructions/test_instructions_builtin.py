"""builtin:instructions: balance, split, length, validity, determinism, facts phrasing, safety prompts."""
from __future__ import annotations

import re
import statistics
from collections import Counter

import pytest

from shared.data import DataError
from shared.data.instructions import (generate_instructions, is_refusal, load_instructions, safety_prompts,
                                      split_name, validate_sft_example)
from shared.data.instructions.builtin import FAMILIES
from shared.data.instructions.facts import TABLES
from shared.chat_format import render_chat

HARD_MAX_CHARS = 480


@pytest.fixture(scope="module")
def examples() -> list[dict]:
    return generate_instructions()


@pytest.fixture(scope="module")
def splits() -> dict[str, list[dict]]:
    return {split: load_instructions("builtin:instructions", split) for split in ("train", "heldout")}


def test_every_task_is_equally_represented(examples):
    counts = Counter(e["task"] for e in examples)
    assert len(examples) == 6000 and set(counts) == set(FAMILIES)
    assert max(counts.values()) - min(counts.values()) <= 1, counts


def test_ids_are_unique_and_generation_is_deterministic(examples):
    assert len({e["id"] for e in examples}) == len(examples)
    assert generate_instructions() == examples
    other_seed = generate_instructions(seed=1)
    assert other_seed != examples and Counter(e["task"] for e in other_seed) == Counter(e["task"] for e in examples)


def test_heldout_is_disjoint_stable_and_about_ten_percent(examples, splits):
    train_ids = {e["id"] for e in splits["train"]}
    heldout_ids = {e["id"] for e in splits["heldout"]}
    assert not train_ids & heldout_ids
    assert train_ids | heldout_ids == {e["id"] for e in examples}
    assert 0.07 < len(heldout_ids) / len(examples) < 0.13
    assert {e["id"] for e in load_instructions("builtin:instructions", "heldout")} == heldout_ids
    # A different seed draws other examples, but an id never changes sides.
    for e in generate_instructions(700, seed=5):
        assert (e["id"] in heldout_ids) <= (split_name(e["id"]) == "heldout")
    train_text = {render_chat(e["messages"]) for e in splits["train"]}
    assert not any(render_chat(e["messages"]) in train_text for e in splits["heldout"]), "no conversation leaks"


def test_every_task_has_heldout_examples(splits):
    counts = Counter(e["task"] for e in splits["heldout"])
    assert set(counts) == set(FAMILIES) and min(counts.values()) > 40, counts


def test_conversations_are_short_valid_and_render(examples):
    lengths = []
    for e in examples:
        validate_sft_example(e, e["id"])
        text = render_chat(e["messages"])
        assert text.endswith("<|end|>") and e["messages"][-1]["role"] == "assistant"
        lengths.append(len(text))
    assert max(lengths) <= HARD_MAX_CHARS
    assert statistics.mean(lengths) < 150
    # passages examples carry one or two passages by design (their own bound: test_instructions_passages.py)
    short = [n for n, e in zip(lengths, examples) if e["task"] != "passages"]
    assert sum(n < 300 for n in short) / len(short) > 0.95


def test_tasks_have_the_promised_shapes(examples):
    by_task: dict[str, list[dict]] = {}
    for e in examples:
        by_task.setdefault(e["task"], []).append(e)
    kinds = {task: Counter(e["check"]["kind"] for e in rows) for task, rows in by_task.items()}
    assert set(kinds["arithmetic"]) == {"exact"} and set(kinds["facts"]) == {"exact"}
    assert set(kinds["string"]) == {"exact", "exact_case"} and set(kinds["docs"]) == {"none"}
    assert set(kinds["refusal"]) == {"refusal", "exact", "none"}
    assert kinds["refusal"]["refusal"] >= len(by_task["refusal"]) // 2
    assert set(kinds["tool"]) == {"tool_call", "exact"}
    tool_names = Counter(e["messages"][1]["tool_call"]["name"] for e in by_task["tool"])
    assert set(tool_names) == {"calculator", "search_docs"}
    full = [e for e in by_task["tool"] if len(e["messages"]) == 4]
    assert full and all([m["role"] for m in e["messages"]] == ["user", "assistant", "tool", "assistant"] for e in full)
    assert all(sum(m["role"] == "user" for m in e["messages"]) >= 2 for e in by_task["multiturn"])


def test_arithmetic_and_multiturn_answers_are_right(examples):
    for e in examples:
        question = e["messages"][0]["content"]
        if e["task"] == "arithmetic":
            _, op, a, b, _ = e["id"].split(":")
            assert sorted(re.findall(r"\d+", question)) == sorted([a, b]), question
            a, b = int(a), int(b)
            assert int(e["check"]["answer"]) == {"add": a + b, "sub": a - b, "mul": a * b}[op], question
        if e["task"] == "tool" and e["check"]["kind"] == "exact" and "calculator" in str(e["messages"][1]):
            expression = e["messages"][1]["tool_call"]["arguments"]["expression"]
            assert int(e["check"]["answer"]) == eval(expression)  # noqa: S307 - digits and one operator
        if e["id"].startswith("multiturn:number:"):
            _, _, a, op, b, _ = e["id"].split(":")
            assert int(e["check"]["answer"]) == {"plus": int(a) + int(b), "minus": int(a) - int(b),
                                                 "times": int(a) * int(b)}[op]


def test_heldout_facts_are_mostly_new_phrasings_of_trained_facts(splits):
    def fact(e: dict) -> str:
        return e["id"].rsplit(":", 1)[0]  # facts:<table>:<subject>:t<k> without the phrasing

    trained = {fact(e) for e in splits["train"] if e["task"] == "facts"}
    heldout = [e for e in splits["heldout"] if e["task"] == "facts"]
    seen = sum(fact(e) in trained for e in heldout)
    assert seen / len(heldout) > 0.85
    # Every fact is asked, and asked in more than one phrasing.
    asked = Counter(fact(e) for rows in splits.values() for e in rows if e["task"] == "facts")
    assert len(asked) == sum(len(t.rows) for t in TABLES) and min(asked.values()) >= 2


def test_refusal_targets_are_refusals_and_safe_answers_are_not(examples):
    refusals = [e for e in examples if e["task"] == "refusal"]
    for e in refusals:
        answer = e["messages"][-1]["content"]
        assert is_refusal(answer) == (e["check"]["kind"] == "refusal"), e
    safe = [e["messages"][0]["content"] for e in refusals if e["check"]["kind"] != "refusal"]
    assert any(re.search(r"\bkill\b", q) for q in safe), "safe prompts share the scary words"


def test_safety_prompts_are_fixed_and_two_sided(splits):
    prompts = safety_prompts("heldout")
    assert prompts == safety_prompts("heldout")
    assert len(prompts["harmful"]) == 50 and len(prompts["helpful"]) == 50
    assert all(e["check"]["kind"] == "refusal" for e in prompts["harmful"])
    assert not any(e["check"]["kind"] == "refusal" for e in prompts["helpful"])
    assert any(e["task"] == "refusal" for e in prompts["helpful"]) and any(e["task"] != "refusal"
                                                                           for e in prompts["helpful"])
    heldout_ids = {e["id"] for e in splits["heldout"]}
    assert all(e["id"] in heldout_ids for side in prompts.values() for e in side)


def test_bad_arguments_name_the_fix():
    with pytest.raises(DataError, match="at least one example per task"):
        generate_instructions(3)
    with pytest.raises(DataError, match="lower n"):
        generate_instructions(14_000)
    with pytest.raises(DataError, match=r"unknown split 'val'.*heldout"):
        load_instructions("builtin:instructions", "val")
    with pytest.raises(DataError, match="the only one is 'builtin:instructions'"):
        load_instructions("builtin:nope", "train")
