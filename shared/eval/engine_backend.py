"""Evaluating quantized variants: the same tasks, run by our engine or llama.cpp instead of transformers.

A quantized artifact (kind ``quantized``: ``quantization.json`` + ``quantized.safetensors``, run by our
engine) or a GGUF artifact (kind ``gguf``: a ``*.gguf`` file, run by llama.cpp) has no HF weights, so
``transformers`` cannot load it. The scorecard still measures it with the same tasks, through these
adapters; ``shared.serving.runtime.open_model`` opens the artifact on the runtime its kind names, and
each adapter works with whichever runtime that is:

- ``engine_replies(path)``: a ``reply_fn`` for the suite (``shared.eval.tasks.EvalContext``):
  greedy replies from the engine with continuous batching, as text with special tokens kept
  (stop token and tool-call markers included, like ``shared.eval.generate``), prompts cut from the
  left to leave room for the reply;
- ``engine_sequence_logits(path, ids)``: logits at every position, for perplexity;
- ``EngineLM``: an lm-eval ``LM`` whose ``loglikelihood`` scores continuations with the engine, so
  lm-eval's multiple-choice tasks run unchanged.

``is_quantized(path)`` says whether an artifact goes through here (its kind is ``quantized`` or
``gguf``); an ``hf-model`` is evaluated with transformers. Why our own lm-eval model class: lm-eval's
``HFLM`` needs an HF model; the engine is ours.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from shared.engine import EngineConfig, SamplingParams
from shared.quant.llama_cpp import llama_generate, llama_logits
from shared.quant.quality import sequence_logits
from shared.serving.runtime import OpenModel, artifact_kind, open_model
from shared.chat_format import render_chat
from shared.eval.generate import fit_prompt

ENGINE_EVAL_KINDS = ("quantized", "gguf")  # kinds transformers cannot load: evaluated through open_model


def is_quantized(path: str | Path) -> bool:
    """True for artifacts our engine or llama.cpp runs instead of transformers."""
    return artifact_kind(path) in ENGINE_EVAL_KINDS


@lru_cache(maxsize=2)
def _opened(path: str) -> OpenModel:
    """The artifact at ``path`` on its runtime, opened once per process: llama.cpp keeps every position's
    logits (for scoring); the engine batches up to 16 requests."""
    return open_model(path, config=EngineConfig(max_batch_size=16), logits_all=True)


def engine_replies(path: str | Path, max_new_tokens: int) -> Callable[[Sequence[Sequence[dict]]], list[str]]:
    """A ``reply_fn``: one greedy reply per conversation (engine: all submitted at once, continuous batching)."""

    def replies(conversations: Sequence[Sequence[dict]]) -> list[str]:
        model = _opened(str(path))
        tokenizer, limit = model.tokenizer, engine_context(path)
        prompts = [fit_prompt(tokenizer(render_chat(c, add_generation_prompt=True), add_special_tokens=False).input_ids,
                              limit, max_new_tokens) for c in conversations]
        if model.llama is not None:
            return [llama_generate(model.llama, ids, max_new_tokens=budget).text for ids, budget in prompts]
        handles = [model.engine.submit(ids, SamplingParams(max_tokens=budget, temperature=0), stream=False)
                   for ids, budget in prompts]
        while not all(h.finished for h in handles):
            model.engine.step()
        return [tokenizer.decode(h.result().token_ids, skip_special_tokens=False) for h in handles]
    return replies


def engine_sequence_logits(path: str | Path, ids: Sequence[int]) -> torch.Tensor:
    """Float32 logits ``[len(ids), vocab]`` at every position, from our engine or llama.cpp."""
    model = _opened(str(path))
    if model.llama is not None:
        return torch.from_numpy(llama_logits(model.llama, ids))
    return sequence_logits(model.engine.model, ids)


def engine_tokenizer(path: str | Path):
    return _opened(str(path)).tokenizer


def engine_context(path: str | Path) -> int:
    """Positions a sequence may use: the model's trained context (llama.cpp may pad its ``n_ctx`` past it)."""
    model = _opened(str(path))
    return model.context if model.llama is not None else model.engine.model.config.block_size


def make_engine_lm(path: str | Path):
    """An lm-eval ``LM`` over the quantized artifact at ``path`` (multiple-choice tasks only)."""
    from lm_eval.api.model import LM  # lm-eval is heavy to import: only when an lm-eval task runs

    class EngineLM(LM):
        def __init__(self):
            super().__init__()
            self.tokenizer = engine_tokenizer(path)
            self.limit = engine_context(path)

        def loglikelihood(self, requests) -> list[tuple[float, bool]]:
            out = []
            for request in requests:
                context, continuation = request.args
                ctx = self.tokenizer(context, add_special_tokens=False).input_ids
                cont = self.tokenizer(continuation, add_special_tokens=False).input_ids
                ids = (ctx + cont)[-(self.limit + 1):]  # cut the context from the left, as HFLM does
                logits = engine_sequence_logits(path, ids[:-1]).log_softmax(-1)[-len(cont):]
                target = torch.tensor(cont)
                out.append((float(logits.gather(-1, target[:, None]).sum()), bool((logits.argmax(-1) == target).all())))
            return out

        def loglikelihood_rolling(self, requests) -> list[float]:
            raise NotImplementedError("rolling loglikelihood (perplexity tasks) is not wired to the engine; "
                                      "use the scorecard's perplexity task")

        def generate_until(self, requests) -> list[str]:
            raise NotImplementedError("generative lm-eval tasks are not wired to the engine; the suite's tasks "
                                      "cover generation for quantized variants")

    return EngineLM()


def lm_or_none(path: str | Path) -> Any:
    """The lm-eval model for ``path`` when it is a quantized artifact, else None (HFLM loads it)."""
    return make_engine_lm(path) if is_quantized(path) else None
