"""Argument handling shared by every entry point: ``--config PRESET_OR_YAML key=value ...``.

Entry points stay thin: they look their stage up in the stage table (``shared.stages``), parse
here and call the stage's run function. Known user errors print one line
(``journey: error: ...``) and exit 2 instead of a traceback (``JOURNEY_DEBUG=1`` shows the traceback).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from shared import stages
from shared.cluster import exit_after_interrupt
from shared.config import ConfigError, describe, load_config
from shared.registry import ArtifactNotFound

T = TypeVar("T")

#: Exceptions that are the user's to fix: shown as one line, not a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, ArtifactNotFound, FileNotFoundError, FileExistsError,
                                                ValueError, PermissionError)


def parse_job_args(cls: type[T], stage: str, argv: list[str] | None, description: str,
                   default_preset: str | None = "tiny", module: str | None = None) -> T:
    """Parse ``--config`` and overrides into a validated ``cls``; ``--help`` lists every field.

    ``stage``: the presets directory (``configs/<stage>/``). ``module``: the entry point's module
    name when it differs from ``stage`` (``evaluate`` for ``eval``).
    """
    parser = argparse.ArgumentParser(prog=f"python -m ray_jobs.{module or stage}", description=description,
                                     epilog="config keys:\n" + describe(cls),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=default_preset, help="preset name under configs/<stage>/ or a YAML path")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, dotted for nested keys")
    args = parser.parse_args(argv)
    return load_config(cls, stage, args.config, args.overrides)


def parse_stage_args(stage: stages.Stage, argv: list[str] | None, description: str | None = None,
                     default_preset: str | None = "tiny"):
    """``parse_job_args`` for a stage of the table: its config class, presets and entry module."""
    return parse_job_args(stage.config, stage.presets or stage.name, argv, description or stage.summary,
                          default_preset=default_preset if stage.presets else None, module=stage.entry)


def run_main(fn: Callable[[], Any]) -> int:
    """Call ``fn``; turn user errors into ``journey: error: ...`` and exit code 2."""
    try:
        result = fn()
    except KeyboardInterrupt:
        print("journey: interrupted", file=sys.stderr)
        exit_after_interrupt(130)  # only where a training thread is still running (shared.cluster)
        return 130
    except USER_ERRORS as exc:
        if os.environ.get("JOURNEY_DEBUG") == "1":
            raise
        print(f"journey: error: {exc}", file=sys.stderr)
        return 2
    if result is not None and not isinstance(result, int):
        print(json.dumps(result, indent=2, default=str) if isinstance(result, (dict, list)) else result)
    return result if isinstance(result, int) else 0


def artifact_result(art) -> dict[str, Any]:
    """What an entry point prints for the artifact its stage registered."""
    return {"artifact": art.id, "path": art.path, "metrics": art.metrics}


def stage_main(name: str, argv: list[str] | None, doc: str,
               result: Callable[[Any], Any] = artifact_result) -> int:
    """The whole ``main`` of a stage's entry point: parse the stage's config, run the stage, print ``result(art)``.

    ``name`` is the stage's name in ``shared.stages``; ``doc`` the entry module's docstring (its
    examples head ``--help``).
    """
    stage = stages.get(name)

    def job():
        cfg = parse_stage_args(stage, argv, doc)
        return result(stage.run(cfg))
    return run_main(job)
