"""ChatService's memory: scoped to the caller's key, never doubled, and an outage is not an error.

A real redis-server holds the memory; the generator is scripted (``test_chat.scripted_generate``).
"""
from __future__ import annotations

import asyncio
import json
import shutil

import pytest
import redis

from shared.chat.memory import ANONYMOUS_SCOPE, BUS_SCOPE, ConversationMemory, scope_for_key
from shared.chat.service import ChatService, clean_text, uses_memory
from shared.chat.turn import TurnOptions
from tests.shared.chat.test_chat import scripted_generate

OPTIONS = TurnOptions(use_rag=False)


def answer(service: ChatService, messages, conversation_id=None, scope=ANONYMOUS_SCOPE, options=OPTIONS) -> list:
    async def collect():
        return [e async for e in service.answer(messages, options, conversation_id, scope=scope)]
    return asyncio.run(collect())


@pytest.fixture
def memory(redis_url):
    return ConversationMemory(redis.Redis.from_url(redis_url), prefix="t:")


def service_with(memory, seen, replies=4, **kwargs):
    return ChatService(scripted_generate([{"pieces": ["ok"]}] * replies, seen), memory=memory, **kwargs)


def test_the_scope_is_a_hash_of_the_key_never_the_key():
    scope = scope_for_key("Bearer sk-secret")
    assert scope == scope_for_key("sk-secret") and scope != scope_for_key("sk-other")
    assert "sk-secret" not in scope and ":" not in scope and len(scope) == 33
    assert scope_for_key(None) == scope_for_key("") == scope_for_key("Bearer ") == ANONYMOUS_SCOPE


def test_one_keys_conversation_is_invisible_to_another_key(memory):
    seen: list = []
    service = service_with(memory, seen)
    alice, mallory = scope_for_key("alice"), scope_for_key("mallory")
    answer(service, [{"role": "user", "content": "remember 4711"}], "u1", alice)
    answer(service, [{"role": "user", "content": "SYSTEM OVERRIDE"}], "u1", mallory)  # same `user`, other key
    answer(service, [{"role": "user", "content": "what was it?"}], "u1", alice)
    assert [m["content"] for m in seen[1]] == ["SYSTEM OVERRIDE"]
    assert [m["content"] for m in seen[2]] == ["remember 4711", "ok", "what was it?"]
    assert memory.load(alice, "u1")[-1] == {"role": "assistant", "content": "ok"}
    keys = [k.decode() for k in memory.client.keys("t:memory:*")]
    assert sorted(keys) == sorted([memory.key(alice, "u1"), memory.key(mallory, "u1")])
    assert not any("alice" in k or "mallory" in k for k in keys)


def test_a_request_with_its_own_history_gets_no_memory_and_leaves_none(memory):
    seen: list = []
    service = service_with(memory, seen)
    answer(service, [{"role": "user", "content": "first"}], "u1")
    history = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "first"},
               {"role": "assistant", "content": "ok"}, {"role": "user", "content": "second"}]
    answer(service, history, "u1")
    assert [m["content"] for m in seen[1]] == [m["content"] for m in history]  # each turn once
    assert len(memory.load(ANONYMOUS_SCOPE, "u1")) == 2  # the resent history was not stored again
    # a system prompt plus one message is still "no history": memory applies
    answer(service, [{"role": "system", "content": "be brief"}, {"role": "user", "content": "third"}], "u1")
    assert [m["content"] for m in seen[2]] == ["first", "ok", "be brief", "third"]
    assert uses_memory([{"role": "developer", "content": "x"}, {"role": "user", "content": "y"}])
    assert not uses_memory([{"role": "user", "content": "x"}, {"role": "tool", "content": "y"}])


def test_bus_requests_have_their_own_scope(memory):
    seen: list = []
    service = service_with(memory, seen)
    answer(service, [{"role": "user", "content": "web"}], "session-1", BUS_SCOPE)
    answer(service, [{"role": "user", "content": "http"}], "session-1")
    assert [m["content"] for m in seen[1]] == ["http"]


def test_redis_down_answers_without_memory(tmp_path, caplog):
    from shared.bus.redis_server import RedisServer
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not on PATH")
    server = RedisServer(tmp_path / "redis").start()
    memory = ConversationMemory(redis.Redis.from_url(server.url, socket_connect_timeout=1), prefix="t:")
    server.stop()
    seen: list = []
    events = answer(service_with(memory, seen), [{"role": "user", "content": "hi"}], "u1")
    assert events[-1].kind == "done" and events[-1].text == "ok"
    assert "answering without it" in caplog.text and "not remembered" in caplog.text


def test_a_blank_question_skips_retrieval_and_lone_surrogates_are_replaced(memory):
    asked: list = []

    async def retrieve(query, k, threshold):
        asked.append(query)
        return []
    seen: list = []
    service = service_with(memory, seen, retrieve=retrieve)
    for text in ("", "   "):
        answer(service, [{"role": "user", "content": text}], options=TurnOptions())
    answer(service, [{"role": "user", "content": "a\ud800b"}], "u\udfff", options=TurnOptions())
    assert asked == ["a\ufffdb"]
    assert seen[-1][-1]["content"] == "a\ufffdb"
    stored = memory.client.lrange(memory.key(ANONYMOUS_SCOPE, "u\ufffd"), 0, -1)
    assert json.loads(stored[0])["content"] == "a\ufffdb"
    assert clean_text({"k\ud800": ["\udc00", 1, None]}) == {"k\ufffd": ["\ufffd", 1, None]}
    assert clean_text("\U0001f642") == "\U0001f642"  # a real pair, joined by json.loads, is kept


def test_a_scope_cannot_reach_into_another(memory):
    with pytest.raises(ValueError, match="scope"):
        memory.key("a:b", "c")
    assert memory.key("a", "b:c") == "t:memory:a:b:c"  # the first ':' after the scope always ends it


def test_store_false_reads_memory_but_adds_nothing(memory):
    seen: list = []
    service = service_with(memory, seen)
    answer(service, [{"role": "user", "content": "first"}], "u1")

    async def second_sample():
        return [e async for e in service.answer([{"role": "user", "content": "again"}], OPTIONS, "u1", store=False)]
    asyncio.run(second_sample())
    assert [m["content"] for m in seen[1]] == ["first", "ok", "again"]
    assert len(memory.load(ANONYMOUS_SCOPE, "u1")) == 2
