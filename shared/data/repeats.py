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

Why "r r" alone is slow, and the periodic copy task (``periodic_copies``; issue 20, helper IND). A random
span written twice is first learnt without any induction head: the model raises the logits of every token
already in the context ("in-context unigram"), which takes the second copy from ln 4096 = 8.3 nats to about
ln(span length) = 3.5-3.7 nats, the figure above. On the interpret stage's test (40 random ids twice) that gave
a loss drop of 1.0-3.4 nats after 200 copy steps but induction scores of 0.017-0.021 (chance 0.017). A block
of ``p <= 8`` random ids repeated to fill 64 tokens leaves that shortcut ln p nats short of the
target, and induction heads appear within ~100 steps of the copy task alone: best score 0.12 at step 100,
0.185 at step 250 (period <= 16: 0.10 at 250; <= 40: 0.03 at 125), 32 x 64 tokens per step, AdamW lr 3e-3
constant, no weight decay. Measured from the interpret stage's own test on the tiny model (prototypes in the
issue 20 note):

- copy task first, then 600 corpus steps (a curriculum): the heads fade within 200 corpus steps
  (0.10 -> 0.05 -> 0.02), and the copy-trained start costs natural-text loss.
- copy rows in every corpus step (``data.copy_rows=16 copy_weight=0.5 copy_max_period=8 copy_len=64``,
  no warmup): best score 0.086 and loss drop 0.98 nats after 600 steps (against 0.018 / 0.19), but val loss
  5.45 against 5.15 and ~30% more pretraining time. Neither reaches the goal's 0.3, so the tiny preset keeps
  all of it off.

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


def periodic_copies(batch: int, length: int, max_period: int, vocab: int, generator: torch.Generator,
                    start: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The copy-warmup task (``data.copy_warmup_steps``): ``batch`` sequences of ``length`` inputs, each a block
    of ``p`` random ids (``p`` uniform in ``[2, max_period]`` per row, ids uniform in ``[0, vocab)``) repeated
    until the sequence is full, after the document-start id ``start`` when given. Returns ``(x, y)`` shifted by one.

    From the second period on every token is predictable, but only by looking up what followed the current
    token's previous occurrence: an induction head (see the module docstring for why this and not one
    repeated span)."""
    if max_period < 2:
        raise ValueError(f"copy sequences need a period of at least 2 tokens, got max_period={max_period}")
    if length < 2 * max_period:
        raise ValueError(f"copy sequences of {length} tokens cannot repeat a period of {max_period}; "
                         f"use a length of at least {2 * max_period}")
    n = length + 1
    rows = []
    for _ in range(batch):
        p = int(torch.randint(2, max_period + 1, (1,), generator=generator))
        block = torch.randint(0, vocab, (p,), generator=generator)
        rows.append(block.repeat(n // p + 1)[:n])
    seq = torch.stack(rows)
    if start is not None:
        seq = torch.cat([torch.full((batch, 1), start, dtype=seq.dtype), seq[:, :-1]], dim=1)
    return seq[:, :-1].contiguous(), seq[:, 1:].contiguous()


__all__ = ["periodic_copies", "repeat_spans"]
