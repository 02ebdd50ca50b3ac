"""A Qdrant collection of chunk vectors: embedded local mode by path, or a Qdrant server by URL; same code.

Local mode (``QdrantClient(path=...)``) keeps the collection in files and takes an exclusive file
lock on that folder: one client per folder per process, and no second process while it is open
(Ray workers included). So :func:`connect` hands out one cached client per folder (and per URL),
and the ingest pipeline upserts from the driver only. Local mode always searches by brute force:
its ``exact`` flag changes nothing; HNSW exists only in the server.

Vectors are unit length (see ``embedder``) and the collection uses cosine distance, so scores are
cosine similarities in [-1, 1]. Payloads are the chunk fields (``source``, ``start``, ``end``,
``text``, ``chunk_id``); ids are the chunks' uuid5 ids, so upserting again is idempotent.
"""
from __future__ import annotations

import atexit
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

#: ``path=MEMORY``: a local-mode collection held in memory only (benchmarks, scratch work); never cached.
MEMORY = ":memory:"
_CLIENTS: dict[str, Any] = {}
_CLIENTS_LOCK = threading.Lock()


class StoreError(RuntimeError):
    """The vector store is missing, locked or does not match the embedder. The message names the fix."""


class StoreLocked(StoreError):
    """Another process holds the local-mode folder (it may let go: waiting and retrying can help)."""


def connect(path: str | Path | None = None, url: str | None = None):
    """The process-wide ``QdrantClient`` for a local folder or a server URL (exactly one of them)."""
    from qdrant_client import QdrantClient
    if (path is None) == (url is None):
        raise ValueError("pass exactly one of path= (embedded local mode) or url= (Qdrant server)")
    if str(path) == MEMORY:
        return QdrantClient(MEMORY)  # nothing to lock or share: each caller gets its own
    key = _key(path, url)
    with _CLIENTS_LOCK:
        if key not in _CLIENTS:
            try:
                _CLIENTS[key] = QdrantClient(url=url) if url else QdrantClient(path=str(Path(path).resolve()))
            except RuntimeError as exc:  # the folder lock is held by another process
                raise StoreLocked(f"{exc} Only one process may open a local-mode index: stop the other user of "
                                 f"{path} (a serving replica, another job), or serve it from a Qdrant server "
                                 f"(qdrant_url=...)") from None
        return _CLIENTS[key]


def disconnect(path: str | Path | None = None, url: str | None = None) -> None:
    """Close and forget the cached client (releases the local-mode lock); a no-op if none is open.

    A ``VectorStore`` of that folder stays usable: it reconnects on its next call.
    """
    with _CLIENTS_LOCK:
        client = _CLIENTS.pop(_key(path, url), None)
    if client is not None:
        client.close()


def _key(path: str | Path | None, url: str | None) -> str:
    return f"url:{url}" if url else f"path:{Path(path).resolve()}"


@atexit.register
def _close_all() -> None:
    # Close while the interpreter still works: QdrantClient.__del__ at shutdown fails noisily on the lock file.
    for key in list(_CLIENTS):
        _CLIENTS.pop(key).close()


@dataclass(frozen=True)
class Hit:
    """One search result: the point id, its cosine score and its payload."""

    id: str
    score: float
    payload: dict[str, Any]


class VectorStore:
    """One collection in one Qdrant (local folder or server)."""

    def __init__(self, collection: str, *, path: str | Path | None = None, url: str | None = None) -> None:
        self.collection = collection
        self.path, self.url = path, url
        client = connect(path=path, url=url)  # open (or fail) now, not at the first call
        self._memory = client if str(path) == MEMORY else None  # the only handle on an in-memory collection

    @property
    def client(self):
        """The process-wide client, looked up on each use: a ``disconnect`` + reconnect replaces it for everyone."""
        return self._memory or connect(path=self.path, url=self.url)

    def release(self) -> None:
        """Close a local-mode client so another process may open the folder; the next call here reopens it."""
        if self.path is not None and self._memory is None:
            disconnect(path=self.path)

    def exists(self) -> bool:
        return self.client.collection_exists(self.collection)

    def ensure_collection(self, dimension: int, *, recreate: bool = False) -> None:
        """Create the collection (cosine, ``dimension``); an existing one must have that dimension."""
        from qdrant_client import models
        if recreate and self.exists():
            self.client.delete_collection(self.collection)
        if not self.exists():
            self.client.create_collection(self.collection, vectors_config=models.VectorParams(
                size=dimension, distance=models.Distance.COSINE))
            return
        have = self.dimension()
        if have != dimension:
            raise StoreError(f"collection {self.collection!r} holds {have}-dimensional vectors but the embedder gives "
                             f"{dimension}; rebuild the index with this embedder (rebuild=true) or use another collection")

    def dimension(self) -> int:
        return int(self.client.get_collection(self.collection).config.params.vectors.size)

    def count(self) -> int:
        return int(self.client.count(self.collection, exact=True).count)

    def upsert(self, ids: list[str], vectors: np.ndarray, payloads: list[dict[str, Any]]) -> None:
        from qdrant_client import models
        if not (len(ids) == len(vectors) == len(payloads)):
            raise ValueError(f"upsert needs as many ids, vectors and payloads; got {len(ids)}, {len(vectors)}, {len(payloads)}")
        self.client.upsert(self.collection, points=models.Batch(
            ids=list(ids), vectors=np.asarray(vectors, dtype=np.float32).tolist(), payloads=list(payloads)), wait=True)

    def _scroll(self, with_vectors: bool):
        offset = None
        while True:
            points, offset = self.client.scroll(self.collection, limit=1024, offset=offset, with_payload=False,
                                                with_vectors=with_vectors)
            yield from points
            if offset is None:
                return

    def ids(self) -> set[str]:
        """Every point id in the collection."""
        return {str(p.id) for p in self._scroll(with_vectors=False)}

    def vectors(self) -> tuple[list[str], np.ndarray]:
        """Every point's id and vector (benchmarks compare searches against brute force over these)."""
        points = list(self._scroll(with_vectors=True))
        return [str(p.id) for p in points], np.asarray([p.vector for p in points], dtype=np.float32)

    def prune(self, keep: Iterable[str]) -> int:
        """Delete the points whose id is not in ``keep`` (chunks of documents no longer indexed); returns how many."""
        from qdrant_client import models
        stale = sorted(self.ids() - set(keep))
        if stale:
            self.client.delete(self.collection, points_selector=models.PointIdsList(points=stale), wait=True)
        return len(stale)

    def search(self, vector: np.ndarray, *, top_k: int = 4, score_threshold: float | None = None,
               exact: bool = False) -> list[Hit]:
        """The ``top_k`` nearest points by cosine, best first; ``exact`` skips HNSW (server only, see module)."""
        from qdrant_client import models
        # Local mode is always exact and warns about search_params, so they go to a server only.
        params = models.SearchParams(exact=exact) if self.url else None
        result = self.client.query_points(
            self.collection, query=np.asarray(vector, dtype=np.float32).tolist(), limit=top_k,
            score_threshold=score_threshold, search_params=params, with_payload=True)
        return [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in result.points]
