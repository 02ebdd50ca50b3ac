"""One chat turn: optional retrieval, generation, the tool-call loop, as a stream of events.

``run_turn(messages, options, generate=..., retrieve=..., call_tool=...)`` is an async iterator of
``TurnEvent``s with the kinds of ``shared.bus.messages.ChatEvent``: ``sources`` (once, when
retrieval ran), ``token`` (answer text as it streams), ``tool_call`` and ``tool_result`` (each
round), then ``metrics`` and ``done`` (``text``: the answer; ``data``: finish reason, usage and
the messages this turn added, for memory). The three collaborators are plain async callables so
the gateway can back them with Ray Serve handles and the bus, and tests with anything real.

Tools come in two kinds. A call to one of the client's functions (``TurnOptions.client_tools``) ends
the turn with finish reason ``tool_calls`` and the call in ``done.data["tool_calls"]``: the client runs
it, never we, even when it shares a name with one of ours. ``TurnOptions.tool_specs`` are the tools
offered to the model, listed in the prompt by ``shared.chat.prompt.with_tools`` (the ones it was not
trained on). ``TurnOptions.grammar`` (a forced call) applies to the first generation only.

Retrieval runs only when the last user message has text (an empty question retrieves nothing).
Token events carry ``data["logprobs"]`` when the request asked for them (``TurnOptions.logprobs``),
and ``done.data["logprobs"]`` holds those of the last generation, the one the answer comes from.
``merge_streams`` interleaves several turns' events (``n`` choices of one request) as they come.

The server tool loop: when generation ends in a call to another tool, the call is checked against
the request's allowlist of our tools (``TurnOptions.tools``) before anything runs; an unknown or
disallowed call is answered with an error result the model sees, and the loop continues. A call
that is not even JSON ends the turn (finish reason ``tool_call_error``) with its error shown: the
chat format has no way to replay it to the model. The result goes back as a ``tool`` message
(special tokens neutralised) and generation resumes, at most ``max_tool_rounds``
times; a model still calling tools after that ends with finish reason ``tool_rounds``. Retrieved
passages and tool results can add text to the context but never add a tool to the allowlist.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.chat.prompt import clean_messages, neutralize, with_passages, with_tools

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
    stop: tuple[str, ...] = ()
    logprobs: int | None = None
    response_format: dict | None = None
    grammar: str | None = None
    client_tools: tuple[str, ...] = ()
    tool_specs: tuple[dict, ...] = ()

    def sampling(self, first_round: bool = True) -> dict[str, Any]:
        """The generator's ``SamplingParams`` fields; the optional ones only when set (older generators)."""
        params: dict[str, Any] = {"max_tokens": self.max_tokens, "temperature": self.temperature,
                                  "top_p": self.top_p, "seed": self.seed}
        optional = {"stop": list(self.stop), "logprobs": self.logprobs, "response_format": self.response_format,
                    "grammar": self.grammar if first_round else None}
        params.update({k: v for k, v in optional.items() if v not in (None, [])})
        return params


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
    context = with_tools(clean_messages(messages), options.tool_specs)
    added: list[dict] = []
    question = last_user_text(context)
    if options.use_rag and retrieve is not None and question.strip():
        passages = await retrieve(question, options.top_k, options.score_threshold)
        yield TurnEvent("sources", data={"sources": passages})
        context = with_passages(context, passages)
    usage = {"prompt_tokens": 0, "completion_tokens": 0}
    first_token_s: float | None = None
    rounds = 0
    client_calls: list[dict] = []
    while True:
        done: dict = {}
        logprobs: list[dict] = []
        async for event in generate(context + added, options.sampling(first_round=rounds == 0)):
            if event["kind"] == "token":
                first_token_s = first_token_s or time.perf_counter() - start
                token_logprobs = event.get("logprobs")
                logprobs += token_logprobs or []
                yield TurnEvent("token", event["text"], {"logprobs": token_logprobs} if token_logprobs else {})
            elif event["kind"] == "done":
                done = event
        metrics = done.get("metrics", {})
        for key in usage:
            usage[key] += int(metrics.get(key, 0))
        if done.get("finish_reason") != "tool_call":
            break
        call = done.get("tool_call")
        if call is not None and call["name"] in options.client_tools:  # the client's to run, whatever its name
            client_calls = [call]
            done = {**done, "finish_reason": "tool_calls"}
            break
        if rounds >= options.max_tool_rounds:
            done = {**done, "finish_reason": "tool_rounds", "text": ""}
            break
        rounds += 1
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
    if answer or not client_calls:
        added.append({"role": "assistant", "content": answer})
    added += [{"role": "assistant", "content": "", "tool_call": call} for call in client_calls]
    yield TurnEvent("metrics", data={**metrics, "turn_ttft_s": first_token_s, "turn_s": time.perf_counter() - start,
                                     "tool_rounds": rounds})
    yield TurnEvent("done", answer, {"finish_reason": done.get("finish_reason"), "usage": usage, "added": added,
                                     "tool_calls": client_calls, "logprobs": logprobs})


_END = object()


async def merge_streams(streams: Sequence[AsyncIterator[TurnEvent]]) -> AsyncIterator[tuple[int, TurnEvent]]:
    """``(index, event)`` from several turns as each arrives; the first error cancels the rest and is raised."""
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(index: int, stream: AsyncIterator[TurnEvent]) -> None:
        try:
            async for event in stream:
                await queue.put((index, event, None))
            await queue.put((index, _END, None))
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, who raises it
            await queue.put((index, _END, exc))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            index, event, error = await queue.get()
            if error is not None:
                raise error
            if event is _END:
                remaining -= 1
            else:
                yield index, event
    finally:
        for task in tasks:
            task.cancel()
