"""Tool calls over the bus keep to the caller's timeout: a result that comes too late is discarded, never
given to another call; the executor does not start, or answer, a call whose caller stopped waiting; a
``python`` snippet's wall limit is cut to the time left."""
from __future__ import annotations

import asyncio
import time

import pytest

from services.tools.deployment import run_tool_request
from shared.bus import TOOL_REQUESTS, TOOL_RESULTS, Bus, Consumer, ToolRequest, ToolResult
from shared.chat.service import bus_tool_caller
from shared.tools.sandbox_config import SandboxConfig


def test_a_late_result_is_discarded_and_the_next_call_gets_its_own(bus):
    delays = {"slow": 2.0, "fast": 0.0}

    def executor(message: ToolRequest) -> None:  # answers regardless of deadlines: the caller must cope
        time.sleep(delays[message.arguments["which"]])
        bus.reply(message.reply_to, ToolResult(request_id=message.request_id, ok=True,
                                               output=message.arguments["which"]))

    consumer = Consumer(bus, TOOL_REQUESTS, "tools", "x", executor, block_ms=20, lanes={"*": 4})
    consumer.start()
    try:
        call_tool = bus_tool_caller(bus, timeout_s=0.5)
        late = asyncio.run(call_tool("calculator", {"which": "slow"}))
        assert not late["ok"] and "timed out after 0.5 s" in late["error"] and "tool_timeout_s" in late["error"]
        time.sleep(2)  # the slow result has been published by now
        fresh = asyncio.run(call_tool("calculator", {"which": "fast"}))
        assert fresh == {"ok": True, "output": "fast", "error": ""}
    finally:
        consumer.stop()


def test_the_executor_skips_a_call_whose_caller_stopped_waiting(bus):
    expired = ToolRequest(name="calculator", arguments={"expression": "1+1"}, deadline=time.time() - 1,
                          reply_to=bus.reply_stream(TOOL_RESULTS, "expired"))
    assert run_tool_request(bus, expired) is None
    assert bus.read(expired.reply_to) == []
    fine = ToolRequest(name="calculator", arguments={"expression": "1+1"}, deadline=time.time() + 30,
                       reply_to=bus.reply_stream(TOOL_RESULTS, "fine"))
    assert run_tool_request(bus, fine).output == "2"
    [(_, result)] = bus.read(fine.reply_to)
    assert result.output == "2"


def test_a_snippet_is_stopped_when_its_caller_stops_waiting_and_its_result_dropped(bus):
    request = ToolRequest(name="python", arguments={"code": "import time\ntime.sleep(30)"},
                          deadline=time.time() + 1.5, reply_to=bus.reply_stream(TOOL_RESULTS, "sleepy"))
    start = time.monotonic()
    assert run_tool_request(bus, request, sandbox=SandboxConfig()) is None  # 25 s wall, cut to the 1.5 s left
    assert time.monotonic() - start < 10
    assert bus.read(request.reply_to) == []


def test_the_default_wall_limit_lets_a_20_s_snippet_finish_before_the_30_s_tool_timeout():
    assert 20 < SandboxConfig().wall_s < 30


def test_an_unreachable_bus_is_a_503_answer_not_an_exception():
    from shared.bus import free_port
    call_tool = bus_tool_caller(Bus(f"redis://127.0.0.1:{free_port()}/0"), timeout_s=1)
    result = asyncio.run(call_tool("calculator", {"expression": "1+1"}))
    assert result["status"] == 503 and not result["ok"] and "is unreachable" in result["error"]
