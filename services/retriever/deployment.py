"""``Retriever``: top-k passages for a query from an index artifact (Ray Serve deployment).

Serves the index the ``index`` stage built (``shared.rag``): the query is embedded with the index's
own embedding model and searched in Qdrant, local mode (the artifact's directory) by default or the
server at ``qdrant_url`` (compose, k8s). ``search`` returns plain dicts (``text``, ``source``,
``score``, ``start``, ``end``, ``chunk_id``) so callers need not import ``shared.rag``. Local-mode
Qdrant locks its directory, so a local index is served by one replica; scale out with the server.

``embed(texts)`` embeds with the same model (the gateway's ``POST /v1/embeddings``): ``{"vectors":
[[float]], "prompt_tokens": int}``, unit-length vectors; ``embedding_model()`` names it
(``{"model", "dimension"}``; a model loaded from a folder is named by the folder's last part, so no
path reaches a client).
"""
from __future__ import annotations

import asyncio
import dataclasses
from pathlib import PurePath

from ray import serve

from shared.registry import Registry


def find_index(registry: Registry, index: str | None, run: str | None) -> str:
    """The directory of the index artifact ``index`` names (default: the run's newest index)."""
    if index:
        return registry.resolve(index, run).path
    indexes = [a for a in registry.artifacts(run) if a.kind == "index"]
    if not indexes:
        raise LookupError(f"no index artifact under {registry.root} (run {run!r}): run `journey index` "
                          "(or the index stage of `journey run`), or start the stack with rag=false")
    return indexes[-1].path


@serve.deployment(max_ongoing_requests=16, ray_actor_options={"num_cpus": 0})
class Retriever:
    def __init__(self, index: str | None = None, run: str | None = None, runs_dir: str | None = None,
                 qdrant_url: str | None = None):
        from shared.rag import Retriever as RagRetriever
        self.index_dir = find_index(Registry(runs_dir), index, run)
        self.retriever = RagRetriever.from_index(self.index_dir, qdrant_url=qdrant_url)

    async def search(self, query: str, top_k: int = 4, score_threshold: float | None = None) -> list[dict]:
        passages = await asyncio.to_thread(self.retriever.search, query, top_k=top_k,
                                           score_threshold=score_threshold)
        return [p.model_dump() if hasattr(p, "model_dump") else dataclasses.asdict(p) for p in passages]

    def embedding_model(self) -> dict:
        embedder = self.retriever.embedder
        name = embedder.name
        if "/" in name and (name.startswith(("/", ".", "~")) or len(PurePath(name).parts) > 2):
            name = PurePath(name).name  # a local folder: its name, not where it lives
        return {"model": name, "dimension": embedder.dimension}

    async def embed(self, texts: list[str]) -> dict:
        embedder = self.retriever.embedder
        vectors = await asyncio.to_thread(embedder.encode, list(texts))
        tokenizer = getattr(embedder.model, "tokenizer", None)
        tokens = sum(len(ids) for ids in tokenizer(list(texts))["input_ids"]) if tokenizer is not None else 0
        return {"vectors": vectors.tolist(), "prompt_tokens": tokens}
