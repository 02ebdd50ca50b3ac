"""Where a running stage says how far it is: ``<runs>/<run>/.progress/<stage>.json``.

The journey's progress view (``ray_jobs.journey``) polls this file while a stage runs and shows its
step, total and ETA; the training loops write it (rank 0, every logged step). A file, not a Ray
actor or the bus, because the writers are Ray Train workers that know only their config, and a
missing or stale file must cost nothing: the view then shows elapsed time only.

Writers pass the absolute path (``progress_file(root, run, stage)``, resolved on the driver and
shipped in the worker's spec) so a worker whose working directory differs writes the same file.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

DIR = ".progress"


def progress_file(root: str | Path, run: str, stage: str) -> Path:
    """The progress file of ``stage`` in ``run`` under the artifact root ``root``."""
    return Path(root).resolve() / run / DIR / f"{stage}.json"


def report_progress(path: str | Path | None, step: int, total: int | None = None, **metrics: Any) -> None:
    """Record that the stage is at ``step`` of ``total``; ``metrics`` are the latest logged numbers.

    Never raises: progress is advisory, a full disk or a read-only run folder must not stop training.
    """
    if not path:
        return
    path = Path(path)
    record = {"step": int(step), "total": int(total) if total else None, "time": time.time(),
              "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))}}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(record, fh)
        os.replace(tmp, path)
    except OSError:
        pass


def read_progress(path: str | Path) -> dict[str, Any] | None:
    """The last record written to ``path``, or None when there is none (yet) or it cannot be read."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def clear_progress(path: str | Path) -> None:
    """Forget a stage's progress (it is about to start from scratch or has finished)."""
    Path(path).unlink(missing_ok=True)
