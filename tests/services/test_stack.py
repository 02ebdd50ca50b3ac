"""The serving stack for real: redis-server, Ray Serve (gateway, generator, tool executor), HTTP and the bus.

The model is the memorised tiny GPT of ``conftest.chat_runs``, so answers are exact: a greeting, and
"What is 17*23?", which the model answers by calling the calculator, whose result (computed by the
tool executor, reached over the bus) it then repeats. Over HTTP our tools run only when a request opts
in (``journey_tools``); bus chats use the gateway's default tools. The OpenAI surface in full is
``test_openai_conformance.py``.
"""
from __future__ import annotations

import threading

import httpx
import openai
import pytest
import redis

from tests.services.conftest import HELLO_ANSWER, sse_events

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def client(stack):
    base, _, _ = stack
    return openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=60)


def hello(**kwargs):
    return {"model": "journey", "messages": [{"role": "user", "content": "Say hello"}], **kwargs}


def test_the_openai_client_gets_a_completion(client, stack):
    from transformers import AutoTokenizer

    from shared.chat_format import render_chat
    out = client.chat.completions.create(**hello())
    assert out.choices[0].message.content == HELLO_ANSWER
    assert out.choices[0].finish_reason == "stop"
    tokenizer = AutoTokenizer.from_pretrained(stack[2] / "t" / "sft")
    prompt = render_chat(hello()["messages"], add_generation_prompt=True)
    assert out.usage.prompt_tokens == len(tokenizer.encode(prompt, add_special_tokens=False))
    assert out.usage.completion_tokens == len(tokenizer.encode(HELLO_ANSWER + "<|end|>", add_special_tokens=False))
    assert out.model_extra["journey"]["metrics"]["ttft_s"] > 0


def test_the_openai_client_gets_a_streamed_completion(client):
    chunks = list(client.chat.completions.create(**hello(), stream=True))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    # How many pieces depends on timing: the tiny model makes its answer in a few ms, faster than the
    # deltas cross the actors, and a lagging caller gets what piled up as one piece (see test_serving.py
    # for per-token streaming to a caller that keeps up).
    assert pieces and "".join(pieces) == HELLO_ANSWER
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_a_calculator_question_goes_through_the_tool_executor(client):
    out = client.chat.completions.create(model="journey", messages=[{"role": "user", "content": "What is 17*23?"}],
                                         extra_body={"journey_tools": ["calculator"]})
    steps = out.model_extra["journey"]["tool_calls"]
    assert [s["kind"] for s in steps] == ["tool_call", "tool_result"]
    assert steps[0]["name"] == "calculator" and steps[0]["arguments"] == {"expression": "17*23"}
    assert steps[1] == {"kind": "tool_result", "ok": True, "output": "391", "error": ""}
    assert out.choices[0].message.content == "17*23 = 391"


def test_a_disabled_tool_is_not_run(stack):
    base, _, _ = stack
    body = {"model": "journey", "messages": [{"role": "user", "content": "What is 17*23?"}], "max_tokens": 80,
            "journey_tools": ["search_docs"]}
    steps = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=60).json()["journey"]["tool_calls"]
    assert steps[1]["ok"] is False and "not enabled" in steps[1]["error"]


def test_models_lists_the_servable_artifacts(client):
    ids = [m.id for m in client.models.list().data]
    assert ids[0] == "journey" and {"t/sft", "t/dpo"} <= set(ids)


@pytest.mark.parametrize("body, status, says", [
    (b"{not json", 400, "not valid JSON"),
    (b'{"model": "journey"}', 400, "messages"),
    (b'{"model": "t/nope", "messages": [{"role": "user", "content": "hi"}]}', 404, "unknown model"),
    (b'{"model": "journey", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}', 400, "limit"),
    (b'{"model": "journey", "messages": [{"role": "wizard", "content": "hi"}]}', 400, "role"),
    (b'{"model": "journey", "messages": [{"role": "user", "content": "hi"}], "journey_tools": ["rm_rf"]}', 400,
     "unknown tool"),
])
def test_bad_requests_get_a_clear_4xx(stack, body, status, says):
    base, _, _ = stack
    response = httpx.post(f"{base}/v1/chat/completions", content=body, timeout=30,
                          headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert says in response.json()["error"]["message"]


def test_a_message_longer_than_the_context_is_a_400_not_a_crash(stack, client):
    base, _, _ = stack
    body = {"model": "journey", "messages": [{"role": "user", "content": "x" * 1000}]}
    response = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 400 and "context" in response.json()["error"]["message"]
    assert client.chat.completions.create(**hello()).choices[0].message.content == HELLO_ANSWER


@pytest.mark.parametrize("call, status, says", [
    ({"name": "calculator", "arguments": {"expression": "17*23"}}, 200, "391"),
    ({"name": "calculator", "arguments": {"expr": "1"}}, 400, "invalid arguments"),
    ({"name": "shell", "arguments": {"cmd": "ls"}}, 404, "unknown tool"),
])
def test_tool_calls_over_http(stack, call, status, says):
    base, _, _ = stack
    response = httpx.post(f"{base}/v1/tools/call", json=call, timeout=30)
    assert response.status_code == status and says in response.text


def test_a_chat_request_over_the_bus_streams_events_back(stack):
    from shared.bus import Bus
    from shared.bus.chat_client import make_request, stream_chat
    _, redis_url, _ = stack
    bus = Bus(redis_url)
    events = list(stream_chat(bus, make_request(bus, "What is 17*23?", max_tokens=80), timeout_s=60))
    kinds = [e.kind for e in events]
    assert kinds[-1] == "done" and events[-1].text == "17*23 = 391"
    assert kinds.index("tool_call") < kinds.index("tool_result") < kinds.index("token")
    assert "".join(e.text for e in events if e.kind == "token") == "17*23 = 391"
    assert [e.seq for e in events] == list(range(len(events)))


def test_the_gateway_remembers_a_conversation(stack, client):
    _, redis_url, _ = stack
    client.chat.completions.create(**hello(user="conv-1"))
    from shared.chat.memory import scope_for_key
    scope = scope_for_key("unused")  # the client's API key: memory is scoped to it
    stored = redis.Redis.from_url(redis_url).lrange(f"journey:memory:{scope}:conv-1", 0, -1)
    assert [m.decode() for m in stored][-1].endswith(f'"content": "{HELLO_ANSWER}"}}')
    assert len(stored) == 2


def test_a_reload_event_switches_the_model_without_dropping_a_stream(stack, client):
    from shared.bus import MODEL_EVENTS, Bus, ModelReload
    base, redis_url, _ = stack
    pieces: list[str] = []
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=hello(stream=True), timeout=60) as response:
        lines = response.iter_lines()
        first = next(lines)  # the stream is open: the request is in flight
        Bus(redis_url).publish(MODEL_EVENTS, ModelReload(artifact="t/dpo"))
        for event in sse_events([first, *lines]):
            pieces.append(event["choices"][0]["delta"].get("content") or "")
    assert "".join(pieces) == HELLO_ANSWER
    for _ in range(100):
        default = [m for m in httpx.get(f"{base}/v1/models").json()["data"] if m["default"] and m["id"] != "journey"]
        if default and default[0]["id"] == "t/dpo":
            break
        threading.Event().wait(0.1)
    assert default[0]["id"] == "t/dpo"
    assert client.chat.completions.create(**hello()).choices[0].message.content == HELLO_ANSWER


def test_parallel_chats_over_the_bus_each_get_their_own_answer(stack):
    from concurrent.futures import ThreadPoolExecutor

    from shared.bus import Bus
    from shared.bus.chat_client import make_request, stream_chat
    _, redis_url, _ = stack
    bus = Bus(redis_url)
    questions = ["Say hello", "What is 17*23?"] * 4

    def ask(question: str) -> str:
        return list(stream_chat(bus, make_request(bus, question, max_tokens=80), timeout_s=60))[-1].text

    with ThreadPoolExecutor(len(questions)) as pool:
        answers = list(pool.map(ask, questions))
    assert answers == [HELLO_ANSWER, "17*23 = 391"] * 4
    consumers = bus.redis.xinfo_consumers(bus.key("chat.requests"), "gateway")
    assert len(consumers) == 4  # the gateway answers that many bus chats at once
