"""Approximate (HNSW) vs exact nearest-neighbour search: recall@10 and per-query latency p50/p99.

Over the vectors of a built index (``--index runs/<run>/index``; queries are the opening words of
random chunks, embedded with the index's embedder) or a synthetic corpus (``--vectors N`` unit
vectors in clusters of low intrinsic dimension, like sentence embeddings; queries are noisy copies
of corpus points):

- ``numpy``: brute-force dot products + argpartition, the peer and the ground truth of recall;
- ``qdrant``: Qdrant's default search, HNSW on a server (``--qdrant-url``; a synthetic corpus goes
  into a scratch collection there, dropped afterwards);
- ``qdrant-exact``: the same with ``exact=True`` (brute force inside Qdrant);
- ``faiss-hnsw-ef16`` / ``-ef100``: FAISS ``IndexHNSWFlat`` with Qdrant's default graph (m=16,
  ef_construct=100) searched with beam 16 and 100 (Qdrant's default), when ``faiss-cpu`` is
  installed: HNSW in-process, the algorithm the server's index runs.

Qdrant's embedded local mode has no HNSW: it always searches by brute force in Python and ignores
``exact``; its rows then say ``engine: local (brute force)``. Latency is search only (the query
embedding is timed separately, ``embed_ms_p50``); ratios are against numpy's p50.

    python benchmarks/retrieval.py [--index DIR] [--vectors 20000] [--queries 200] [--qdrant-url URL] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import random
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import numpy as np

TOP_K = 10
HNSW_M, HNSW_EF_CONSTRUCT = 16, 100  # Qdrant's defaults; its search ef defaults to ef_construct
HNSW_EFS = (16, 100)  # search beam widths of the HNSW peer: a narrow one shows what recall the speed costs
QUERY_NOISE = 0.07


def synthetic_corpus(n: int, dim: int, n_queries: int, seed: int, rank: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """``n`` unit vectors in clusters of ~1000, and noisy copies of random ones as queries.

    Points spread around their centre in a random ``rank``-dimensional subspace: sentence embeddings
    have a low intrinsic dimension, and isotropic noise in all 384 would be an unrealistically hard case.
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // 1000), dim)).astype(np.float32)
    basis = rng.standard_normal((rank, dim)).astype(np.float32) / np.sqrt(rank)
    data = _unit(centres[rng.integers(0, len(centres), n)] + rng.standard_normal((n, rank)).astype(np.float32) @ basis)
    # Noise of this size leaves a query at cosine ~0.6 from its source point, like a question and its passage.
    noise = QUERY_NOISE * rng.standard_normal((n_queries, dim)).astype(np.float32)
    queries = data[rng.integers(0, n, n_queries)] + noise
    return data, _unit(queries)


def index_corpus(index_dir: Path, n_queries: int, seed: int, qdrant_url: str | None):
    """``(store, point ids, vectors, queries, embed latencies in ms)`` of a built index."""
    from shared.rag.retriever import Retriever
    retriever = Retriever.from_index(index_dir, qdrant_url=qdrant_url)
    ids, vectors = retriever.store.vectors()
    lines = (Path(index_dir) / retriever.metadata["chunks_file"]).read_text(encoding="utf-8").splitlines()
    rng = random.Random(seed)
    texts = [" ".join(json.loads(rng.choice(lines))["text"].split()[:12]) for _ in range(n_queries)]
    embed_ms = []
    for text in texts:
        t0 = time.perf_counter()
        retriever.embedder.encode([text])
        embed_ms.append(1e3 * (time.perf_counter() - t0))
    return retriever.store, ids, vectors, retriever.embedder.encode(texts), embed_ms


def exact_top_k(vectors: np.ndarray, query: np.ndarray, k: int = TOP_K) -> np.ndarray:
    """Row indices of the ``k`` largest dot products, best first."""
    scores = vectors @ query
    top = np.argpartition(-scores, min(k, len(scores) - 1))[:k]
    return top[np.argsort(-scores[top])]


def timed(search: Callable[[np.ndarray], list[int]], queries: np.ndarray, truth: list[set[int]]) -> dict[str, float]:
    """Recall@k against ``truth`` and latency percentiles of ``search`` over ``queries`` (3 warm-up calls first)."""
    for q in queries[:3]:
        search(q)
    latencies, hits = [], 0
    for q, expected in zip(queries, truth):
        t0 = time.perf_counter()
        found = search(q)
        latencies.append(1e3 * (time.perf_counter() - t0))
        hits += len(set(found[:TOP_K]) & expected)
    return {"recall_at_10": hits / (len(truth) * TOP_K), "p50_ms": float(np.percentile(latencies, 50)),
            "p99_ms": float(np.percentile(latencies, 99))}


def qdrant_searchers(store, id_to_row: dict[str, int]) -> dict[str, Callable]:
    def search(exact: bool):
        return lambda q: [id_to_row[h.id] for h in store.search(q, top_k=TOP_K, exact=exact)]
    return {"qdrant": search(False), "qdrant-exact": search(True)}


def faiss_searchers(vectors: np.ndarray) -> dict[str, Callable]:
    """``faiss-hnsw-ef<N>`` searchers over one HNSW graph (Qdrant's m and ef_construct); none without faiss."""
    try:
        import faiss
    except ImportError:
        return {}
    index = faiss.IndexHNSWFlat(vectors.shape[1], HNSW_M, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = HNSW_EF_CONSTRUCT
    index.add(vectors)

    def search(ef: int) -> Callable:
        def run(q: np.ndarray) -> list[int]:
            index.hnsw.efSearch = ef
            return index.search(q[None, :], TOP_K)[1][0].tolist()
        return run
    return {f"faiss-hnsw-ef{ef}": search(ef) for ef in HNSW_EFS}


def measure_retrieval(index_dir: str | Path | None = None, n_queries: int = 200, *, n_vectors: int = 20_000,
                      dim: int = 384, qdrant_url: str | None = None, seed: int = 0) -> dict[str, Any]:
    """Recall@10 and p50/p99 search latency of each method (see the module docstring); ``index_dir=None``: synthetic."""
    embed_ms: list[float] = []
    if index_dir is not None:
        store, ids, vectors, queries, embed_ms = index_corpus(Path(index_dir), n_queries, seed, qdrant_url)
    else:
        vectors, queries = synthetic_corpus(n_vectors, dim, n_queries, seed)
        store, ids = scratch_store(vectors, qdrant_url)
    id_to_row = {pid: row for row, pid in enumerate(ids)}
    truth = [set(exact_top_k(vectors, q).tolist()) for q in queries]
    searchers: dict[str, Callable] = {"numpy": lambda q: exact_top_k(vectors, q).tolist(),
                                      **qdrant_searchers(store, id_to_row)}
    t0 = time.perf_counter()
    hnsw = faiss_searchers(vectors)
    searchers.update(hnsw)
    build_s = {"faiss-hnsw": time.perf_counter() - t0} if hnsw else {}
    try:
        rows = {name: timed(fn, queries, truth) for name, fn in searchers.items()}
    finally:
        if index_dir is None and qdrant_url:
            store.client.delete_collection(store.collection)
    base = rows["numpy"]["p50_ms"]
    for name, row in rows.items():
        row["p50_vs_numpy"] = row["p50_ms"] / base if base else None
    engine = "server (HNSW)" if store.url else "local (brute force; no HNSW)"
    return {"corpus": str(index_dir) if index_dir else f"synthetic {n_vectors}x{dim}", "n_vectors": len(vectors),
            "dim": int(vectors.shape[1]), "n_queries": len(queries), "top_k": TOP_K, "qdrant_engine": engine,
            "hnsw": {"m": HNSW_M, "ef_construct": HNSW_EF_CONSTRUCT, "ef": list(HNSW_EFS)}, "build_s": build_s,
            "embed_ms_p50": float(np.percentile(embed_ms, 50)) if embed_ms else None, "rows": rows}


def scratch_store(vectors: np.ndarray, qdrant_url: str | None):
    """A collection holding ``vectors``: on the server (HNSW built before returning) or in memory."""
    from shared.rag.store import MEMORY, VectorStore
    store = VectorStore(f"bench-{uuid.uuid4().hex[:8]}", **({"url": qdrant_url} if qdrant_url else {"path": MEMORY}))
    store.ensure_collection(vectors.shape[1])
    ids = [str(uuid.UUID(int=i)) for i in range(len(vectors))]
    for start in range(0, len(ids), 2048):
        store.upsert(ids[start:start + 2048], vectors[start:start + 2048], [{}] * len(ids[start:start + 2048]))
    if qdrant_url:
        wait_for_hnsw(store)
    return store, ids


def wait_for_hnsw(store, timeout_s: float = 300) -> None:
    """Make the server build the HNSW graph now (small collections stay unindexed by default) and wait for it."""
    from qdrant_client import models
    store.client.update_collection(store.collection, optimizers_config=models.OptimizersConfigDiff(indexing_threshold=1))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = store.client.get_collection(store.collection)
        if info.status == models.CollectionStatus.GREEN and (info.indexed_vectors_count or 0) > 0:
            return
        time.sleep(0.5)
    raise TimeoutError(f"Qdrant did not finish indexing {store.collection} in {timeout_s}s")


def markdown(r: dict[str, Any]) -> str:
    lines = [f"Retrieval: {r['corpus']} ({r['n_vectors']} vectors, {r['n_queries']} queries, top-{r['top_k']}); "
             f"Qdrant: {r['qdrant_engine']}", "",
             "| method | recall@10 | p50 ms | p99 ms | p50 vs numpy |", "|---|---|---|---|---|"]
    for name, row in r["rows"].items():
        lines.append(f"| {name} | {row['recall_at_10']:.3f} | {row['p50_ms']:.3f} | {row['p99_ms']:.3f} | "
                     f"{row['p50_vs_numpy']:.2f}x |")
    if r["embed_ms_p50"] is not None:
        lines.append(f"\nquery embedding p50: {r['embed_ms_p50']:.1f} ms")
    return "\n".join(lines) + "\n"


def plot(r: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(r["rows"])
    fig, ax = plt.subplots(figsize=(8, 4))
    x = np.arange(len(names))
    ax.bar(x - 0.2, [r["rows"][n]["p50_ms"] for n in names], 0.4, label="p50")
    ax.bar(x + 0.2, [r["rows"][n]["p99_ms"] for n in names], 0.4, label="p99")
    for i, n in enumerate(names):
        ax.annotate(f"recall {r['rows'][n]['recall_at_10']:.2f}", (i, r["rows"][n]["p99_ms"]), ha="center",
                    va="bottom", fontsize=8)
    ax.set_xticks(x, names, fontsize=8, rotation=10)
    ax.set_yscale("log")
    ax.set_ylabel("ms per query (log)")
    ax.set_title(f"top-{r['top_k']} search over {r['n_vectors']} vectors ({r['qdrant_engine']})", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", default=None, help="an index artifact folder (default: a synthetic corpus)")
    ap.add_argument("--vectors", type=int, default=20_000, help="synthetic corpus size")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--qdrant-url", default=None, help="a Qdrant server, for real HNSW (default: local mode)")
    ap.add_argument("--threads", type=int, default=1, help="torch and faiss threads: one query is too little work "
                                                           "to share, and extra threads only contend on a busy machine")
    ap.add_argument("--out", default="runs/benchmarks/retrieval")
    args = ap.parse_args()
    import torch
    torch.set_num_threads(args.threads)
    try:
        import faiss
        faiss.omp_set_num_threads(args.threads)
    except ImportError:
        pass
    result = measure_retrieval(args.index, args.queries, n_vectors=args.vectors, qdrant_url=args.qdrant_url)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "retrieval.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (out / "retrieval.md").write_text(markdown(result), encoding="utf-8")
    plot(result, out / "retrieval.png")
    print(markdown(result) + f"\nwritten to {out}/retrieval.{{json,md,png}}")


if __name__ == "__main__":
    main()
