"""The Ray session every stage driver shares.

``ensure_ray()`` is called by any driver that starts Ray work (pretraining, post-training,
preference sampling, indexing, the scorecard): under ``ray job submit`` it joins the job's cluster,
otherwise it starts a local Ray once per process. It lives here, not in one stage's driver, so
that no stage imports another stage to reach Ray (``docs/architecture.md``, layers).
"""
from __future__ import annotations


def ensure_ray(num_cpus: int | None = None) -> None:
    """Connect to the cluster (under ``ray job submit``) or start a local Ray once per process."""
    import ray  # the Ray import costs seconds: only the drivers that start Ray work pay it
    if not ray.is_initialized():
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=True, configure_logging=False)
