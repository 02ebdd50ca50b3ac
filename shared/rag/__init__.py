"""Retrieval: chunk documents, embed them (sentence-transformers), store and search them in Qdrant.

    art = run_index(load_config(IndexConfig, "index", "tiny"))        # the stage: Ray Data ingest
    Retriever.from_index(art.path).search("how do I parse JSON?", top_k=4)   # -> [Passage, ...]

Modules: ``chunking`` (overlapping chunks, uuid5 ids), ``sources`` (documents to index),
``embedder`` (sentence-transformers, offline default), ``store`` (Qdrant local folder or server),
``ingest`` (the Ray Data pipeline), ``retriever`` (search), ``stage`` (the registered artifact).
The Ray Serve deployment lives in ``services/retriever``, not here.
"""
from shared.rag.chunking import Chunk, chunk_document
from shared.rag.embedder import Embedder, EmbedderError, load_embedder
from shared.rag.index_config import DEFAULT_EMBEDDER, IndexConfig
from shared.rag.retriever import IndexNotFound, Passage, Retriever, read_metadata
from shared.rag.stage import run_index
from shared.rag.store import StoreError, StoreLocked, VectorStore

__all__ = ["DEFAULT_EMBEDDER", "Chunk", "Embedder", "EmbedderError", "IndexConfig", "IndexNotFound", "Passage",
           "Retriever", "StoreError", "StoreLocked", "VectorStore", "chunk_document", "load_embedder",
           "read_metadata", "run_index"]
