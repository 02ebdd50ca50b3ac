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
in-context loss drop 0.05 nats), so the tiny preset leaves this off. What else was tried, with
prototypes of a curriculum and of mixed-in copy data (since removed) on the tiny model, scored with the
interpret stage's own test (40 random ids twice):

- A random span written twice is first learnt without any induction head: the model raises the logits of
  every token already in the context ("in-context unigram"), which takes the second copy from ln 4096 = 8.3
  nats to about ln(span length) = 3.5-3.7 nats (what an earlier prototype with 32 x 64 copy sequences per step
  reached by step 400, taken then for copying). After 200 steps of that task alone the test
  showed a loss drop of 1.0-3.4 nats but induction scores of 0.017-0.021 (chance 0.017).
- A block of ``p <= 8`` random ids repeated to fill 64 tokens (32 x 64 per step, AdamW lr 3e-3, no weight
  decay) raises the test's score to 0.185 (loss drop 1.95) in 250 steps, but through *positional* heads in
  layer 0 that attend a fixed distance back: a distance of 39 predicts the next token whenever ``p``
  divides 40 (2, 4, 5, 8), and the test's offset is exactly 39 (``induction_len=40``). With 37, 41 or 43
  random ids instead, the same model scores chance (0.014-0.024) and its loss drop vanishes; no previous-token
  head ever formed (<= 0.07). The fixed-length test cannot tell these heads from induction heads.
- 16 such sequences (p <= 8, 64 tokens) added to every corpus step at half weight: the real tiny run
  scored 0.080 / loss drop 0.88 (the same artifact: layer 0, chance at other lengths) at val loss 5.47
  against 5.175; trained on them first, the heads fade within 200 corpus steps (0.10 -> 0.02).
- Content-forced copying (64-token sequences of back-to-back "r r" pairs, ``r`` 3-12 fresh ids, so neither a
  fixed distance nor the in-context unigram helps): still at chance after 700 steps (0.042, loss drop 0.01,
  previous-token 0.07), also with sinusoid-initialised positions (300 steps: 0.021). The copy task's plateau
  alone outlasts the ~370 steps the 15-minute journey leaves for it.

None of these forms induction heads at the tiny budget, so only ``repeat_spans`` is kept (off in the tiny
preset).

How long natural text takes instead (``journey pretrain --config tiny run=long1 tokenizer=t20c/tokenizer
data.source=builtin:python-code data.max_bytes=12000000 train.max_steps=8000 train.snapshot_every=500``,
then ``journey interpret induction long1/pretrain``; 20 min on 2 cores, 16.4M tokens, 5.8 passes over
the stdlib's code, whose repeated identifiers reward copying): the best induction score stays at chance
(0.016-0.018) for 2,000 steps, then climbs steadily from step 2,500 (0.029, loss drop 0.40 nats) to 0.083
at 5,000 and 0.11-0.12 at 7,500-8,000 (loss drop 1.1-1.3 nats; previous-token score 0.24), always in
layer 3, head 0. So the loss-drop half of the goal takes about 12x the tiny journey's 600 steps, and a
score of 0.3 more than 13x; the whole tiny journey leaves pretraining about 2 minutes.

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
