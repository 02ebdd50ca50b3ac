"""One chat turn: optional retrieval, generation, the tool-call loop, as a stream of events.

``run_turn(messages, options, generate=..., retrieve=..., call_tool=...)`` is an async iterator of
``TurnEvent``s with the kinds of ``shared.bus.messages.ChatEvent``: ``sources`` (once, when
retrieval ran), ``token`` (answer text as it streams), ``tool_call`` and ``tool_result`` (each
round), then ``metrics`` and ``done`` (``text``: the answer; ``data``: finish reason, usage and
the messages this turn added, for memory). The three collaborators are plain async callables so
the gateway can back them with Ray Serve handles and the bus, and tests with anything real.

The tool loop: when generation ends in a tool call, the call is checked against the request's
allowlist (``TurnOptions.tools``) before anything runs; an unknown or disallowed call is answered
with an error result the model sees, and the loop continues. A call that is not even JSON ends the
turn (finish reason ``tool_call_error``) with its error shown: the chat format has no way to
replay it to the model. The result goes back as a
``tool`` message (special tokens neutralised) and generation resumes, at most ``max_tool_rounds``
times; a model still calling tools after that ends with finish reason ``tool_rounds``. Retrieved
passages and tool results can add text to the context but never add a tool to the allowlist.
"""
from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.chat.prompt import clean_messages, neutralize, with_passages

GenerateFn = Callable[[list[dict], dict], AsyncIterator[dict]]
RetrieveFn = Callable[[str, int, "float | None"], Awaitable[list[dict]]]
ToolFn = Callable[[str, dict], Awaitable[dict]]
DEFAULT_TOOLS = ("calculator", "search_docs")  # `python` runs only when a request enables it


@dataclass
class TurnOptions:
    """Per-request settings of a turn."""
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    use_rag: bool = True
    top_k: int = 3
    score_threshold: float | None = None
    tools: tuple[str, ...] = DEFAULT_TOOLS
    max_tool_rounds: int = 3

    def sampling(self) -> dict[str, Any]:
        return {"max_tokens": self.max_tokens, "temperature": self.temperature, "top_p": self.top_p,
                "seed": self.seed}


@dataclass
class TurnEvent:
    kind: str
    text: str = ""
    data: dict[str, Any] = field(default_factory=dict)


def last_user_text(messages: Sequence[dict]) -> str:
    return next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")


async def _tool_result(call: dict | None, error: str | None, options: TurnOptions, call_tool: ToolFn | None) -> dict:
    if error is not None or call is None:
        return {"ok": False, "output": "", "error": error or "empty tool call"}
    if call["name"] not in options.tools or call_tool is None:
        return {"ok": False, "output": "",
                "error": f"tool {call['name']!r} is not enabled for this request; enabled: {list(options.tools)}"}
    result = await call_tool(call["name"], call.get("arguments", {}))
    return {"ok": bool(result.get("ok")), "output": str(result.get("output", "")), "error": str(result.get("error", ""))}


async def run_turn(messages: Sequence[dict], options: TurnOptions, *, generate: GenerateFn,
                   retrieve: RetrieveFn | None = None, call_tool: ToolFn | None = None) -> AsyncIterator[TurnEvent]:
    """Answer the last user message of ``messages`` (see the module docstring)."""
    start = time.perf_counter()
    context = clean_messages(messages)
    added: list[dict] = []
    if options.use_rag and retrieve is not None:
        passages = await retrieve(last_user_text(context), options.top_k, options.score_threshold)
        yield TurnEvent("sources", data={"sources": passages})
        context = with_passages(context, passages)
    usage = {"prompt_tokens": 0, "completion_tokens": 0}
    first_token_s: float | None = None
    rounds = 0
    while True:
        done: dict = {}
        async for event in generate(context + added, options.sampling()):
            if event["kind"] == "token":
                first_token_s = first_token_s or time.perf_counter() - start
                yield TurnEvent("token", event["text"])
            elif event["kind"] == "done":
                done = event
        metrics = done.get("metrics", {})
        for key in usage:
            usage[key] += int(metrics.get(key, 0))
        if done.get("finish_reason") != "tool_call":
            break
        if rounds >= options.max_tool_rounds:
            done = {**done, "finish_reason": "tool_rounds", "text": ""}
            break
        rounds += 1
        call = done.get("tool_call")
        first_token_s = first_token_s or time.perf_counter() - start
        yield TurnEvent("tool_call", data={"name": (call or {}).get("name"), "arguments": (call or {}).get("arguments"),
                                           "raw": done.get("tool_call_text"), "error": done.get("tool_call_error")})
        result = await _tool_result(call, done.get("tool_call_error"), options, call_tool)
        yield TurnEvent("tool_result", data=result)
        if call is None:  # not JSON: the chat format cannot carry it back, so the turn ends on the error
            done = {**done, "finish_reason": "tool_call_error", "text": ""}
            break
        content = result["output"] if result["ok"] else f"error: {result['error']}"
        added += [{"role": "assistant", "content": "", "tool_call": call},
                  {"role": "tool", "content": neutralize(content)}]
    answer = done.get("text", "")
    added.append({"role": "assistant", "content": answer})
    yield TurnEvent("metrics", data={**metrics, "turn_ttft_s": first_token_s, "turn_s": time.perf_counter() - start,
                                     "tool_rounds": rounds})
    yield TurnEvent("done", answer, {"finish_reason": done.get("finish_reason"), "usage": usage, "added": added})
