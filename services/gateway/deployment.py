"""``Gateway``: the OpenAI-compatible HTTP API and the bus front door of the chat (Ray Serve ingress).

HTTP: ``POST /v1/chat/completions`` (streamed as SSE, or not; what of OpenAI's API it implements
and refuses is listed in ``shared.chat.openai_api``), ``GET /v1/models`` and ``/v1/models/{id}``,
``POST /v1/embeddings`` (the retriever's embedding model; 404 when the stack runs without one),
``POST /v1/tools/call`` (run one allowlisted tool directly), ``GET /healthz``. With an API key
configured (``api_key`` or ``$JOURNEY_API_KEY``) every ``/v1`` route wants ``Authorization:
Bearer <key>``. Bad requests get a 4xx with an OpenAI-style error body naming the problem; more than
``max_inflight`` turns at once get 429 with ``Retry-After`` instead of a growing queue (Ray Serve's
``max_queued_requests`` adds a 503 at the proxy for the same reason).

``model`` takes the alias ``journey`` (the generator's default) or a servable artifact id from
``GET /v1/models``, nothing else (never a path); error messages that reach a client have filesystem
paths replaced by ``<path>``. A stream always ends with ``data: [DONE]``, after an in-band error too.
Our server tools run in an HTTP chat only when the request opts in (``journey_tools``); a client's
``tools`` are the client's to run and come back as ``tool_calls``. Bus chats (the web chat, ``journey
chat``) use ``default_tools``.

Bus: ``bus_consumers`` consumers in the ``gateway`` group read ``ChatRequest``s from
``chat.requests`` (the Gradio frontend, ``journey chat``), each answering one chat at a time, and
stream ``ChatEvent``s back to each request's ``reply_to``.

The turn itself (retrieval, generation, tool loop, memory) is ``shared.chat``; this file wires it to
the generator and retriever handles and to the tool executor over the bus.
"""
# No `from __future__ import annotations` here: Serve's class-based FastAPI ingress needs real annotations
# (with strings, `request: Request` is read as a query parameter and every call is a 422).

import asyncio
import dataclasses
import json
import logging
import os
import re
import threading
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.handle import DeploymentHandle

from services.gateway import http_guards
from shared.bus import CHAT_REQUESTS, Bus, BusError, Consumer
from shared.bus.messages import ChatEvent, ChatRequest
from shared.chat import openai_api as oai
from shared.chat.memory import ConversationMemory, scope_for_key
from shared.chat.service import ChatService, bus_tool_caller
from shared.chat.turn import DEFAULT_TOOLS, TurnOptions, merge_streams
from shared.serving.errors import ServingError
from shared.tools import ToolError

MODEL_ALIAS = oai.MODEL_ALIAS  # "the generator's default model", for clients that need a fixed model name
log = logging.getLogger("ray.serve")
# An absolute path of two or more parts (not our /v1/ routes, not inside a URL): never shown to a client.
_PATH = re.compile(r"(?<![\w/.:~-])/(?!v1/)[^\s'\"(),;:]+/[^\s'\"(),;:]*")


def scrub(text: str) -> str:
    """``text`` with filesystem paths replaced by ``<path>`` (error messages from the backends)."""
    return _PATH.sub("<path>", text)


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
    default_tools: list[str] = field(default_factory=lambda: list(DEFAULT_TOOLS))  # bus chats; HTTP: journey_tools
    bus_consumers: int = 4  # chats from the bus answered at once per replica (0: HTTP only)

    def limits(self) -> oai.Limits:
        return oai.Limits(self.max_request_bytes, self.max_messages, self.max_message_chars, self.max_tokens)


async def _aiter(items):
    for item in items:
        yield item


def _known_tools() -> set[str]:
    from shared.tools.executor import TOOLS
    return set(TOOLS)


def _server_tool_specs() -> dict[str, dict]:
    """Our tools as OpenAI function definitions (``{"name", "description", "parameters"}``), by name."""
    from shared.tools.executor import TOOLS
    return {t.name: {"name": t.name, "description": t.description, "parameters": t.arguments.model_json_schema()}
            for t in TOOLS.values()}


app = FastAPI(title="GPT Journey gateway")
http_guards.install(app)  # JSON errors on every status, JSON-only POSTs, a depth limit, explicit CORS


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

    def _request_options(self, body: oai.ChatCompletionRequest) -> TurnOptions:
        """A chat-completions request's turn: its sampling, its tools (client and opted-in server ones)."""
        specs = oai.tool_specs(body, _server_tool_specs())
        client = () if body.tool_choice == "none" else tuple(f.name for f in body.client_tools())
        return dataclasses.replace(
            self._options(body.limit(self.cfg.default_max_tokens), body.temperature, body.top_p, body.seed,
                          body.use_rag, body.journey_tools),
            stop=tuple(body.stops()), logprobs=body.engine_logprobs(),
            response_format=body.response_format.engine() if body.response_format else None,
            grammar=oai.tool_grammar(body, specs), client_tools=client, tool_specs=tuple(specs))

    async def _check_model(self, name: str) -> None:
        """``ApiError`` 404 unless ``name`` is the alias or a servable artifact id (never a path)."""
        if name == MODEL_ALIAS:
            return
        servable = (await self.generator.models.remote())["servable"]
        if name not in servable:
            shown = ", ".join([MODEL_ALIAS, *servable[:12]])
            raise oai.ApiError(404, f"unknown model {scrub(oai.quote(name))}: this server serves {shown} "
                                    "(GET /v1/models); pass one of those ids", param="model", code="model_not_found")

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
        if message.model:  # the same rule as HTTP: a servable artifact id, never a path
            try:
                asyncio.run_coroutine_threadsafe(self._check_model(message.model), self._loop).result()
            except oai.ApiError as exc:
                self.bus.publish(message.reply_to, ChatEvent(request_id=message.request_id, trace_id=message.trace_id,
                                                             seq=0, kind="error", text=exc.message,
                                                             data={"status": exc.status}))
                return
        work = self._service_for(message.model).answer_request(self.bus, message, options)
        asyncio.run_coroutine_threadsafe(work, self._loop).result()

    # ------------------------------------------------------------------ HTTP

    def _check_auth(self, request: Request) -> None:
        if self.api_key and request.headers.get("authorization", "") != f"Bearer {self.api_key}":
            raise oai.ApiError(401, "missing or wrong API key: send `Authorization: Bearer <key>` "
                                    "(the key the gateway was started with, JOURNEY_API_KEY)")

    @app.get("/healthz")
    async def healthz(self):
        try:
            self.bus.ping()
        except BusError as exc:  # a JSON 503 a load balancer and a person can both read
            return JSONResponse(http_guards.error_body(503, f"not ready: {exc}"), status_code=503,
                                headers={"Retry-After": "1"})
        return {"ok": True, "inflight": self.inflight}

    @app.get("/v1/models")
    async def models(self, request: Request) -> dict:
        self._check_auth(request)
        info = await self.generator.models.remote()
        ids = [MODEL_ALIAS] + info["servable"]
        return {"object": "list", "data": [oai.model_object(i, i in (MODEL_ALIAS, info["default"])) for i in ids]}

    @app.post("/v1/completions")
    async def completions(self, request: Request) -> dict:
        """Raw-prompt completions (``shared.chat.completions_api``): one choice per prompt, token-id prompts,
        ``echo`` and ``logprobs`` with ``max_tokens=0`` for scoring, as lm-eval's ``local-completions`` sends."""
        from shared.chat import completions_api as capi
        self._check_auth(request)
        body = capi.parse_completion_request(await request.body(), self.cfg.limits(), self.cfg.default_max_tokens)
        if self.inflight >= self.cfg.max_inflight:
            raise oai.ApiError(429, f"the gateway is at its limit of {self.cfg.max_inflight} concurrent requests; "
                                    "retry shortly")
        await self._check_model(body.model)
        model = None if body.model == MODEL_ALIAS else body.model
        params = capi.sampling_params(body, self.cfg.default_max_tokens)
        self.inflight += 1
        try:
            results = await asyncio.gather(*(self.generator.complete_prompt.remote(p, params, model, body.echo)
                                             for p in body.prompts()))
        except (RayActorError, RayTaskError) as exc:  # a replica died under us: the client should retry
            raise oai.ApiError(503, f"a backend replica failed during this request ({type(exc).__name__}); "
                                    "it is being replaced: retry") from None
        finally:
            self.inflight -= 1
        for i, result in enumerate(results):
            if result.get("kind") == "error":
                raise oai.ApiError(result["status"], scrub(f"prompt[{i}]: {result['text']}"),
                                   param="prompt" if result["status"] == 400 else None)
        return capi.completion_response(body.model, results)

    @app.post("/v1/tools/call")
    async def call_tool(self, request: Request) -> dict:
        """Run one server-side tool: ``{"name", "arguments"}`` -> ``{"ok", "output", "error"}``. Only the tools
        chat may run (``default_tools``; ``python`` is off unless listed there), with the same timeout."""
        from shared.tools.executor import validate_call
        self._check_auth(request)
        raw = await request.body()
        if len(raw) > self.cfg.max_request_bytes:
            raise oai.ApiError(413, f"the request body has {len(raw)} bytes, over the gateway's max_request_bytes "
                                    f"({self.cfg.max_request_bytes}); send a smaller call")
        try:
            call = json.loads(raw)
        except (ValueError, RecursionError) as exc:  # RecursionError: JSON nested thousands deep
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
            raise oai.ApiError(400, f'the body is not valid JSON ({reason}); send {{"name": "calculator", '
                                    f'"arguments": {{"expression": "2 + 3"}}}}') from None
        name = call.get("name") if isinstance(call, dict) else None
        allowed = list(self.cfg.default_tools)
        if isinstance(name, str) and name in _known_tools() and name not in allowed:
            # checked before the arguments: a disabled tool says so, whatever it was sent
            raise oai.ApiError(403, f"the tool {name!r} is not enabled on this gateway; enabled tools: {allowed}. "
                                    f"To enable it add it to the gateway's default_tools (`journey up "
                                    f"tools=[{','.join(allowed + [name])}]`, or args.gateway.default_tools in the "
                                    "Serve config)", param="name", code="tool_not_enabled")
        try:
            tool, args = validate_call(call)
        except ToolError as exc:
            raise oai.ApiError(404 if "unknown tool" in str(exc) else 400, str(exc), param="name") from None
        result = await self.service.call_tool(tool.name, args.model_dump())
        if result.get("status"):  # Redis unreachable (503) or no result within tool_timeout_s (504)
            raise oai.ApiError(result["status"], result["error"])
        return result

    @app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request):
        self._check_auth(request)
        body = oai.parse_request(await request.body(), self.cfg.limits(), _known_tools())
        if self.inflight >= self.cfg.max_inflight:
            raise oai.ApiError(429, f"the gateway is at its limit of {self.cfg.max_inflight} concurrent requests; "
                                    "retry shortly")
        await self._check_model(body.model)  # before any streaming starts: a clean 404, not an in-band error
        model = None if body.model == MODEL_ALIAS else body.model
        options = self._request_options(body)
        service = self._service_for(model, stream=body.stream)
        scope = scope_for_key(request.headers.get("authorization"))
        messages = oai.to_chat(body)
        # n independent samples: choice i seeded seed + i (when a seed is given), each its own turn.
        turns = [service.answer(messages, dataclasses.replace(options, seed=None if body.seed is None
                                                              else body.seed + i), body.user, scope=scope,
                                 store=i == 0)  # memory keeps one answer of the n
                 for i in range(body.n)]
        if body.stream:
            return StreamingResponse(self._sse(turns, body), media_type="text/event-stream")
        self.inflight += 1
        try:
            choices = await asyncio.gather(*(self._collect(events) for events in turns))
        except ServingError as exc:
            raise oai.ApiError(exc.status, scrub(str(exc)), param="model" if exc.status == 404 else None) from None
        except (RayActorError, RayTaskError) as exc:  # a replica died under us: the client should retry
            raise oai.ApiError(503, f"a backend replica failed during this request ({type(exc).__name__}); "
                                    "it is being replaced: retry") from None
        finally:
            self.inflight -= 1
        usage = {"prompt_tokens": choices[0][0].data["usage"]["prompt_tokens"],  # one prompt, n samples
                 "completion_tokens": sum(done.data["usage"]["completion_tokens"] for done, _ in choices)}
        wire = [oai.choice(i, done.text, done.data["finish_reason"], done.data.get("tool_calls"),
                           done.data.get("logprobs"), body.logprobs) for i, (done, _) in enumerate(choices)]
        extra = {**choices[0][1], "finish_reason": choices[0][0].data["finish_reason"]}
        if body.n > 1:
            extra["choices"] = [{**x, "finish_reason": done.data["finish_reason"]} for done, x in choices]
        return oai.completion(oai.completion_id(), body.model, wire, usage, extra)

    async def _collect(self, events):
        """``(done event, journey extra)`` of one turn."""
        extra: dict = {"sources": [], "tool_calls": []}
        async for event in events:
            if event.kind == "sources":
                extra["sources"] = event.data["sources"]
            elif event.kind in ("tool_call", "tool_result"):
                extra["tool_calls"].append({"kind": event.kind, **event.data})
            elif event.kind == "metrics":
                extra["metrics"] = event.data
            elif event.kind == "done":
                return event, extra
        raise oai.ApiError(500, "the turn ended without an answer")

    async def _sse(self, turns, body: oai.ChatCompletionRequest):
        """The SSE stream of ``turns`` (one per choice); it always ends with ``[DONE]``, after an error too."""
        cid, model = oai.completion_id(), body.model
        usage = {"prompt_tokens": 0, "completion_tokens": 0}
        self.inflight += 1  # counted here, where the finally below is sure to run
        try:
            for i in range(len(turns)):
                yield oai.chunk(cid, model, {"role": "assistant", "content": ""}, index=i)
            async for i, event in merge_streams(turns):
                if event.kind == "token":
                    logprobs = (event.data.get("logprobs") or []) if body.logprobs else None
                    yield oai.chunk(cid, model, {"content": event.text}, index=i, logprobs=logprobs)
                elif event.kind in ("sources", "tool_call", "tool_result", "metrics"):
                    yield oai.chunk(cid, model, {}, extra={event.kind: event.data}, index=i)
                elif event.kind == "done":
                    if event.data.get("tool_calls"):
                        yield oai.chunk(cid, model, oai.tool_call_deltas(event.data["tool_calls"]), index=i)
                    yield oai.chunk(cid, model, {}, oai.finish_reason(event.data["finish_reason"]), index=i,
                                    extra={"usage": event.data["usage"], "finish_reason": event.data["finish_reason"]})
                    if i == 0:
                        usage["prompt_tokens"] = event.data["usage"]["prompt_tokens"]
                    usage["completion_tokens"] += event.data["usage"]["completion_tokens"]
            if body.stream_options is not None and body.stream_options.include_usage:
                yield oai.usage_chunk(cid, model, usage)
        except ServingError as exc:  # headers are gone: report in-band, as OpenAI does
            yield oai.sse(oai.ApiError(exc.status, scrub(str(exc))).body())
        except oai.ApiError as exc:
            yield oai.sse(exc.body())
        except (RayActorError, RayTaskError) as exc:
            yield oai.sse(oai.ApiError(503, f"a backend replica failed ({type(exc).__name__}): retry").body())
        except Exception as exc:  # noqa: BLE001 - the stream must still end with an error and [DONE]
            log.exception("chat stream failed")
            yield oai.sse(oai.ApiError(500, f"the gateway failed on this stream: {type(exc).__name__}: "
                                            f"{scrub(str(exc))[:300]}").body())
        finally:
            self.inflight -= 1
        yield oai.SSE_DONE

    @app.get("/v1/models/{model_id:path}")
    async def model(self, model_id: str, request: Request) -> dict:
        self._check_auth(request)
        info = await self.generator.models.remote()
        if model_id != MODEL_ALIAS and model_id not in info["servable"]:
            raise oai.ApiError(404, f"the model {scrub(oai.quote(model_id))} does not exist here; GET /v1/models lists "
                                    "the servable ones", param="model", code="model_not_found")
        return oai.model_object(model_id, model_id in (MODEL_ALIAS, info["default"]))

    @app.post("/v1/embeddings")
    async def embeddings(self, request: Request) -> dict:
        self._check_auth(request)
        body = oai.parse_embedding_request(await request.body(), self.cfg.limits())
        if self.retriever is None:
            raise oai.ApiError(404, "this stack serves no embeddings: it runs without a retriever (no index artifact, "
                                    "or rag=false); start it with an index (`journey index`, rag=auto) to use "
                                    "/v1/embeddings", param="model", code="model_not_found")
        info = await self.retriever.embedding_model.remote()
        if body.model not in (info["model"], MODEL_ALIAS):
            raise oai.ApiError(404, f"unknown embedding model {oai.quote(body.model)}; this server embeds with "
                                    f"{info['model']!r} (or pass {MODEL_ALIAS!r})", param="model",
                               code="model_not_found")
        if body.dimensions not in (None, info["dimension"]):
            raise oai.ApiError(400, f"dimensions={body.dimensions}: this embedding model makes {info['dimension']}-"
                                    "dimensional vectors only; leave dimensions out", param="dimensions")
        out = await self.retriever.embed.remote(body.texts())
        return oai.embeddings_response(info["model"], out["vectors"], body.encoding_format, out["prompt_tokens"])

    def __del__(self):
        for consumer in getattr(self, "_consumers", []):
            consumer.stop()
