"""``journey run``: every stage of the journey, in order, in one Ray session.

    journey run                       # tiny preset, a new run named journey-<timestamp>
    journey run preset=smoke run=ci   # seconds per stage (the e2e test)
    journey run pretrain.train.max_steps=100 stages=[tokenizer,pretrain]
    journey run stages=[tokenizer,pretrain,cpt,sft,prefs,dpo,reward,rl,quantize,eval]   # with the optional RL stages

The stages, their order and which run by default are the stage table's (``shared.stages``). Each
stage's run function (the one ``journey <stage>`` calls) runs in-process with
``configs/<stage>/<preset>.yaml`` plus this run's name and the per-stage overrides given here; every
stage's config is loaded and validated before the first one starts.
The last stage, ``eval``, puts every model artifact of the run on the same tasks (the scorecard,
``runs/<run>/eval/scorecard.md``). Ends with a summary table (``runs/<run>/summary.md``) of every
artifact's headline metrics, followed by the scorecard.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import sys
import time
from dataclasses import dataclass
from typing import Any, Optional

from ray_jobs._args import run_main
from shared import stages as stage_table
from shared.config import describe, help_field, load_config, parse_overrides
from shared.registry import Registry

STAGES = stage_table.JOURNEY
DEFAULT_STAGES = stage_table.DEFAULT_JOURNEY


@dataclass
class _JourneyOptions:
    """The journey's own keys; ``JourneyConfig`` adds one override section per stage of the table."""

    run: Optional[str] = help_field(None, "run name (default journey-<timestamp>)")
    preset: str = help_field("tiny", "preset used for every stage: configs/<stage>/<preset>.yaml")
    stages: list[str] = help_field(list(DEFAULT_STAGES), f"stages to run, in order, out of {list(STAGES)}")
    runs_dir: Optional[str] = help_field(None, "artifact root (default $JOURNEY_RUNS or ./runs)")

    def validate(self) -> None:
        for stage in self.stages:
            if stage not in STAGES:
                raise stage_table.unknown_stage(stage, STAGES)

    def overrides(self, stage: str) -> dict:
        """The ``<stage>.key=value`` overrides given for ``stage``."""
        return getattr(self, stage)


# One dict field per journey stage (``journey run sft.train.max_steps=3``), made from the table so a
# new stage gets its section without an edit here; a misspelt stage key fails with a did-you-mean.
JourneyConfig = dataclasses.make_dataclass(
    "JourneyConfig",
    [(s.name, dict, help_field({}, f"{s.name}.KEY=VALUE: overrides of the {s.name} stage's config (its keys: "
                                   f"`journey {s.name} --help`)"))
     for s in stage_table.STAGES if s.in_journey],
    bases=(_JourneyOptions,))
JourneyConfig.__module__ = __name__  # picklable and documented as this module's
JourneyConfig.__doc__ = "``journey run``'s config: the journey's own keys, then one override section per stage."


def stage_config(stage: str, preset: str, run: str, overrides: dict | None = None, runs_dir: str | None = None):
    """The stage's config: its ``<preset>`` preset, the run's name and the overrides given for it, validated.

    ``journey run`` and ``journey plan`` both resolve every stage through here.
    """
    spec = stage_table.get(stage)
    base: dict[str, Any] = {"run": run, **(overrides or {})}
    if runs_dir:
        base["runs_dir"] = runs_dir
    return load_config(spec.config, spec.presets, preset, base=base)


def stage_configs(jc: JourneyConfig, run: str) -> dict[str, Any]:
    """Every stage of ``jc.stages``, resolved and validated (nothing runs before all of them load)."""
    return {stage: stage_config(stage, jc.preset, run, jc.overrides(stage), jc.runs_dir) for stage in jc.stages}


# What each stage's row shows: the numbers that say whether the stage did its job.
HEADLINES = {s.name: s.headlines for s in stage_table.STAGES if s.headlines}


# Variants written by the quantize stage (stage names quantize-<variant>) are read by kind.
KIND_HEADLINES = {"quantized": ("bytes", "decode_tokens_per_s", "ppl_delta", "top1_agreement"),
                  "gguf": ("bytes", "decode_tokens_per_s", "ppl_delta", "top1_agreement")}


def summary(registry: Registry, run: str) -> str:
    """Markdown table of the run's artifacts and their headline metrics."""
    lines = ["| artifact | kind | headline metrics | time (s) |", "|---|---|---|---|"]
    for a in registry.artifacts(run):
        if a.kind == "report" and a.stage in ("eval", "interpret"):
            what = ("artifacts on the same tasks: eval/scorecard.md" if a.stage == "eval"
                    else "models looked inside: interpret/interpret.md")
            lines.append(f"| {a.id} | report | {len(a.parents)} {what} | {sum(a.timings.values()):.0f} |")
            continue
        keys = HEADLINES.get(a.stage) or KIND_HEADLINES.get(a.kind, ("val_loss", "eval_loss"))
        cells = ", ".join(f"{k}={a.metrics[k]:.4g}" for k in keys if isinstance(a.metrics.get(k), (int, float)))
        lines.append(f"| {a.id} | {a.kind} | {cells} | {sum(a.timings.values()):.0f} |")
    return "\n".join(lines)


def run_journey(jc: JourneyConfig) -> str:
    run = jc.run or _dt.datetime.now().strftime("journey-%Y%m%d-%H%M%S")
    configs = stage_configs(jc, run)
    registry = Registry(jc.runs_dir)
    t0 = time.perf_counter()
    for stage in jc.stages:
        print(f"== journey {run}: stage {stage} ==", flush=True)
        stage_table.get(stage).run(configs[stage])
    table = summary(registry, run)
    scorecard = registry.root / run / "eval" / "scorecard.md"
    card = scorecard.read_text() if "eval" in jc.stages and scorecard.exists() else ""
    (registry.root / run / "summary.md").write_text(
        f"# Journey {run}\n\n{table}\n\nTotal {time.perf_counter() - t0:.0f} s.\n\n```\n{registry.lineage(run)}\n```\n"
        + (f"\n{card}" if card else ""))
    print(table)
    if card:
        print(card)
    print(registry.lineage(run))
    return run


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(f"{__doc__}\nconfig keys:\n{describe(JourneyConfig)}")
        return 0

    def job():
        jc = load_config(JourneyConfig, "journey", None, base=parse_overrides(argv))
        run = run_journey(jc)
        print(f"journey {run} done: artifacts under {Registry(jc.runs_dir).root / run}")
    return run_main(job)


if __name__ == "__main__":
    sys.exit(main())
