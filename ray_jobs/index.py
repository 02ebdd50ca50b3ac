"""Build a retrieval index: documents -> overlapping chunks -> embeddings -> Qdrant (a Ray Data pipeline).

    python -m ray_jobs.index --config tiny run=myrun                      (held-out Python docs)
    python -m ray_jobs.index --config tiny run=myrun sources=[docs/] builtin_split=all
    python -m ray_jobs.index --config tiny run=myrun rebuild=true embedder=<model>   (re-embed chunks.jsonl)
    python -m ray_jobs.index --config tiny run=myrun qdrant_url=http://qdrant:6333   (a Qdrant server)

The artifact ``<run>/index`` (kind ``index``) holds ``chunks.jsonl`` (the chunks, so the index can be
rebuilt without the sources), ``index.json`` (embedder, dimension, collection, Qdrant location) and,
in local mode, the Qdrant folder. ``shared.rag.Retriever.from_index(<artifact dir>)`` searches it.
"""
from __future__ import annotations

import sys

from ray_jobs._args import stage_main


def main(argv: list[str] | None = None) -> int:
    return stage_main("index", argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
