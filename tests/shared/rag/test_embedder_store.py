"""The embedder (offline MiniLM) and the Qdrant store in local mode: search, thresholds, idempotence, errors."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from shared.rag.embedder import EmbedderError, load_embedder
from shared.rag.store import StoreError, VectorStore, connect, disconnect


@pytest.fixture(scope="module")
def embedder():
    return load_embedder()


def test_default_embedder_loads_offline_and_gives_unit_vectors(embedder):
    assert load_embedder("sentence-transformers/all-MiniLM-L6-v2") is embedder  # aliases share one model
    vectors = embedder.encode(["parse a JSON string", "decode JSON text into objects", "rivers flow to the sea"])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2
    assert embedder.encode([]).shape == (0, 384)


def test_unknown_model_offline_names_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EmbedderError, match="unknown embedding model 'no-such-org/no-such-model'.*offline default"):
        load_embedder("no-such-org/no-such-model")
    with pytest.raises(EmbedderError, match="not a loadable sentence-transformers model"):
        load_embedder(str(tmp_path))


def _store(tmp_path, name="c", dim=4) -> VectorStore:
    store = VectorStore(name, path=tmp_path / "qdrant")
    store.ensure_collection(dim)
    return store


def _unit(rows) -> np.ndarray:
    v = np.asarray(rows, dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


IDS = ["00000000-0000-0000-0000-00000000000%d" % i for i in range(3)]


def test_search_ranks_by_cosine_with_top_k_and_threshold(tmp_path):
    store = _store(tmp_path)
    store.upsert(IDS, _unit([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0]]), [{"n": i} for i in range(3)])
    hits = store.search(_unit([[1, 0.1, 0, 0]])[0], top_k=2)
    assert [h.payload["n"] for h in hits] == [0, 1] and hits[0].score > hits[1].score
    assert [h.id for h in store.search(_unit([[1, 0.1, 0, 0]])[0], top_k=3, score_threshold=0.5)] == IDS[:2]
    assert [h.id for h in store.search(_unit([[0, 0, 1, 0]])[0], top_k=1, exact=True)] == [IDS[2]]


def test_upserting_the_same_ids_is_idempotent_and_prune_drops_the_rest(tmp_path):
    store = _store(tmp_path)
    vectors = _unit([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]])
    store.upsert(IDS, vectors, [{"n": i} for i in range(3)])
    store.upsert(IDS, vectors, [{"n": i} for i in range(3)])
    assert store.count() == 3
    assert store.prune(IDS[:2]) == 1
    assert store.ids() == set(IDS[:2])


def test_a_collection_of_another_dimension_is_refused(tmp_path):
    _store(tmp_path, dim=4)
    with pytest.raises(StoreError, match="holds 4-dimensional vectors but the embedder gives 8; rebuild"):
        _store(tmp_path, dim=8)
    VectorStore("c", path=tmp_path / "qdrant").ensure_collection(8, recreate=True)
    assert VectorStore("c", path=tmp_path / "qdrant").dimension() == 8


def test_one_client_per_folder_and_another_process_is_told_why(tmp_path):
    path = tmp_path / "qdrant"
    assert connect(path=path) is connect(path=str(path))
    code = ("import sys; from shared.rag.store import connect, StoreError\n"
            "try: connect(path=sys.argv[1])\n"
            "except StoreError as e: print(e); sys.exit(3)\n")
    try:
        result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 3, result.stderr
        assert "Only one process may open a local-mode index" in result.stdout
    finally:
        disconnect(path=path)
