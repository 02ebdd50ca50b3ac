"""``Generator``: streams a chat completion from a registered model artifact (Ray Serve deployment).

``generate(messages, params, model=None)`` is a streaming method (call it through
``handle.options(stream=True).generate.remote(...)``; ``complete`` returns the same events as one
list, for callers that do not stream): it yields ``GenerationEvent`` dicts
(``token`` ... ``done``) from ``shared.serving.backends``, or one ``error`` dict with an HTTP-style
``status`` (404 unknown model, 400 bad request, 503 unloaded) instead of raising, so a bad request
never looks like a crashed replica. Concurrent requests to one model share the engine's continuous
batch. ``complete_prompt(prompt, params, model, echo)`` runs a raw prompt (text or token ids, no
chat format) for ``/v1/completions`` and returns the legacy completions result (``text``,
``finish_reason``, ``usage``, ``logprobs``), or the same ``error`` dict; ``params["max_tokens"]``
may be 0 (score the prompt only, with ``echo`` and ``logprobs``). ``models()`` lists what is loaded; ``reload(artifact)`` (or a ``ModelReload`` message on the
bus's ``models.events`` broadcast) switches the default model without dropping in-flight requests.

Per-request TTFT, TPOT and token counts are exported with Ray Serve's metrics (Prometheus, via the
Ray metrics agent) as ``journey_generator_*``.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading

from ray import serve
from ray.serve import metrics

from shared.bus import MODEL_EVENTS, Bus
from shared.bus.messages import ModelReload
from shared.engine import EngineError, SamplingParams
from shared.registry import Registry
from shared.serving.errors import ServingError
from shared.serving.pool import ModelPool, default_model

log = logging.getLogger("ray.serve")
LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]


def _params(params: dict) -> SamplingParams:
    try:
        return SamplingParams(**params)
    except (TypeError, EngineError, ValueError) as exc:
        raise ServingError(f"bad sampling parameters: {exc}", status=400) from None


@serve.deployment(max_ongoing_requests=32, graceful_shutdown_timeout_s=30)
class Generator:
    def __init__(self, model: str | None = None, run: str | None = None, runs_dir: str | None = None,
                 redis_url: str | None = None, max_loaded: int = 2, max_batch_size: int = 16):
        self.registry = Registry(runs_dir)
        default = model or default_model(self.registry, run).id
        self.pool = ModelPool(self.registry, default, max_loaded=max_loaded, max_batch_size=max_batch_size)
        self.ttft = metrics.Histogram("journey_generator_ttft_s", "time to first token (s)",
                                      boundaries=LATENCY_BUCKETS, tag_keys=("model",))
        self.tpot = metrics.Histogram("journey_generator_tpot_s", "time per output token after the first (s)",
                                      boundaries=LATENCY_BUCKETS, tag_keys=("model",))
        self.tokens = metrics.Counter("journey_generator_tokens", "tokens generated", tag_keys=("model",))
        self.errors = metrics.Counter("journey_generator_errors", "requests answered with an error",
                                      tag_keys=("status",))
        self._stop = threading.Event()
        self._listener = None
        if redis_url:
            self._listener = threading.Thread(target=self._listen, args=(redis_url,), daemon=True,
                                              name="generator-reload")
            self._listener.start()
        log.info("generator serving %s", self.pool.default)

    def _listen(self, redis_url: str) -> None:
        """Reload on ``ModelReload`` broadcasts; a failed load is logged and the old model stays."""
        bus = Bus(redis_url)
        for _, message in bus.listen(MODEL_EVENTS, stop=self._stop):
            if isinstance(message, ModelReload):
                try:
                    log.info("reloaded: now serving %s", self.pool.set_default(message.artifact))
                except Exception as exc:  # noqa: BLE001 - keep serving the old model, say why
                    log.error("reload to %r failed, still serving %s: %s", message.artifact, self.pool.default, exc)

    async def generate(self, messages: list[dict], params: dict, model: str | None = None):
        try:
            model_id, backend = await asyncio.to_thread(self.pool.get, model)
            async for event in backend.stream(messages, _params(params)):
                out = event.as_dict()
                out["model"] = model_id
                if event.kind == "done":
                    self._record(model_id, event.metrics)
                yield out
        except ServingError as exc:
            self.errors.inc(tags={"status": str(exc.status)})
            yield {"kind": "error", "status": exc.status, "text": str(exc)}

    async def complete(self, messages: list[dict], params: dict, model: str | None = None) -> list[dict]:
        """``generate``'s events as one list: for callers that do not stream (one reply instead of one
        stream item per event across the actor boundary)."""
        return [event async for event in self.generate(messages, params, model)]

    async def complete_prompt(self, prompt: str | list[int], params: dict, model: str | None = None,
                              echo: bool = False) -> dict:
        """A raw-prompt completion (see the module docstring)."""
        try:
            params = dict(params)
            max_tokens = params.pop("max_tokens", 16)
            if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 0:
                raise ServingError(f"max_tokens must be an int >= 0, got {max_tokens!r}", status=400)
            sampling = _params(params)  # validated with the default max_tokens, then given the real one
            sampling = dataclasses.replace(sampling, max_tokens=max_tokens)
            model_id, backend = await asyncio.to_thread(self.pool.get, model)
            result = await backend.complete_prompt(prompt, sampling, echo)
            if result["usage"]["completion_tokens"]:  # a Ray counter refuses 0 (scoring only)
                self.tokens.inc(result["usage"]["completion_tokens"], tags={"model": model_id})
            return {**result, "model": model_id}
        except ServingError as exc:
            self.errors.inc(tags={"status": str(exc.status)})
            return {"kind": "error", "status": exc.status, "text": str(exc)}

    def _record(self, model_id: str, m: dict) -> None:
        tags = {"model": model_id}
        if m.get("ttft_s") is not None:
            self.ttft.observe(m["ttft_s"], tags=tags)
        if m.get("tpot_s") is not None:
            self.tpot.observe(m["tpot_s"], tags=tags)
        if m.get("completion_tokens"):  # a Ray counter refuses 0
            self.tokens.inc(m["completion_tokens"], tags=tags)

    def models(self) -> dict:
        """The default model, the loaded ones, and every servable artifact id (for /v1/models)."""
        return {"default": self.pool.default, "loaded": self.pool.loaded(),
                "servable": [a.id for a in self.registry.models()]}

    async def reload(self, artifact: str) -> str:
        try:
            return await asyncio.to_thread(self.pool.set_default, artifact)
        except ServingError as exc:
            return f"error {exc.status}: {exc}"

    def check_health(self) -> None:
        if self._listener is not None and not self._listener.is_alive() and not self._stop.is_set():
            raise RuntimeError("the model-reload listener died; restarting the replica")

    def __del__(self):
        self._stop.set()
