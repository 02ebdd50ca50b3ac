"""The Redis Streams message bus (docs/architecture.md, Bus): typed messages, consumer groups, dead letters.

``messages`` holds the pydantic messages and their wire encoding, ``streams`` the ``Bus`` (publish,
read, listen, request/reply) and the group ``Consumer`` (at-least-once, dedupe on ``message_id``),
``redis_server`` a ``redis-server`` child process for tests and local runs, and ``supervise``, which
restarts it when it dies (``journey up``).
"""
from shared.bus.messages import (ChatEvent, ChatMessage, ChatRequest, MalformedMessage, Message, ModelReload,
                                 ToolRequest, ToolResult, decode, encode)
from shared.bus.redis_server import RedisServer, free_port
from shared.bus.streams import (CHAT_EVENTS, CHAT_REQUESTS, MODEL_EVENTS, STREAMS, TOOL_REQUESTS, TOOL_RESULTS, Bus,
                                BusError, BusUnreachable, Consumer)

__all__ = ["Bus", "BusError", "BusUnreachable", "CHAT_EVENTS", "CHAT_REQUESTS", "ChatEvent", "ChatMessage", "ChatRequest", "Consumer",
           "MODEL_EVENTS", "MalformedMessage", "Message", "ModelReload", "RedisServer", "STREAMS", "TOOL_REQUESTS",
           "TOOL_RESULTS", "ToolRequest", "ToolResult", "decode", "encode", "free_port"]
