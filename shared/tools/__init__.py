"""Tools a chat model may call: calculator, docs search, sandboxed python, and the executor that runs them.

A tool call is ``{"name": ..., "arguments": {...}}`` (the chat format writes it after
``<|tool_call|>``). ``executor.execute(call)`` validates it against the tool's pydantic argument
model and runs it; everything that goes wrong raises :class:`ToolError` with a message fit to
show the caller (and, as a tool result, the model). Modules: ``calculator`` (safe arithmetic),
``docs_search`` (offline search over stdlib module summaries), ``sandbox`` (runs the ``python``
tool's snippets isolated; limits in ``sandbox_config``), ``executor`` (allowlist + dispatch).
"""
from __future__ import annotations


class ToolError(ValueError):
    """A tool call could not be validated or run. The message names the problem and the fix."""


__all__ = ["ToolError"]
