"""``journey experiment NAME [--config PRESET] [key=value ...]``: controlled experiments.

    journey experiment vocab-size vocab_sizes=[1024,4096,16384] steps=200
    journey experiment lr-schedules schedules=[cosine,linear,wsd] steps=300
    journey experiment finetune-methods --config finetune-methods-tiny run=myrun     (after cpt in myrun)
    journey experiment finetune-methods --config finetune-methods-tiny init_from=runs/spike/pretrain

``--config`` names a preset under ``configs/experiment/`` (or a YAML path); without it the
``ExperimentConfig`` defaults apply. Writes ``<runs>/<run>/experiment-<name>/`` with a table (md, json)
and a PNG chart, registered as an artifact of kind ``experiment``.
"""
from __future__ import annotations

import importlib
import sys

from ray_jobs._args import parse_job_args, run_main

#: experiment name -> (module, function) in shared.training, imported only when that experiment runs
EXPERIMENTS = {
    "vocab-size": ("experiments", "vocab_size_experiment"),
    "lr-schedules": ("experiments", "lr_schedule_experiment"),
    "finetune-methods": ("finetune_experiment", "finetune_methods_experiment"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in EXPERIMENTS:
        print(__doc__)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    name, rest = argv[0], argv[1:]

    def job():
        from shared.training.experiments import ExperimentConfig
        cfg = parse_job_args(ExperimentConfig, "experiment", rest, f"journey experiment {name}", default_preset=None)
        module, function = EXPERIMENTS[name]
        art = getattr(importlib.import_module(f"shared.training.{module}"), function)(cfg)
        return {"artifact": art.id, "path": art.path}
    return run_main(job)


if __name__ == "__main__":
    sys.exit(main())
