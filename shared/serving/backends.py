"""Serving one model artifact to many concurrent asyncio callers: the generator service's core.

``load_backend(artifact_or_path)`` opens the model with ``shared.serving.runtime.open_model`` (the
artifact's kind picks the runtime: hf-model and quantized run on our ``Engine``, continuous batching
and KV cache; gguf on llama.cpp) and wraps it in that runtime's backend. Both give the same contract:

- ``await backend.stream(messages, params)`` is an async iterator of ``GenerationEvent``: ``token``
  events as the text grows, then one ``done`` event with the finish reason, the tool call when the
  model made one (``finish_reason == "tool_call"``), token counts and the request's metrics (TTFT,
  TPOT, decode tokens/s). A caller that stops iterating (a client gone) aborts its request.
- The conversation is fitted to the context first (``fit_messages``): the oldest turns after the
  system message are dropped until the prompt fits beside a reply budget, and ``max_tokens`` is cut
  to the room left. A last user turn that cannot fit on its own is a ``ServingError`` with status
  400 (the request's fault, not ours).

``EngineBackend`` runs ``Engine.step`` on one dedicated thread (the engine is single-threaded by
contract); callers on any event loop hand it submissions and aborts through a queue and get their
deltas back with ``call_soon_threadsafe``, so concurrent requests share every forward pass.
``LlamaCppBackend`` generates one request at a time (llama-cpp-python has no batching API), in a
worker thread. Not here: HTTP, Ray Serve and metrics export (``services/generator``).
"""
from __future__ import annotations

import asyncio
import dataclasses
import itertools
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.engine import Engine, EngineConfig, EngineError, SamplingParams
from shared.engine.request import parse_tool_call
from shared.quant.llama_cpp import context_limit, llama_generate
from shared.registry import Artifact
from shared.serving.errors import ServingError
from shared.serving.runtime import open_model
from shared.chat_format import render_chat


@dataclass
class GenerationEvent:
    """One event of a generation: ``kind`` is ``token`` (``text`` is new) or ``done`` (the summary)."""
    kind: str
    text: str = ""
    finish_reason: str | None = None
    tool_call: dict | None = None
    tool_call_error: str | None = None
    tool_call_text: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def fit_messages(messages: Sequence[dict], count_tokens: Callable[[str], int], context: int,
                 max_tokens: int) -> tuple[list[dict], int, int]:
    """``(messages, prompt_tokens, max_tokens)`` fitted to a ``context``-token model.

    The reply keeps a budget of ``min(max_tokens, context // 2)`` tokens. Until the prompt fits beside
    it: whole turns before the last user message are dropped, oldest first; then the system message
    (retrieved passages, best first) is cut from its end; then tool results after the question are.
    Then ``max_tokens`` is lowered to the room that is left, if it must be. So a small model with a
    long default ``max_tokens`` still answers, and long histories lose their oldest turns first. A
    question that cannot fit on its own is a 400.
    """
    budget = max(1, min(max_tokens, context // 2))
    messages = [dict(m) for m in messages]
    head = messages[:1] if messages and messages[0].get("role") == "system" else []
    body = messages[len(head):]
    while True:
        n = count_tokens(render_chat(head + body, add_generation_prompt=True))
        if n + budget <= context:
            return head + body, n, min(max_tokens, context - n)
        question = max((i for i, m in enumerate(body) if m.get("role") == "user"), default=0)
        cuttable = [m for m in head + body[question + 1:] if m.get("role") in ("system", "tool") and m.get("content")]
        if question > 0:
            body = body[1:]
        elif cuttable:
            # Cut the overflow (plus a margin for token boundaries) from its end, in proportion to its tokens.
            target = cuttable[0]
            tokens = max(1, count_tokens(target["content"]))
            keep_tokens = tokens - (n + budget - context) - 2
            target["content"] = target["content"][:max(0, len(target["content"]) * keep_tokens // tokens)]
            head = [m for m in head if m.get("content")]
        else:
            raise ServingError(f"the question is {n} tokens with what it needs; this model's context holds {context} "
                               f"tokens, {budget} of them kept for the reply: shorten the message", status=400)


def _fit(messages: Sequence[dict], count_tokens: Callable[[str], int], context: int, max_tokens: int):
    """``fit_messages``, with a conversation the chat format refuses (bad role, bad tool call) as a 400."""
    try:
        return fit_messages(messages, count_tokens, context, max_tokens)
    except ValueError as exc:
        raise ServingError(f"the conversation cannot be rendered: {exc}", status=400) from None


def _metrics(output) -> dict[str, Any]:
    out = {k: v for k, v in output.metrics.as_dict().items() if v is not None}
    out["completion_tokens"] = len(output.token_ids)
    out["prompt_tokens"] = len(output.prompt_token_ids)
    return out


class _Served:
    """What both runtimes share: the tokenizer and context requests are fitted with, and the in-flight count."""

    def __init__(self, name: str, tokenizer, context: int):
        self.name, self.tokenizer, self.context = name, tokenizer, context
        self._active = 0

    @property
    def active_requests(self) -> int:
        return self._active

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))


class EngineBackend(_Served):
    """Our engine behind a stepping thread (see the module docstring)."""

    runtime = "engine"

    def __init__(self, engine: Engine, name: str = ""):
        super().__init__(name, engine.tokenizer, engine.max_seq_len)
        self.engine = engine
        self._inbox: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._closed = False
        self._ids = itertools.count()
        self._thread = threading.Thread(target=self._loop, name=f"engine-{name}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._closed:
            while True:
                try:
                    self._inbox.get_nowait()()
                except queue.Empty:
                    break
            if self.engine.has_unfinished:
                self.engine.step()
            else:
                self._wake.wait(0.05)
                self._wake.clear()

    def _call(self, fn: Callable[[], None]) -> None:
        self._inbox.put(fn)
        self._wake.set()

    async def stream(self, messages: Sequence[dict], params: SamplingParams) -> AsyncIterator[GenerationEvent]:
        if self._closed:
            raise ServingError("this model is unloaded", status=503)
        fitted, _, max_tokens = _fit(messages, self.count_tokens, self.context, params.max_tokens)
        params = dataclasses.replace(params, max_tokens=max_tokens)
        loop = asyncio.get_running_loop()
        deltas: asyncio.Queue = asyncio.Queue()
        submitted: asyncio.Future = loop.create_future()
        request_id = f"{self.name}-{next(self._ids)}"

        def deliver(delta) -> None:
            try:
                loop.call_soon_threadsafe(deltas.put_nowait, delta)
            except RuntimeError:  # the caller's event loop has closed: nobody is listening any more
                pass

        def submit() -> None:
            try:
                handle = self.engine.submit_chat(fitted, params, request_id=request_id, on_delta=deliver)
                loop.call_soon_threadsafe(submitted.set_result, handle)
            except Exception as exc:  # noqa: BLE001 - handed to the caller, who owns the error
                loop.call_soon_threadsafe(submitted.set_exception, exc)

        self._call(submit)
        try:
            handle = await submitted
        except EngineError as exc:
            raise ServingError(str(exc), status=400) from None
        self._active += 1
        finished = False
        try:
            while True:
                delta = await deltas.get()
                text = delta.text
                while not delta.finished and not deltas.empty():
                    # A caller slower than the engine gets what piled up as one event: under load the
                    # per-event cost (a stream item across Ray actors) would otherwise grow with tokens.
                    delta = deltas.get_nowait()
                    text += delta.text
                if text:
                    yield GenerationEvent("token", text)
                if delta.finished:
                    finished = True
                    output = handle.result()
                    yield GenerationEvent("done", output.text, output.finish_reason, output.tool_call,
                                          output.tool_call_error, output.tool_call_text, _metrics(output))
                    return
        finally:
            self._active -= 1
            if not finished:  # the caller went away: free the slot for others
                self._call(lambda: self.engine.is_running(request_id) and self.engine.abort(request_id))

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=5)


class LlamaCppBackend(_Served):
    """A GGUF file run by llama.cpp, one request at a time (see the module docstring)."""

    runtime = "llama.cpp"

    def __init__(self, llama, tokenizer, name: str = ""):
        """``llama``: a loaded ``llama_cpp.Llama``; ``tokenizer``: the HF tokenizer of its vocabulary."""
        self.llama = llama
        super().__init__(name, tokenizer, context_limit(llama))
        self._lock = asyncio.Lock()

    async def stream(self, messages: Sequence[dict], params: SamplingParams) -> AsyncIterator[GenerationEvent]:
        fitted, n_prompt, max_tokens = _fit(messages, self.count_tokens, self.context, params.max_tokens)
        ids = self.tokenizer.encode(render_chat(fitted, add_generation_prompt=True), add_special_tokens=False)
        self._active += 1
        try:
            async with self._lock:  # one llama context: one request at a time
                start = time.perf_counter()
                gen = await asyncio.to_thread(llama_generate, self.llama, ids, max_new_tokens=max_tokens,
                                              temperature=params.temperature, seed=params.seed or 0)
        finally:
            self._active -= 1
        text, reason = gen.text, "length"
        for stop in ("<|end|>", "<|endoftext|>"):
            if stop in text:
                text, reason = text.split(stop, 1)[0], "stop"
        call_text = gen.text.split("<|end|>", 1)[0].removeprefix("<|tool_call|>") \
            if text.startswith("<|tool_call|>") else None
        call, error = parse_tool_call(call_text) if call_text is not None else (None, None)
        if call_text is not None:
            reason, text = "tool_call", ""
        if text:
            yield GenerationEvent("token", text)
        yield GenerationEvent("done", text, reason, call, error, call_text, {
            "prompt_tokens": n_prompt, "completion_tokens": len(gen.token_ids),
            "ttft_s": gen.prefill_ms / 1000.0, "decode_tokens_per_s": gen.decode_tokens_per_s,
            "prefill_tokens_per_s": gen.prefill_tokens_per_s, "wall_s": time.perf_counter() - start})

    def close(self) -> None:
        self.llama.close()


Backend = EngineBackend | LlamaCppBackend


def load_backend(model: Artifact | str | Path, *, name: str = "", max_batch_size: int = 16) -> Backend:
    """The backend serving ``model`` (an artifact or a path; ``open_model`` picks the runtime by its kind)."""
    opened = open_model(model, config=EngineConfig(max_batch_size=max_batch_size))
    if opened.engine is not None:
        return EngineBackend(opened.engine, name=name)
    return LlamaCppBackend(opened.llama, opened.tokenizer, name=name)
