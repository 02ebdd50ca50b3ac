"""``journey down`` stops the Ray head ``journey up`` started and no other Ray cluster on the machine.

Two real heads (``ray start --head``) on free ports: one stands for the stack's, one for a cluster the
user runs beside it. ``ray stop``, which ``down`` used to call, would end both.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ray._private.utils import read_ray_address

from services.stack import ray_head_pids, stop_ray_head
from shared.bus.redis_server import free_port

RAY = str(Path(sys.executable).parent / "ray")


def start_head(port: int) -> None:
    # Every port a second head would otherwise take from the first one's defaults is set apart.
    ports = {flag: free_port() for flag in ("--ray-client-server-port", "--dashboard-agent-listen-port",
                                             "--dashboard-agent-grpc-port", "--runtime-env-agent-port",
                                             "--metrics-export-port")}
    cmd = [RAY, "start", "--head", "--port", str(port), "--num-cpus", "1", "--disable-usage-stats",
           "--include-dashboard=false"] + [x for flag, p in ports.items() for x in (flag, str(p))]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)


def test_stop_ray_head_ends_that_head_only():
    ours, theirs = free_port(), free_port()
    try:
        start_head(theirs)
        start_head(ours)
        assert read_ray_address().endswith(f":{ours}")  # `ray start` made ours the machine's current cluster
        ours_before, theirs_before = ray_head_pids(ours), ray_head_pids(theirs)
        assert len(ours_before) >= 2 and len(theirs_before) >= 2  # at least the GCS server and the raylet
        assert not set(ours_before) & set(theirs_before)

        assert stop_ray_head(ours) == len(ours_before)
        assert ray_head_pids(ours) == []
        assert sorted(ray_head_pids(theirs)) == sorted(theirs_before)  # the other cluster runs on, untouched
        # The record of the stopped head is gone, so a later plain ray.init() does not dial a dead address.
        assert read_ray_address() is None
    finally:
        stop_ray_head(ours)
        stop_ray_head(theirs)
    assert ray_head_pids(theirs) == []
