"""Preference-pair making (``prefs.make_pairs``) on hand-scored replies, and the hard safety prompts: no model, no Ray."""
from __future__ import annotations

import pytest

from shared.config import ConfigError
from shared.eval.chat_eval import score_replies
from shared.training.posttrain_config import PrefsJobConfig
from shared.data.instructions.safety import hard_examples, hard_safety_prompts, is_hard
from shared.training.prefs import balance_refusals, make_pairs, pick_hard_safety, refusal_side

EXAMPLE = {"id": "arith-7+5", "task": "arithmetic", "check": {"kind": "exact", "answer": "12"},
           "messages": [{"role": "user", "content": "What is 7 + 5?"}, {"role": "assistant", "content": "12"}]}


def pairs_for(replies: list[str], **kwargs) -> list[dict]:
    scored = [score_replies([EXAMPLE] * len(replies), replies)]
    return make_pairs([EXAMPLE], scored, min_margin=kwargs.pop("min_margin", 0.5),
                      reference_fallback=kwargs.pop("reference_fallback", False), **kwargs)


def texts(pair: dict) -> tuple[str, str]:
    return pair["chosen"][0]["content"], pair["rejected"][0]["content"]


def test_one_pair_per_prompt_is_best_against_worst_with_greedy_rejected_first():
    # greedy "13" first, then samples; "11" is as wrong as the greedy reply
    pairs = pairs_for(["13<|end|>", "12<|end|>", "11<|end|>", "12<|end|>"])
    assert len(pairs) == 1
    assert texts(pairs[0]) == ("12", "13")
    assert pairs[0]["margin"] == pytest.approx(1.0) and pairs[0]["chosen_source"] == "model"


def test_several_pairs_are_distinct_couples_of_distinct_replies():
    replies = ["13<|end|>", "12<|end|>", "11<|end|>", "12<|end|>", "12.<|end|>", "10<|end|>", "13<|end|>"]
    pairs = pairs_for(replies, pairs_per_prompt=10)
    couples = [texts(p) for p in pairs]
    assert len(couples) == len(set(couples))
    assert couples[0] == ("12", "13")  # the first pair is still best vs the greedy mistake
    # every chosen reply is right, every rejected one wrong: 2 right ("12", "12.") x 3 wrong (13, 11, 10)
    assert {c for c, _ in couples} == {"12", "12."} and {r for _, r in couples} == {"13", "11", "10"}
    assert len(couples) == 6


def test_pairs_per_prompt_caps_and_spreads_over_new_replies():
    replies = ["13<|end|>", "12<|end|>", "11<|end|>", "12.<|end|>", "10<|end|>"]
    couples = [texts(p) for p in pairs_for(replies, pairs_per_prompt=2)]
    assert len(couples) == 2 and couples[0] == ("12", "13")
    assert couples[1] != couples[0] and len({*couples[0], *couples[1]}) == 3


def test_no_pair_without_a_margin_and_reference_fallback_pairs_every_wrong_reply():
    wrong = ["13<|end|>", "11<|end|>", "13<|end|>"]
    assert pairs_for(wrong, pairs_per_prompt=4) == []
    pairs = pairs_for(wrong, pairs_per_prompt=4, reference_fallback=True)
    assert [texts(p) for p in pairs] == [("12", "13"), ("12", "11")]
    assert all(p["chosen_source"] == "reference" for p in pairs)


def test_pairs_per_prompt_must_be_positive():
    with pytest.raises(ConfigError):
        PrefsJobConfig(pairs_per_prompt=0).validate()


def test_hard_safety_prompts_are_half_harmful_training_items_and_skip_excluded_ids():
    picked = pick_hard_safety(40, seed=7)
    assert len(picked) == 40 and len({e["id"] for e in picked}) == 40 and all(is_hard(e) for e in picked)
    assert sum(e["check"]["kind"] == "refusal" for e in picked) == 20
    assert picked == pick_hard_safety(40, seed=7) and picked != pick_hard_safety(40, seed=8)
    heldout = {e["messages"][0]["content"] for side in hard_safety_prompts("heldout", per_side=10**6).values()
               for e in side}
    everything = pick_hard_safety(10**6, seed=7)
    assert len(everything) == sum(len(v) for v in hard_examples("train").values())
    assert not heldout & {e["messages"][0]["content"] for e in everything}
    rest = pick_hard_safety(40, seed=7, exclude={e["id"] for e in picked})
    assert not {e["id"] for e in rest} & {e["id"] for e in picked}


def test_hard_safety_prompts_need_the_builtin_instructions():
    PrefsJobConfig(hard_safety_prompts=10).validate()
    with pytest.raises(ConfigError, match="hard_safety_prompts=0"):
        PrefsJobConfig(hard_safety_prompts=10, data="hf:Anthropic/hh-rlhf").validate()
    with pytest.raises(ConfigError, match=">= 0"):
        PrefsJobConfig(hard_safety_prompts=-1).validate()


def pair(i: int, chosen: str, rejected: str) -> dict:
    return {"id": f"p{i}", "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}]}


def test_balance_refusals_keeps_as_many_refusals_chosen_as_rejected():
    refuse = "I can't help with that."
    pairs = ([pair(i, "Sure: use a wrench.", refuse) for i in range(6)] + [pair(6, refuse, "Here is how to hurt them.")]
             + [pair(7, "12", "13"), pair(8, refuse, "Sorry, I can't help with that.")])
    assert [refusal_side(p) for p in pairs] == ["rejected"] * 6 + ["chosen", None, None]
    assert refusal_side({"chosen": [{"role": "assistant", "content": "", "tool_call": {"name": "x"}}],
                         "rejected": [{"role": "assistant", "content": refuse}]}) == "rejected"
    kept = balance_refusals(pairs, seed=3)
    sides = [refusal_side(p) for p in kept]
    assert sides.count("rejected") == sides.count("chosen") == 1 and sides.count(None) == 2
    assert [p["id"] for p in kept] == sorted(p["id"] for p in kept)  # order kept
    assert kept == balance_refusals(pairs, seed=3)
    assert balance_refusals([p for p in pairs if refusal_side(p) != "chosen"], seed=3) == pairs[7:]
