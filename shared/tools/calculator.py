"""Safe arithmetic for the ``calculator`` tool: the expression's ``ast`` is walked, never run.

``calculate("17 * (3 + 4)")`` returns ``"119"``. Allowed: int and float literals, ``+ - * / // %
**``, unary ``+``/``-`` and parentheses. Anything else (names, attribute access, calls, strings,
comparisons, ``__import__``...) raises :class:`ToolError`, and so does breaking a limit: the
expression's length (``MAX_EXPRESSION_CHARS``), an exponent's size (``MAX_EXPONENT``) or any
value's magnitude (``MAX_MAGNITUDE``, checked before a power is computed, so ``9**9**9`` costs
nothing). There is no ``eval``/``exec`` anywhere: the walker below is the whole interpreter.
"""
from __future__ import annotations

import ast
import math
import operator
from typing import Callable

from shared.tools import ToolError

MAX_EXPRESSION_CHARS = 200
MAX_EXPONENT = 100
MAX_MAGNITUDE = 10 ** 100
_LIMIT = "1e100"  # MAX_MAGNITUDE in words

Number = int | float
_BINARY: dict[type[ast.operator], Callable[[Number, Number], Number]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Number], Number]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_ALLOWED = "numbers, + - * / // % **, unary minus and parentheses"


def calculate(expression: str) -> str:
    """The value of ``expression`` as text: ints exactly, floats to 12 significant digits."""
    value = evaluate(expression)
    if isinstance(value, float):
        return f"{value:.12g}"
    return str(value)


def evaluate(expression: str) -> Number:
    """The value of ``expression`` (see the module docstring); :class:`ToolError` on anything else."""
    if not isinstance(expression, str) or not expression.strip():
        raise ToolError("the calculator needs a non-empty arithmetic expression, e.g. '12 * (3 + 4)'")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"the expression has {len(expression)} characters, more than the calculator's limit of "
                        f"{MAX_EXPRESSION_CHARS}; split it into smaller calculations")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise ToolError(f"{expression!r} is not an arithmetic expression ({exc.msg}); use {_ALLOWED}") from None
    except (RecursionError, MemoryError):  # absurd nesting; the length limit makes this rare
        raise ToolError(f"{expression!r} is nested too deeply; simplify it") from None
    return _eval(tree.body)


def _eval(node: ast.AST) -> Number:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):  # type(): bool is not a number here
        return _checked(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _checked(_UNARY[type(node.op)](_eval(node.operand)))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow):
            _check_power(left, right)
        try:
            return _checked(_BINARY[type(node.op)](left, right))
        except ZeroDivisionError:
            raise ToolError("division by zero; check the divisor") from None
        except OverflowError:
            raise ToolError(f"the result is too large (the limit is {_LIMIT})") from None
    raise ToolError(f"the calculator does not allow {_describe(node)}; use only {_ALLOWED}")


def _check_power(base: Number, exponent: Number) -> None:
    """Refuse a power before computing it when the exponent or the result would be too big."""
    if abs(exponent) > MAX_EXPONENT:
        raise ToolError(f"the exponent {exponent} is larger than the calculator's limit of {MAX_EXPONENT}")
    if base == 0 and exponent < 0:
        raise ToolError("zero cannot be raised to a negative power (division by zero)")
    if abs(base) > 1 and exponent > 0 and exponent * math.log10(abs(base)) > math.log10(MAX_MAGNITUDE):
        raise ToolError(f"{base} ** {exponent} is too large (the limit is {_LIMIT})")


def _checked(value: object) -> Number:
    """``value`` if it is a finite real number within the magnitude limit."""
    if isinstance(value, complex):  # (-8) ** 0.5
        raise ToolError("the result is not a real number (a negative number to a fractional power)")
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolError("the result is not a finite number")
    if abs(value) > MAX_MAGNITUDE:
        raise ToolError(f"a value in the expression is too large (the limit is {_LIMIT})")
    return value  # type: ignore[return-value]


def _describe(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return f"names ({node.id!r})"
    if isinstance(node, ast.Attribute):
        return f"attribute access (.{node.attr})"
    if isinstance(node, ast.Call):
        return "function calls"
    if isinstance(node, ast.Constant):
        return f"{type(node.value).__name__} literals ({node.value!r:.20})"
    if isinstance(node, (ast.BinOp, ast.UnaryOp)):
        return f"the operator {type(node.op).__name__}"
    return f"{type(node).__name__} expressions"
