"""Induction and previous-token heads, measured on random tokens repeated twice, and when they formed.

The standard test: ``[start] r_1 .. r_L r_1 .. r_L`` with ``r`` random distinct token ids. On the
second copy an induction head attends from ``r_k`` to the token after its first occurrence,
``r_{k+1}`` (``L - 1`` positions back), and copying it predicts the next token, so the loss on the
second half drops far below the first half's (which no model can predict).

- induction score of a head: mean attention from each second-half token to the token after its
  previous occurrence; previous-token score: mean attention to the token just before.
- chance: what a head attending uniformly to every visible token would score, ``mean 1/(i+1)``
  over the scored query positions (about ``1/(1.5 L)``); a randomly initialised model sits there.
- loss drop: mean loss on the first half minus mean loss on the second half (nats), positions
  that copying cannot predict (the first token of each half) left out.
- every figure is the mean over three sequence lengths, ``L``, ``L + 1`` and ``L + 3`` (``LENGTH_STEPS``):
  with one length the second copy is always ``L - 1`` tokens after the first, and a head that attends
  a fixed distance back (a positional head, which repeated blocks of random ids teach a small model)
  scores like an induction head there and at chance at any other length (issue 20: 0.185 at L = 40,
  0.014-0.024 at 37, 41 and 43). Over three offsets such a head can match at most one.

``measure(model, ...)`` returns an ``InductionResult``; ``phase_change(paths, ...)`` measures a
series of training snapshots. Plots and tables are in ``plots`` and ``report``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from shared.interp.bridge import InterpError, Loaded, attention_stack, bos_id, check_length, run_cached


@dataclass
class InductionResult:
    """Per-head scores ``[layer, head]`` and the in-context loss figures of one model."""

    induction: torch.Tensor
    prev_token: torch.Tensor
    loss_first_half: float
    loss_second_half: float
    chance: float
    seq_len: int
    heads: list[tuple[int, int]] = field(default_factory=list)  # induction heads above the threshold
    prev_heads: list[tuple[int, int]] = field(default_factory=list)

    @property
    def loss_drop(self) -> float:
        return self.loss_first_half - self.loss_second_half

    @property
    def best(self) -> tuple[int, int, float]:
        """``(layer, head, score)`` of the strongest induction head."""
        flat = int(self.induction.argmax())
        layer, head = divmod(flat, self.induction.shape[1])
        return layer, head, float(self.induction[layer, head])

    def summary(self) -> dict:
        layer, head, score = self.best
        return {"max_induction_score": score, "max_induction_head": f"L{layer}H{head}",
                "max_prev_token_score": float(self.prev_token.max()), "induction_heads": len(self.heads),
                "prev_token_heads": len(self.prev_heads), "loss_first_half": self.loss_first_half,
                "loss_second_half": self.loss_second_half, "loss_drop": self.loss_drop, "chance": self.chance}


def repeated_tokens(vocab_size: int, length: int, batch: int, seed: int, start: int | None) -> torch.Tensor:
    """``[batch, (1) + 2 * length]``: a start token (if any), then ``length`` distinct random ids twice."""
    usable = vocab_size - (start is not None)
    if length > usable:
        raise InterpError(f"induction_len={length} needs that many distinct tokens but the vocabulary has "
                          f"{usable}; lower induction_len")
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(batch):
        half = torch.randperm(usable, generator=generator)[:length]
        if start is not None:
            half = half + (half >= start).long()  # skip the start token's id
        rows.append(torch.cat([half, half]))
    tokens = torch.stack(rows)
    if start is not None:
        tokens = torch.cat([torch.full((batch, 1), start), tokens], dim=1)
    return tokens


def diagonal_score(patterns: torch.Tensor, offset: int, queries: range) -> torch.Tensor:
    """Mean attention from each query ``q`` in ``queries`` to key ``q - offset``: ``[layer, head]``.

    ``patterns`` is ``[layer, batch, head, query, key]``.
    """
    q = torch.tensor(list(queries))
    return patterns[:, :, :, q, q - offset].mean(dim=(1, 3))


#: The test's sequence lengths, added to ``induction_len`` (see the module docstring).
LENGTH_STEPS = (0, 1, 3)

#: One length's test: ``(tokens, offset of the first random token (0 or 1), length)``.
Sequences = tuple[torch.Tensor, int, int]


def induction_tokens(model: Loaded, length: int, batch: int, seed: int) -> list[Sequences]:
    """The repeated random sequences for ``model``, one batch per length of ``LENGTH_STEPS``."""
    start = bos_id(model)
    longest = length + max(LENGTH_STEPS)
    check_length(model, 2 * longest + (start is not None),
                 f"the repeated sequence (2 x (induction_len={length} + {max(LENGTH_STEPS)})"
                 f"{' + 1 start token' if start is not None else ''})")
    return [(repeated_tokens(model.bridge.cfg.d_vocab, length + step, batch, seed + step, start),
             int(start is not None), length + step) for step in LENGTH_STEPS]


def measure(model: Loaded, length: int, batch: int, seed: int, threshold: float, prev_threshold: float,
            tokens: list[Sequences] | None = None) -> InductionResult:
    """Induction / previous-token scores and the in-context loss drop of ``model``, each the mean over the
    lengths of ``LENGTH_STEPS`` (see module docstring).

    ``tokens``: ``induction_tokens``' output to reuse (the same sequences for every snapshot).
    """
    parts = [_measure_one(model, *seq) for seq in tokens or induction_tokens(model, length, batch, seed)]
    induction, prev = (torch.stack([p[key] for p in parts]).mean(dim=0) for key in ("induction", "prev"))
    first, second, chance = (sum(p[key] for p in parts) / len(parts) for key in ("first", "second", "chance"))
    return InductionResult(
        induction=induction, prev_token=prev, loss_first_half=first, loss_second_half=second, chance=chance,
        seq_len=length, heads=_above(induction, threshold), prev_heads=_above(prev, prev_threshold))


def _measure_one(model: Loaded, tokens: torch.Tensor, o: int, length: int) -> dict:
    """One length's scores ``[layer, head]``, half losses and chance."""
    logits, cache = run_cached(model, tokens, ("hook_pattern",))
    patterns = attention_stack(cache, model.n_layers)
    second = range(o + length, o + 2 * length)
    # losses[:, t] is the loss of predicting token t + 1
    losses = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), tokens[:, 1:], reduction="none")
    return {"induction": diagonal_score(patterns, length - 1, second),
            "prev": diagonal_score(patterns, 1, range(o + 1, o + 2 * length)),
            "first": float(losses[:, o + 1:o + length - 1].mean()),  # predicts r_2..r_L of the first copy
            "second": float(losses[:, o + length:o + 2 * length - 1].mean()),  # r_2..r_L of the second copy
            "chance": sum(1.0 / (q + 1) for q in second) / len(second)}


def _above(scores: torch.Tensor, threshold: float) -> list[tuple[int, int]]:
    """Heads scoring above ``threshold``, strongest first."""
    found = [(int(l), int(h)) for l, h in (scores > threshold).nonzero()]
    return sorted(found, key=lambda lh: -float(scores[lh]))


_STEP_DIR = re.compile(r"^step_(\d+)$")


def snapshots(artifact_dir: Path) -> list[tuple[int, Path]]:
    """``(step, directory)`` of the training snapshots under ``<artifact>/snapshots/``, by step."""
    root = Path(artifact_dir) / "snapshots"
    found = [(int(m.group(1)), p) for p in root.glob("step_*") if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return sorted(found)


@dataclass
class PhaseChange:
    """Induction measured at each training step (snapshots, then the final model)."""

    steps: list[int]
    results: list[InductionResult]

    def formed_at(self, threshold: float) -> int | None:
        """First step from which some head stays above ``threshold`` to the end, if any."""
        above = [r.best[2] > threshold for r in self.results]
        for i in range(len(above)):
            if all(above[i:]):
                return self.steps[i]
        return None

    def to_dict(self) -> list[dict]:
        return [{"step": s, **r.summary()} for s, r in zip(self.steps, self.results)]


def phase_change(points: list[tuple[int, Path]], final: Loaded, final_step: int, length: int, batch: int,
                 seed: int, threshold: float, prev_threshold: float, load) -> PhaseChange:
    """Measure every snapshot ``(step, dir)``, then ``final`` at ``final_step``, on the same sequences.

    ``load(path)`` gives a ``Loaded``; the sequences come from ``final``, whose start token is known even
    when the snapshots are from a run that wrote them without the tokenizer.
    """
    from tqdm.auto import tqdm
    tokens = induction_tokens(final, length, batch, seed)
    results = [measure(load(path), length, batch, seed, threshold, prev_threshold, tokens)
               for _, path in tqdm(points, desc="induction over training", disable=len(points) < 3)]
    results.append(measure(final, length, batch, seed, threshold, prev_threshold, tokens))
    return PhaseChange([s for s, _ in points] + [final_step], results)
