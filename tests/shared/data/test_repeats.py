"""``repeat_spans``: a share of the windows gets a span written again later; the rest is untouched."""
from __future__ import annotations

import pytest
import torch

from shared.data.repeats import repeat_spans


def _batch(batch=8, block=64, seed=0):
    window = torch.randint(1000, 5000, (batch, block + 1), generator=torch.Generator().manual_seed(seed))
    return window[:, :-1], window[:, 1:], window


def _repeated_span(row: torch.Tensor, min_len: int) -> bool:
    """Whether some span of at least ``min_len`` tokens occurs twice in ``row`` (random ids never repeat so)."""
    seen = set()
    tokens = row.tolist()
    for i in range(len(tokens) - min_len + 1):
        key = tuple(tokens[i:i + min_len])
        if key in seen:
            return True
        seen.add(key)
    return False


def test_the_chosen_share_of_windows_repeats_a_span_and_the_rest_is_untouched():
    x, y, window = _batch()
    nx, ny = repeat_spans(x, y, 0.25, torch.Generator().manual_seed(1))
    rebuilt = torch.cat([nx, ny[:, -1:]], dim=1)
    assert torch.equal(rebuilt[:, 1:], ny) and torch.equal(nx[:, 1:], ny[:, :-1])  # still shifted by one
    changed = [r for r in range(8) if not torch.equal(rebuilt[r], window[r])]
    assert len(changed) == 2
    assert all(_repeated_span(rebuilt[r], 65 // 8) for r in changed)
    assert not any(_repeated_span(window[r], 65 // 8) for r in range(8))
    for r in changed:  # the corpus' own tokens, only reordered by the copy
        assert set(rebuilt[r].tolist()) <= set(window[r].tolist())


def test_the_same_generator_gives_the_same_batch_and_zero_changes_nothing():
    x, y, _ = _batch()
    a = repeat_spans(x, y, 0.5, torch.Generator().manual_seed(3))
    b = repeat_spans(x, y, 0.5, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert repeat_spans(x, y, 0.0, torch.Generator()) == (x, y)


def test_windows_too_short_to_repeat_are_refused():
    x, y, _ = _batch(block=8)
    with pytest.raises(ValueError, match="at least 16 tokens"):
        repeat_spans(x, y, 0.5, torch.Generator())


def test_a_repeat_fraction_outside_0_1_is_a_config_error():
    from shared.config import ConfigError, load_config
    from shared.training.pretrain_config import PretrainConfig
    with pytest.raises(ConfigError, match=r"data.repeat_fraction must be in \[0, 1\], got 2.0"):
        load_config(PretrainConfig, "pretrain", "tiny", base={"data": {"repeat_fraction": 2}})
    assert load_config(PretrainConfig, "pretrain", "tiny", base={"data": {"repeat_fraction": 0.5}}).data.repeat_fraction == 0.5


def test_random_spans_repeat_fresh_ids_from_the_vocabulary():
    x, y, window = _batch(batch=4, block=64, seed=2)
    nx, ny = repeat_spans(x, y, 1.0, torch.Generator().manual_seed(4), random_vocab=50)
    rebuilt = torch.cat([nx, ny[:, -1:]], dim=1)
    assert torch.equal(nx[:, 1:], ny[:, :-1])
    for r in range(4):
        fresh = [t for t in rebuilt[r].tolist() if t < 50]  # the corpus ids here are all >= 1000
        assert len(fresh) >= 2 * (65 // 8)  # the span, twice
        assert _repeated_span(rebuilt[r], 65 // 8)
