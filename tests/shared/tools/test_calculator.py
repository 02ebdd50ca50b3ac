"""The calculator tool (safe arithmetic over the ast) and the executor that validates and runs calls."""
from __future__ import annotations

import pytest

from shared.tools import ToolError
from shared.tools.calculator import MAX_EXPRESSION_CHARS, calculate, evaluate
from shared.tools.executor import TOOLS, execute, validate_call


@pytest.mark.parametrize("expression, value", [
    ("2 + 3", 5), ("710 * 764", 542440), ("411 - 590", -179), ("7 / 2", 3.5), ("7 // 2", 3), ("7 % 3", 1),
    ("2 ** 10", 1024), ("-(3 + 4) * 2", -14), ("+5", 5), ("2 ** -1", 0.5), ("1_000 + 1.5", 1001.5),
    ("((1))", 1), ("10 ** 100", 10 ** 100), ("2 ** 3 ** 2", 512),
])
def test_values(expression, value):
    assert evaluate(expression) == value


def test_results_are_text_ints_exact_floats_short():
    assert calculate("710 * 764") == "542440"
    assert calculate("6 / 3") == "2"
    assert calculate("1 / 3") == "0.333333333333"


@pytest.mark.parametrize("expression, why", [
    ("x + 1", "names"),
    ("__import__('os').system('echo hi')", "function calls"),
    ("(1).__class__", "attribute access"),
    ("abs(-1)", "function calls"),
    ("'a' * 3", "str literals"),
    ("True + 1", "bool literals"),
    ("1 < 2", "Compare"),
    ("[1, 2]", "List"),
    ("lambda: 1", "Lambda"),
    ("1 << 10", "LShift"),
    ("2 ** 1000", "exponent"),
    ("9 ** 9 ** 9", "exponent"),
    ("99999 ** 99", "too large"),
    ("10 ** 60 * 10 ** 60", "too large"),
    ("1 / 0", "division by zero"),
    ("5 % 0", "division by zero"),
    ("0 ** -1", "negative power"),
    ("(-8) ** 0.5", "not a real number"),
    ("1e308 * 10", "too large"),
    ("1 +", "not an arithmetic expression"),
    ("", "non-empty"),
    ("1+" * 150 + "1", "limit"),
])
def test_rejected_inputs_name_the_problem(expression, why):
    with pytest.raises(ToolError, match=why):
        evaluate(expression)


def test_expression_length_limit_is_checked_before_parsing():
    with pytest.raises(ToolError, match=str(MAX_EXPRESSION_CHARS)):
        evaluate("(" * 5000 + "1" + ")" * 5000)


def test_executor_validates_then_runs():
    assert execute({"name": "calculator", "arguments": {"expression": "17 * (3 + 4)"}}) == "119"
    assert execute('{"name":"calculator","arguments":{"expression":"2+2"}}') == "4"
    tool, args = validate_call({"name": "calculator", "arguments": {"expression": "1"}})
    assert tool is TOOLS["calculator"] and args.expression == "1"


@pytest.mark.parametrize("call, why", [
    ({"name": "shell", "arguments": {"cmd": "ls"}}, "unknown tool 'shell'.*calculator"),
    ({"name": "calculator", "arguments": {}}, "invalid arguments for 'calculator'.*expression"),
    ({"name": "calculator", "arguments": {"expression": "1", "mode": "x"}}, "mode"),
    ({"name": "calculator", "arguments": {"expression": 5}}, "expression"),
    ({"name": "calculator", "arguments": "2+2"}, "must be an object"),
    ({"arguments": {}}, "must be"),
    ('{"name": "calculator", ', "not valid JSON"),
    ({"name": "search_docs", "arguments": {"query": ""}}, "query"),
    ({"name": "calculator", "arguments": {"expression": "open('f')"}}, "function calls"),
])
def test_executor_rejects_bad_calls(call, why):
    with pytest.raises(ToolError, match=why):
        execute(call)
