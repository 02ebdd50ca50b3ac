"""Continued pretraining on domain data (code) from a registered artifact, under Ray Train.

    python -m ray_jobs.cpt --config tiny run=myrun init_from=pretrain

Evaluates on the domain validation set (``val``) and the general one (``eval_data.general``) before
and after, so the gain on code and the forgetting on prose are both in the artifact's metrics.
``init_from`` is required (``CPTConfig.validate``, the same check ``journey run`` makes).
"""
from __future__ import annotations

import sys

from ray_jobs._args import stage_main


def before_after(art) -> dict:
    """Each metric measured before and after training, side by side."""
    m = art.metrics
    return {"artifact": art.id, "path": art.path,
            "before_after": {k: (m.get(f"initial_{k}"), m.get(k)) for k in m if not k.startswith("initial_")
                             and f"initial_{k}" in m}}


def main(argv: list[str] | None = None) -> int:
    return stage_main("cpt", argv, __doc__, result=before_after)


if __name__ == "__main__":
    sys.exit(main())
