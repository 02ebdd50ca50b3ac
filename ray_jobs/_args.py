"""Argument handling shared by every entry point: ``--config PRESET_OR_YAML key=value ...``.

Entry points stay thin: they parse here, build from ``shared`` and run. Known user errors print
one line (``journey: error: ...``) and exit 2 instead of a traceback
(``JOURNEY_DEBUG=1`` shows the traceback).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from shared.config import ConfigError, describe, load_config

T = TypeVar("T")


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that are the user's to fix: shown as one line, not a traceback."""
    from shared.registry import ArtifactNotFound
    return (ConfigError, ArtifactNotFound, FileNotFoundError, FileExistsError, ValueError, PermissionError)


def parse_job_args(cls: type[T], stage: str, argv: list[str] | None, description: str,
                   default_preset: str | None = "tiny", module: str | None = None) -> T:
    """Parse ``--config`` and overrides into a validated ``cls``; ``--help`` lists every field.

    ``module``: the entry point's module name when it differs from the stage's (``evaluate`` for ``eval``).
    """
    parser = argparse.ArgumentParser(prog=f"python -m ray_jobs.{module or stage}", description=description,
                                     epilog="config keys:\n" + describe(cls),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=default_preset, help="preset name under configs/<stage>/ or a YAML path")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, dotted for nested keys")
    args = parser.parse_args(argv)
    return load_config(cls, stage, args.config, args.overrides)


def run_main(fn: Callable[[], Any]) -> int:
    """Call ``fn``; turn user errors into ``journey: error: ...`` and exit code 2."""
    try:
        result = fn()
    except KeyboardInterrupt:
        print("journey: interrupted", file=sys.stderr)
        return 130
    except user_errors() as exc:
        if os.environ.get("JOURNEY_DEBUG") == "1":
            raise
        print(f"journey: error: {exc}", file=sys.stderr)
        return 2
    if result is not None and not isinstance(result, int):
        print(json.dumps(result, indent=2, default=str) if isinstance(result, (dict, list)) else result)
    return result if isinstance(result, int) else 0


def stage_main(cls: type[T], stage: str, argv: list[str] | None, doc: str, runner: str) -> int:
    """The whole ``main`` of a stage entry point: parse ``cls`` for ``stage``, call ``runner``, print the artifact.

    ``runner`` is ``"module:function"`` (imported only after the config parsed, so ``--help`` and
    config errors stay fast): a ``shared`` function taking the config and returning an Artifact.
    """
    def job():
        import importlib
        cfg = parse_job_args(cls, stage, argv, doc.splitlines()[0])
        module, fn = runner.split(":")
        art = getattr(importlib.import_module(module), fn)(cfg)
        return {"artifact": art.id, "path": art.path, "metrics": art.metrics}
    return run_main(job)
