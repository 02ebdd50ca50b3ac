"""How far a quantized engine model is from its reference: greedy agreement and logits error.

``compare_models(reference, candidate, sequences)`` runs both ``EngineModel``s over the same token
sequences (teacher forcing: every position's next-token logits from one forward pass with a fresh
KV cache) and returns a ``QualityReport``:
- ``greedy_agreement``: share of positions where the two argmaxes are the same token, i.e. how often
  greedy decoding would pick the same next token given the same prefix;
- ``logits_rel_error``: RMS of the logits difference over the reference logits' standard deviation
  (the measure ``tests/shared/quant/test_gguf.py`` uses for llama.cpp), a steadier signal than
  agreement on models whose top logits are close.

This module does not quantize and does not generate.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from shared.engine.cache import KVCache, StepBatch
from shared.engine.model import EngineModel
from shared.quant.weight_only import QuantError


@dataclass(frozen=True)
class QualityReport:
    positions: int
    greedy_agreement: float
    logits_rel_error: float

    def to_dict(self) -> dict:
        return asdict(self)


def _scoring_setup(model: EngineModel, ids: Sequence[int]) -> tuple[list[int], KVCache]:
    """``ids`` as ints, checked against the model's context and vocabulary, and a fresh cache for them."""
    cfg = model.config
    ids = [int(i) for i in ids]
    if not 0 < len(ids) <= cfg.block_size:
        raise QuantError(f"a sequence of {len(ids)} tokens cannot be scored: it needs 1..{cfg.block_size} tokens "
                         "(the model's context); split longer text into windows")
    if not all(0 <= i < cfg.vocab_size for i in ids):
        raise QuantError(f"token ids must be in [0, {cfg.vocab_size}); tokenize with the model's own tokenizer")
    return ids, KVCache(cfg.n_layer, 1, cfg.n_head, len(ids), cfg.n_embd // cfg.n_head, dtype=model.dtype,
                        device=model.device)


@torch.inference_mode()
def sequence_logits(model: EngineModel, ids: Sequence[int]) -> torch.Tensor:
    """f32 logits ``[len(ids), vocab]`` of every position of ``ids`` (at most the model's context)."""
    ids, cache = _scoring_setup(model, ids)
    batch = StepBatch.build([], [(0, 0, ids)], range(len(ids)), dtype=model.dtype, device=model.device)
    return model(batch, cache).float()


@torch.inference_mode()
def decode_logits(model: EngineModel, ids: Sequence[int]) -> torch.Tensor:
    """f32 logits ``[len(ids), vocab]`` read one token per batch-1 decode step, as serving computes them.

    ``sequence_logits`` scores a whole window in one prefill pass (matrix-matrix kernels); a served reply is
    produced by decode steps, which take other kernels (our GEMVs; for INT4 in bfloat16 on AVX512-VNNI
    CPUs, activations rounded to int8). The same teacher-forced text through those steps measures them.
    """
    ids, cache = _scoring_setup(model, ids)
    kw = dict(dtype=model.dtype, device=model.device)
    rows = [model(StepBatch.build([], [(0, 0, ids[:1])], [0], **kw), cache)]
    rows += [model(StepBatch.build([(token, pos)], [], [0], **kw), cache) for pos, token in enumerate(ids) if pos]
    return torch.cat(rows).float()


def windows(ids: Sequence[int], length: int) -> list[list[int]]:
    """``ids`` cut into consecutive windows of at most ``length`` tokens (the last may be shorter)."""
    ids = list(ids)
    return [ids[i:i + length] for i in range(0, len(ids), length)]


def compare_models(reference: EngineModel, candidate: EngineModel,
                   sequences: Sequence[Sequence[int]]) -> QualityReport:
    """See the module docstring; ``sequences`` are token-id lists, each within the context length."""
    if not sequences:
        raise QuantError("compare_models needs at least one token sequence")
    if reference.config.vocab_size != candidate.config.vocab_size:
        raise QuantError(f"the models have different vocabularies ({reference.config.vocab_size} vs "
                         f"{candidate.config.vocab_size}); compare a model with its own quantized copy")
    same = total = 0
    diff_sq = ref_sum = ref_sq = 0.0  # running sums (f64): all logits at once can be hundreds of MB
    for ids in sequences:
        ref, cand = sequence_logits(reference, ids), sequence_logits(candidate, ids)
        same += int((ref.argmax(-1) == cand.argmax(-1)).sum())
        total += ref.shape[0]
        diff_sq += float(((cand - ref).double() ** 2).sum())
        ref_sum += float(ref.double().sum())
        ref_sq += float((ref.double() ** 2).sum())
    n = total * reference.config.vocab_size
    ref_std = max(ref_sq / n - (ref_sum / n) ** 2, 0.0) ** 0.5
    return QualityReport(total, same / total, (diff_sq / n) ** 0.5 / max(ref_std, 1e-12))
