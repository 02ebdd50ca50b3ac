"""Learning-rate schedules as pure functions of the step.

``lr_at(step, ...)`` returns the learning rate for optimizer step ``step`` (0-based). Schedules:

- ``cosine``: linear warmup, then cosine decay from ``lr`` to ``lr * min_lr_ratio``.
- ``linear``: linear warmup, then linear decay to ``lr * min_lr_ratio``.
- ``wsd`` (warmup-stable-decay): warmup, a constant plateau, then a linear cool-down over the last
  ``decay_ratio`` of training. Popular for continued pretraining because the plateau can be extended.
- ``constant``: warmup, then constant.

Warmup is given either as steps (``warmup=100``) or as a ratio of total steps (``warmup=0.05``):
values below 1 are ratios. Pure functions make resume trivial: the schedule needs no state.
"""
from __future__ import annotations

import math

SCHEDULES = ("cosine", "linear", "wsd", "constant")


def warmup_steps(warmup: float, total_steps: int) -> int:
    """Warmup in steps: ``warmup`` < 1 is a ratio of ``total_steps``, otherwise a step count."""
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    return int(round(warmup * total_steps)) if warmup < 1 else int(warmup)


def lr_at(step: int, total_steps: int, lr: float, schedule: str = "cosine", warmup: float = 0.0,
          min_lr_ratio: float = 0.1, decay_ratio: float = 0.2) -> float:
    """Learning rate at optimizer step ``step`` of ``total_steps``."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown lr schedule {schedule!r}; choose one of {SCHEDULES}")
    n_warm = min(warmup_steps(warmup, total_steps), total_steps)
    min_lr = lr * min_lr_ratio
    if step < n_warm:
        return lr * (step + 1) / n_warm
    if schedule == "constant":
        return lr
    if schedule == "wsd":
        decay_start = max(n_warm, int(total_steps * (1 - decay_ratio)))
        if step < decay_start:
            return lr
        frac = (step - decay_start) / max(1, total_steps - decay_start)
        return lr - (lr - min_lr) * min(frac, 1.0)
    frac = min(1.0, (step - n_warm) / max(1, total_steps - n_warm))
    if schedule == "linear":
        return lr - (lr - min_lr) * frac
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * frac))
