"""Sampling: top-k and top-p restrict the support, zero-probability tokens never come, draws are seeded."""
from __future__ import annotations

import math

import torch

from shared.engine.params import SamplingParams
from shared.engine.sampling import SamplingRow, apply_repetition_penalty, draw, filter_logits, greedy, sample


def _support(logits: torch.Tensor, params: SamplingParams, n: int = 300) -> set[int]:
    rows = [SamplingRow(params, torch.Generator().manual_seed(seed), None) for seed in range(n)]
    return set(sample(logits.expand(n, -1).clone(), rows))


def test_top_k_keeps_the_k_most_likely():
    logits = torch.linspace(0, 2, 50)
    assert _support(logits, SamplingParams(temperature=1.0, top_k=5)) == set(range(45, 50))
    assert len(_support(logits, SamplingParams(temperature=1.0))) > 30  # without it, far more


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    assert _support(logits, SamplingParams(temperature=1.0, top_p=0.7)) == {0, 1}
    assert _support(logits, SamplingParams(temperature=1.0, top_p=0.85)) == {0, 1, 2}
    assert _support(logits, SamplingParams(temperature=1.0, top_p=0.4)) == {0}
    assert _support(logits, SamplingParams(temperature=1.0)) == {0, 1, 2, 3}


def test_filters_apply_per_row():
    logits = torch.arange(10.0).expand(3, -1).clone()
    out = filter_logits(logits, temperature=[1.0, 2.0, 1.0], top_k=[3, 0, 0], top_p=[1.0, 1.0, 0.5])
    assert torch.isinf(out[0, :7]).all() and torch.isfinite(out[0, 7:]).all()
    assert torch.equal(out[1], torch.arange(10.0) / 2)
    assert torch.isfinite(out[2]).sum() == 1  # exp(9) alone holds more than half the mass


def test_draw_never_picks_excluded_tokens_and_follows_the_distribution():
    logits = torch.tensor([[0.0, -math.inf, math.log(3.0), -math.inf]])
    counts = torch.zeros(4)
    g = torch.Generator().manual_seed(0)
    for _ in range(2000):
        counts[draw(logits, [g]).item()] += 1
    assert counts[1] == counts[3] == 0
    assert abs(counts[2] / 2000 - 0.75) < 0.04


def test_greedy_and_low_temperature_pick_the_argmax():
    logits = torch.tensor([[0.1, 2.0, 1.9], [3.0, 0.0, 2.9]])
    greedy = SamplingRow(SamplingParams(temperature=0), None, None)
    cold = SamplingRow(SamplingParams(temperature=1e-4), torch.Generator().manual_seed(0), None)
    assert sample(logits.clone(), [greedy, cold]) == [1, 0]


def test_each_row_uses_its_own_generator():
    logits = torch.zeros(3, 1000)
    params = SamplingParams(temperature=1.0)
    alone = sample(logits[:1].clone(), [SamplingRow(params, torch.Generator().manual_seed(5), None)])
    rows = [SamplingRow(params, torch.Generator().manual_seed(s), None) for s in (9, 5, 9)]
    together = sample(logits.clone(), rows)
    assert together[1] == alone[0] and together[0] == together[2]


def test_repetition_penalty_discourages_seen_tokens():
    logits = torch.tensor([[2.0, 1.9, -1.0, -1.1]])
    seen = torch.tensor([True, False, False, True])
    row = SamplingRow(SamplingParams(temperature=0, repetition_penalty=2.0), None, seen)
    assert sample(logits.clone(), [row]) == [1]
    penalized = logits.clone()
    apply_repetition_penalty(penalized[0], seen, 2.0)
    torch.testing.assert_close(penalized, torch.tensor([[1.0, 1.9, -1.0, -2.2]]))


def test_greedy_picks_what_torch_argmax_picks_on_ties_nans_and_strided_rows():
    nan = float("nan")
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0], [nan, 1.0, nan, 2.0], [-math.inf, -1.0, -1.0, -math.inf]])
    assert greedy(logits) == logits.argmax(dim=-1).tolist() == [1, 0, 1]
    strided = torch.randn(3, 10, generator=torch.Generator().manual_seed(0))[:, ::3]
    assert greedy(strided) == strided.argmax(dim=-1).tolist()
    assert greedy(logits.to(torch.bfloat16)) == [1, 0, 1]  # torch's own argmax for dtypes numpy lacks
