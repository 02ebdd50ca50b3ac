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

- ``token`` events carry ``logprobs`` when ``params.logprobs`` asked for them: one entry per token of
  the event, OpenAI's chat format ``{"token", "logprob", "bytes", "top_logprobs": [...]}``.
- ``await backend.complete_prompt(prompt, params, echo)`` runs a raw prompt (text or token ids, no
  chat format) for ``/v1/completions``: the legacy completions result (``text``, ``finish_reason``,
  ``usage``, ``logprobs`` as ``{"tokens", "token_logprobs", "top_logprobs", "text_offset"}``), with
  ``echo`` the prompt's tokens first (scored: each given the ones before it, the first None) and
  ``max_tokens=0`` allowed (score only), as lm-eval's ``local-completions`` asks.
- ``stop`` strings end the reply in both runtimes (the text cut before the match). llama.cpp
  refuses ``logprobs``, ``response_format`` and ``grammar`` with a 400 that says so.

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
    logprobs: list[dict] | None = None

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


def _byte_decoder() -> dict[str, int]:
    """Byte-level BPE's printable stand-in character -> the byte it encodes (GPT-2's table, which our
    tokenizers share): printable Latin-1 bytes stand for themselves, the rest map to 256 + n in order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
                 *range(ord("\u00ae"), ord("\u00ff") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


_BYTES = _byte_decoder()


class TokenText:
    """Each token's bytes and text, for logprob entries (a token may be part of a character: its text
    then holds U+FFFD, its ``bytes`` the exact bytes, as OpenAI's ``bytes`` field is meant for)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._special = {i for i in getattr(tokenizer, "added_tokens_decoder", {})}
        self._cache: dict[int, tuple[str, bytes]] = {}

    def __call__(self, token_id: int) -> tuple[str, bytes]:
        hit = self._cache.get(token_id)
        if hit is None:
            piece = self.tokenizer.convert_ids_to_tokens(token_id) or ""
            if token_id in self._special or not all(c in _BYTES for c in piece):
                raw = self.tokenizer.decode([token_id], skip_special_tokens=False).encode("utf-8")
            else:
                raw = bytes(_BYTES[c] for c in piece)
            hit = self._cache[token_id] = (raw.decode("utf-8", errors="replace"), raw)
        return hit

    def chat_entry(self, lp) -> dict:
        """A ``TokenLogprob`` as one entry of OpenAI chat ``logprobs.content``."""
        text, raw = self(lp.token_id)
        return {"token": text, "logprob": lp.logprob, "bytes": list(raw),
                "top_logprobs": [{"token": self(t)[0], "logprob": v, "bytes": list(self(t)[1])} for t, v in lp.top]}


def legacy_logprobs(entries: Sequence, text_of: TokenText, start: int = 0) -> dict:
    """``TokenLogprob``s (or None: an unscored first prompt token, given as its id) in the legacy
    completions format; ``text_offset`` counts characters from ``start``."""
    out: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    offset = start
    for entry in entries:
        token_id = entry if isinstance(entry, int) else entry.token_id
        text = text_of(token_id)[0]
        out["tokens"].append(text)
        out["text_offset"].append(offset)
        offset += len(text)
        if isinstance(entry, int):
            out["token_logprobs"].append(None)
            out["top_logprobs"].append(None)
            continue
        out["token_logprobs"].append(entry.logprob)
        top = {text_of(t)[0]: v for t, v in entry.top}
        top.setdefault(text, entry.logprob)  # the chosen token is always there, as OpenAI does
        out["top_logprobs"].append(top)
    return out


def _prompt_ids(tokenizer, prompt: str | Sequence[int]) -> list[int]:
    if isinstance(prompt, str):
        return list(tokenizer.encode(prompt, add_special_tokens=False))
    return list(prompt)


def _raw_params(params: SamplingParams, echo: bool, room: int) -> tuple[SamplingParams, int]:
    """Engine params for a raw-prompt completion and the tokens really wanted (0: score only).

    ``max_tokens`` is cut to the room the context leaves; 0 generates one token that is then dropped
    (the engine always samples one). Echoed prompts with logprobs are scored."""
    wanted = max(0, min(params.max_tokens, room))
    return dataclasses.replace(params, max_tokens=max(1, wanted), parse_tool_calls=False,
                               prompt_logprobs=params.logprobs if echo else None), wanted


def _completion_result(output, ids: list[int], echo: bool, wanted: int, params: SamplingParams,
                       text_of: TokenText, tokenizer) -> dict:
    prompt_text = tokenizer.decode(ids, skip_special_tokens=False) if echo else ""
    text = prompt_text + (output.text if wanted else "")
    reason = "length" if not wanted or output.finish_reason in ("length", "context") else "stop"
    generated = len(output.token_ids) if wanted else 0
    logprobs = None
    if params.logprobs is not None:
        entries: list = []
        if echo:
            entries = [ids[0], *output.prompt_logprobs[1:len(ids)]]
        if wanted:
            entries += output.logprobs or []
        logprobs = legacy_logprobs(entries, text_of)
    return {"text": text, "finish_reason": reason, "logprobs": logprobs,
            "usage": {"prompt_tokens": len(ids), "completion_tokens": generated,
                      "total_tokens": len(ids) + generated}}


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
        self.text_of = TokenText(engine.tokenizer)
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

    async def _submit(self, make_request: Callable[[], Any]):
        """The handle of the request ``make_request`` submits, run on the engine thread (the engine is
        single-threaded); an ``EngineError`` there, the request's own fault, is a 400."""
        loop = asyncio.get_running_loop()
        submitted: asyncio.Future = loop.create_future()

        def submit() -> None:
            try:
                handle = make_request()
                loop.call_soon_threadsafe(submitted.set_result, handle)
            except Exception as exc:  # noqa: BLE001 - handed to the caller, who owns the error
                loop.call_soon_threadsafe(submitted.set_exception, exc)

        self._call(submit)
        try:
            return await submitted
        except EngineError as exc:
            raise ServingError(str(exc), status=400) from None

    async def stream(self, messages: Sequence[dict], params: SamplingParams) -> AsyncIterator[GenerationEvent]:
        if self._closed:
            raise ServingError("this model is unloaded", status=503)
        fitted, _, max_tokens = _fit(messages, self.count_tokens, self.context, params.max_tokens)
        params = dataclasses.replace(params, max_tokens=max_tokens)
        loop = asyncio.get_running_loop()
        deltas: asyncio.Queue = asyncio.Queue()
        request_id = f"{self.name}-{next(self._ids)}"

        def deliver(delta) -> None:
            try:
                loop.call_soon_threadsafe(deltas.put_nowait, delta)
            except RuntimeError:  # the caller's event loop has closed: nobody is listening any more
                pass

        handle = await self._submit(lambda: self.engine.submit_chat(fitted, params, request_id=request_id,
                                                                    on_delta=deliver))
        self._active += 1
        finished = False
        specials = self.engine.specials
        hidden = specials.stop_ids | {specials.tool_call} if params.parse_tool_calls else specials.stop_ids
        try:
            while True:
                delta = await deltas.get()
                text, logprobs = delta.text, list(delta.logprobs or ())
                while not delta.finished and not deltas.empty():
                    # A caller slower than the engine gets what piled up as one event: under load the
                    # per-event cost (a stream item across Ray actors) would otherwise grow with tokens.
                    delta = deltas.get_nowait()
                    text += delta.text
                    logprobs += delta.logprobs or ()
                # Chat logprobs follow the text: the stop token and tool-call markers, which the text
                # leaves out, are left out here too (the raw completions API keeps every token).
                logprobs = [lp for lp in logprobs if lp.token_id not in hidden]
                if text or logprobs:
                    yield GenerationEvent("token", text, logprobs=[self.text_of.chat_entry(lp) for lp in logprobs]
                                          if params.logprobs is not None else None)
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

    async def complete_prompt(self, prompt: str | Sequence[int], params: SamplingParams, echo: bool = False) -> dict:
        """A raw-prompt completion (see the module docstring)."""
        if self._closed:
            raise ServingError("this model is unloaded", status=503)
        ids = _prompt_ids(self.tokenizer, prompt)
        engine_params, wanted = _raw_params(params, echo, self.context - len(ids))
        loop = asyncio.get_running_loop()
        ended: asyncio.Future = loop.create_future()
        request_id = f"{self.name}-{next(self._ids)}"

        def finished(delta) -> None:
            if delta.finished:
                loop.call_soon_threadsafe(lambda: ended.done() or ended.set_result(None))

        handle = await self._submit(lambda: self.engine.submit(ids, engine_params, request_id=request_id,
                                                               on_delta=finished))
        self._active += 1
        try:
            await ended
            output = handle.result()  # finished: read only, no stepping from this thread
        finally:
            self._active -= 1
            if not ended.done():  # the caller went away: free the slot for others
                self._call(lambda: self.engine.is_running(request_id) and self.engine.abort(request_id))
        return _completion_result(output, ids, echo, wanted, params, self.text_of, self.tokenizer)

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

    @staticmethod
    def _refuse_unsupported(params: SamplingParams) -> None:
        asked = [name for name, on in (("logprobs", params.logprobs is not None),
                                       ("response_format", (params.response_format or {}).get("type", "text") != "text"),
                                       ("tool_choice / grammar", params.grammar is not None)) if on]
        if asked:
            raise ServingError(f"{asked[0]} is not supported by the llama.cpp runtime; serve an hf-model or "
                               "quantized artifact for it", status=400)

    async def _generate(self, ids: list[int], max_tokens: int, params: SamplingParams):
        self._active += 1
        try:
            async with self._lock:  # one llama context: one request at a time
                return await asyncio.to_thread(llama_generate, self.llama, ids, max_new_tokens=max_tokens,
                                               temperature=params.temperature, seed=params.seed or 0)
        finally:
            self._active -= 1

    @staticmethod
    def _cut(text: str, stops: Sequence[str]) -> tuple[str, bool]:
        """``text`` before the earliest of ``stops`` (end-of-turn tokens and the request's strings)."""
        hits = [i for stop in stops if (i := text.find(stop)) >= 0]
        return (text[:min(hits)], True) if hits else (text, False)

    async def stream(self, messages: Sequence[dict], params: SamplingParams) -> AsyncIterator[GenerationEvent]:
        self._refuse_unsupported(params)
        fitted, n_prompt, max_tokens = _fit(messages, self.count_tokens, self.context, params.max_tokens)
        ids = self.tokenizer.encode(render_chat(fitted, add_generation_prompt=True), add_special_tokens=False)
        start = time.perf_counter()
        gen = await self._generate(ids, max_tokens, params)
        text, stopped = self._cut(gen.text, ("<|end|>", "<|endoftext|>", *params.stop))
        reason = "stop" if stopped else "length"
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

    async def complete_prompt(self, prompt: str | Sequence[int], params: SamplingParams, echo: bool = False) -> dict:
        """A raw-prompt completion without logprobs (llama.cpp gives us none); see the module docstring."""
        self._refuse_unsupported(params)
        ids = _prompt_ids(self.tokenizer, prompt)
        if not ids or len(ids) > self.context:
            raise ServingError(f"the prompt has {len(ids)} tokens; give 1 to {self.context} (this model's context)",
                               status=400)
        wanted = max(0, min(params.max_tokens, self.context - len(ids)))
        text, reason, generated = "", "length", 0
        if wanted:
            gen = await self._generate(ids, wanted, params)
            text, stopped = self._cut(gen.text, ("<|end|>", "<|endoftext|>", *params.stop))
            reason, generated = ("stop" if stopped else "length"), len(gen.token_ids)
        if echo:
            text = self.tokenizer.decode(ids, skip_special_tokens=False) + text
        return {"text": text, "finish_reason": reason, "logprobs": None,
                "usage": {"prompt_tokens": len(ids), "completion_tokens": generated,
                          "total_tokens": len(ids) + generated}}

    def close(self) -> None:
        self.llama.close()


Backend = EngineBackend | LlamaCppBackend


def load_backend(model: Artifact | str | Path, *, name: str = "", max_batch_size: int = 16) -> Backend:
    """The backend serving ``model`` (an artifact or a path; ``open_model`` picks the runtime by its kind)."""
    opened = open_model(model, config=EngineConfig(max_batch_size=max_batch_size))
    if opened.engine is not None:
        return EngineBackend(opened.engine, name=name)
    return LlamaCppBackend(opened.llama, opened.tokenizer, name=name)
