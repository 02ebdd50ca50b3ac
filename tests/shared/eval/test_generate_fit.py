"""``fit_prompt``: a long prompt keeps its tokens and gets a shorter reply budget; only beyond that is it cut."""
from __future__ import annotations

from shared.eval.generate import MIN_REPLY, fit_prompt


def test_short_prompts_keep_everything_and_the_whole_budget():
    assert fit_prompt(list(range(50)), 128, 48) == (list(range(50)), 48)


def test_a_long_prompt_shortens_the_reply_before_losing_tokens():
    ids, budget = fit_prompt(list(range(100)), 128, 48)
    assert ids == list(range(100)) and budget == 28


def test_only_a_prompt_longer_than_context_minus_min_reply_is_cut_from_the_left():
    ids, budget = fit_prompt(list(range(200)), 128, 48)
    assert ids == list(range(200 - (128 - MIN_REPLY), 200)) and budget == MIN_REPLY
    ids, budget = fit_prompt(list(range(200)), 128, 8)  # a budget under MIN_REPLY is kept whole
    assert len(ids) == 120 and budget == 8
