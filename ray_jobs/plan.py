"""``journey plan``: every stage of a journey, resolved and checked, before anything runs.

    journey plan preset=gpt2-124m                          # the GPU journey, from pretraining
    journey plan preset=gpt2-124m init_from=imported/import  # from your own checkpoint (journey import)
    journey plan preset=tiny stages=[tokenizer,pretrain] pretrain.train.max_steps=100
    journey plan preset=gpt2-124m gpu=A100-40GB --json     # memory against another GPU; JSON output
    journey plan preset=gpt2-1b                            # a 1.3B model: which parallelism fits 1, 4, 8 GPUs

Each stage's config is resolved exactly as ``journey run`` resolves it (``ray_jobs.journey.stage_config``:
``configs/<stage>/<preset>.yaml``, the run's name, the ``<stage>.key=value`` overrides), then
``shared.plan`` prints per stage its data (and whether it is reachable from here), its model, the
tokens it trains on (or generates, or scores), its steps, its memory per GPU (weights, gradients,
optimizer state, activations) and its time from measured throughput, then the total and the problems,
each with its fix. Nothing runs: no Ray, no model, no download (a hub dataset is only asked about,
with a short timeout; HF_HUB_OFFLINE=1 skips the request).

A GPU training stage (pretrain, cpt) also gets its parallelism table: bytes per GPU of weights,
gradients, optimizer state, buffers and activations for ddp, zero1, zero2, fsdp (with and without
resharding after forward) and zero3 on 1, 4 and 8 GPUs of 80 GB, this job's GPUs and this machine's,
and the simplest strategy that fits each, with the reason (``shared.plan.memory.choose_strategy``).

A preset written for only some stages (``gpt2-1b``: tokenizer and pretrain) plans just those when
``stages=`` is not given, and says so; name the stages to plan others.

init_from=A plans the journey from model A instead of pretraining, as ``journey run init_from=A``
runs it: the tokenizer and pretrain stages leave the stages, and cpt starts from A with A's own
tokenizer (``cpt.init_from=A cpt.tokenizer=A``; a ``cpt.`` override given here wins).

Exit status: 0 when no problem was found, 1 when problems were found (the plan is still printed,
each problem with its fix), 2 on a config error (an unknown key, a bad value, an unknown stage).
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any, Literal, Optional

from ray_jobs._args import run_main
from ray_jobs.journey import JourneyConfig, stage_config
from shared import stages as stage_table
from shared.config import ConfigError, describe, help_field, load_config, parse_overrides
from shared.config.base import preset_path
from shared.plan import Problem, make_plan, render_text, target_gpu, to_json, visible_gpus
from shared.plan.hardware import KNOWN_GPUS

@dataclass
class PlanConfig(JourneyConfig):
    """``journey plan``'s config: ``journey run``'s keys (the stages, the preset, init_from and every
    ``<stage>.key=value`` mean what they mean to ``journey run``), then the plan's own."""

    gpu: Optional[str] = help_field(None, f"GPU memory is checked against (default: the visible one, else H100); "
                                          f"one of {sorted(KNOWN_GPUS)}")
    format: Literal["text", "json"] = help_field("text", "text (a table and the problems) or json (--json)")
    check_hub: bool = help_field(True, "ask the hub whether hub datasets are reachable (3 s timeout, in parallel)")

    def validate(self) -> None:
        super().validate()
        if self.gpu is not None and self.gpu not in KNOWN_GPUS:
            raise ConfigError(f"unknown gpu {self.gpu!r}; choose one of {sorted(KNOWN_GPUS)}")


def missing_preset(stage: str, preset: str) -> Optional[Problem]:
    """The problem when ``configs/<stage>/<preset>.yaml`` does not exist, with its fix; else None."""
    spec = stage_table.get(stage)
    try:
        preset_path(spec.presets or stage, preset)
    except ConfigError as exc:
        return Problem(stage, f"no {preset!r} preset for this stage ({exc})",
                       f"write configs/{spec.presets or stage}/{preset}.yaml (start from "
                       f"configs/{spec.presets or stage}/tiny.yaml), or leave the stage out with stages=[...]")
    return None


def build_plan(argv: list[str]):
    """Parse ``argv``, resolve every stage's config and return ``(plan, format)``; ConfigError on a bad config."""
    argv = list(argv)
    fmt_flag = "--json" in argv
    argv = [a for a in argv if a != "--json"]
    given = parse_overrides(argv)
    pc = load_config(PlanConfig, "journey", None, base=given)
    run = pc.run_name
    stages = pc.stages
    notes: list[str] = []
    if "stages" not in given:  # a preset written for some stages only: plan those rather than report the rest
        have = [s for s in stages if missing_preset(s, pc.preset) is None]
        if have and len(have) < len(stages):
            notes.append(f"preset {pc.preset} has configs for stages [{','.join(have)}] only: planning those "
                         f"(stages=[...] to plan others)")
            stages = have
    problems: list[Problem] = []
    configs: dict[str, Any] = {}
    for stage in stages:
        problem = missing_preset(stage, pc.preset)
        if problem is not None:
            problems.append(problem)
            configs[stage] = None
            continue
        configs[stage] = stage_config(stage, pc.preset, run, pc.overrides(stage), pc.runs_dir)
    visible = visible_gpus()
    plan = make_plan(configs, preset=pc.preset, run=run, runs_dir=pc.runs_dir, gpu=target_gpu(pc.gpu, visible),
                     gpus_visible=len(visible), problems=problems, check_hub=pc.check_hub)
    plan.notes += notes
    return plan, "json" if fmt_flag else pc.format


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(f"{__doc__}\nconfig keys:\n{describe(PlanConfig)}")
        return 0

    def job() -> int:
        plan, fmt = build_plan(argv)
        print(json.dumps(to_json(plan), indent=2) if fmt == "json" else render_text(plan))
        return 1 if plan.problems else 0
    return run_main(job)


if __name__ == "__main__":
    sys.exit(main())
