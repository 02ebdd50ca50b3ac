"""Tools on the real stack: the configured tool timeout governs, one slow call never blocks another, and
``/v1/tools/call`` obeys the chat's allowlist.

The stack here enables ``python`` (``default_tools: [calculator, python]``, ``tool_timeout_s: 30``) and
leaves ``search_docs`` off, so the allowlist can be seen refusing a real tool. A ``python`` snippet
sleeping 20 s used to fail after 5 s with a false "Redis is unreachable" (the bus client's socket
timeout), and while it ran every other tool call waited behind it (one call at a time).
"""
from __future__ import annotations

import threading
import time

import httpx
import pytest

SLEEPER = {"name": "python", "arguments": {"code": "import time\ntime.sleep(20)\nprint('slept 20 s')"}}


@pytest.fixture(scope="module")
def tool_stack(chat_runs, redis_server, ray_session):
    """The serving graph with ``python`` enabled: yields the gateway's base URL."""
    from ray import serve

    from services.app import build_app
    from shared.bus import free_port
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = {"model": "t/sft", "runs_dir": str(chat_runs), "redis_url": redis_server.url, "rag": "false",
            "gateway": {"default_tools": ["calculator", "python"], "tool_timeout_s": 30}}
    serve.run(build_app(args), name="journey", route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.delete("journey")
    serve.shutdown()


def test_a_20_s_python_call_succeeds_while_ten_calculator_calls_each_take_under_a_second(tool_stack):
    url = f"{tool_stack}/v1/tools/call"
    with httpx.Client(timeout=60) as client:  # warm the path: the first call of a fresh stack imports things
        assert client.post(url, json={"name": "calculator", "arguments": {"expression": "1+1"}}).json()["output"] == "2"
    slow: dict = {}

    def sleeper() -> None:
        start = time.monotonic()
        slow["response"] = httpx.post(url, json=SLEEPER, timeout=60)
        slow["took"] = time.monotonic() - start

    thread = threading.Thread(target=sleeper)
    thread.start()
    time.sleep(2)  # the snippet is running in the sandbox now
    took, answers = [], []
    with httpx.Client(timeout=60) as client:
        for i in range(10):
            start = time.monotonic()
            response = client.post(url, json={"name": "calculator", "arguments": {"expression": f"{i} * 7"}})
            took.append(time.monotonic() - start)
            answers.append(response.json())
    assert thread.is_alive()  # all ten answered while the python call still ran
    assert [a["output"] for a in answers] == [str(i * 7) for i in range(10)] and all(a["ok"] for a in answers)
    assert max(took) < 1.0, took
    thread.join(60)
    assert slow["response"].status_code == 200
    result = slow["response"].json()
    assert result["ok"] and result["output"].strip() == "slept 20 s", result
    assert 19 < slow["took"] < 30


def test_a_tool_the_allowlist_leaves_out_is_refused_with_the_way_to_enable_it(tool_stack):
    response = httpx.post(f"{tool_stack}/v1/tools/call", json={"name": "search_docs", "arguments": {"query": "json"}},
                          timeout=30)
    assert response.status_code == 403
    error = response.json()["error"]
    assert error["param"] == "name" and error["code"] == "tool_not_enabled"
    assert "'search_docs' is not enabled" in error["message"] and "['calculator', 'python']" in error["message"]
    assert "default_tools" in error["message"] and "tools=[calculator,python,search_docs]" in error["message"]


def test_bad_tool_calls_are_4xx_with_an_openai_error_body(tool_stack):
    url = f"{tool_stack}/v1/tools/call"
    cases = [(b'{"name": "nope", "arguments": {}}', 404, "unknown tool 'nope'"),
             (b'{"name": "calculator", "arguments": {"expr": "1"}}', 400, "invalid arguments for 'calculator'"),
             (b"[" * 50_000, 400, "JSON"),  # nested past any parser's recursion limit: still a 400
             (b"not json", 400, "not valid JSON")]
    for body, status, message in cases:
        response = httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=30)
        assert response.status_code == status, (body[:40], response.text[:300])
        assert message in response.json()["error"]["message"]
