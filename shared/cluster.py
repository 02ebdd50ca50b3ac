"""The Ray session every stage driver shares.

``ensure_ray()`` is called by any driver that starts Ray work (pretraining, post-training,
preference sampling, indexing, the scorecard): under ``ray job submit`` it joins the job's cluster,
otherwise it starts a local Ray once per process. It lives here, not in one stage's driver, so
that no stage imports another stage to reach Ray (``docs/architecture.md``, layers).
"""
from __future__ import annotations


def ensure_ray(num_cpus: int | None = None) -> None:
    """Connect to the cluster (under ``ray job submit``) or start a local Ray once per process."""
    import os

    import ray  # the Ray import costs seconds: only the drivers that start Ray work pay it
    if not ray.is_initialized():
        # A job's entrypoint has RAY_ADDRESS. Without it, "local" and not Ray's default: a bare ray.init() would
        # join the machine's last `ray start` cluster (/tmp/ray/ray_current_cluster), and wait forever on it
        # when that cluster died without `ray stop`.
        address = os.environ.get("RAY_ADDRESS") or "local"
        ray.init(address=address, num_cpus=None if address != "local" else num_cpus, include_dashboard=False,
                 log_to_driver=True, configure_logging=False)


_abandoned: list = []  # fit() threads left running by a Ctrl-C


def interrupted_fit_running() -> bool:
    """Whether a ``fit()`` that Ctrl-C left behind is still running in this process."""
    return any(t.is_alive() for t in _abandoned)


def exit_after_interrupt(code: int) -> None:
    """End an interrupted process whose ``fit()`` thread is still running: stop Ray, flush, ``os._exit``.

    Normal interpreter shutdown would finalize modules under a thread that is still in Ray's native
    code; stopping Ray first (its workers and, for a local Ray, its head) and skipping finalization
    gives a clean exit status. Does nothing (returns) when no such thread is alive.
    """
    if not interrupted_fit_running():
        return
    import os
    import sys

    import ray
    try:
        ray.shutdown()
    except Exception:  # noqa: BLE001 - exiting anyway; Ray's processes share the driver's fate
        pass
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def fit(trainer):
    """``trainer.fit()`` (a Ray Train trainer) where Ctrl-C is a KeyboardInterrupt, not Ray Train's abort.

    Ray Train 2.60 replaces the SIGINT handler during ``fit()`` when it runs in the main thread, and
    turns Ctrl-C into a "graceful abort" after which ``fit()`` *returns normally* with the last
    reported checkpoint: a stage would then register a half-trained model as finished. Called from a
    helper thread, ``fit()`` leaves SIGINT to Python: the main thread gets KeyboardInterrupt, the
    stage stays unfinished, and a rerun resumes it from its checkpoint (``shared.training.resume``).
    The thread is a daemon, so an interrupted process does not wait for it; it is recorded as
    abandoned so that the entry point ends the process with ``exit_after_interrupt`` (a daemon
    thread still inside Ray's native client when the interpreter finalizes can crash it: SIGSEGV
    instead of exit code 130, seen on a 2-core CI machine).
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
    try:
        while thread.is_alive():
            thread.join(0.2)  # short waits: the main thread must get back to Python to see a Ctrl-C
    except KeyboardInterrupt:
        _abandoned.append(thread)
        raise
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]
