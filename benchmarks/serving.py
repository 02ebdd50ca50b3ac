"""The serving stack under load, against its own engine called directly: what the gateway, Ray Serve and the bus cost.

Starts what ``journey up`` starts (a redis-server, Ray, the Serve app of ``services.app``) on this
machine and measures:
- **gateway**: non-streamed ``POST /v1/chat/completions`` from 1, 4 and 16 concurrent clients
  (threads with keep-alive HTTP clients), ``--requests`` per level: requests/s, p50/p99 latency and
  output tokens/s;
- **peer**: the same prompts with the same sampling on the same model through ``EngineBackend`` in
  this process (no HTTP, no Serve, no handles), at the same concurrency: the ratio
  gateway / direct is what the serving layers cost;
- **bus**: publish -> handler latency of our ``Bus``/``Consumer`` vs bare redis-py
  (``benchmarks/bus.py``): p50/p99 per message and the ratio; the target is p99 < 2 ms on loopback;
- **retrieval**: Qdrant HNSW vs exact search, recall@10 and p50/p99 (``benchmarks/retrieval.py``).

    python benchmarks/serving.py [--model tiny6/dpo] [--runs-dir runs] [--requests 48] [--max-tokens 32]

Prompts alternate between a few questions; greedy decoding, so both sides generate the same tokens.
Results go to ``--out`` (``serving.json``, ``serving.md``). Absolute numbers depend on the machine;
the ratios are the point.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPTS = ("What does the json module do?", "Use the calculator: 12 * 34", "What is 3 + 4?",
           "Tell me about the os module.")
LEVELS = (1, 4, 16)


def percentiles(latencies: list[float]) -> dict[str, float]:
    ms = np.array(latencies) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def gateway_level(base: str, clients: int, requests: int, max_tokens: int) -> dict:
    """``requests`` completions from ``clients`` threads; latency per request, wall for the level."""
    latencies: list[float] = []
    tokens: list[int] = []
    lock = threading.Lock()
    counter = iter(range(requests))

    def client() -> None:
        with httpx.Client(base_url=base, timeout=120) as http:
            for i in counter:
                body = {"model": "journey", "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                        "max_tokens": max_tokens, "use_rag": False, "tools": []}
                start = time.perf_counter()
                response = http.post("/v1/chat/completions", json=body)
                response.raise_for_status()
                with lock:
                    latencies.append(time.perf_counter() - start)
                    tokens.append(response.json()["usage"]["completion_tokens"])

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {"clients": clients, "requests": len(latencies), "requests_per_s": len(latencies) / wall,
            "output_tokens_per_s": sum(tokens) / wall, **percentiles(latencies)}


def direct_level(backend, clients: int, requests: int, max_tokens: int) -> dict:
    """The peer: the same requests through ``EngineBackend.stream`` in this process, ``clients`` at a time."""
    from shared.engine import SamplingParams
    params = SamplingParams(max_tokens=max_tokens, temperature=0)
    latencies: list[float] = []
    tokens: list[int] = []

    async def one(i: int) -> None:
        start = time.perf_counter()
        async for event in backend.stream([{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}], params):
            if event.kind == "done":
                tokens.append(event.metrics["completion_tokens"])
        latencies.append(time.perf_counter() - start)

    async def run() -> float:
        queue = iter(range(requests))

        async def worker() -> None:
            for i in queue:
                await one(i)
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return time.perf_counter() - start

    wall = asyncio.run(run())
    return {"clients": clients, "requests": len(latencies), "requests_per_s": len(latencies) / wall,
            "output_tokens_per_s": sum(tokens) / wall, **percentiles(latencies)}


def start_stack(model: str, runs_dir: str, redis_url: str, port: int) -> None:
    import ray
    from ray import serve

    from services.app import build_app
    ray.init(address="local", include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app({"model": model, "runs_dir": runs_dir, "redis_url": redis_url, "rag": "false",
                         "gateway": {"max_inflight": 64, "max_tokens": 512}}), name="journey", route_prefix="/")


def markdown(result: dict) -> str:
    lines = [f"# Serving benchmark ({result['model']}, max_tokens={result['max_tokens']})", "",
             "| clients | gateway req/s | direct req/s | ratio | gateway p50 / p99 (ms) | direct p50 / p99 (ms) | "
             "gateway out tok/s |", "|---|---|---|---|---|---|---|"]
    for g, d in zip(result["gateway"], result["direct"]):
        lines.append(f"| {g['clients']} | {g['requests_per_s']:.1f} | {d['requests_per_s']:.1f} | "
                     f"{g['requests_per_s'] / d['requests_per_s']:.2f}x | {g['p50_ms']:.0f} / {g['p99_ms']:.0f} | "
                     f"{d['p50_ms']:.0f} / {d['p99_ms']:.0f} | {g['output_tokens_per_s']:.0f} |")
    bus = result.get("bus")
    if bus:
        lines += ["", f"Bus: publish -> handler p50 {bus['bus']['p50_ms']:.3f} ms, p99 {bus['bus']['p99_ms']:.3f} ms; "
                      f"bare redis-py p50 {bus['redis_py']['p50_ms']:.3f} ms, p99 {bus['redis_py']['p99_ms']:.3f} ms "
                      f"(ratio p99 {bus['ratio_p99']:.2f}x; target p99 < 2 ms)."]
    retrieval = result.get("retrieval")
    if retrieval:
        from benchmarks.retrieval import markdown as retrieval_markdown
        lines += ["", retrieval_markdown(retrieval)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="artifact to serve (default: the newest run's final model)")
    parser.add_argument("--runs-dir", default=None)
    parser.add_argument("--requests", type=int, default=48, help="requests per concurrency level")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--skip-bus", action="store_true")
    parser.add_argument("--skip-retrieval", action="store_true")
    parser.add_argument("--out", default="runs/_bench/serving")
    args = parser.parse_args(argv)

    from shared.bus import RedisServer, free_port
    from shared.registry import Registry
    from shared.serving.backends import load_backend
    from shared.serving.pool import default_model
    registry = Registry(args.runs_dir)
    model = registry.resolve(args.model).id if args.model else default_model(registry).id
    result: dict = {"model": model, "max_tokens": args.max_tokens, "gateway": [], "direct": []}
    with tempfile.TemporaryDirectory() as tmp, RedisServer(tmp) as redis:
        port = free_port()
        start_stack(model, str(registry.root), redis.url, port)
        base = f"http://127.0.0.1:{port}"
        gateway_level(base, 1, 4, args.max_tokens)  # warm-up
        for clients in LEVELS:
            result["gateway"].append(gateway_level(base, clients, args.requests, args.max_tokens))
            print(f"gateway, {clients} clients: {result['gateway'][-1]}", flush=True)
        from ray import serve
        serve.shutdown()  # free the CPU for the peer
        backend = load_backend(registry.resolve(model), name=model)
        direct_level(backend, 1, 4, args.max_tokens)
        for clients in LEVELS:
            result["direct"].append(direct_level(backend, clients, args.requests, args.max_tokens))
            print(f"direct, {clients} clients: {result['direct'][-1]}", flush=True)
        backend.close()
        if not args.skip_bus:
            from benchmarks.bus import measure_bus_overhead
            result["bus"] = measure_bus_overhead(redis.url)
            result["bus"].pop("latencies_ms", None)
    if not args.skip_retrieval:
        from benchmarks.retrieval import measure_retrieval
        indexes = [a for a in registry.artifacts() if a.kind == "index"]
        result["retrieval"] = measure_retrieval(indexes[-1].path if indexes else None)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "serving.json").write_text(json.dumps(result, indent=2, default=str))
    (out / "serving.md").write_text(markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
