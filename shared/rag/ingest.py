"""Build an index folder with a Ray Data pipeline: read -> chunk -> embed -> upsert into Qdrant.

    read (one task per source) -> flat_map chunk_document -> map_batches Embed (actor pool)
        -> driver: upsert batches into Qdrant, append the chunks to chunks.jsonl

The embedding step is a callable class, so each actor loads the model once. Points are upserted
from the driver, not from the actors: Qdrant's local mode locks its folder to one client in one
process, so actors cannot write to it; with a server they could, but the embedding dominates the
cost and one writer keeps both modes on one code path. Order is preserved, so ``chunks.jsonl``
comes out the same on every run.

The folder holds ``chunks.jsonl`` (the source of truth: :func:`build_index` with ``rebuild``
re-embeds it into a fresh collection without reading the sources), ``qdrant/`` (local mode only)
and ``index.json`` (embedder, dimension, collection, Qdrant location: what ``Retriever.from_index``
reads), written last. Re-ingesting is idempotent: chunk ids are deterministic, so the same documents
upsert the same points, and points of chunks no longer produced are pruned. When done, the local
folder's lock is released, so a serving replica or an evaluation in another process can open it.
"""
from __future__ import annotations

import functools
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from shared.cluster import ensure_ray
from shared.data.documents import DataError
from shared.rag.chunking import Chunk, chunk_document
from shared.rag.embedder import EmbedderError, load_embedder
from shared.rag.index_config import IndexConfig
from shared.rag.sources import check_source, read_source
from shared.rag.store import VectorStore, disconnect

CHUNKS = "chunks.jsonl"
METADATA = "index.json"
LOCAL_QDRANT = "qdrant"


class Embed:
    """Ray Data ``map_batches`` UDF: adds a ``vector`` column (unit-length float32) to a batch of chunks."""

    def __init__(self, embedder: str, threads: int, batch_size: int) -> None:
        import torch
        torch.set_num_threads(threads)
        self.embedder, self.batch_size = load_embedder(embedder), batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {**batch, "vector": self.embedder.encode([str(t) for t in batch["text"]], self.batch_size)}


def _read(row: dict[str, Any], *, builtin_split: str, max_docs: int | None, text_field: str) -> list[dict]:
    return list(read_source(row["spec"], builtin_split=builtin_split, max_docs=max_docs, text_field=text_field))


def _chunk(row: dict[str, Any], *, chunk_chars: int, overlap: int, max_chunks: int | None) -> list[dict]:
    return [c.to_dict() for c in chunk_document(row["text"], row["source"], chunk_chars, overlap)[:max_chunks]]


def chunk_dataset(cfg: IndexConfig, out_dir: Path):
    """The Ray Dataset of chunks: read and chunked from the sources, or read back from ``chunks.jsonl``."""
    import ray
    if cfg.rebuild:
        path = out_dir / CHUNKS
        if not path.exists():
            raise FileNotFoundError(f"rebuild=true needs {path}, which does not exist; build the index first "
                                    f"(without rebuild=true)")
        return ray.data.from_items([json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
                                    if line.strip()])
    read = functools.partial(_read, builtin_split=cfg.builtin_split, max_docs=cfg.max_docs, text_field=cfg.text_field)
    chunk = functools.partial(_chunk, chunk_chars=cfg.chunk_chars, overlap=cfg.chunk_overlap,
                              max_chunks=cfg.max_chunks_per_doc)
    return ray.data.from_items([{"spec": s} for s in cfg.sources]).flat_map(read).flat_map(chunk)


def build_index(cfg: IndexConfig, out_dir: str | Path) -> dict[str, Any]:
    """Run the pipeline into ``out_dir``; returns the metadata written to ``index.json`` (with counts)."""
    import ray

    if not cfg.rebuild:
        for spec in cfg.sources:
            check_source(spec)  # first, on the driver: a typo fails at once with one line, not in a Ray task
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    made_from = _made_from(cfg, out_dir)
    (out_dir / METADATA).unlink(missing_ok=True)  # unfinished until rewritten
    dimension = load_embedder(cfg.embedder).dimension  # fails here, clearly, for an unknown model
    store = VectorStore(cfg.collection, **qdrant_location(cfg.qdrant_url, out_dir))
    store.ensure_collection(dimension, recreate=cfg.rebuild)
    ensure_ray()
    context = ray.data.DataContext.get_current()
    saved = (context.execution_options.preserve_order, context.enable_progress_bars,
             context.raise_original_map_exception)
    context.execution_options.preserve_order = True  # a Dataset snapshots the context it is built in
    context.enable_progress_bars = False  # our own bar below counts chunks, theirs would interleave with it
    context.raise_original_map_exception = True  # a DataError in a task reaches us as itself (see _unwrap_ray_errors)
    try:
        dataset = chunk_dataset(cfg, out_dir).map_batches(
            Embed, fn_constructor_args=(cfg.embedder, cfg.threads, cfg.batch_size), batch_size=cfg.batch_size,
            batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=cfg.embed_actors), num_cpus=1)
    finally:
        (context.execution_options.preserve_order, context.enable_progress_bars,
         context.raise_original_map_exception) = saved
    t0 = time.perf_counter()
    ids, documents = _upsert_all(dataset, store, cfg, out_dir)
    pipeline_s = time.perf_counter() - t0
    if not ids:
        raise DataError(f"the sources {cfg.sources} gave no text to index; check them (and builtin_split/max_docs)")
    pruned = store.prune(ids)
    metadata = {
        "embedder": cfg.embedder, "dimension": dimension, "distance": "cosine", "collection": cfg.collection,
        "qdrant": {"url": cfg.qdrant_url} if cfg.qdrant_url else {"path": LOCAL_QDRANT}, "chunks_file": CHUNKS,
        **made_from, "chunks": len(ids), "documents": len(documents), "points": store.count(), "pruned": pruned,
        "pipeline_s": pipeline_s, "chunks_per_s": len(ids) / pipeline_s,
    }
    (out_dir / METADATA).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    if not cfg.qdrant_url:
        disconnect(path=out_dir / LOCAL_QDRANT)  # release the folder lock: a server or an eval may open it next
    return metadata


def qdrant_location(url: str | None, index_dir: Path) -> dict[str, Any]:
    """``VectorStore`` keyword arguments: the server ``url``, else the local folder inside the index."""
    return {"url": url} if url else {"path": Path(index_dir) / LOCAL_QDRANT}


def _made_from(cfg: IndexConfig, out_dir: Path) -> dict[str, Any]:
    """How the chunks were made: from ``cfg``, or on a rebuild from the previous metadata (the chunks are its)."""
    keys = ("sources", "builtin_split", "max_docs", "chunk_chars", "chunk_overlap")
    previous = out_dir / METADATA
    if cfg.rebuild and previous.exists():
        old = json.loads(previous.read_text(encoding="utf-8"))
        return {k: old.get(k) for k in keys}
    return {k: getattr(cfg, k) for k in keys}


def _upsert_all(dataset, store, cfg: IndexConfig, out_dir: Path) -> tuple[list[str], set[str]]:
    """Drain the pipeline into Qdrant (and ``chunks.jsonl`` unless rebuilding); returns chunk ids and sources."""
    from tqdm import tqdm
    ids: list[str] = []
    documents: set[str] = set()
    tmp = out_dir / f".{CHUNKS}.tmp"
    sink = None if cfg.rebuild else tmp.open("w", encoding="utf-8")
    bar = tqdm(desc="index: chunks embedded", unit="chunk", disable=os.environ.get("JOURNEY_NO_PROGRESS") == "1")
    ok = False
    try:
        for batch in _unwrap_ray_errors(dataset.iter_batches(batch_size=cfg.upsert_batch, batch_format="numpy")):
            chunks = [Chunk(str(i), str(s), int(a), int(b), str(t)) for i, s, a, b, t in zip(
                batch["chunk_id"], batch["source"], batch["start"], batch["end"], batch["text"])]
            store.upsert([c.chunk_id for c in chunks], batch["vector"], [c.to_dict() for c in chunks])
            if sink is not None:
                sink.writelines(json.dumps(c.to_dict(), ensure_ascii=False) + "\n" for c in chunks)
            ids += [c.chunk_id for c in chunks]
            documents.update(c.source for c in chunks)
            bar.update(len(chunks))
        ok = True
    finally:
        bar.close()
        if sink is not None:
            sink.close()
            if ok:
                os.replace(tmp, out_dir / CHUNKS)
            else:
                tmp.unlink()  # never leave half a chunks file behind
    return ids, documents


def _unwrap_ray_errors(batches):
    """Re-raise a user error from inside a Ray task as itself (one line for the CLI), not as a Ray traceback."""
    import ray
    try:
        yield from batches
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, (DataError, EmbedderError)):
            # Our messages are one line; Ray appends its retry advice, which does not apply to bad data.
            raise type(exc.cause)(str(exc.cause).split("\n", 1)[0]) from None
        raise
