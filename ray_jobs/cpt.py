"""Continued pretraining on domain data (code) from a registered artifact, under Ray Train.

    python -m ray_jobs.cpt --config tiny run=myrun init_from=pretrain

Evaluates on the domain validation set (``val``) and the general one (``eval_data.general``) before
and after, so the gain on code and the forgetting on prose are both in the artifact's metrics.
"""
from __future__ import annotations

import sys

from ray_jobs._args import parse_job_args, run_main
from shared.config import ConfigError
from shared.training.pretrain_config import PretrainConfig


def main(argv: list[str] | None = None) -> int:
    def job():
        cfg = parse_job_args(PretrainConfig, "cpt", argv, __doc__.splitlines()[0])
        if not cfg.init_from:
            raise ConfigError("continued pretraining needs init_from=<artifact> (e.g. init_from=pretrain)")
        from shared.training.runner import run_pretraining
        art = run_pretraining(cfg)
        m = art.metrics
        return {"artifact": art.id, "path": art.path,
                "before_after": {k: (m.get(f"initial_{k}"), m.get(k)) for k in m if not k.startswith("initial_")
                                 and f"initial_{k}" in m}}
    return run_main(job)


if __name__ == "__main__":
    sys.exit(main())
