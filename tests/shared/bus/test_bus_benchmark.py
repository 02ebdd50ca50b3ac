"""benchmarks/bus.py runs end to end on a real Redis and cleans up after itself (figures: see the report)."""
import importlib.util
from pathlib import Path

import redis

BENCH = Path(__file__).resolve().parents[3] / "benchmarks" / "bus.py"


def test_measure_bus_overhead_compares_both_sides_and_leaves_no_keys(redis_url, tmp_path):
    spec = importlib.util.spec_from_file_location("bus_benchmark", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main(["--url", redis_url, "--n", "30", "--out", str(tmp_path)])
    for side in ("bus", "redis_py"):
        assert len(result["latencies_ms"][side]) == 30
        assert 0 < result[side]["p50_ms"] <= result[side]["p99_ms"] <= result[side]["max_ms"]
    assert result["ratio_p99"] == result["bus"]["p99_ms"] / result["redis_py"]["p99_ms"]
    assert (tmp_path / "bus.json").exists() and (tmp_path / "bus_latency.png").stat().st_size > 0
    assert redis.Redis.from_url(redis_url).dbsize() == 0
