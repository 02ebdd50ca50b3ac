"""Validate a tool call against its tool's pydantic argument model, then run it.

``execute(call)`` takes the call as a dict or as the JSON the model wrote after
``<|tool_call|>`` (``{"name": "calculator", "arguments": {"expression": "2 + 3"}}``) and returns
the tool's answer as text, which goes back to the model as a ``tool`` message. ``validate_call``
is the first half alone (what "is this a valid call?" metrics need). Only tools in ``TOOLS`` run;
an unknown name, missing or extra arguments, or a failing tool all raise :class:`ToolError`.

``calculator`` and ``search_docs`` run in-process (neither can run code); ``python`` runs its
snippet in the sandbox of ``shared.tools.sandbox`` (separate process, jail, limits). The bus
consumer is ``services/tools``.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.tools import ToolError
from shared.tools.calculator import MAX_EXPRESSION_CHARS, calculate
from shared.tools.docs_search import search_docs
from shared.tools.sandbox import SandboxUnavailable, run_python
from shared.tools.sandbox_config import SandboxConfig

MAX_QUERY_CHARS = 200
MAX_CODE_CHARS = 10_000


class CalculatorArgs(BaseModel):
    """Arguments of ``calculator``."""
    model_config = ConfigDict(extra="forbid")
    expression: str = Field(min_length=1, max_length=MAX_EXPRESSION_CHARS,
                            description="arithmetic with + - * / // % ** and parentheses, e.g. '12 * (3 + 4)'")


class SearchDocsArgs(BaseModel):
    """Arguments of ``search_docs``."""
    model_config = ConfigDict(extra="forbid")
    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS,
                       description="what to look up, usually a module name, e.g. 'json'")


class PythonArgs(BaseModel):
    """Arguments of ``python``."""
    model_config = ConfigDict(extra="forbid")
    code: str = Field(min_length=1, max_length=MAX_CODE_CHARS,
                      description="a Python snippet; what it prints is the answer, e.g. 'print(sum(range(10)))'")


def run_python_tool(code: str, limits: SandboxConfig | None = None) -> str:
    """The ``python`` tool: what the snippet printed, plus a line saying if it failed, was stopped or cut."""
    try:
        return run_python(code, limits).text()
    except SandboxUnavailable as exc:
        raise ToolError(f"the python tool cannot run here: {exc}") from None


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    arguments: type[BaseModel]
    run: Callable[[Any], str]  # called with a validated ``arguments`` instance


TOOLS: dict[str, Tool] = {tool.name: tool for tool in (
    Tool("calculator", "Evaluate an arithmetic expression.", CalculatorArgs, lambda a: calculate(a.expression)),
    Tool("search_docs", "Find the summary of a Python standard-library module.", SearchDocsArgs,
         lambda a: search_docs(a.query)),
    Tool("python", "Run a short Python snippet in a sandbox (no network, no files outside its work dir) and "
         "return what it prints.", PythonArgs, lambda a: run_python_tool(a.code)),
)}


def validate_call(call: Mapping[str, Any] | str) -> tuple[Tool, BaseModel]:
    """The tool a call names and its validated arguments; :class:`ToolError` naming what is wrong."""
    if isinstance(call, str):
        try:
            call = json.loads(call)
        except json.JSONDecodeError as exc:
            raise ToolError(f"the tool call is not valid JSON ({exc.msg} at char {exc.pos}); write "
                            '{"name": ..., "arguments": {...}}') from None
    if not isinstance(call, Mapping) or not isinstance(call.get("name"), str):
        raise ToolError(f'a tool call must be {{"name": str, "arguments": {{...}}}}, got {call!r:.200}')
    tool = TOOLS.get(call["name"])
    if tool is None:
        raise ToolError(f"unknown tool {call['name']!r}; the tools are {sorted(TOOLS)}")
    arguments = call.get("arguments")
    if not isinstance(arguments, Mapping):
        raise ToolError(f"the arguments of {tool.name!r} must be an object, got {arguments!r:.200}")
    try:
        return tool, tool.arguments.model_validate(dict(arguments))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'arguments'}: {e['msg']}" for e in exc.errors())
        expected = ", ".join(tool.arguments.model_fields)
        raise ToolError(f"invalid arguments for {tool.name!r} ({problems}); it takes: {expected}") from None


def execute(call: Mapping[str, Any] | str, runners: Mapping[str, Callable[[Any], str]] | None = None) -> str:
    """Validate ``call`` and run it; the tool's answer as text.

    ``runners`` replaces how named tools run, with the same validated arguments: the serving stack
    backs ``search_docs`` with the retriever service instead of the offline lookup table.
    """
    tool, arguments = validate_call(call)
    run = (runners or {}).get(tool.name, tool.run)
    return run(arguments)
