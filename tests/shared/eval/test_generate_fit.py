"""``fit_prompt``: a long prompt keeps its tokens and gets a shorter reply budget; only beyond that is it cut.
And ``generate_replies`` gives each prompt its own budget, whatever it is batched with."""
from __future__ import annotations

import pytest

from shared.eval.generate import MIN_REPLY, fit_prompt, generate_replies


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


@pytest.fixture(scope="module")
def tiny_chat_model(tiny_checkpoint):
    from shared.eval.generate import load_chat_model
    return load_chat_model(str(tiny_checkpoint))


def test_a_reply_does_not_depend_on_its_batchmates(tiny_chat_model):
    """A short prompt batched with one long enough to shorten its own budget keeps its whole reply budget."""
    model, tokenizer = tiny_chat_model
    short = [{"role": "user", "content": "What is 2 + 2?"}]
    long = [{"role": "user", "content": "The answer is four. Use the calculator. " * 12}]
    alone = generate_replies(model, tokenizer, [short], max_new_tokens=30)[0][0]
    batched = generate_replies(model, tokenizer, [long, short, long], max_new_tokens=30)
    assert len(tokenizer(alone, add_special_tokens=False).input_ids) > MIN_REPLY  # else the test shows nothing
    assert batched[1][0] == alone
    assert batched[0] == batched[2] == generate_replies(model, tokenizer, [long], max_new_tokens=30)[0]
