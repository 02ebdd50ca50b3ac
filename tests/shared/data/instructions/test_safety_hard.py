"""The hard part of the refusal family: indirect harmful requests, borderline helpful prompts, their split."""
from __future__ import annotations

import re
from collections import Counter

import pytest

from shared.chat_format import render_chat
from shared.data import DataError
from shared.data.instructions import generate_instructions, is_refusal, load_instructions, safety_prompts, split_name
from shared.data.instructions import safety
from shared.data.instructions.safety import (BORDERLINE_ACTIONS, BORDERLINE_QUESTIONS, FRAMES, HARD_HARMFUL_ACTIONS,
                                             HARD_SHARE, hard_examples, hard_safety_prompts, hard_split, is_hard,
                                             pool_id)

# harmful:<action>:f<frame>:..., safe:<action>:f<frame>:..., question:<question>:...
_PARTS = re.compile(r"^refusal:hard:(harmful|safe|question):(\d+)(?::f(\d+))?:")


def items(example: dict) -> set[tuple[str, int]]:
    """The hard-list items an example is made of: ``{("frame", 3), ("harmful", 7)}``."""
    kind, item, frame = _PARTS.match(example["id"]).groups()
    return {(kind, int(item))} | ({("frame", int(frame))} if frame is not None else set())


@pytest.fixture(scope="module")
def pools() -> dict[str, dict[str, list[dict]]]:
    return {split: hard_examples(split) for split in ("train", "heldout")}


@pytest.fixture(scope="module")
def family() -> list[dict]:
    return [e for e in generate_instructions() if e["task"] == "refusal"]


def test_items_split_one_in_three_and_ids_agree(pools):
    for items_ in (FRAMES, HARD_HARMFUL_ACTIONS, BORDERLINE_ACTIONS, BORDERLINE_QUESTIONS):
        held = [i for i in range(len(items_)) if hard_split(i) == "heldout"]
        assert held == list(range(2, len(items_), 3))
    for split, sides in pools.items():
        for e in (e for side in sides.values() for e in side):
            assert split_name(e["id"]) == split, e["id"]  # every loader that splits by id agrees
    assert pool_id("x", "train") != pool_id("x", "heldout")
    assert split_name(pool_id("x", "heldout")) == "heldout"


def test_heldout_items_are_never_in_a_training_example(pools, family):
    trained = {item for e in family if is_hard(e) for item in items(e)}
    trained |= {item for side in pools["train"].values() for e in side for item in items(e)}
    heldout_items = {item for side in pools["heldout"].values() for e in side for item in items(e)}
    assert heldout_items and not heldout_items & trained
    # the held-out pool is every held-out combination: 6 frames x 9 actions, 6 x 10 + 7 questions
    assert (len(pools["heldout"]["harmful"]), len(pools["heldout"]["helpful"])) == (54, 67)


def test_targets_refuse_harmful_and_answer_borderline(pools):
    for sides in pools.values():
        for e in sides["harmful"]:
            assert e["check"]["kind"] == "refusal" and is_refusal(e["messages"][-1]["content"])
        for e in sides["helpful"]:
            assert e["check"]["kind"] in ("exact", "none") and not is_refusal(e["messages"][-1]["content"])
            if e["check"]["kind"] == "exact":
                assert len(e["check"]["answer"].split()) <= 3
    # the frame alone never decides: every frame is used on both sides
    frames = {side: {i for e in pools["train"][side] for kind, i in items(e) if kind == "frame"}
              for side in ("harmful", "helpful")}
    assert frames["harmful"] == frames["helpful"] == {i for i in range(len(FRAMES)) if hard_split(i) == "train"}


def test_family_trains_a_modest_hard_share_and_keeps_the_easy_heldout_set(family, monkeypatch):
    hard = [e for e in family if is_hard(e)]
    assert len(hard) == round(len(family) * HARD_SHARE) == 150
    assert all(split_name(e["id"]) == "train" for e in hard)  # the held-out split holds no hard example
    kinds = Counter(e["check"]["kind"] == "refusal" for e in hard)
    assert kinds[True] - kinds[False] in (0, 1)
    assert sum(e["check"]["kind"] == "refusal" for e in family) == (len(family) + 1) // 2
    easy_heldout = {e["id"] for e in load_instructions(split="heldout") if e["task"] == "refusal"}
    prompts = safety_prompts("heldout")
    monkeypatch.setattr(safety, "HARD_SHARE", 0.0)
    assert {e["id"] for e in load_instructions(split="heldout") if e["task"] == "refusal"} == easy_heldout
    assert safety_prompts("heldout") == prompts
    assert not any(is_hard(e) for side in safety_prompts("train").values() for e in side)


def test_hard_safety_prompts_are_fixed_heldout_and_short(pools):
    prompts = hard_safety_prompts("heldout")
    assert prompts == hard_safety_prompts("heldout") and set(prompts) == {"harmful_hard", "helpful_hard"}
    assert len(prompts["harmful_hard"]) == len(prompts["helpful_hard"]) == 50
    pool_ids = {e["id"] for side in pools["heldout"].values() for e in side}
    assert all(e["id"] in pool_ids for side in prompts.values() for e in side)
    questions = [e for e in prompts["helpful_hard"] if e["id"].startswith("refusal:hard:question:")]
    assert len(questions) == 7  # every held-out question (at most a quarter of the side)
    assert all(e["check"]["kind"] == "refusal" for e in prompts["harmful_hard"])
    for side in pools.values():
        for e in (e for rows in side.values() for e in rows):
            assert len(render_chat(e["messages"])) <= 300, e["id"]  # the tiny model sees 128 tokens
    assert len(hard_safety_prompts("heldout", per_side=10)["harmful_hard"]) == 10


def test_bad_arguments_name_the_fix():
    with pytest.raises(DataError, match="positive number"):
        hard_safety_prompts("heldout", per_side=0)
    with pytest.raises(DataError, match=r"unknown split 'val'.*heldout"):
        hard_safety_prompts("val")
