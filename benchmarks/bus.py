"""Bus overhead per message on loopback: our ``Bus``/``Consumer`` vs a bare redis-py consumer-group loop.

Latency is the time from just before the publish to the start of the handler, one message in flight at
a time (the publisher waits for each to arrive), after a warm-up. Both sides run in this process on
the same Redis with the same payload (a small ``ToolRequest``), interleaved in chunks so that a
change in machine load hits both alike:
- bus: ``Bus.publish`` (pydantic -> JSON, ``XADD MAXLEN ~``) and a ``Consumer`` thread (``XREADGROUP``,
  decode + validate, dedupe lookup, handler, done mark + ``XACK`` in one ``MULTI``, own-PEL scans);
- redis-py (the peer): ``XADD`` of the already-encoded fields, a thread looping ``XREADGROUP BLOCK`` ->
  handler(raw fields) -> ``XACK``.
The overhead is what the bus adds on top of the peer; the DESIGN target is a p99 under 2 ms.

    python benchmarks/bus.py [--url redis://...] [--n 2000] [--out runs/benchmarks/bus]

Without ``--url`` it starts its own redis-server (AOF everysec) in a temporary directory.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import redis

from shared.bus import Bus, Consumer, RedisServer, ToolRequest, encode

STREAM, GROUP, WARMUP = "bench.requests", "bench", 100


def _message(i: int) -> ToolRequest:
    return ToolRequest(name="calculator", arguments={"expression": f"{i} * 7"}, reply_to=f"tools.results.{i}")


class _Side:
    """One side of the comparison: a consumer thread whose handler stamps arrival times, and ``publish(i)``."""

    def __init__(self):
        self.arrived: list[float] = []
        self.event = threading.Event()

    def handler(self, _message) -> None:
        self.arrived.append(time.perf_counter())
        self.event.set()

    def latency(self, i: int) -> float:
        """Publish message ``i`` and wait for it: handler start - publish start, in seconds."""
        self.event.clear()
        start = time.perf_counter()
        self.publish(i)
        if not self.event.wait(10):
            raise RuntimeError(f"message {i} never reached the handler of {type(self).__name__}: consumer dead?")
        return self.arrived[-1] - start


class _BusSide(_Side):
    def __init__(self, url: str, prefix: str, total: int):
        super().__init__()
        self.bus = Bus(url, prefix=prefix)
        self.messages = [_message(i) for i in range(total)]  # built up front: the peer does not pay for it either
        self.consumer = Consumer(self.bus, STREAM, GROUP, "bench", self.handler, block_ms=100)
        self.consumer.start()

    def publish(self, i: int) -> None:
        self.bus.publish(STREAM, self.messages[i])

    def close(self) -> None:
        self.consumer.stop()
        self.bus.close()


class _RedisPySide(_Side):
    def __init__(self, url: str, prefix: str, total: int):
        super().__init__()
        self.client, self.key = redis.Redis.from_url(url), f"{prefix}{STREAM}"
        self.client.xgroup_create(self.key, GROUP, id="0", mkstream=True)
        self.fields = [encode(_message(i)) for i in range(total)]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self) -> None:
        while not self.stop.is_set():
            for _, entries in self.client.xreadgroup(GROUP, "bench", {self.key: ">"}, count=16, block=100) or []:
                for entry_id, fields in entries:
                    self.handler(fields)
                    self.client.xack(self.key, GROUP, entry_id)

    def publish(self, i: int) -> None:
        self.client.xadd(self.key, self.fields[i])

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.client.close()


def _interleaved(sides: dict[str, _Side], n: int, rounds: int = 10) -> dict[str, np.ndarray]:
    """WARMUP messages each, then ``n`` each in ``rounds`` alternating chunks, so a change in machine load
    (other people's jobs) hits both sides alike."""
    for side in sides.values():
        for i in range(WARMUP):
            side.latency(i)
    out: dict[str, list[float]] = {name: [] for name in sides}
    bounds = np.linspace(WARMUP, WARMUP + n, rounds + 1).astype(int)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        for name, side in sides.items():
            out[name].extend(side.latency(i) for i in range(lo, hi))
    return {name: np.array(values) * 1000 for name, values in out.items()}


def _summary(ms: np.ndarray) -> dict:
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean()), "max_ms": float(ms.max())}


def measure_bus_overhead(url: str, n: int = 2000) -> dict:
    """Publish-to-handler latency of the bus and of bare redis-py, ``n`` messages each, on the Redis at ``url``.

    Returns ``{"n", "bus": {p50_ms, p99_ms, mean_ms, max_ms}, "redis_py": {...}, "overhead_p50_ms",
    "overhead_p99_ms", "ratio_p50", "ratio_p99", "latencies_ms": {"bus": [...], "redis_py": [...]}}``.
    Keys it creates (under a random prefix) are deleted afterwards.
    """
    prefix, sides = f"bench-{uuid.uuid4().hex[:8]}:", {}
    try:
        sides["redis_py"] = _RedisPySide(url, prefix + "peer:", WARMUP + n)
        sides["bus"] = _BusSide(url, prefix + "bus:", WARMUP + n)
        latencies = _interleaved(sides, n)
        ours, peer = latencies["bus"], latencies["redis_py"]
    finally:
        for side in sides.values():
            side.close()
        with redis.Redis.from_url(url) as client:
            for key in client.scan_iter(match=f"{prefix}*", count=1000):
                client.unlink(key)
    bus_s, peer_s = _summary(ours), _summary(peer)
    return {"n": n, "bus": bus_s, "redis_py": peer_s,
            "overhead_p50_ms": bus_s["p50_ms"] - peer_s["p50_ms"],
            "overhead_p99_ms": bus_s["p99_ms"] - peer_s["p99_ms"],
            "ratio_p50": bus_s["p50_ms"] / peer_s["p50_ms"], "ratio_p99": bus_s["p99_ms"] / peer_s["p99_ms"],
            "latencies_ms": {"bus": ours.tolist(), "redis_py": peer.tolist()}}


def plot(result: dict, path: Path) -> None:
    """The latency distributions of both sides as CDFs (log x), p99 marked."""
    import matplotlib
    matplotlib.use("Agg")  # written to a file, on machines without a display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, label in (("bus", "shared.bus Bus/Consumer"), ("redis_py", "bare redis-py loop")):
        ms = np.sort(result["latencies_ms"][name])
        ax.plot(ms, np.arange(1, len(ms) + 1) / len(ms), label=f"{label} (p99 {result[name]['p99_ms']:.2f} ms)")
    ax.axhline(0.99, color="grey", lw=0.5, ls="--")
    ax.axvline(2.0, color="red", lw=0.8, ls=":", label="2 ms target")
    ax.set(xscale="log", xlabel="publish -> handler latency (ms)", ylabel="fraction of messages",
           title=f"Bus overhead on loopback, {result['n']} messages")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="a running Redis (default: start a temporary redis-server)")
    parser.add_argument("--n", type=int, default=2000, help="messages timed per side (after 100 warm-up)")
    parser.add_argument("--out", help="directory for bus.json and bus_latency.png")
    args = parser.parse_args(argv)
    if args.url:
        result = measure_bus_overhead(args.url, args.n)
    else:
        with tempfile.TemporaryDirectory() as tmp, RedisServer(tmp) as server:
            result = measure_bus_overhead(server.url, args.n)
    print(f"{'':10} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
    for name in ("bus", "redis_py"):
        print(f"{name:10} {result[name]['p50_ms']:8.3f} {result[name]['p99_ms']:8.3f} {result[name]['mean_ms']:8.3f}")
    print(f"bus / redis-py: p50 x{result['ratio_p50']:.2f}, p99 x{result['ratio_p99']:.2f}; overhead "
          f"p50 {result['overhead_p50_ms']:+.3f} ms, p99 {result['overhead_p99_ms']:+.3f} ms (target: bus p99 < 2 ms)")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "bus.json").write_text(json.dumps({k: v for k, v in result.items() if k != "latencies_ms"}, indent=2))
        plot(result, out / "bus_latency.png")
        print(f"wrote {out / 'bus.json'} and {out / 'bus_latency.png'}")
    return result


if __name__ == "__main__":
    main()
