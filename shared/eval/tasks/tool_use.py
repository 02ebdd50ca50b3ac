"""``tool_use``: does the model call the right tool correctly, and use what it gets back?

The pool is the first ``limit`` held-out ``tool``-family examples; every one of them needs a
tool. The model answers each user question greedily (round 0), and that first reply gives:

- ``valid_call``: the reply is a tool call, ends with ``<|end|>``, and its JSON validates against
  the named tool's pydantic argument model (``shared.tools.executor.validate_call``);
- ``right_tool``: the reply calls the tool the example calls (valid arguments or not).

The "full" examples (call, tool result, final answer; check ``exact``) are then played out:
a tool call is run with ``executor.execute`` (a failing call returns ``error: ...`` as the tool
result, as a server would) and appended to the conversation as the assistant's call plus a
``tool`` message, and the model continues. After at most ``MAX_TOOL_ROUNDS`` calls the next
reply must be the answer. ``success``: the final answer passes the example's check.

``success_without_tools`` is the bare model's score on the same full examples with no tools: every
call it makes is answered ``TOOLS_OFF`` (an error, as a server without tools would send) and its
answer is scored the same way. Issue 20's goal compares the two: tools must turn arithmetic the
model cannot do into right answers. Round 0 is the same prompt in both, so its reply is reused.
"""
from __future__ import annotations

from typing import Any, Callable

from shared.data.instructions.checks import parse_response, score_response
from shared.eval.tasks.base import EvalContext, EvalTask, heldout_examples, present, share
from shared.tools import ToolError
from shared.tools.executor import execute, validate_call

MAX_TOOL_ROUNDS = 2
TOOLS_OFF = "error: no tools are available in this conversation; answer directly"


def expected_tool(example: dict[str, Any]) -> str:
    """The name of the tool the example's assistant calls first."""
    call = next(m["tool_call"] for m in example["messages"] if m.get("tool_call") is not None)
    return call["name"]


def is_valid_call(reply: str) -> bool:
    """A terminated tool call whose arguments validate against the named tool's schema."""
    parsed = parse_response(reply)
    if parsed["tool_call"] is None or not parsed["terminated"]:
        return False
    try:
        validate_call(parsed["tool_call"])
    except ToolError:
        return False
    return True


def run_tool(call: dict[str, Any]) -> str:
    """The tool's answer, or ``error: <why>``: the model sees the error, as it would when served."""
    try:
        return execute(call)
    except ToolError as exc:
        return f"error: {exc}"


def play_out(ctx: EvalContext, examples: list[dict[str, Any]], tool: Callable[[dict[str, Any]], str]) -> list[dict]:
    """Each full example answered with up to ``MAX_TOOL_ROUNDS`` calls, each answered by ``tool(call)``.

    One row per example: ``turns`` (each reply, and the tool result it got) and ``success`` (the
    final answer passes the example's check; still calling tools after the last round fails).
    """
    conversations = [[e["messages"][0]] for e in examples]
    rows: list[dict[str, Any]] = [{"turns": [], "success": None} for _ in examples]
    active = list(range(len(examples)))
    for round_ in range(MAX_TOOL_ROUNDS + 1):
        if not active:
            break
        still = []
        for i, reply in zip(active, ctx.replies([conversations[i] for i in active]), strict=True):
            row, call = rows[i], parse_response(reply)["tool_call"]
            row["turns"].append({"reply": reply})
            if call is None:
                row["success"] = bool(score_response(examples[i], reply)["correct"])
            elif round_ == MAX_TOOL_ROUNDS:
                row["success"] = False  # still calling tools when it had to answer
            else:
                result = tool(call)
                row["turns"][-1]["tool_result"] = result
                conversations[i] = [*conversations[i], {"role": "assistant", "content": "", "tool_call": call},
                                    {"role": "tool", "content": result}]
                still.append(i)
        active = still
    return rows


class ToolUse(EvalTask):
    name = "tool_use"
    description = ("On held-out tool prompts: share of first replies that are a terminated tool call validating "
                   "against the tool's schema (valid_call) and that name the expected tool (right_tool); on the "
                   f"ones with an expected answer, share whose final answer after executing up to "
                   f"{MAX_TOOL_ROUNDS} tool calls passes the exact check (success), and the same share when every "
                   "call is answered with an error instead (success_without_tools: the bare model).")
    metrics = ("n", "n_full", "valid_call", "right_tool", "success", "success_without_tools")

    def run(self, ctx: EvalContext) -> dict[str, float]:
        examples = ctx.take([e for e in heldout_examples() if e["task"] == "tool"])
        # Only the full examples carry an expected answer, so only they are played out past round 0.
        full = [i for i, e in enumerate(examples) if e["check"]["kind"] != "tool_call"]
        first = ctx.replies([[e["messages"][0]] for e in examples])
        played = dict(zip(full, play_out(ctx, [examples[i] for i in full], run_tool), strict=True))
        bare = play_out(ctx, [examples[i] for i in full], lambda call: TOOLS_OFF)
        rows = []
        for i, (example, reply) in enumerate(zip(examples, first, strict=True)):
            call, tool = parse_response(reply)["tool_call"], expected_tool(example)
            rows.append({"id": example["id"], "tool": tool, "valid_call": is_valid_call(reply),
                         "right_tool": call is not None and call.get("name") == tool,
                         **played.get(i, {"turns": [{"reply": reply}], "success": None})})
        for row, without in zip((rows[i] for i in full), bare, strict=True):
            row["without_tools"] = without
        ctx.record(self.name, rows)
        return present({"n": len(rows), "n_full": len(full), "valid_call": share([r["valid_call"] for r in rows]),
                        "right_tool": share([r["right_tool"] for r in rows]),
                        "success": share([rows[i]["success"] for i in full]),
                        "success_without_tools": share([r["success"] for r in bare])})
