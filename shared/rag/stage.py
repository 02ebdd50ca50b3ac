"""The index stage: ``run_index(cfg)`` builds ``<run>/<stage>/`` with ``build_index`` and registers it.

The artifact (kind ``index``) holds ``index.json``, ``chunks.jsonl`` and, in local mode, ``qdrant/``;
its ``journey.json`` repeats the index metadata under ``extra.index`` and records the counts and
embedding speed as metrics. ``rebuild=true`` re-embeds the existing artifact's ``chunks.jsonl`` into
a fresh collection (it implies ``overwrite``: it exists to redo that artifact).
"""
from __future__ import annotations

import time

from shared.rag.index_config import IndexConfig
from shared.rag.ingest import build_index
from shared.registry import Registry

METRICS = ("documents", "chunks", "points", "pruned", "chunks_per_s")


def run_index(cfg: IndexConfig):
    """Build and register the index artifact ``<cfg.run>/<cfg.stage>``; returns the ``Artifact``."""
    registry = Registry(cfg.runs_dir)
    out_dir = registry.stage_dir(cfg.run, cfg.stage, overwrite=cfg.overwrite or cfg.rebuild)
    t0 = time.perf_counter()
    metadata = build_index(cfg, out_dir)
    print(f"index: {metadata['chunks']} chunks of {metadata['documents']} documents in "
          f"{metadata['pipeline_s']:.1f}s ({metadata['chunks_per_s']:.1f} chunks/s) -> {out_dir}", flush=True)
    return registry.register(cfg.run, cfg.stage, "index", config=cfg,
                             metrics={k: metadata[k] for k in METRICS}, extra={"index": metadata},
                             timings={"index": time.perf_counter() - t0})
