"""``journey experiment vocab-size|lr-schedules [key=value ...]``: controlled pretraining experiments.

    journey experiment vocab-size vocab_sizes=[1024,4096,16384] steps=200
    journey experiment lr-schedules schedules=[cosine,linear,wsd] steps=300

Writes ``<runs>/<run>/experiment-<name>/`` with a table (md, json) and a PNG chart.
"""
from __future__ import annotations

import sys

from ray_jobs._args import run_main
from shared.config import load_config, parse_overrides

EXPERIMENTS = ("vocab-size", "lr-schedules")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in EXPERIMENTS:
        print(__doc__)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    name, rest = argv[0], argv[1:]

    def job():
        from shared.training.experiments import ExperimentConfig, lr_schedule_experiment, vocab_size_experiment
        cfg = load_config(ExperimentConfig, "experiment", None, base=parse_overrides(rest))
        art = (vocab_size_experiment if name == "vocab-size" else lr_schedule_experiment)(cfg)
        return {"artifact": art.id, "path": art.path}
    return run_main(job)


if __name__ == "__main__":
    sys.exit(main())
