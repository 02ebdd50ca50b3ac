"""benchmarks/retrieval.py: exact methods agree with numpy, the HNSW peer is measured, the report renders."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from shared.config import REPO_ROOT


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("retrieval_benchmark", REPO_ROOT / "benchmarks" / "retrieval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_exact_top_k_is_sorted_best_first(bench):
    vectors = np.eye(4, dtype=np.float32)
    query = np.array([0.1, 0.9, 0.5, 0.0], dtype=np.float32)
    assert bench.exact_top_k(vectors, query, k=3).tolist() == [1, 2, 0]


def test_synthetic_measurement_has_every_method_and_exact_ones_agree(bench, tmp_path):
    r = bench.measure_retrieval(None, n_queries=20, n_vectors=2000, dim=32)
    assert r["n_vectors"] == 2000 and r["n_queries"] == 20 and r["qdrant_engine"].startswith("local")
    assert r["rows"]["numpy"]["recall_at_10"] == 1.0 and r["rows"]["numpy"]["p50_vs_numpy"] == 1.0
    assert r["rows"]["qdrant-exact"]["recall_at_10"] == pytest.approx(1.0)  # local mode is brute force too
    if importlib.util.find_spec("faiss") is not None:  # the HNSW peer is optional (faiss-cpu)
        assert 0.0 < r["rows"]["faiss-hnsw-ef100"]["recall_at_10"] <= 1.0
    assert all(row["p99_ms"] >= row["p50_ms"] > 0 for row in r["rows"].values())
    assert "| qdrant-exact | 1.000 |" in bench.markdown(r)
    bench.plot(r, tmp_path / "retrieval.png")
    assert (tmp_path / "retrieval.png").stat().st_size > 1000
