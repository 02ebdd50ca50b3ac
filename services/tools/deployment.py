"""``ToolExecutor``: runs tool calls that arrive on the bus's ``tools.requests`` (Ray Serve deployment).

Each replica is a member of the ``tools`` consumer group: at-least-once delivery, redelivery of
what a dead replica had taken, dead-lettering of what keeps failing (``shared.bus``). A call is
validated against its tool's pydantic schema and run by ``shared.tools.executor`` (the ``python``
tool in its sandbox; ``search_docs`` by the retriever service when the stack has one); the ``ToolResult`` goes to the request's ``reply_to``. A bad call is an
answer (``ok=False`` with the reason), not a failure: the model sees why and can try again.
"""
from __future__ import annotations

import os
import time

from ray import serve
from ray.serve.handle import DeploymentHandle

from shared.bus import TOOL_REQUESTS, Bus, Consumer
from shared.bus.messages import ToolRequest, ToolResult
from shared.tools import ToolError


def format_passages(passages: list[dict], max_chars: int = 400) -> str:
    """Retrieved passages as the ``search_docs`` tool's answer: the best first, each with its source."""
    if not passages:
        return "No documentation matches."
    return "\n".join(f"[{p['source']}] {' '.join(p['text'].split())[:max_chars]}" for p in passages)


def run_tool_request(bus: Bus, request: ToolRequest, runners: dict | None = None) -> ToolResult:
    """Execute one request and publish its result; returns the result."""
    from shared.tools.executor import execute
    start = time.perf_counter()
    try:
        output, ok, error = execute({"name": request.name, "arguments": request.arguments}, runners), True, ""
    except ToolError as exc:
        output, ok, error = "", False, str(exc)
    result = ToolResult(request_id=request.request_id, trace_id=request.trace_id, ok=ok, output=output,
                        error=error, duration_s=time.perf_counter() - start)
    bus.reply(request.reply_to, result)
    return result


@serve.deployment(max_ongoing_requests=8, ray_actor_options={"num_cpus": 0})  # the sandbox child does the work
class ToolExecutor:
    def __init__(self, redis_url: str | None = None, retriever: DeploymentHandle | None = None, top_k: int = 2):
        self.bus = Bus(redis_url)
        self.bus.ping()
        runners = {}
        if retriever is not None:  # search_docs is the retriever when the stack has one (sync call: a worker thread)
            runners["search_docs"] = lambda args: format_passages(
                retriever.search.remote(args.query, top_k, None).result(timeout_s=30))

        def handle(message) -> None:
            if not isinstance(message, ToolRequest):
                raise ValueError(f"tools.requests carries ToolRequest messages, got {type(message).__name__}")
            run_tool_request(self.bus, message, runners)

        self.consumer = Consumer(self.bus, TOOL_REQUESTS, "tools", f"tools-{os.getpid()}", handle)
        self._thread = self.consumer.start()

    def check_health(self) -> None:
        if not self._thread.is_alive():
            raise RuntimeError("the tools.requests consumer stopped; restarting the replica")

    def __del__(self):
        if getattr(self, "consumer", None) is not None:
            self.consumer.stop()
