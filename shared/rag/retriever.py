"""Query an index folder: ``Retriever.from_index(dir).search(query, top_k=4) -> [Passage, ...]``.

The index folder is what ``build_index`` / the ``index`` stage writes; ``index.json`` names the
embedder, the collection and where Qdrant is (its ``qdrant/`` subfolder in local mode, or a server
URL, which ``qdrant_url=`` overrides: compose and k8s reach the same server under another name).

Local mode allows one client per folder per process and no second process (see ``store``), so
``from_index`` returns one cached ``Retriever`` per (folder, URL) in a process, and only one
process (one serving replica) may open a local-mode index at a time; scale out with a Qdrant
server. Building the index is not done here (``ingest``).
"""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from shared.rag.embedder import Embedder, load_embedder
from shared.rag.ingest import METADATA, qdrant_location
from shared.rag.store import StoreError, VectorStore

_CACHE: dict[tuple[str, str | None], "Retriever"] = {}
_CACHE_LOCK = threading.Lock()


class Passage(BaseModel):
    """One retrieved chunk: ``text == document[start:end]`` of ``source``; ``score`` is the cosine similarity."""

    text: str
    source: str
    score: float
    start: int
    end: int
    chunk_id: str


class IndexNotFound(FileNotFoundError):
    """A folder is not a finished index. The message names the fix."""


def read_metadata(index_dir: str | Path) -> dict[str, Any]:
    """The ``index.json`` of an index folder, or ``IndexNotFound`` saying how to make one."""
    index_dir = Path(index_dir)
    path = index_dir / METADATA
    if not path.exists():
        manifest = index_dir / "journey.json"
        what = (f"a {json.loads(manifest.read_text(encoding='utf-8')).get('kind', '?')} artifact, not an index"
                if manifest.exists() else "not a finished index")
        raise IndexNotFound(f"{index_dir} is {what} (no {METADATA}); pass the index stage's folder "
                            f"(runs/<run>/index), or build one with `python -m ray_jobs.index --config tiny run=<run>`")
    return json.loads(path.read_text(encoding="utf-8"))


class Retriever:
    """Embeds a query and returns the nearest chunks of one index."""

    def __init__(self, store: VectorStore, embedder: Embedder, metadata: dict[str, Any]) -> None:
        if embedder.dimension != metadata["dimension"]:
            raise StoreError(f"embedder {embedder.name} gives {embedder.dimension} dimensions but the index holds "
                             f"{metadata['dimension']}; query with the index's embedder ({metadata['embedder']})")
        self.store, self.embedder, self.metadata = store, embedder, metadata

    @classmethod
    def from_index(cls, index_dir: str | Path, *, qdrant_url: str | None = None) -> "Retriever":
        """The retriever of an index folder; one per (folder, URL) per process (see the module docstring)."""
        key = (str(Path(index_dir).resolve()), qdrant_url)
        with _CACHE_LOCK:
            if key not in _CACHE:
                _CACHE[key] = cls._open(Path(index_dir), qdrant_url)
            return _CACHE[key]

    @classmethod
    def _open(cls, index_dir: Path, qdrant_url: str | None) -> "Retriever":
        metadata = read_metadata(index_dir)
        url = qdrant_url or metadata["qdrant"].get("url")
        location = qdrant_location(url, index_dir)
        if not url and not location["path"].is_dir():
            raise IndexNotFound(f"{location['path']} (the index's local Qdrant folder) is missing; restore it from "
                                f"chunks.jsonl with `python -m ray_jobs.index rebuild=true run=<run>`")
        store = VectorStore(metadata["collection"], **location)
        if not store.exists():
            where = url or location["path"]
            raise IndexNotFound(f"collection {metadata['collection']!r} does not exist in {where}; rebuild it from "
                                f"{index_dir}/chunks.jsonl with `python -m ray_jobs.index rebuild=true run=<run>`")
        return cls(store, load_embedder(metadata["embedder"]), metadata)

    def search(self, query: str, *, top_k: int = 4, score_threshold: float | None = None) -> list[Passage]:
        """The ``top_k`` chunks most similar to ``query``, best first, none scoring below ``score_threshold``."""
        if not isinstance(query, str) or not query.strip():
            raise ValueError("search needs a non-empty query string")
        return self.search_vector(self.embedder.encode([query])[0], top_k=top_k, score_threshold=score_threshold)

    def search_vector(self, vector: np.ndarray, *, top_k: int = 4, score_threshold: float | None = None,
                      exact: bool = False) -> list[Passage]:
        """``search`` for an already embedded query (benchmarks, batch evaluation)."""
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        hits = self.store.search(vector, top_k=top_k, score_threshold=score_threshold, exact=exact)
        return [Passage(score=h.score, **{k: h.payload[k] for k in ("text", "source", "start", "end", "chunk_id")})
                for h in hits]
