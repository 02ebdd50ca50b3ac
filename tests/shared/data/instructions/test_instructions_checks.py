"""checks: parsing replies, scoring every check kind, refusal detection, overlap, no heavy imports."""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from shared.data import DataError
from shared.data.instructions import (generate_instructions, is_refusal, parse_response, reference_overlap,
                                      score_response, target_response)
from shared.data.instructions import checks

CALL = '<|tool_call|>{"name":"calculator","arguments":{"expression":"2 + 3"}}'


@pytest.fixture(scope="module")
def examples() -> list[dict]:
    return generate_instructions(1400, seed=3)


def _example(kind: str, answer: str) -> dict:
    return {"id": "x", "task": "t", "messages": [], "check": {"kind": kind, "answer": answer}}


def wrong_response(example: dict) -> str:
    """A well-formed reply that must not pass ``example``'s check."""
    kind, answer = example["check"]["kind"], example["check"]["answer"]
    if kind == "exact_case":
        return answer.swapcase() + "<|end|>"
    if kind == "refusal":
        return "Sure, here is how to do that.<|end|>"
    if kind == "tool_call":
        call = json.loads(answer)
        call["arguments"] = {k: v + "0" for k, v in call["arguments"].items()}
        return "<|tool_call|>" + json.dumps(call) + "<|end|>"
    return "not " + answer + " at all<|end|>"


def test_every_target_scores_correct_and_a_wrong_reply_does_not(examples):
    for e in examples:
        good = score_response(e, target_response(e))
        assert good["format_ok"] and good["reward"] == pytest.approx(1.0), (e, good)
        bad = score_response(e, wrong_response(e))
        assert bad["format_ok"], bad
        if e["check"]["kind"] == "none":
            assert good["correct"] is None and good["overlap"] == 1.0 and bad["overlap"] < 1.0
        else:
            assert good["correct"] is True and bad["correct"] is False, (e, bad)
            assert bad["reward"] == pytest.approx(0.2)
        assert good["refused"] == (e["check"]["kind"] == "refusal")


@pytest.mark.parametrize("text, expected", [
    ("42<|end|>", {"text": "42", "tool_call": None, "terminated": True}),
    ("<|assistant|> 42 <|end|>", {"text": "42", "tool_call": None, "terminated": True}),
    ("42<|end|><|user|>garbage after the end", {"text": "42", "tool_call": None, "terminated": True}),
    ("42<|endoftext|>more", {"text": "42", "tool_call": None, "terminated": False}),
    ("42", {"text": "42", "tool_call": None, "terminated": False}),
    ("42<|user|>What now?<|end|>", {"text": "42", "tool_call": None, "terminated": False}),
    (CALL + "<|end|>", {"text": "", "tool_call": {"name": "calculator", "arguments": {"expression": "2 + 3"}},
                        "terminated": True}),
    ('<|tool_call|>{"name": "calculator", "arguments": <|end|>', {"text": "", "tool_call": None, "terminated": True}),
])
def test_parse_response(text, expected):
    parsed = parse_response(text)
    assert {k: parsed[k] for k in expected} == expected
    assert (parsed["problems"] == []) == (text in ("42<|end|>", "<|assistant|> 42 <|end|>",
                                                   "42<|end|><|user|>garbage after the end", CALL + "<|end|>"))


@pytest.mark.parametrize("response, problem", [
    ("42", "does not end with <|end|>"),
    ("42<|endoftext|>", "ends with <|endoftext|>, not <|end|>"),
    ("<|end|>", "empty"),
    ("4<|system|>2<|end|>", r"role token \(<\|system\|>\)"),
    ('<|tool_call|>{"name": 1}<|end|>', r'must be \{"name": str, "arguments"'),
    ("<|tool_call|>not json<|end|>", "not valid JSON"),
    ("Let me see." + CALL + "<|end|>", "text before <|tool_call|>"),
])
def test_format_problems_are_reported_not_raised(response, problem):
    score = score_response(_example("exact", "42"), response)
    assert not score["format_ok"]
    assert any(re.search(problem, p) for p in score["problems"]), score["problems"]


def test_exact_normalizes_whitespace_case_and_numbers():
    exact = _example("exact", "Paris")
    for reply in (" paris <|end|>", "PARIS.<|end|>", "Paris!<|end|>"):
        assert score_response(exact, reply)["correct"]
    assert not score_response(exact, "Paris, France<|end|>")["correct"]
    number = _example("exact", "1000")
    for reply in ("1000<|end|>", "1,000<|end|>", "1000.0<|end|>", " 1000 <|end|>"):
        assert score_response(number, reply)["correct"], reply
    assert not score_response(number, "100<|end|>")["correct"]
    cased = _example("exact_case", "WALK")
    assert score_response(cased, "WALK<|end|>")["correct"] and not score_response(cased, "walk<|end|>")["correct"]


def test_unterminated_correct_answer_is_correct_but_not_well_formed():
    score = score_response(_example("exact", "42"), "42")
    assert score["correct"] and not score["format_ok"] and score["reward"] == pytest.approx(0.8)


def test_tool_call_check_compares_name_and_arguments():
    call = _example("tool_call", '{"name":"calculator","arguments":{"expression":"2 + 3"}}')
    assert score_response(call, CALL + "<|end|>")["correct"]
    assert not score_response(call, CALL.replace("calculator", "search_docs") + "<|end|>")["correct"]
    assert not score_response(call, "5<|end|>")["correct"]
    assert not score_response(_example("exact", "5"), CALL + "<|end|>")["correct"], "a call is not a text answer"


@pytest.mark.parametrize("text", [
    "I can't help with that.", "Sorry, I can't help with that.", "I cannot assist with this request.",
    "I won't help with that.", "I\u2019m not able to do that.", "I'm sorry, but that is not something I do.",
    "I must decline.",
])
def test_refusals_are_detected(text):
    assert is_refusal(text)
    assert score_response(_example("refusal", "I can't help with that."), text + "<|end|>")["correct"]


@pytest.mark.parametrize("text", [
    "Run kill with its pid, or call os.kill(pid, signal.SIGTERM).", "42", "SIGKILL",
    "Use soft light, hold the camera steady and fill the frame.", "The process will not stop until it gets SIGKILL.",
    "Sure, here is how to do that.",
])
def test_answers_are_not_refusals(text):
    assert not is_refusal(text)


def test_reference_overlap_is_unigram_f1():
    assert reference_overlap("the cat sat", "the cat sat") == 1.0
    assert reference_overlap("dog", "the cat sat") == 0.0
    assert reference_overlap("The cat", "the cat sat") == pytest.approx(0.8)  # p = 1, r = 2/3
    assert reference_overlap("", "") == 1.0 and reference_overlap("", "cat") == 0.0
    score = score_response(_example("none", "the cat sat"), "the cat<|end|>")
    assert score["correct"] is None and score["overlap"] == pytest.approx(0.8)


def test_unknown_check_kind_is_an_error():
    with pytest.raises(DataError, match="unknown check kind 'fuzzy'"):
        score_response(_example("fuzzy", "x"), "x<|end|>")


def test_checks_module_imports_no_torch_or_transformers():
    tree = ast.parse(Path(checks.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not imported & {"torch", "transformers", "datasets", "numpy"}, imported
