"""``Gateway``: the OpenAI-compatible HTTP API and the bus front door of the chat (Ray Serve ingress).

HTTP: ``POST /v1/chat/completions`` (streamed as SSE, or not), ``GET /v1/models``,
``POST /v1/tools/call`` (run one allowlisted tool directly), ``GET /healthz``. With an API key
configured (``api_key`` or ``$JOURNEY_API_KEY``) every ``/v1`` route wants ``Authorization:
Bearer <key>``. Bad requests get a 4xx with an OpenAI-style error body naming the problem; more than
``max_inflight`` turns at once get 429 with ``Retry-After`` instead of a growing queue (Ray Serve's
``max_queued_requests`` adds a 503 at the proxy for the same reason).

Bus: ``bus_consumers`` consumers in the ``gateway`` group read ``ChatRequest``s from
``chat.requests`` (the Gradio frontend, ``journey chat``), each answering one chat at a time, and
stream ``ChatEvent``s back to each request's ``reply_to``.

The turn itself (retrieval, generation, tool loop, memory) is ``shared.chat``; this file wires it to
the generator and retriever handles and to the tool executor over the bus.
"""
# No `from __future__ import annotations` here: Serve's class-based FastAPI ingress needs real annotations
# (with strings, `request: Request` is read as a query parameter and every call is a 422).

import asyncio
import json
import os
import threading
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.handle import DeploymentHandle

from shared.bus import CHAT_REQUESTS, Bus, Consumer
from shared.bus.messages import ChatRequest
from shared.chat import openai_api as oai
from shared.chat.memory import ConversationMemory
from shared.chat.service import ChatService, bus_tool_caller
from shared.chat.turn import DEFAULT_TOOLS, TurnOptions
from shared.serving.errors import ServingError
from shared.tools import ToolError

MODEL_ALIAS = "journey"  # "the generator's default model", for clients that need a fixed model name


@dataclass
class GatewayConfig:
    """Settings of the gateway (the Serve config's ``args.gateway``)."""
    redis_url: str | None = None
    api_key: str | None = None
    max_inflight: int = 16
    max_request_bytes: int = 256_000
    max_messages: int = 64
    max_message_chars: int = 16_000
    max_tokens: int = 512
    default_max_tokens: int = 128
    memory_ttl_s: int = 3600
    tool_timeout_s: float = 30.0
    max_tool_rounds: int = 3
    rag_top_k: int = 3
    rag_score_threshold: float | None = 0.5  # all-MiniLM cosine: related passages score above ~0.5
    default_tools: list[str] = field(default_factory=lambda: list(DEFAULT_TOOLS))
    bus_consumers: int = 4  # chats from the bus answered at once per replica (0: HTTP only)

    def limits(self) -> oai.Limits:
        return oai.Limits(self.max_request_bytes, self.max_messages, self.max_message_chars, self.max_tokens)


async def _aiter(items):
    for item in items:
        yield item


def _known_tools() -> set[str]:
    from shared.tools.executor import TOOLS
    return set(TOOLS)


app = FastAPI(title="GPT Journey gateway")


@app.exception_handler(oai.ApiError)
async def _api_error(request: Request, exc: oai.ApiError) -> JSONResponse:
    headers = {"Retry-After": "1"} if exc.status in (429, 503) else None
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


# num_cpus=0: it waits on others; the generator holds the CPU (override in the Serve config).
@serve.deployment(max_ongoing_requests=64, max_queued_requests=64, ray_actor_options={"num_cpus": 0})
@serve.ingress(app)
class Gateway:
    def __init__(self, generator: DeploymentHandle, retriever: DeploymentHandle | None = None,
                 tools: DeploymentHandle | None = None, config: dict | None = None):
        self.cfg = GatewayConfig(**(config or {}))
        self.api_key = self.cfg.api_key or os.environ.get("JOURNEY_API_KEY") or None
        self.generator, self.retriever, self.tools = generator, retriever, tools  # tools: reached over the bus
        self.bus = Bus(self.cfg.redis_url)
        self.bus.ping()
        memory = ConversationMemory(self.bus.redis, prefix=self.bus.prefix, ttl_s=self.cfg.memory_ttl_s)
        self.service = ChatService(self._generate, retrieve=self._retrieve if retriever else None,
                                   call_tool=bus_tool_caller(self.bus, self.cfg.tool_timeout_s), memory=memory)
        self.inflight = 0
        self._consumers: list[Consumer] = []
        if self.cfg.bus_consumers:
            # Bus turns run on a loop of their own. A consumer blocks on its turn until it is answered (it
            # acks after), so several consumers in the group let that many bus chats run at once.
            self._loop = asyncio.new_event_loop()
            threading.Thread(target=self._loop.run_forever, daemon=True, name="gateway-bus-loop").start()
            for i in range(self.cfg.bus_consumers):
                consumer = Consumer(self.bus, CHAT_REQUESTS, "gateway", f"gateway-{os.getpid()}-{i}",
                                    self._on_bus_request)
                consumer.start()
                self._consumers.append(consumer)

    # ------------------------------------------------------------------ collaborators of a turn

    async def _generate(self, messages: list[dict], params: dict, model: str | None = None, stream: bool = True):
        if stream:
            events = self.generator.options(stream=True).generate.remote(messages, params, model)
        else:  # nobody watches the tokens arrive: one round trip instead of one per event
            events = _aiter(await self.generator.complete.remote(messages, params, model))
        async for event in events:
            if event["kind"] == "error":
                raise ServingError(event["text"], status=event.get("status", 500))
            yield event

    async def _retrieve(self, query: str, top_k: int, threshold: float | None) -> list[dict]:
        return await self.retriever.search.remote(query, top_k, threshold)

    def _options(self, max_tokens: int, temperature: float, top_p: float, seed: int | None, use_rag: bool,
                 tools: list[str] | None) -> TurnOptions:
        return TurnOptions(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed,
                           use_rag=use_rag and self.retriever is not None, top_k=self.cfg.rag_top_k,
                           score_threshold=self.cfg.rag_score_threshold,
                           tools=tuple(self.cfg.default_tools if tools is None else tools),
                           max_tool_rounds=self.cfg.max_tool_rounds)

    def _service_for(self, model: str | None, stream: bool = True) -> ChatService:
        """The chat service bound to ``model`` (None: the generator's default), streaming from it or not."""
        if model in (None, "", MODEL_ALIAS) and stream:
            return self.service
        model = None if model == MODEL_ALIAS else model
        return ChatService(lambda m, p: self._generate(m, p, model, stream), retrieve=self.service.retrieve,
                           call_tool=self.service.call_tool, memory=self.service.memory)

    def _on_bus_request(self, message) -> None:
        if not isinstance(message, ChatRequest):
            raise ValueError(f"chat.requests carries ChatRequest messages, got {type(message).__name__}")
        options = self._options(min(message.max_tokens, self.cfg.max_tokens), message.temperature, message.top_p,
                                None, message.use_rag, None if message.use_tools else [])
        work = self._service_for(message.model).answer_request(self.bus, message, options)
        asyncio.run_coroutine_threadsafe(work, self._loop).result()

    # ------------------------------------------------------------------ HTTP

    def _check_auth(self, request: Request) -> None:
        if self.api_key and request.headers.get("authorization", "") != f"Bearer {self.api_key}":
            raise oai.ApiError(401, "missing or wrong API key: send `Authorization: Bearer <key>` "
                                    "(the key the gateway was started with, JOURNEY_API_KEY)")

    @app.get("/healthz")
    async def healthz(self) -> dict:
        self.bus.ping()
        return {"ok": True, "inflight": self.inflight}

    @app.get("/v1/models")
    async def models(self, request: Request) -> dict:
        self._check_auth(request)
        info = await self.generator.models.remote()
        ids = [MODEL_ALIAS] + info["servable"]
        return {"object": "list", "data": [{"id": i, "object": "model", "owned_by": "gpt-journey",
                                            "default": i in (MODEL_ALIAS, info["default"])} for i in ids]}

    @app.post("/v1/tools/call")
    async def call_tool(self, request: Request) -> dict:
        from shared.tools.executor import validate_call
        self._check_auth(request)
        try:
            tool, args = validate_call((await request.body()).decode("utf-8", "replace"))
        except ToolError as exc:
            raise oai.ApiError(404 if "unknown tool" in str(exc) else 400, str(exc), param="name") from None
        return await self.service.call_tool(tool.name, args.model_dump())

    @app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request):
        self._check_auth(request)
        body = oai.parse_request(await request.body(), self.cfg.limits(), _known_tools())
        if self.inflight >= self.cfg.max_inflight:
            raise oai.ApiError(429, f"the gateway is at its limit of {self.cfg.max_inflight} concurrent requests; "
                                    "retry shortly")
        tools = None if body.tools is None else [t.function.name for t in body.tools]
        options = self._options(body.limit(self.cfg.default_max_tokens), body.temperature, body.top_p, body.seed,
                                body.use_rag, tools)
        model = None if body.model == MODEL_ALIAS else body.model
        if model is not None:  # before any streaming starts: an unknown model is a clean 404, not an in-band error
            problem = await self.generator.check_model.remote(model)
            if problem:
                raise oai.ApiError(problem["status"], problem["text"], param="model", code="model_not_found")
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        events = self._service_for(model, stream=body.stream).answer(messages, options, body.user)
        if body.stream:
            return StreamingResponse(self._sse(events, body.model), media_type="text/event-stream")
        self.inflight += 1
        try:
            return await self._collect(events, body.model)
        finally:
            self.inflight -= 1

    async def _collect(self, events, model: str) -> dict:
        extra: dict = {"sources": [], "tool_calls": []}
        try:
            async for event in events:
                if event.kind == "sources":
                    extra["sources"] = event.data["sources"]
                elif event.kind in ("tool_call", "tool_result"):
                    extra["tool_calls"].append({"kind": event.kind, **event.data})
                elif event.kind == "metrics":
                    extra["metrics"] = event.data
                elif event.kind == "done":
                    return oai.completion(oai.completion_id(), model, event.text, event.data["finish_reason"],
                                          event.data["usage"], extra)
        except ServingError as exc:
            raise oai.ApiError(exc.status, str(exc), param="model" if exc.status == 404 else None) from None
        except (RayActorError, RayTaskError) as exc:  # a replica died under us: the client should retry
            raise oai.ApiError(503, f"a backend replica failed during this request ({type(exc).__name__}); "
                                    "it is being replaced: retry") from None
        raise oai.ApiError(500, "the turn ended without an answer")

    async def _sse(self, events, model: str):
        cid = oai.completion_id()
        self.inflight += 1  # counted here, where the finally below is sure to run
        try:
            yield oai.chunk(cid, model, {"role": "assistant", "content": ""})
            async for event in events:
                if event.kind == "token":
                    yield oai.chunk(cid, model, {"content": event.text})
                elif event.kind in ("sources", "tool_call", "tool_result", "metrics"):
                    yield oai.chunk(cid, model, {}, extra={event.kind: event.data})
                elif event.kind == "done":
                    yield oai.chunk(cid, model, {}, oai.FINISH.get(event.data["finish_reason"] or "stop", "stop"),
                                    extra={"usage": event.data["usage"]})
            yield oai.SSE_DONE
        except ServingError as exc:  # headers are gone: report in-band, as OpenAI does
            yield f"data: {json.dumps(oai.ApiError(exc.status, str(exc)).body())}\n\n"
        except (RayActorError, RayTaskError) as exc:
            yield f"data: {json.dumps(oai.ApiError(503, f'a backend replica failed ({type(exc).__name__}): retry').body())}\n\n"
        finally:
            self.inflight -= 1

    def __del__(self):
        for consumer in getattr(self, "_consumers", []):
            consumer.stop()
