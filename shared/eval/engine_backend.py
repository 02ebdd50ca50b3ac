"""Evaluating quantized variants: the same tasks, run by our engine instead of transformers.

A quantized artifact (``quantization.json`` + ``quantized.safetensors``, written by
``shared.quant.quantized_checkpoint``) has no HF weights, so ``transformers`` cannot load it. The
scorecard still measures it with the same tasks, through these adapters:

- ``engine_replies(path)``: a ``reply_fn`` for the suite (``shared.eval.tasks.EvalContext``):
  greedy replies from the engine with continuous batching, as text with special tokens kept
  (stop token and tool-call markers included, like ``shared.eval.generate``), prompts cut from the
  left to leave room for the reply;
- ``engine_window_loss(path)``: summed next-token cross-entropy of token windows, for perplexity;
- ``EngineLM``: an lm-eval ``LM`` whose ``loglikelihood`` scores continuations with the engine, so
  lm-eval's multiple-choice tasks run unchanged.

Why our own lm-eval model class: lm-eval's ``HFLM`` needs an HF model; the engine is ours.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

QUANT_META = "quantization.json"


def is_quantized(path: str | Path) -> bool:
    return (Path(path) / QUANT_META).is_file()


@lru_cache(maxsize=2)
def _engine(path: str):
    """``(engine, tokenizer)`` for a quantized artifact, loaded once per process."""
    from shared.engine import EngineConfig
    from shared.quant.quantized_checkpoint import load_quantized_engine
    engine = load_quantized_engine(path, EngineConfig(max_batch_size=16))
    return engine, engine.tokenizer


def engine_replies(path: str | Path, max_new_tokens: int) -> Callable[[Sequence[Sequence[dict]]], list[str]]:
    """A ``reply_fn``: one greedy reply per conversation, all submitted at once (continuous batching)."""
    from shared.engine import SamplingParams
    from shared.tokenizer.chat import render_chat

    def replies(conversations: Sequence[Sequence[dict]]) -> list[str]:
        engine, tokenizer = _engine(str(path))
        limit = engine.model.config.block_size
        params = SamplingParams(max_tokens=max_new_tokens, temperature=0)
        handles = []
        for conversation in conversations:
            ids = tokenizer(render_chat(conversation, add_generation_prompt=True), add_special_tokens=False).input_ids
            handles.append(engine.submit(ids[-(limit - max_new_tokens):], params, stream=False))
        while not all(h.finished for h in handles):
            engine.step()
        return [tokenizer.decode(h.result().token_ids, skip_special_tokens=False) for h in handles]
    return replies


def engine_sequence_logits(path: str | Path, ids: Sequence[int]) -> torch.Tensor:
    from shared.quant.quality import sequence_logits
    engine, _ = _engine(str(path))
    return sequence_logits(engine.model, ids)


def engine_tokenizer(path: str | Path):
    return _engine(str(path))[1]


def engine_context(path: str | Path) -> int:
    return _engine(str(path))[0].model.config.block_size


def make_engine_lm(path: str | Path):
    """An lm-eval ``LM`` over the quantized artifact at ``path`` (multiple-choice tasks only)."""
    from lm_eval.api.model import LM

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
