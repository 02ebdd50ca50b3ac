"""Next-token choice for a step's logit rows: repetition penalty, greedy, temperature, top-k, top-p.

``sample(logits, rows)`` returns one token id per row. Each row carries its request's
``SamplingParams``, its own ``torch.Generator`` and, when it uses a repetition penalty, a boolean
mask of the tokens it has seen. Every sampled token consumes exactly one uniform number from the
request's generator (inverse-CDF sampling), so a seeded request draws the same tokens whatever
other requests share its steps, and whichever rows the step has.

Order of operations (as HF's logits processors): repetition penalty, then greedy argmax, or
temperature, top-k, top-p and a draw. The work is batched over rows; a step where every row is
greedy without penalty is a single argmax.

This module does not decide when to stop (``shared.engine.request``).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from shared.engine.params import SamplingParams


@dataclass
class SamplingRow:
    """What ``sample`` needs of one request."""

    params: SamplingParams
    generator: torch.Generator | None  # None only for greedy requests
    seen: torch.Tensor | None  # bool [vocab], tokens of prompt and reply; None without a repetition penalty


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> None:
    """In place on one row: seen tokens' logits divided by ``penalty`` when positive, multiplied when negative."""
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    torch.where(seen, penalized, logits, out=logits)


def filter_logits(logits: torch.Tensor, temperature: Sequence[float], top_k: Sequence[int],
                  top_p: Sequence[float]) -> torch.Tensor:
    """``logits [R, V]`` scaled by temperature with tokens outside each row's top-k / top-p set at -inf.

    top-k keeps the k highest logits (ties at the k-th kept); top-p keeps, in order of probability,
    every token whose preceding mass is below p (the smallest set reaching p, at least one token).
    """
    rows, vocab = logits.shape
    logits = logits / torch.tensor(temperature, dtype=logits.dtype, device=logits.device)[:, None]
    ks = [k if 0 < k < vocab else 0 for k in top_k]
    if any(ks):
        k_max = max(ks)
        top = logits.topk(k_max, dim=-1).values
        kth = top.gather(1, torch.tensor([k - 1 if k else 0 for k in ks], device=logits.device)[:, None])
        kth[torch.tensor([k == 0 for k in ks], device=logits.device)] = -math.inf  # rows without top-k
        logits.masked_fill_(logits < kth, -math.inf)
    if any(p < 1.0 for p in top_p):
        ordered, order = logits.sort(dim=-1, descending=True)
        probs = ordered.softmax(dim=-1)
        before = probs.cumsum(dim=-1) - probs
        limit = torch.tensor([p if p < 1.0 else math.inf for p in top_p], dtype=probs.dtype, device=probs.device)
        ordered.masked_fill_(before >= limit[:, None], -math.inf)
        logits = torch.empty_like(logits).scatter_(1, order, ordered)
    return logits


def draw(logits: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """One token per row of ``logits [R, V]``, drawn from its softmax with that row's generator.

    Inverse CDF in float64 with one uniform per row: tokens at -inf (probability exactly 0) are never
    drawn, because the search takes the first CDF entry strictly above the uniform.
    """
    cdf = logits.softmax(dim=-1).to(torch.float64).cumsum_(dim=-1)
    uniform = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in generators]).to(cdf.device)
    index = torch.searchsorted(cdf, (uniform * cdf[:, -1])[:, None], right=True)
    return index.clamp_(max=logits.shape[1] - 1).squeeze(1)


def greedy(logits: torch.Tensor) -> list[int]:
    """Each row's argmax (the first one on ties, a NaN if any, as ``torch.argmax``).

    On CPU through numpy: its argmax over a GPT-2 vocabulary takes ~5 us against torch's ~45 us, which
    was ~0.5% of a GPT-2 124M FP32 decode step and ~1.5% of an INT4 one.
    """
    if logits.device.type == "cpu" and logits.dtype in (torch.float32, torch.float64):
        return logits.detach().numpy().argmax(axis=-1).tolist()
    return logits.argmax(dim=-1).tolist()


def sample(logits: torch.Tensor, rows: Sequence[SamplingRow], argmax: Sequence[int] | None = None) -> list[int]:
    """The next token of every row of ``logits [R, V]`` (see the module docstring).

    ``argmax``: each row's argmax of ``logits`` as given, if the caller already has it (the fused decode
    step computes it, ``EngineModel.greedy_tokens``); used only when no row has a repetition penalty.
    """
    if logits.dtype != torch.float32:
        logits = logits.float()
    penalized = [i for i, r in enumerate(rows) if r.params.repetition_penalty != 1.0]
    for i in penalized:
        apply_repetition_penalty(logits[i], rows[i].seen, rows[i].params.repetition_penalty)
    out = list(argmax) if argmax is not None and not penalized else greedy(logits)  # greedy rows keep these
    if all(r.params.greedy for r in rows):
        return out
    sampled = [i for i, r in enumerate(rows) if not r.params.greedy]
    picked = [rows[i].params for i in sampled]
    sub = filter_logits(logits[sampled], [p.temperature for p in picked], [p.top_k for p in picked],
                        [p.top_p for p in picked])
    for i, token in zip(sampled, draw(sub, [rows[i].generator for i in sampled]).tolist()):
        out[i] = token
    return out
