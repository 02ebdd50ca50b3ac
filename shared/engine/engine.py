"""The inference engine: submit requests, step the model, stream tokens out, read per-request metrics.

Contract:
- ``Engine(model, tokenizer, EngineConfig)`` serves one GPT-2 with a KV cache of ``max_batch_size``
  slots allocated up front. A ``GPT`` is converted with the config's ``linear_backend`` and ``dtype``;
  an ``EngineModel`` (e.g. with quantized layers) is served as built. ``Engine.from_checkpoint(dir)``
  loads an HF checkpoint directory (weights and tokenizer).
- ``submit(prompt, SamplingParams)`` validates the request (``EngineError`` on a bad prompt or bad
  params, before it can affect anyone else) and queues it; it returns a ``RequestHandle``. A prompt is
  token ids or text (tokenized without added special tokens); ``submit_chat`` renders messages with
  the chat format and the generation prompt.
- ``step()`` runs one forward pass for every running request (continuous batching, see
  ``shared.engine.scheduler``) and returns the ``StreamDelta`` of every request that got a token.
  ``RequestHandle`` iteration drives ``step()`` until its own request is done (the others advance in
  the same steps and queue their deltas); ``on_delta`` callbacks receive deltas as they happen
  instead. ``generate(prompts, params)`` runs a list of prompts to completion.
- Greedy output is the same token for token as HF ``generate()`` and does not depend on which
  requests share a batch; a sampled request depends only on its seed. (Up to FP32 rounding: the
  logits of a row differ by ~1e-6 with the batch's shape, which only matters at an exact tie.)
- ``SamplingParams.logprobs`` returns each generated token's logprob (log_softmax of the raw logits,
  before penalty, temperature and grammar mask) and top-k; ``response_format``/``grammar`` mask each
  step's logits with the request's llguidance matcher (``shared.engine.grammar``) before sampling.
  ``score(prompt, top_k)`` gives a prompt's own token logprobs (``prompt_logprobs``), for
  log-likelihood evaluation through the API.
- Every request carries ``RequestMetrics`` (time to first token, prefill tokens/s, time per output
  token, decode tokens/s); ``stats`` counts the engine's steps and tokens.

Not thread-safe: one thread (the serving loop) calls ``submit``/``step``. Not here: HTTP/Ray Serve
(``services/generator``), quantization (``shared.quant``, through ``EngineModel.replace_linear``).
"""
from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from shared.engine.cache import KVCache
from shared.engine.errors import EngineError
from shared.engine.model import EngineModel
from shared.engine.params import EngineConfig, SamplingParams
from shared.engine.grammar import GrammarMatcher, Vocabulary, grammar_for
from shared.engine.request import (Request, RequestMetrics, RequestOutput, SpecialTokens, StreamDelta,
                                   token_logprobs)
from shared.engine.sampling import sample
from shared.engine.scheduler import Scheduler
from shared.model.gpt import GPT
from shared.model.hf import load_gpt
from shared.chat_format import END, EOT, TOOL_CALL, render_chat
from shared.tokenizer.hf_format import TOKENIZER_FILE, load_tokenizer

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class EngineStats:
    """Counters since the engine started (``busy_s``: wall time inside ``step``)."""

    steps: int = 0
    prefill_tokens: int = 0
    decode_tokens: int = 0
    busy_s: float = 0.0


class RequestHandle:
    """A caller's view of one submitted request: iterate for deltas, ``result()`` for the output."""

    def __init__(self, engine: Engine, request: Request):
        self._engine, self._request = engine, request
        self.request_id = request.request_id

    @property
    def finished(self) -> bool:
        return self._request.finished

    def __iter__(self) -> Iterator[StreamDelta]:
        """Yield this request's deltas as they are produced, stepping the engine as needed."""
        req = self._request
        if req.on_delta is not None or not req.keep_deltas:
            raise EngineError(f"request {self.request_id} was submitted with on_delta or stream=False, so its "
                              "deltas are not queued; iterate only handles submitted with the defaults")
        while True:
            while req.deltas:
                yield req.deltas.popleft()
            if req.finished:
                return
            self._engine.step()

    def result(self) -> RequestOutput:
        """Step the engine until this request finishes; its output."""
        while not self._request.finished:
            self._engine.step()
        return self._request.output()

    def cancel(self) -> None:
        """Abort the request (finish_reason "abort"); nothing happens if it already finished."""
        if not self._request.finished:
            self._engine.abort(self.request_id)


class Engine:
    """See the module docstring."""

    def __init__(self, model: GPT | EngineModel, tokenizer=None, config: EngineConfig | None = None):
        config = config or EngineConfig()
        if isinstance(model, GPT):
            config.validate(model.config.block_size)
            # oneDNN packs weights for a batch size: 2..16 rows measured best from 1 to 32 (1 is poor above 2).
            model = EngineModel.from_gpt(model, backend=config.linear_backend, dtype=_DTYPES[config.dtype],
                                         batch_hint=min(max(2, config.max_batch_size), 16))
        elif not isinstance(model, EngineModel):
            raise EngineError(f"Engine serves a shared.model.gpt.GPT or an EngineModel, got {type(model).__name__}; "
                              "load HF checkpoints with Engine.from_checkpoint(dir)")
        elif model.dtype != _DTYPES[config.dtype]:
            raise EngineError(f"the EngineModel holds {model.dtype} weights but EngineConfig.dtype is "
                              f"{config.dtype!r}; set dtype to match, or build the model with EngineModel.from_gpt(..., dtype=...)")
        cfg = model.config
        config.validate(cfg.block_size)
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.max_seq_len = config.max_seq_len or cfg.block_size
        self.cache = KVCache(cfg.n_layer, config.max_batch_size, cfg.n_head, self.max_seq_len,
                             cfg.n_embd // cfg.n_head, dtype=model.dtype, device=model.device)
        self.scheduler = Scheduler(self.cache, config.max_tokens_per_step, config.prefill_chunk)
        self.specials = special_tokens(tokenizer, cfg.vocab_size)
        self.stats = EngineStats()
        self._seeds = torch.Generator().manual_seed(config.seed)
        self._ids = itertools.count()
        self._requests: dict[str, Request] = {}
        self._logprobs: list = []  # the last step's TokenLogprob per sampled request (None: not asked)

    @classmethod
    def from_checkpoint(cls, path: str | Path, config: EngineConfig | None = None) -> Engine:
        """An engine over the HF checkpoint directory ``path`` (its tokenizer too, when it has one)."""
        tokenizer = load_tokenizer(path) if (Path(path) / TOKENIZER_FILE).is_file() else None
        return cls(load_gpt(path), tokenizer, config)

    # ------------------------------------------------------------------ requests in

    def submit(self, prompt: str | Sequence[int], params: SamplingParams | None = None, *,
               request_id: str | None = None, on_delta: Callable[[StreamDelta], None] | None = None,
               stream: bool = True) -> RequestHandle:
        """Queue a request; ``EngineError`` if the prompt or params are bad (see the module docstring).

        ``on_delta`` is called with each delta from inside ``step``; ``stream=False`` keeps no deltas
        (read ``result()``).
        """
        params = params or SamplingParams()
        if not isinstance(params, SamplingParams):
            raise EngineError(f"params must be a SamplingParams, got {type(params).__name__}")
        vocab = self.model.config.vocab_size
        params.validate(vocab)
        ids = self._prompt_ids(prompt)
        if params.stop and self.tokenizer is None:
            raise EngineError("stop strings need a tokenizer to see text; give the Engine a tokenizer or use "
                              "stop_token_ids")
        request_id = str(next(self._ids)) if request_id is None else str(request_id)
        if request_id in self._requests:
            raise EngineError(f"request id {request_id!r} is already running; use a unique id (or None)")
        generator = None
        if not params.greedy:
            seed = params.seed if params.seed is not None else int(
                torch.randint(2**62, (1,), generator=self._seeds))
            generator = torch.Generator().manual_seed(seed)
        matcher = self._matcher(params)
        seen = None
        if params.repetition_penalty != 1.0:
            seen = torch.zeros(vocab, dtype=torch.bool, device=self.model.device)
            seen[torch.tensor(ids, device=seen.device)] = True
        req = Request(request_id, ids, params, self.specials, self.tokenizer,
                      RequestMetrics(len(ids), time.perf_counter()), generator=generator, seen=seen,
                      on_delta=on_delta, grammar=matcher, keep_deltas=stream and on_delta is None)
        self._requests[request_id] = req
        self.scheduler.add(req)
        return RequestHandle(self, req)

    def _matcher(self, params: SamplingParams) -> GrammarMatcher | None:
        """The request's grammar matcher, or None when its decoding is free (``EngineError`` if invalid)."""
        grammar = grammar_for(params)
        if grammar is None:
            return None
        if self.tokenizer is None:
            raise EngineError("response_format and grammar need a tokenizer; give the Engine one")
        vocabulary = Vocabulary.of(self.tokenizer, self.model.config.vocab_size, self.specials.stop_ids)
        return GrammarMatcher(vocabulary, grammar)

    def score(self, prompt: str | Sequence[int], top_k: int = 0) -> RequestOutput:
        """The prompt's own log-probabilities: ``prompt_logprobs[i]`` is token i given tokens before it
        (None for the first), with its ``top_k`` alternatives; one forward pass over the prompt (chunked
        by the step budget, batched with whatever else runs). The one token sampled after it (greedy)
        is in ``token_ids``/``logprobs``."""
        params = SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=top_k, logprobs=top_k,
                                ignore_eos=True)
        return self.submit(prompt, params, stream=False).result()

    def submit_chat(self, messages: Sequence[dict], params: SamplingParams | None = None, **kwargs) -> RequestHandle:
        """``submit`` the conversation rendered in the chat format, ending with ``<|assistant|>``."""
        if self.tokenizer is None:
            raise EngineError("submit_chat needs a tokenizer; give the Engine one (Engine.from_checkpoint loads it)")
        return self.submit(render_chat(messages, add_generation_prompt=True), params, **kwargs)

    def _prompt_ids(self, prompt: str | Sequence[int]) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise EngineError("a text prompt needs a tokenizer; give the Engine one or submit token ids")
            ids = list(self.tokenizer.encode(prompt, add_special_tokens=False))
        else:
            ids = list(prompt)
            vocab = self.model.config.vocab_size
            bad = [t for t in ids if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab]
            if bad:
                raise EngineError(f"prompt token ids must be ints in [0, {vocab}) (the model's vocabulary); got "
                                  f"{bad[:5]}: tokenize with the model's own tokenizer")
        if not ids:
            raise EngineError("the prompt is empty; give at least one token (e.g. <|endoftext|> to start from "
                              "nothing)")
        if len(ids) > self.max_seq_len:
            raise EngineError(f"the prompt has {len(ids)} tokens but the context holds {self.max_seq_len} "
                              f"(model context {self.model.config.block_size}, EngineConfig.max_seq_len "
                              f"{self.config.max_seq_len}); shorten the prompt (drop the oldest turns)")
        return ids

    def is_running(self, request_id: str) -> bool:
        """True while ``request_id`` is queued or generating."""
        return str(request_id) in self._requests

    def abort(self, request_id: str) -> None:
        """Finish a queued or running request now (finish_reason "abort"); unknown ids are an error."""
        req = self._requests.pop(str(request_id), None)
        if req is None:
            raise EngineError(f"no running request {request_id!r}; it finished already or never existed")
        self.scheduler.release(req)
        delta = req.abort(time.perf_counter())
        if req.on_delta is not None:
            req.on_delta(delta)

    # ------------------------------------------------------------------ running

    @property
    def has_unfinished(self) -> bool:
        return self.scheduler.has_work

    @torch.inference_mode()
    def step(self) -> list[StreamDelta]:
        """One forward pass for all running requests; the deltas it produced (see the module docstring)."""
        plan = self.scheduler.schedule(self.model.dtype, self.model.device)
        if plan is None:
            return []
        start = time.perf_counter()
        for req, chunk_start, _ in plan.chunks:
            if chunk_start == 0:
                req.metrics.scheduled_time = start
        logits = self.model(plan.batch, self.cache)
        for req, chunk_start, take, row in plan.scored:
            _score_chunk(req, logits[row:row + take], chunk_start, take)
        if plan.sample_rows is not None:
            logits = logits[plan.sample_rows]
        tokens = self._sample(logits, plan.sampled) if plan.sampled else []
        now = time.perf_counter()
        self.scheduler.advance(plan)
        deltas = [req.accept(token, now, req.num_cached >= self.max_seq_len, logprob)
                  for req, token, logprob in zip(plan.sampled, tokens, self._logprobs)]
        self.scheduler.settle(plan)
        for req in plan.sampled:
            if req.finished:
                del self._requests[req.request_id]
        self.stats.steps += 1
        self.stats.decode_tokens += len(plan.decode)
        self.stats.prefill_tokens += sum(take for _, _, take in plan.chunks)
        self.stats.busy_s += time.perf_counter() - start
        for req, delta in zip(plan.sampled, deltas):
            if req.on_delta is not None:
                req.on_delta(delta)
        return deltas

    def _sample(self, logits: torch.Tensor, requests: list[Request]) -> list[int]:
        """The next token of each request; sets ``self._logprobs`` (one entry or None per request).

        Logprobs come first, from the logits as the model gave them (``sample`` penalizes in place);
        then each constrained request's grammar mask, then the sampler."""
        wanted = [i for i, r in enumerate(requests) if r.params.logprobs is not None]
        raw = torch.log_softmax(logits[wanted].float(), dim=-1) if wanted else None
        argmax = self.model.greedy_tokens(logits)
        constrained = [i for i, r in enumerate(requests) if r.grammar is not None]
        if constrained:
            logits = logits.float() if logits.dtype != torch.float32 else logits
            for i in constrained:
                requests[i].grammar.mask_(logits[i])
            argmax = None  # the fused step's argmax was taken before the mask
        tokens = sample(logits, [r.sampling_row for r in requests], argmax)
        self._logprobs = [None] * len(requests)
        for j, i in enumerate(wanted):
            self._logprobs[i] = token_logprobs(raw[j:j + 1], [tokens[i]], requests[i].params.logprobs)[0]
        return tokens

    def run(self) -> None:
        """Step until every submitted request has finished."""
        while self.scheduler.has_work:
            self.step()

    def generate(self, prompts: Sequence[str | Sequence[int]],
                 params: SamplingParams | Sequence[SamplingParams] | None = None) -> list[RequestOutput]:
        """Run ``prompts`` together (continuously batched) to completion; outputs in prompt order."""
        if params is None or isinstance(params, SamplingParams):
            params = [params] * len(prompts)
        if len(params) != len(prompts):
            raise EngineError(f"got {len(params)} SamplingParams for {len(prompts)} prompts; pass one, or one each")
        handles = []
        try:
            for prompt, sp in zip(prompts, params):
                handles.append(self.submit(prompt, sp, stream=False))
        except EngineError:
            for handle in handles:  # all or nothing: a bad prompt leaves no half-submitted batch behind
                handle.cancel()
            raise
        self.run()
        return [h.result() for h in handles]


def _score_chunk(req: Request, logits: torch.Tensor, start: int, take: int) -> None:
    """Record the logprobs of prompt tokens ``start+1 .. start+take`` (those that exist) from the
    logits at positions ``start .. start+take-1`` of a request scoring its prompt."""
    n = min(take, len(req.prompt) - 1 - start)  # the last position predicts the reply, not the prompt
    if n <= 0:
        return
    rows = torch.log_softmax(logits[:n].float(), dim=-1)
    req.prompt_logprobs.extend(token_logprobs(rows, req.prompt[start + 1:start + 1 + n], req.params.prompt_logprobs))


def special_tokens(tokenizer, vocab_size: int) -> SpecialTokens:
    """The stop and tool-call token ids that ``tokenizer`` has (none without a tokenizer)."""
    if tokenizer is None:
        return SpecialTokens()

    def token_id(token: str) -> int | None:
        index = tokenizer.convert_tokens_to_ids(token)
        unk = getattr(tokenizer, "unk_token_id", None)
        return index if isinstance(index, int) and index != unk and 0 <= index < vocab_size else None

    stops = frozenset(i for i in (token_id(END), token_id(EOT)) if i is not None)
    return SpecialTokens(stop_ids=stops, tool_call=token_id(TOOL_CALL))


__all__ = ["Engine", "EngineStats", "RequestHandle", "special_tokens"]
