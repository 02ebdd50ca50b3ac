"""``journey report RUN [runs_dir=DIR]``: remake a run's report from the registry and print its path.

    journey report my-run                    # runs/my-run/report/index.html (+ report.md)
    journey report ci runs_dir=/tmp/runs     # a run under another artifact root

The report (``shared.report``) is one self-contained ``index.html`` (pictures inlined; it opens
from disk with no network) and ``report.md`` with its pictures beside it, written from the run's
artifacts alone; ``journey run`` writes it at the end, this command remakes it (after a stage was
rerun, or for a run made before reports existed).
"""
from __future__ import annotations

import sys

from ray_jobs._args import run_main
from shared.config import ConfigError
from shared.registry import Registry
from shared.report import write_report

KEYS = ("runs_dir",)


def parse(argv: list[str]) -> tuple[str, str | None]:
    """``RUN [runs_dir=DIR]`` into ``(run, runs_dir)``; ConfigError naming the problem otherwise."""
    runs = [a for a in argv if "=" not in a]
    options = dict(a.split("=", 1) for a in argv if "=" in a)
    unknown = sorted(set(options) - set(KEYS))
    if unknown:
        raise ConfigError(f"unknown option {unknown[0]!r} for journey report; it takes RUN and {', '.join(KEYS)}=DIR")
    if len(runs) != 1:
        raise ConfigError("journey report takes one run name: journey report RUN [runs_dir=DIR] "
                          f"(got {len(runs)}: {' '.join(runs) or 'none'}); `journey runs` lists them")
    return runs[0], options.get("runs_dir") or None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0

    def job() -> int:
        run, runs_dir = parse(argv)
        print(write_report(Registry(runs_dir), run))
        return 0
    return run_main(job)
