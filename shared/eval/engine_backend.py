"""Evaluating quantized variants: the same tasks, run by our engine or llama.cpp instead of transformers.

A quantized artifact (``quantization.json`` + ``quantized.safetensors``, written by
``shared.quant.quantized_checkpoint``, run by our engine) or a GGUF artifact (a ``*.gguf`` file,
run by llama.cpp) has no HF weights, so ``transformers`` cannot load it. The scorecard still
measures it with the same tasks, through these adapters (each dispatching on the artifact's runtime):

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


def gguf_file(path: str | Path) -> Path | None:
    """The model file of a GGUF artifact directory (or ``path`` itself when it is a .gguf file)."""
    path = Path(path)
    if path.is_file() and path.suffix == ".gguf":
        return path
    files = sorted(path.glob("*.gguf")) if path.is_dir() else []
    return files[0] if files else None


def is_quantized(path: str | Path) -> bool:
    """True for artifacts our engine or llama.cpp runs instead of transformers."""
    return (Path(path) / QUANT_META).is_file() or gguf_file(path) is not None


@lru_cache(maxsize=2)
def _llama(path: str):
    """``(llama, tokenizer)`` for a GGUF artifact: llama.cpp keeping every position's logits, and an HF
    tokenizer rebuilt from the file's own vocabulary (the same ids llama.cpp uses)."""
    from shared.quant.llama_cpp import load_llama
    from shared.tokenizer.gguf_vocab import hf_tokenizer_from_gguf
    file = gguf_file(path)
    return load_llama(file, logits_all=True), hf_tokenizer_from_gguf(file)


@lru_cache(maxsize=2)
def _engine(path: str):
    """``(engine, tokenizer)`` for a quantized artifact, loaded once per process."""
    from shared.engine import EngineConfig
    from shared.quant.quantized_checkpoint import load_quantized_engine
    engine = load_quantized_engine(path, EngineConfig(max_batch_size=16))
    return engine, engine.tokenizer


def engine_replies(path: str | Path, max_new_tokens: int) -> Callable[[Sequence[Sequence[dict]]], list[str]]:
    """A ``reply_fn``: one greedy reply per conversation (engine: all submitted at once, continuous batching)."""
    from shared.engine import SamplingParams
    from shared.tokenizer.chat import render_chat

    def llama_replies(conversations: Sequence[Sequence[dict]]) -> list[str]:
        from shared.quant.llama_cpp import llama_generate
        llama, tokenizer = _llama(str(path))
        limit = engine_context(path)
        out = []
        for conversation in conversations:
            ids = tokenizer(render_chat(conversation, add_generation_prompt=True), add_special_tokens=False).input_ids
            out.append(llama_generate(llama, ids[-(limit - max_new_tokens):], max_new_tokens=max_new_tokens).text)
        return out

    if gguf_file(path) is not None:
        return llama_replies

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
    """Float32 logits ``[len(ids), vocab]`` at every position, from our engine or llama.cpp."""
    if gguf_file(path) is not None:
        from shared.quant.llama_cpp import llama_logits
        return torch.from_numpy(llama_logits(_llama(str(path))[0], ids))
    from shared.quant.quality import sequence_logits
    engine, _ = _engine(str(path))
    return sequence_logits(engine.model, ids)


def engine_tokenizer(path: str | Path):
    return (_llama if gguf_file(path) is not None else _engine)(str(path))[1]


def engine_context(path: str | Path) -> int:
    if gguf_file(path) is not None:
        from shared.quant.llama_cpp import context_limit
        return context_limit(_llama(str(path))[0])  # n_ctx() may be padded past the trained context
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
