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


def fit(trainer):
    """``trainer.fit()`` (a Ray Train trainer) where Ctrl-C is a KeyboardInterrupt, not Ray Train's abort.

    Ray Train 2.60 replaces the SIGINT handler during ``fit()`` when it runs in the main thread, and
    turns Ctrl-C into a "graceful abort" after which ``fit()`` *returns normally* with the last
    reported checkpoint: a stage would then register a half-trained model as finished. Called from a
    helper thread, ``fit()`` leaves SIGINT to Python: the main thread gets KeyboardInterrupt, the
    stage stays unfinished, and a rerun resumes it from its checkpoint (``shared.training.resume``).
    The thread is a daemon, so an interrupted process exits without waiting for it (Ray's own exit
    hook stops the workers).
    """
    import threading

    outcome: dict = {}

    def target() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as exc:  # handed to the caller's thread as it is
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="ray-train-fit", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.2)  # short waits: the main thread must get back to Python to see a Ctrl-C
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]
