"""OpenAI conformance against the real stack: the official ``openai`` SDK and LangChain's ``ChatOpenAI``.

Every feature of ``POST /v1/chat/completions`` that ``shared.chat.openai_api`` lists as implemented is
used here the way a client uses it, streamed and not: ``stop``, ``logprobs``, ``stream_options``, ``n``,
``seed``, ``response_format`` (the SDK's ``parse()`` with a pydantic model), the ``developer`` role,
``max_completion_tokens``, client function tools with every ``tool_choice`` and the round trip of
their results; then ``/v1/models/{id}``, ``/v1/embeddings`` without a retriever, and LangChain's
``invoke``, ``stream`` with usage, ``bind_tools`` round trip and ``with_structured_output``.

The model is the memorised tiny GPT of ``conftest.chat_runs``: "Say hello" gets ``HELLO_ANSWER``;
"What is 17*23?" gets a calculator call and, after the result 391, "17*23 = 391". Answers are exact.
"""
from __future__ import annotations

import json
from typing import Literal

import httpx
import openai
import pytest
from pydantic import BaseModel

from tests.services.conftest import CALL, HELLO_ANSWER, sse_events

pytestmark = pytest.mark.e2e

HELLO = [{"role": "user", "content": "Say hello"}]
QUESTION = [{"role": "user", "content": "What is 17*23?"}]
CALCULATOR = {"type": "function", "function": {
    "name": "calculator", "description": "Evaluate an arithmetic expression.",
    "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}}}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Oslo", "Lima"]}},
                   "required": ["city"], "additionalProperties": False}}}


class Verdict(BaseModel):
    polite: bool
    mood: Literal["happy", "sad"]


@pytest.fixture(scope="module")
def client(stack):
    base, _, _ = stack
    return openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=60)


def create(client, **kwargs):
    return client.chat.completions.create(**{"model": "journey", "messages": HELLO, **kwargs})


def streamed(client, **kwargs) -> list:
    return list(create(client, stream=True, **kwargs))


def text_of(chunks, index: int = 0) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices and c.choices[0].index == index)


# ------------------------------------------------------------------------------------------- sampling

def test_stop_cuts_the_reply_and_finishes_with_stop(client):
    out = create(client, stop=["good"])
    assert out.choices[0].message.content == "Hello there, my " and out.choices[0].finish_reason == "stop"
    chunks = streamed(client, stop="good")
    assert text_of(chunks) == "Hello there, my " and chunks[-1].choices[0].finish_reason == "stop"


def test_max_completion_tokens_finishes_with_length(client):
    out = create(client, max_completion_tokens=3)
    assert out.choices[0].finish_reason == "length" and out.usage.completion_tokens == 3
    assert HELLO_ANSWER.startswith(out.choices[0].message.content)


def test_logprobs_come_back_per_token_streamed_and_not(client):
    out = create(client, logprobs=True, top_logprobs=2)
    content = out.choices[0].logprobs.content
    # The engine also reports the stop token it generated (``<|end|>``), as vLLM does; the text excludes it.
    assert "".join(t.token for t in content).removesuffix("<|end|>") == HELLO_ANSWER
    assert all(t.logprob <= 0 and len(t.top_logprobs) == 2 for t in content)
    assert all(t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob for t in content)
    assert all(bytes(t.bytes).decode("utf-8", "replace") == t.token or not t.bytes for t in content)
    chunks = streamed(client, logprobs=True, top_logprobs=1)
    tokens = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert "".join(t.token for t in tokens).removesuffix("<|end|>") == HELLO_ANSWER == text_of(chunks)
    assert create(client).choices[0].logprobs is None


def test_include_usage_adds_a_last_chunk_with_the_usage(client):
    chunks = streamed(client, stream_options={"include_usage": True})
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    plain = create(client)
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == plain.usage.prompt_tokens
    assert all(c.usage is None for c in chunks[:-1])
    assert all(c.usage is None for c in streamed(client))


def test_n_gives_independent_choices_streamed_and_not(client):
    out = create(client, n=3)
    assert [c.index for c in out.choices] == [0, 1, 2]
    assert [c.message.content for c in out.choices] == [HELLO_ANSWER] * 3  # greedy: all the same
    assert out.usage.completion_tokens == 3 * create(client).usage.completion_tokens
    chunks = streamed(client, n=2)
    assert text_of(chunks, 0) == text_of(chunks, 1) == HELLO_ANSWER
    finishes = {c.choices[0].index: c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason}
    assert finishes == {0: "stop", 1: "stop"}


def test_seed_makes_a_sampled_reply_repeatable(client):
    first = create(client, temperature=1.5, seed=11, n=2, max_completion_tokens=20)
    again = create(client, temperature=1.5, seed=11, n=2, max_completion_tokens=20)
    assert [c.message.content for c in first.choices] == [c.message.content for c in again.choices]
    single = create(client, temperature=1.5, seed=12, max_completion_tokens=20)  # choice 1 above used seed 11 + 1
    assert single.choices[0].message.content == first.choices[1].message.content


def test_developer_is_the_system_role(client):
    def ask(role: str):
        return create(client, messages=[{"role": role, "content": "Be kind."}, *HELLO]).choices[0].message.content
    assert ask("developer") == ask("system")


# ------------------------------------------------------------------------------------------- structured output

def test_json_object_output_is_json(client):
    out = create(client, response_format={"type": "json_object"}, max_completion_tokens=60)
    choice = out.choices[0]
    assert choice.message.content.startswith("{")
    if choice.finish_reason == "stop":  # a tiny model may write a long object: then it is cut, not wrong
        assert isinstance(json.loads(choice.message.content), dict)


def test_the_sdk_parse_with_a_pydantic_model(client):
    out = client.chat.completions.parse(model="journey", messages=HELLO, response_format=Verdict)
    assert isinstance(out.choices[0].message.parsed, Verdict)
    assert Verdict.model_validate_json(out.choices[0].message.content) == out.choices[0].message.parsed


def test_a_json_schema_is_enforced_when_streamed(client):
    schema = {"name": "verdict", "schema": Verdict.model_json_schema(), "strict": True}
    chunks = streamed(client, response_format={"type": "json_schema", "json_schema": schema})
    Verdict.model_validate_json(text_of(chunks))


def test_an_invalid_schema_is_a_400(client):
    with pytest.raises(openai.BadRequestError):
        create(client, response_format={"type": "json_schema", "json_schema": {
            "name": "x", "schema": {"type": "object", "properties": {"a": {"type": "no-such-type"}}}}})


# ------------------------------------------------------------------------------------------- client tools

def test_a_client_tool_call_comes_back_and_the_round_trip_completes(client):
    out = create(client, messages=QUESTION, tools=[CALCULATOR])
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "calculator"
    assert json.loads(call.function.arguments) == CALL["arguments"]
    assert out.model_extra["journey"]["tool_calls"] == []  # the client's calculator: ours never ran
    history = [*QUESTION, choice.message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id, "content": "391"}]
    final = create(client, messages=history, tools=[CALCULATOR])
    assert final.choices[0].message.content == "17*23 = 391" and final.choices[0].finish_reason == "stop"


def test_a_client_tool_call_streams_as_tool_call_deltas(client):
    chunks = streamed(client, messages=QUESTION, tools=[CALCULATOR])
    deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
    assert len(deltas) == 1 and deltas[0].index == 0 and deltas[0].id.startswith("call_")
    assert deltas[0].function.name == "calculator" and json.loads(deltas[0].function.arguments) == CALL["arguments"]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_tool_choice_none_offers_no_tool(client):
    out = create(client, messages=QUESTION, tools=[CALCULATOR], tool_choice="none")
    assert out.choices[0].finish_reason != "tool_calls" and not out.choices[0].message.tool_calls


@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_a_forced_tool_call_matches_the_tool(client, tool_choice):
    for stream in (False, True):
        if stream:
            chunks = streamed(client, tools=[WEATHER], tool_choice=tool_choice)
            call = next(d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []).function
            finish = chunks[-1].choices[0].finish_reason
        else:
            choice = create(client, tools=[WEATHER], tool_choice=tool_choice).choices[0]
            call, finish = choice.message.tool_calls[0].function, choice.finish_reason
        assert finish == "tool_calls" and call.name == "get_weather"
        assert json.loads(call.arguments)["city"] in ("Oslo", "Lima")


def test_our_server_tools_run_only_when_asked_for(client):
    out = create(client, messages=QUESTION, extra_body={"journey_tools": ["calculator"]})
    assert out.choices[0].message.content == "17*23 = 391"
    assert [s["kind"] for s in out.model_extra["journey"]["tool_calls"]] == ["tool_call", "tool_result"]
    plain = create(client, messages=QUESTION)
    steps = plain.model_extra["journey"]["tool_calls"]
    assert steps[1]["ok"] is False and "not enabled" in steps[1]["error"]


# ------------------------------------------------------------------------------------------- models, embeddings, errors

def test_models_can_be_retrieved_by_id(client):
    assert client.models.retrieve("t/sft").id == "t/sft"
    assert client.models.retrieve("journey").object == "model"
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("t/nope")
    assert info.value.body["message"] and info.value.body["code"] == "model_not_found"


def test_a_model_path_is_refused_and_no_path_is_revealed(client, stack):
    runs = stack[2]
    for name in (str(runs / "t" / "sft"), "../../etc/passwd", "x" * 250, "latest:sft"):
        with pytest.raises(openai.NotFoundError) as info:
            create(client, model=name)
        assert str(runs) not in json.dumps(info.value.body)
    with pytest.raises(openai.BadRequestError):
        create(client, model="x" * 10_000)


def test_embeddings_without_a_retriever_are_a_clear_404(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.embeddings.create(model="journey", input=["hello"])
    assert "without a retriever" in info.value.body["message"]


def test_an_in_band_error_still_ends_the_stream_with_done(stack):
    base, _, _ = stack
    body = {"model": "journey", "stream": True, "messages": [{"role": "user", "content": "x" * 1000}]}
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=60) as response:
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    error = sse_events(lines)[-1]
    assert error["error"]["type"] == "invalid_request_error" and "context" in error["error"]["message"]


# ------------------------------------------------------------------------------------------- LangChain

@pytest.fixture(scope="module")
def chat_model(stack):
    from langchain_openai import ChatOpenAI
    base, _, _ = stack
    return ChatOpenAI(model="journey", base_url=f"{base}/v1", api_key="unused", temperature=0, max_retries=0,
                      timeout=60)


def test_langchain_invoke_and_stream_with_usage(stack, chat_model):
    from langchain_openai import ChatOpenAI
    assert chat_model.invoke("Say hello").content == HELLO_ANSWER
    base, _, _ = stack
    model = ChatOpenAI(model="journey", base_url=f"{base}/v1", api_key="unused", temperature=0, max_retries=0,
                       stream_usage=True)
    total = None
    for piece in model.stream("Say hello"):
        total = piece if total is None else total + piece
    assert total.content == HELLO_ANSWER
    assert total.usage_metadata["output_tokens"] > 0 and total.usage_metadata["input_tokens"] > 0


def test_langchain_bind_tools_round_trip(chat_model):
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool

    @tool
    def calculator(expression: str) -> str:
        """Evaluate an arithmetic expression."""
        return str(eval(expression, {"__builtins__": {}}))  # noqa: S307 - the test's own tool, fixed input

    model = chat_model.bind_tools([calculator])
    question = HumanMessage("What is 17*23?")
    reply = model.invoke([question])
    assert reply.tool_calls and reply.tool_calls[0]["name"] == "calculator"
    assert reply.tool_calls[0]["args"] == CALL["arguments"]
    result = ToolMessage(calculator.invoke(reply.tool_calls[0]["args"]), tool_call_id=reply.tool_calls[0]["id"])
    assert model.invoke([question, reply, result]).content == "17*23 = 391"


def test_langchain_structured_output(chat_model):
    out = chat_model.with_structured_output(Verdict).invoke("Say hello")
    assert isinstance(out, Verdict)


def test_the_retriever_embeds_with_its_index_model():
    """``/v1/embeddings``' backend, on the bundled embedder (a stack with an index serves it through the gateway)."""
    import asyncio
    import base64
    from types import SimpleNamespace

    import numpy as np

    from services.retriever.deployment import Retriever
    from shared.chat import openai_api as oai
    from shared.rag.embedder import load_embedder
    retriever = Retriever.func_or_class.__new__(Retriever.func_or_class)
    retriever.retriever = SimpleNamespace(embedder=load_embedder())
    info = retriever.embedding_model()
    assert info["model"] and not info["model"].startswith(("/", "."))  # a name, never where it lives
    out = asyncio.run(retriever.embed(["How do I parse JSON?", "bread"]))
    vectors = np.array(out["vectors"])
    assert vectors.shape == (2, info["dimension"]) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)
    assert out["prompt_tokens"] > 2
    wire = oai.embeddings_response(info["model"], out["vectors"], "base64", out["prompt_tokens"])
    decoded = np.frombuffer(base64.b64decode(wire["data"][1]["embedding"]), dtype="<f4")
    assert np.allclose(decoded, vectors[1], atol=1e-6)
