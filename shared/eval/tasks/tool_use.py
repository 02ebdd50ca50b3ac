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
"""
from __future__ import annotations

from typing import Any

from shared.data.instructions.checks import parse_response, score_response
from shared.eval.tasks.base import EvalContext, EvalTask, heldout_examples, present, share
from shared.tools import ToolError
from shared.tools.executor import execute, validate_call

MAX_TOOL_ROUNDS = 2


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


class ToolUse(EvalTask):
    name = "tool_use"
    description = ("On held-out tool prompts: share of first replies that are a terminated tool call validating "
                   "against the tool's schema (valid_call) and that name the expected tool (right_tool); on the "
                   f"ones with an expected answer, share whose final answer after executing up to "
                   f"{MAX_TOOL_ROUNDS} tool calls passes the exact check (success).")
    metrics = ("n", "n_full", "valid_call", "right_tool", "success")

    def run(self, ctx: EvalContext) -> dict[str, float]:
        examples = ctx.take([e for e in heldout_examples() if e["task"] == "tool"])
        conversations = [[e["messages"][0]] for e in examples]
        rows = [{"id": e["id"], "tool": expected_tool(e), "turns": [], "success": None} for e in examples]
        # Only the full examples carry an expected answer, so only they are played out past round 0.
        active = list(range(len(examples)))
        for round_ in range(MAX_TOOL_ROUNDS + 1):
            if not active:
                break
            replies = ctx.replies([conversations[i] for i in active])
            still = []
            for i, reply in zip(active, replies, strict=True):
                row, call = rows[i], parse_response(reply)["tool_call"]
                row["turns"].append({"reply": reply})
                if round_ == 0:
                    row["valid_call"] = is_valid_call(reply)
                    row["right_tool"] = call is not None and call.get("name") == row["tool"]
                    if examples[i]["check"]["kind"] == "tool_call":
                        continue  # no expected answer: the first reply is all there is to score
                if call is None:
                    row["success"] = bool(score_response(examples[i], reply)["correct"])
                elif round_ == MAX_TOOL_ROUNDS:
                    row["success"] = False  # still calling tools when it had to answer
                else:
                    result = run_tool(call)
                    row["turns"][-1]["tool_result"] = result
                    conversations[i] = [*conversations[i], {"role": "assistant", "content": "", "tool_call": call},
                                        {"role": "tool", "content": result}]
                    still.append(i)
            active = still
        ctx.record(self.name, rows)
        full = [r for r in rows if r["success"] is not None]
        return present({"n": len(rows), "n_full": len(full), "valid_call": share([r["valid_call"] for r in rows]),
                        "right_tool": share([r["right_tool"] for r in rows]),
                        "success": share([r["success"] for r in full])})
