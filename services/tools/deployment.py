"""``ToolExecutor``: runs tool calls that arrive on the bus's ``tools.requests`` (Ray Serve deployment).

Each replica is a member of the ``tools`` consumer group: at-least-once delivery, redelivery of
what a dead replica had taken, dead-lettering of what keeps failing (``shared.bus``). A call is
validated against its tool's pydantic schema and run by ``shared.tools.executor`` (the ``python``
tool in its sandbox; ``search_docs`` by the retriever service when the stack has one); the ``ToolResult``
goes to the request's ``reply_to``. A bad call is an answer (``ok=False`` with the reason), not a
failure: the model sees why and can try again.

Calls run concurrently, each tool in a lane of its own with a limit (``limits``: ``python`` 2 at a
time, since each holds a sandboxed interpreter for up to its wall limit; calculator and search_docs
many), so a slow snippet never holds up anyone's calculator call. A request carries the caller's
``deadline``: one still queued when it passes is not run, a ``python`` snippet's wall limit is cut to
the time left, and a result that is ready only after it is dropped (nobody waits on that reply
stream any more).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time

from ray import serve
from ray.serve.handle import DeploymentHandle

from shared.bus import TOOL_REQUESTS, Bus, Consumer
from shared.bus.messages import ToolRequest, ToolResult
from shared.tools import ToolError
from shared.tools.sandbox_config import SandboxConfig

log = logging.getLogger("ray.serve")

# calls of one tool running at once per replica ("*": any tool not named)
DEFAULT_LIMITS = {"python": 2, "calculator": 16, "search_docs": 8, "*": 4}


def format_passages(passages: list[dict], max_chars: int = 400) -> str:
    """Retrieved passages as the ``search_docs`` tool's answer: the best first, each with its source."""
    if not passages:
        return "No documentation matches."
    return "\n".join(f"[{p['source']}] {' '.join(p['text'].split())[:max_chars]}" for p in passages)


def python_runner(sandbox: SandboxConfig, deadline: float | None):
    """The ``python`` tool with the sandbox's wall limit cut to the time the caller still waits."""
    from shared.tools.executor import run_python_tool
    if deadline is not None:
        sandbox = dataclasses.replace(sandbox, wall_s=max(0.1, min(sandbox.wall_s, deadline - time.time())))
    return lambda args: run_python_tool(args.code, sandbox)


def run_tool_request(bus: Bus, request: ToolRequest, runners: dict | None = None,
                     sandbox: SandboxConfig | None = None) -> ToolResult | None:
    """Execute one request and publish its result; returns the result, or None when the caller's deadline
    passed (before the call started: not run; after: the result is dropped, not published)."""
    from shared.tools.executor import execute
    if request.deadline is not None and time.time() >= request.deadline:
        log.warning("tool call %s (%s) not run: its caller stopped waiting %.1f s ago", request.request_id,
                    request.name, time.time() - request.deadline)
        return None
    runners = {"python": python_runner(sandbox or SandboxConfig(), request.deadline), **(runners or {})}
    start = time.perf_counter()
    try:
        output, ok, error = execute({"name": request.name, "arguments": request.arguments}, runners), True, ""
    except ToolError as exc:
        output, ok, error = "", False, str(exc)
    result = ToolResult(request_id=request.request_id, trace_id=request.trace_id, ok=ok, output=output,
                        error=error, duration_s=time.perf_counter() - start)
    if request.deadline is not None and time.time() > request.deadline:
        log.warning("tool call %s (%s) finished %.1f s after its caller stopped waiting: result dropped",
                    request.request_id, request.name, time.time() - request.deadline)
        return None
    bus.reply(request.reply_to, result)
    return result


@serve.deployment(max_ongoing_requests=8, ray_actor_options={"num_cpus": 0})  # the sandbox child does the work
class ToolExecutor:
    """``limits``: calls per tool at once (merged over ``DEFAULT_LIMITS``); ``sandbox``: ``SandboxConfig``
    fields for the ``python`` tool (its ``wall_s`` should stay below the gateway's ``tool_timeout_s``)."""

    def __init__(self, redis_url: str | None = None, retriever: DeploymentHandle | None = None, top_k: int = 2,
                 limits: dict[str, int] | None = None, sandbox: dict | None = None):
        self.bus = Bus(redis_url)
        self.bus.ping()
        self.sandbox = SandboxConfig(**(sandbox or {}))
        self.sandbox.validate()
        runners = {}
        if retriever is not None:  # search_docs is the retriever when the stack has one (sync call: a worker thread)
            runners["search_docs"] = lambda args: format_passages(
                retriever.search.remote(args.query, top_k, None).result(timeout_s=30))

        def handle(message) -> None:
            if not isinstance(message, ToolRequest):
                raise ValueError(f"tools.requests carries ToolRequest messages, got {type(message).__name__}")
            run_tool_request(self.bus, message, runners, self.sandbox)

        lanes = {**DEFAULT_LIMITS, **(limits or {})}
        self.consumer = Consumer(self.bus, TOOL_REQUESTS, "tools", f"tools-{os.getpid()}", handle, lanes=lanes,
                                 lane_of=lambda m: getattr(m, "name", "*"),  # unknown tools share "*"
                                 max_backlog=max(64, 2 * sum(lanes.values())))
        self._thread = self.consumer.start()

    def check_health(self) -> None:
        if not self._thread.is_alive():
            raise RuntimeError("the tools.requests consumer stopped; restarting the replica")

    def __del__(self):
        if getattr(self, "consumer", None) is not None:
            self.consumer.stop()
