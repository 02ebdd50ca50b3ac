"""Which parallelism strategy a training stage needs on 1, 4 and 8 GPUs of 80 GB and on the user's own.

``plan_parallelism(shape, ...)`` lays ``shared.plan.memory.strategy_bytes`` out per GPU count: for each
setting (``Setting``: how many GPUs of how much memory) every row of ``STRATEGY_ROWS`` (bytes per GPU
and the largest micro-batch that fits) and ``choose_strategy``'s pick with its reason. The formulas
live in ``shared.plan.memory``; this module only chooses what to compute and labels it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from shared.plan.hardware import KNOWN_GPUS, Gpu
from shared.plan.memory import (STRATEGY_ROWS, ModelShape, StrategyBytes, StrategyChoice, choose_strategy,
                                max_micro_batch, strategy_bytes)

#: The GPU counts every plan shows (the issue's "1, 4 and 8 GPUs of 80 GB"), on the presets' H100.
REFERENCE_COUNTS = (1, 4, 8)
REFERENCE_GPU = "H100"


@dataclass(frozen=True)
class Setting:
    """``n_gpus`` GPUs of ``memory`` bytes each; ``label`` says which (reference, this job, this machine)."""

    n_gpus: int
    memory: int
    label: str


@dataclass
class SettingPlan:
    """One setting: every strategy row's bytes per GPU and largest micro-batch, and the choice."""

    setting: Setting
    rows: list[StrategyBytes]
    max_batch: list[int]
    choice: StrategyChoice


@dataclass
class ParallelismPlan:
    """The strategies of one training stage at its micro-batch, context and precision."""

    params: int
    micro_batch: int
    seq: int
    precision: str
    settings: list[SettingPlan] = field(default_factory=list)


def settings_for(job_workers: int, gpu: Gpu, visible: Optional[list[Gpu]] = None) -> list[Setting]:
    """1, 4 and 8 reference GPUs, then this job's ``job_workers`` x ``gpu`` and this machine's visible
    GPUs where they differ from those (same count and memory: shown once)."""
    ref = KNOWN_GPUS[REFERENCE_GPU]
    out = [Setting(n, ref, f"{n} x {REFERENCE_GPU} ({ref / 1e9:.0f} GB)") for n in REFERENCE_COUNTS]
    extra = [Setting(job_workers, gpu.memory, f"this job: {job_workers} x {gpu.name} ({gpu.memory / 1e9:.0f} GB)")]
    if visible:
        extra.append(Setting(len(visible), visible[0].memory,
                             f"this machine: {len(visible)} x {visible[0].name} ({visible[0].memory / 1e9:.0f} GB)"))
    for s in extra:
        if all((s.n_gpus, s.memory) != (o.n_gpus, o.memory) for o in out):
            out.append(s)
    return out


def plan_parallelism(shape: ModelShape, micro_batch: int, seq: int, precision: str,
                     settings: list[Setting]) -> ParallelismPlan:
    """Every ``STRATEGY_ROWS`` row and ``choose_strategy``'s pick for each of ``settings``."""
    plan = ParallelismPlan(strategy_bytes(shape, "ddp", 1, 1, seq, precision).params, micro_batch, seq, precision)
    for s in settings:
        rows = [strategy_bytes(shape, st, s.n_gpus, micro_batch, seq, precision) for st in STRATEGY_ROWS]
        fits = [max_micro_batch(shape, st, s.n_gpus, seq, precision, s.memory) for st in STRATEGY_ROWS]
        plan.settings.append(SettingPlan(s, rows, fits, choose_strategy(shape, s.n_gpus, s.memory, micro_batch,
                                                                        seq, precision)))
    return plan


__all__ = ["ParallelismPlan", "REFERENCE_COUNTS", "REFERENCE_GPU", "Setting", "SettingPlan", "plan_parallelism",
           "settings_for"]
