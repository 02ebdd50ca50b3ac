"""Which model artifacts a generator serves: a small pool of loaded backends, one of them the default.

- ``Registry.models`` lists the registered artifacts a generator can run (HF checkpoints,
  quantized checkpoints, GGUF files); ``default_model(registry, run)`` picks a run's final model:
  the INT8 variant of the last post-training stage when the quantize stage made one (the
  "quantized generator"), else the last of rl / dpo / sft / cpt / pretrain.
- ``ModelPool.get(name)`` returns the loaded backend for an artifact name (``None``: the default),
  loading it on first use (``load_backend``: the artifact's kind picks the runtime) and unloading
  the least recently used idle model beyond ``max_loaded``.
  ``set_default(name)`` loads a model and makes it the default (a reload event): requests already
  streaming from the old model finish on it, which closes only when its last request is done.

Thread-safe: loads run under a lock, and a swap is one attribute assignment.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from shared.registry import MODEL_KINDS, Artifact, ArtifactNotFound, Registry
from shared.serving.backends import Backend, load_backend
from shared.serving.errors import ServingError

FINAL_STAGES = ("quantize-int8", "rl", "dpo", "sft", "cpt", "pretrain")


def default_model(registry: Registry, run: str | None = None) -> Artifact:
    """The run's final model (see the module docstring); the newest run when ``run`` is None."""
    runs = [run] if run else list(reversed(registry.runs()))
    for r in runs:
        by_stage = {a.stage: a for a in registry.models(r)}
        for stage in FINAL_STAGES:
            if stage in by_stage:
                return by_stage[stage]
    where = f"run {run!r}" if run else f"any run under {registry.root}"
    raise ArtifactNotFound(f"no model artifact in {where}: run `journey run` first, or name a model with model=...")


def _close_when_idle(backend: Backend, poll_s: float = 0.1, limit_s: float = 600.0) -> None:
    deadline = time.monotonic() + limit_s
    while backend.active_requests and time.monotonic() < deadline:
        time.sleep(poll_s)
    backend.close()


class ModelPool:
    """Loaded backends by artifact id, LRU beyond ``max_loaded`` (see the module docstring)."""

    def __init__(self, registry: Registry, default: str, *, max_loaded: int = 2, max_batch_size: int = 16,
                 loader: Callable[..., Backend] = load_backend):
        self.registry, self.max_loaded = registry, max_loaded
        self._loader, self._max_batch = loader, max_batch_size
        self._loaded: OrderedDict[str, Backend] = OrderedDict()
        self._lock = threading.Lock()
        self.default = self.resolve(default).id
        self.get(None)  # the default loads at start: fail fast on a broken artifact

    def resolve(self, name: str) -> Artifact:
        """The artifact ``name`` names; ``ServingError`` 404 when unknown, 400 when not a model."""
        try:
            artifact = self.registry.resolve(name)
        except ArtifactNotFound:
            # Not the registry's message: it names the runs directory, which a client must not learn.
            raise ServingError(f"unknown model {name[:120]!r}: name a servable artifact id (GET /v1/models lists "
                               "them)", status=404) from None
        if artifact.kind not in MODEL_KINDS:
            raise ServingError(f"{artifact.id} is a {artifact.kind} artifact, not a model; servable kinds: "
                               f"{', '.join(MODEL_KINDS)} (see GET /v1/models)", status=400)
        return artifact

    def get(self, name: str | None) -> tuple[str, Backend]:
        """``(artifact id, backend)`` for ``name`` (``None``: the default), loading it if needed."""
        model_id = self.default if name in (None, "", self.default) else self.resolve(name).id
        with self._lock:
            backend = self._loaded.get(model_id)
            if backend is None:
                # The artifact itself, not its path: its kind picks the runtime (shared.serving.runtime).
                backend = self._loader(self.registry.resolve(model_id), name=model_id, max_batch_size=self._max_batch)
                self._loaded[model_id] = backend
            self._loaded.move_to_end(model_id)
            self._evict(keep=model_id)
            return model_id, backend

    def _evict(self, keep: str | None = None) -> None:
        """Unload least recently used models beyond ``max_loaded``, never the default or ``keep``."""
        for model_id in list(self._loaded):
            if len(self._loaded) <= self.max_loaded:
                return
            if model_id not in (self.default, keep):
                backend = self._loaded.pop(model_id)
                threading.Thread(target=_close_when_idle, args=(backend,), daemon=True).start()

    def set_default(self, name: str) -> str:
        """Load ``name`` and make it the default; in-flight requests on the old default finish first."""
        model_id = self.resolve(name).id
        self.get(model_id)
        with self._lock:
            self.default = model_id
            self._evict()
        return model_id

    def loaded(self) -> list[str]:
        return list(self._loaded)

    def close(self) -> None:
        with self._lock:
            for backend in self._loaded.values():
                backend.close()
            self._loaded.clear()
