"""Conversation memory in Redis: each conversation a list of JSON messages with a sliding TTL.

``load(cid)`` returns the stored history (oldest first); ``append(cid, messages)`` adds a turn's
messages, keeps at most ``max_messages`` (the oldest fall off) and renews the TTL, in one
transaction. The generator fits what is loaded to the model's context, so memory only bounds size.
A conversation id is the client's (the frontend's session, or the OpenAI request's ``user``).
"""
from __future__ import annotations

import json
from collections.abc import Sequence

import redis


class ConversationMemory:
    def __init__(self, client: redis.Redis, *, prefix: str = "journey:", ttl_s: int = 3600, max_messages: int = 40):
        if ttl_s < 1 or max_messages < 2:
            raise ValueError(f"memory needs ttl_s >= 1 and max_messages >= 2, got {ttl_s}, {max_messages}")
        self.client, self.prefix, self.ttl_s, self.max_messages = client, prefix, ttl_s, max_messages

    def key(self, conversation_id: str) -> str:
        return f"{self.prefix}memory:{conversation_id}"

    def load(self, conversation_id: str) -> list[dict]:
        return [json.loads(raw) for raw in self.client.lrange(self.key(conversation_id), 0, -1)]

    def append(self, conversation_id: str, messages: Sequence[dict]) -> None:
        if not messages:
            return
        key = self.key(conversation_id)
        pipe = self.client.pipeline(transaction=True)
        pipe.rpush(key, *(json.dumps(m, ensure_ascii=False) for m in messages))
        pipe.ltrim(key, -self.max_messages, -1)
        pipe.expire(key, self.ttl_s)
        pipe.execute()

    def clear(self, conversation_id: str) -> None:
        self.client.delete(self.key(conversation_id))
