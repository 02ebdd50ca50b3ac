"""Repeated spans in pretraining windows: the data that makes a small model learn to copy.

Induction heads (Olsson et al. 2022, "In-context Learning and Induction Heads") form when the
training text rewards copying: "... A B ... A -> B". Natural text does so rarely at the scale of
the tiny journey (1.2M tokens), so its 4-layer model never formed them (issue 20: best induction
score 0.020 against chance 0.017). ``repeat_spans`` rewrites a disclosed share of each batch's
windows so that a span of the window occurs again later in it.

Two sources for the span (``data.repeat_source``): ``text`` repeats a span of the window itself (the
corpus' own tokens, only reordered); ``random`` writes a span of uniformly random token ids twice,
the synthetic copy task of the induction-head literature. A text span's second copy is partly
predictable from word statistics, so copying is only part of what lowers its loss; a random span's
second copy can *only* be predicted by copying, which is the strongest pressure per token.

Measured on the tiny preset (600 steps of 16 x 128 tokens, issue 20): neither source formed an
induction head (best score 0.018 with text spans in half the windows, 0.019 with random spans;
in-context loss drop 0.05 nats), so the tiny preset leaves this off. The same 4-layer model trained
on the copy task alone, 32 sequences of 64 tokens per step, copies after ~300 steps (loss on the
second copy 8.3 -> 3.7 nats by step 400); with 16 per step, or 128-token sequences, it had not by
step 400: the number of copy examples per step, not the architecture, is what the tiny budget lacks.

In a chosen window of ``T + 1`` tokens ``w``, a span of length ``m`` (uniform in ``[T/8, T/2]``)
starting at ``s`` is written again at ``d >= s + m`` (both uniform where they fit); inputs and
targets shift by one as usual. Rows, lengths and positions come from the batch's own torch
generator, so a resumed run sees the same batches.
"""
from __future__ import annotations

import torch


def repeat_spans(x: torch.Tensor, y: torch.Tensor, fraction: float, generator: torch.Generator,
                 random_vocab: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` with ``round(fraction * batch)`` rows (at least one when ``fraction > 0``) rewritten so that
    a span of each occurs again later in it (see the module docstring). ``random_vocab``: write spans
    of random ids in ``[0, random_vocab)`` twice instead of repeating the window's own text.
    Returns new tensors."""
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
        if random_vocab is not None:
            out[row, s:s + m] = torch.randint(0, random_vocab, (m,), generator=generator)
        out[row, d:d + m] = out[row, s:s + m]
    return out[:, :-1].contiguous(), out[:, 1:].contiguous()


__all__ = ["repeat_spans"]
