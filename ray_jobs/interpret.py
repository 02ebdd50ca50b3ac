"""Look inside a run's models: attention patterns, induction heads and when they formed, what each stage changed.

    python -m ray_jobs.interpret --config tiny run=myrun            the interpret stage: every analysis, one report
    journey interpret attention <artifact> prompt="def f(x):" [layer=1 head=2] [out=DIR]
    journey interpret induction <artifact> [induction_len=40]      scores, heatmap, phase change from snapshots
    journey interpret diff <a> <b> [prompts=[...]]                  e.g. journey interpret diff sft dpo run=myrun

The stage registers ``<run>/interpret`` (kind report, the models as parents) holding ``interpret.md``,
``interpret.json``, the PNGs and the HTML pages; the commands write into ``out`` (default
``<runs>/_interp/<command>-<artifact>``). Artifact names resolve as everywhere (``sft``, ``<run>/sft``, a path).
"""
from __future__ import annotations

import sys

from ray_jobs._args import parse_stage_args, run_main, stage_main
from shared import stages

COMMANDS = {"attention": 1, "induction": 1, "diff": 2}  # command -> number of artifact arguments


def _command(name: str):
    """The ``shared.interp.stage`` function behind a command (torch and TransformerLens: imported once parsed)."""
    from shared.interp import stage
    return {"attention": stage.attention_command, "induction": stage.induction_command,
            "diff": stage.diff_command}[name]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        return stage_main("interpret", argv, __doc__)
    command, rest = argv[0], argv[1:]
    # Artifact names are the positional words; --config and key=value go to the config parser.
    names = [a for i, a in enumerate(rest) if "=" not in a and not a.startswith("-")
             and (i == 0 or rest[i - 1] != "--config")]
    options = [a for a in rest if a not in names]

    def job():
        if len(names) != COMMANDS[command]:
            raise ValueError(f"journey interpret {command} takes {COMMANDS[command]} artifact name(s), got {names}; "
                             f"e.g. journey interpret {command} {' '.join(['sft', 'dpo'][:COMMANDS[command]])} run=myrun")
        cfg = parse_stage_args(stages.get("interpret"), options, f"journey interpret {command}", default_preset=None)
        return _command(command)(cfg, *names)
    return run_main(job)


if __name__ == "__main__":
    sys.exit(main())
