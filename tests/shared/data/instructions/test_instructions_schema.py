"""schema: validation errors name the field and the fix; targets render as a model would generate them."""
from __future__ import annotations

import copy

import pytest

from shared.data import DataError
from shared.data.instructions import target_response, validate_preference_example, validate_sft_example

SFT = {"id": "a", "task": "arithmetic",
       "messages": [{"role": "user", "content": "What is 1 + 1?"}, {"role": "assistant", "content": "2"}],
       "check": {"kind": "exact", "answer": "2"}}
CALL = {"name": "calculator", "arguments": {"expression": "1 + 1"}}
TOOL = {"id": "t", "task": "tool",
        "messages": [{"role": "user", "content": "Use the calculator: 1 + 1"},
                     {"role": "assistant", "content": "", "tool_call": CALL}],
        "check": {"kind": "tool_call", "answer": '{"name":"calculator","arguments":{"expression":"1 + 1"}}'}}
PAIR = {"id": "p", "prompt": [{"role": "user", "content": "Hi"}],
        "chosen": [{"role": "assistant", "content": "Hello!"}],
        "rejected": [{"role": "assistant", "content": "Go away."}], "margin": 1.0}


def edited(row: dict, path: tuple, value=None, delete: bool = False) -> dict:
    row = copy.deepcopy(row)
    parent = row
    for key in path[:-1]:
        parent = parent[key]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return row


def test_valid_rows_pass_and_targets_render_like_generations():
    validate_sft_example(SFT, "here")
    validate_sft_example(TOOL, "here")
    validate_preference_example(PAIR, "here")
    assert target_response(SFT) == "2<|end|>"
    assert target_response(TOOL) == '<|tool_call|>{"name":"calculator","arguments":{"expression":"1 + 1"}}<|end|>'


@pytest.mark.parametrize("row, match", [
    (edited(SFT, ("messages",), delete=True), r"here has no field 'messages' \(it has \['check', 'id', 'task'\]\)"
                                               r"; an SFT example needs"),
    (edited(SFT, ("check", "answer"), delete=True), r"here: check has no field 'answer'"),
    (edited(SFT, ("id",), ""), "id must be a non-empty string"),
    (edited(SFT, ("messages",), []), "messages must be a non-empty list"),
    (edited(SFT, ("messages", 1, "role"), "user"), r"the last message has role 'user'"),
    (edited(SFT, ("messages", 0, "role"), "robot"), r"messages\[0\]: unknown chat role 'robot'"),
    (edited(SFT, ("messages", 0, "role"), "system"), "no user turn before the target"),
    (edited(SFT, ("check", "kind"), "fuzzy"), r"unknown check kind 'fuzzy'; choose one of"),
    (edited(SFT, ("check", "kind"), "tool_call"), "needs the last message to be that tool call"),
    (edited(SFT, ("messages", 1, "content"), " "), "needs a non-empty text target"),
    (edited(TOOL, ("check", "answer"), '{"name":"calculator","arguments":{}}'), "that tool call"),
    (edited(TOOL, ("check", "answer"), "not json"), "that tool call"),
    (edited(TOOL, ("check", "kind"), "exact"), "use kind tool_call"),
    ("a string", "is a str, not a mapping"),
])
def test_bad_sft_rows_name_the_problem(row, match):
    with pytest.raises(DataError, match=match):
        validate_sft_example(row, "here")


@pytest.mark.parametrize("row, match", [
    (edited(PAIR, ("margin",), delete=True), r"here has no field 'margin'.*a preference example needs"),
    (edited(PAIR, ("prompt",), [{"role": "assistant", "content": "Hi"}]), "the prompt ends with role 'assistant'"),
    (edited(PAIR, ("chosen",), [{"role": "user", "content": "x"}]), "chosen starts with role 'user'"),
    (edited(PAIR, ("rejected",), []), "rejected must be a non-empty list"),
    (edited(PAIR, ("rejected",), PAIR["chosen"]), "chosen and rejected are identical"),
    (edited(PAIR, ("margin",), "big"), "margin must be a number"),
    (edited(PAIR, ("margin",), True), "margin must be a number"),
])
def test_bad_preference_rows_name_the_problem(row, match):
    with pytest.raises(DataError, match=match):
        validate_preference_example(row, "here")
