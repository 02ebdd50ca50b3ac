"""``journey run``: every stage of the journey, in order, in one Ray session.

    journey run                       # tiny preset, a new run named journey-<timestamp>
    journey run preset=smoke run=ci   # seconds per stage (the e2e test)
    journey run pretrain.optim.max_steps=100 stages=[tokenizer,pretrain]

Each stage is the same entry point ``python -m ray_jobs.<stage>`` runs, called in-process with
``configs/<stage>/<preset>.yaml`` plus this run's name and the per-stage overrides given here.
Ends with a summary table (``runs/<run>/summary.md``) of every artifact's headline metrics.
"""
from __future__ import annotations

import datetime as _dt
import sys
import time
from dataclasses import dataclass
from typing import Any, Optional

from ray_jobs._args import run_main
from shared.config import ConfigError, help_field, load_config, parse_overrides
from shared.registry import Registry

STAGES = ("tokenizer", "pretrain", "cpt")


@dataclass
class JourneyConfig:
    run: Optional[str] = help_field(None, "run name (default journey-<timestamp>)")
    preset: str = help_field("tiny", "preset used for every stage: configs/<stage>/<preset>.yaml")
    stages: list[str] = help_field(list(STAGES), f"stages to run, in order: {list(STAGES)}")
    runs_dir: Optional[str] = help_field(None, "artifact root (default $JOURNEY_RUNS or ./runs)")
    tokenizer: dict = help_field({}, "overrides for the tokenizer stage, e.g. tokenizer.vocab_size=2048")
    pretrain: dict = help_field({}, "overrides for the pretrain stage, e.g. pretrain.optim.max_steps=100")
    cpt: dict = help_field({}, "overrides for the continued-pretraining stage")

    def validate(self) -> None:
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            raise ConfigError(f"unknown stage {unknown[0]!r}; stages are {list(STAGES)}")


def _stage_config(stage: str, jc: JourneyConfig, run: str):
    from shared.tokenizer.tokenizer_config import TokenizerConfig
    from shared.training.pretrain_config import PretrainConfig
    cls = TokenizerConfig if stage == "tokenizer" else PretrainConfig
    base: dict[str, Any] = {"run": run, **getattr(jc, stage)}
    if jc.runs_dir:
        base["runs_dir"] = jc.runs_dir
    return load_config(cls, stage, jc.preset, base=base)


def _run_stage(stage: str, cfg) -> None:
    if stage == "tokenizer":
        from shared.tokenizer.artifact import train_tokenizer_artifact
        train_tokenizer_artifact(cfg)
    else:
        from shared.training.runner import run_pretraining
        run_pretraining(cfg)


def summary(registry: Registry, run: str) -> str:
    """Markdown table of the run's artifacts and their headline metrics."""
    keys = ("vocab_size", "initial_val_loss", "val_loss", "val_bpb", "initial_general_loss", "general_loss",
            "tokens_per_s")
    lines = ["| artifact | kind | " + " | ".join(keys) + " | time (s) |", "|" + "---|" * (len(keys) + 3)]
    for a in registry.artifacts(run):
        cells = [f"{a.metrics[k]:.4g}" if isinstance(a.metrics.get(k), (int, float)) else "" for k in keys]
        lines.append(f"| {a.id} | {a.kind} | " + " | ".join(cells) + f" | {sum(a.timings.values()):.0f} |")
    return "\n".join(lines)


def run_journey(jc: JourneyConfig) -> str:
    run = jc.run or _dt.datetime.now().strftime("journey-%Y%m%d-%H%M%S")
    configs = {stage: _stage_config(stage, jc, run) for stage in jc.stages}  # validate all before starting
    registry = Registry(jc.runs_dir)
    t0 = time.perf_counter()
    for stage in jc.stages:
        print(f"== journey {run}: stage {stage} ==", flush=True)
        _run_stage(stage, configs[stage])
    table = summary(registry, run)
    (registry.root / run / "summary.md").write_text(
        f"# Journey {run}\n\n{table}\n\nTotal {time.perf_counter() - t0:.0f} s.\n\n```\n{registry.lineage(run)}\n```\n")
    print(table)
    print(registry.lineage(run))
    return run


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0

    def job():
        jc = load_config(JourneyConfig, "journey", None, base=parse_overrides(argv))
        run = run_journey(jc)
        print(f"journey {run} done: artifacts under {Registry(jc.runs_dir).root / run}")
    return run_main(job)


if __name__ == "__main__":
    sys.exit(main())
