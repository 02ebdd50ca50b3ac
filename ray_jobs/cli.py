"""The ``journey`` command: one front door to every entry point.

``journey <stage>`` runs ``ray_jobs.<entry>`` of that stage in the stage table (``shared.stages``),
which also makes the list ``journey --help`` prints; the other commands are listed here.
"""
from __future__ import annotations

import importlib
import sys

from ray_jobs import journey, submit
from shared import stages
from shared.registry import Registry

# Commands that are not stages: (usage after `journey`, what it does).
OTHER_COMMANDS = (
    ("up [run=R model=A port=8000 ui_port=7860 ...]", "Redis + Ray Serve app + web chat  (services.stack)"),
    ("chat [model=A]", "terminal chat with the running gateway, over the bus"),
    ("down", "stop what `journey up` started"),
    ("submit STAGE [--config P] [k=v] [--address URL] [--no-wait]", "run a stage as a Ray job on a cluster "
                                                                    "(ray_jobs.submit)"),
    ("plan [preset=P] [init_from=A] [k=v ...]", "every stage's data, tokens, steps, memory per GPU and time, "
                                               "and the problems, before anything runs (ray_jobs.plan)"),
    ("report RUN", "remake runs/RUN/report/ (index.html + report.md) from the registry (ray_jobs.report)"),
    ("runs", "list runs"),
    ("artifacts [RUN]", "list artifacts with their parents"),
)


COLUMN = 44  # where the descriptions start


def _rows(rows: list[tuple[str, str]]) -> list[str]:
    """``journey COMMAND   what it does``, the description on its own line after a long command."""
    lines = []
    for command, what in rows:
        command = f"journey {command}"
        if len(command) < COLUMN:
            lines.append(f"    {command.ljust(COLUMN)}{what}")
        else:
            lines += [f"    {command}", f"    {'':{COLUMN}}{what}"]
    return lines


def usage() -> str:
    """``journey --help``: the journey, every stage of the table, then the other commands."""
    optional = [s.name for s in stages.STAGES if s.journey == "optional"]
    journey_rows = [(f"{s.name} {s.usage}", f"{s.summary} (ray_jobs.{s.entry})")
                    for s in stages.STAGES if s.in_journey]
    other_rows = [(f"{s.name} {s.usage}", f"{s.summary} (ray_jobs.{s.entry})")
                  for s in stages.STAGES if not s.in_journey]
    return "\n".join([
        __doc__,
        *_rows([("run [key=value ...]", "the whole journey, tiny preset (ray_jobs.journey)")]),
        "",
        f"The journey's stages, in order (`journey run` runs them all but {', '.join(optional)}, which",
        "run when stages=[...] names them):",
        *_rows(journey_rows),
        "",
        "Stages outside the journey:",
        *_rows(other_rows),
        "",
        "Other commands:",
        *_rows(list(OTHER_COMMANDS)),
        ""])


def _runs(argv: list[str]) -> int:
    reg = Registry()
    runs = reg.runs()
    if not runs:
        print(f"no runs under {reg.root}")
    for run in runs:
        arts = reg.artifacts(run)
        print(f"{run}: {len(arts)} artifacts ({', '.join(a.stage for a in arts)})")
    return 0


def _artifacts(argv: list[str]) -> int:
    print(Registry().lineage(argv[0] if argv else None))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command in stages.BY_NAME:
        # Only the stage asked for is imported: each entry module pulls in its stage's libraries.
        module = importlib.import_module(f"ray_jobs.{stages.BY_NAME[command].entry}")
        return module.main(rest)
    if command == "run":
        return journey.main(rest)
    if command in ("up", "down", "chat"):
        # The CLI is the one front door, so it reaches the serving stack too (ray_jobs themselves never
        # do); imported here because Ray Serve and Redis clients take seconds to load.
        from services import stack
        return stack.main([command, *rest])
    if command == "submit":
        return submit.main(rest)
    if command in ("plan", "report"):
        return importlib.import_module(f"ray_jobs.{command}").main(rest)
    handlers = {"runs": _runs, "artifacts": _artifacts}
    if command not in handlers:
        print(f"journey: error: unknown command {command!r}; see `journey --help`", file=sys.stderr)
        return 2
    return handlers[command](rest)


if __name__ == "__main__":
    sys.exit(main())
