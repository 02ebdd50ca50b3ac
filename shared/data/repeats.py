"""Repeated spans in pretraining windows: the data that makes a small model learn to copy.

Induction heads (Olsson et al. 2022, "In-context Learning and Induction Heads") form when the
training text rewards copying: "... A B ... A -> B". Natural text does so rarely at the scale of
the tiny journey (1.2M tokens), so its 4-layer model never formed them (issue 20: best induction
score 0.020 against chance 0.017). ``repeat_spans`` rewrites a disclosed share of each batch's
windows so that a span of the window occurs again later in it: the tokens stay the corpus' own
(real text, not random ids); only the repetition makes the later copy predictable by copying.

In a chosen window of ``T + 1`` tokens ``w``, a span of length ``m`` (uniform in ``[T/8, T/2]``)
starting at ``s`` is written again at ``d >= s + m`` (both uniform where they fit); inputs and
targets shift by one as usual. Rows, lengths and positions come from the batch's own torch
generator, so a resumed run sees the same batches.
"""
from __future__ import annotations

import torch


def repeat_spans(x: torch.Tensor, y: torch.Tensor, fraction: float,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` with ``round(fraction * batch)`` rows (at least one when ``fraction > 0``) rewritten so that
    a span of each occurs again later in it (see the module docstring). Returns new tensors."""
    if fraction <= 0:
        return x, y
    batch, block = x.shape
    n = block + 1  # the tokens each (x, y) pair was cut from
    if n < 16:
        raise ValueError(f"repeat_spans needs windows of at least 16 tokens, got {n}")
    window = torch.cat([x, y[:, -1:]], dim=1)
    out = window.clone()
    rows = max(1, round(fraction * batch))
    for row in torch.randperm(batch, generator=generator)[:rows].tolist():
        m = int(torch.randint(n // 8, n // 2 + 1, (1,), generator=generator))
        s = int(torch.randint(0, n - 2 * m + 1, (1,), generator=generator))
        d = int(torch.randint(s + m, n - m + 1, (1,), generator=generator))
        out[row, d:d + m] = window[row, s:s + m]
    return out[:, :-1].contiguous(), out[:, 1:].contiguous()


__all__ = ["repeat_spans"]
