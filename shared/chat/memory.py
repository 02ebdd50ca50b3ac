"""Conversation memory in Redis: each conversation a list of JSON messages with a sliding TTL.

``load(scope, cid)`` returns the stored history (oldest first); ``append(scope, cid, messages)``
adds a turn's messages, keeps at most ``max_messages`` (the oldest fall off) and renews the TTL, in
one transaction. The generator fits what is loaded to the model's context, so memory only bounds size.

A conversation lives under a **scope** and an id. The id is the client's (the OpenAI request's
``user``, or the frontend's session). The scope says whose it is: ``scope_for_key(bearer)`` is a
hash of the caller's API key (never the key itself, so a Redis dump reveals none), and
``BUS_SCOPE`` holds the conversations that come over the bus (the web chat, ``journey chat``). So
knowing another caller's ``user`` id reads nothing of theirs: the key ``<prefix>memory:<scope>:<id>``
differs. Errors are Redis's own (``redis.RedisError``); ``ChatService`` decides what an outage means.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import redis

BUS_SCOPE = "bus"  # conversations of the bus's callers (the web chat and `journey chat` send random session ids)
ANONYMOUS_SCOPE = "anonymous"  # HTTP callers that send no key (only possible when the gateway has none)


def scope_for_key(api_key: str | None) -> str:
    """The memory scope of a caller presenting ``api_key`` (or a whole ``Authorization`` header value).

    A salted SHA-256 cut to 32 hex digits: stable across restarts (so memory survives them), and
    what Redis holds cannot be turned back into the key.
    """
    token = (api_key or "").strip()
    scheme, _, rest = token.partition(" ")
    if scheme.lower() == "bearer":  # a whole Authorization header
        token = rest.strip()
    if not token:
        return ANONYMOUS_SCOPE
    return "k" + hashlib.sha256(b"gpt-journey memory scope\0" + token.encode("utf-8", "replace")).hexdigest()[:32]


class ConversationMemory:
    def __init__(self, client: redis.Redis, *, prefix: str = "journey:", ttl_s: int = 3600, max_messages: int = 40):
        if ttl_s < 1 or max_messages < 2:
            raise ValueError(f"memory needs ttl_s >= 1 and max_messages >= 2, got {ttl_s}, {max_messages}")
        self.client, self.prefix, self.ttl_s, self.max_messages = client, prefix, ttl_s, max_messages

    def key(self, scope: str, conversation_id: str) -> str:
        """``<prefix>memory:<scope>:<id>``: scopes are fixed words or fixed-length hashes without ``:``,
        so no id can reach into another scope."""
        if not scope or ":" in scope:
            raise ValueError(f"a memory scope is a non-empty word without ':', got {scope!r}")
        return f"{self.prefix}memory:{scope}:{conversation_id}"

    def load(self, scope: str, conversation_id: str) -> list[dict]:
        messages = []
        for raw in self.client.lrange(self.key(scope, conversation_id), 0, -1):
            try:
                message = json.loads(raw)
            except ValueError:  # a corrupt entry costs itself, not the conversation
                continue
            if isinstance(message, dict) and isinstance(message.get("role"), str):
                messages.append(message)
        return messages

    def append(self, scope: str, conversation_id: str, messages: Sequence[dict]) -> None:
        if not messages:
            return
        key = self.key(scope, conversation_id)
        pipe = self.client.pipeline(transaction=True)
        # ASCII-escaped: any str, even one holding a lone surrogate, encodes (redis-py writes UTF-8)
        pipe.rpush(key, *(json.dumps(m) for m in messages))
        pipe.ltrim(key, -self.max_messages, -1)
        pipe.expire(key, self.ttl_s)
        pipe.execute()

    def clear(self, scope: str, conversation_id: str) -> None:
        self.client.delete(self.key(scope, conversation_id))
