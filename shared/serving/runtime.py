"""Which runtime opens a saved model: decided here, once, from the registry artifact's ``kind``.

``open_model(artifact_or_path)`` opens a saved model on the runtime its kind names (``RUNTIMES``):

- ``hf-model`` (an HF checkpoint directory): our ``Engine`` (``Engine.from_checkpoint``); an MoE one
  (``model_type`` qwen2_moe or ernie4_5_moe, ``shared.model.hf.save_moe_checkpoint``) on
  ``shared.engine.moe_model.MoEEngineModel``;
- ``quantized`` (``quantization.json`` + ``quantized.safetensors``, ``shared.quant.quantized_checkpoint``):
  our ``Engine`` over the quantized engine model, with the directory's tokenizer when it has one;
- ``gguf`` (a ``*.gguf`` file, ``shared.quant.gguf_export`` / llama.cpp's quantizer): llama.cpp, whatever the
  architecture (gpt2, or an MoE's qwen2moe / ernie4_5-moe / qwen2 from ``shared.quant.gguf_moe``).

An ``Artifact`` carries its kind; a path with a ``journey.json`` is read as that artifact; a bare path
without one (a checkpoint copied out of a run, a test's directory) has its kind inferred from its files
by ``artifact_kind``, in this module only: a ``.gguf`` file, then ``quantization.json``, then
``config.json``. Any other kind (a dataset, tokenizer, index, report, reward model) is refused with a
``ServingError`` (status 400) naming the kinds that can be opened; a missing path is a 404.

The result, ``OpenModel``, holds the runtime's object (``engine`` or ``llama``), the tokenizer the
runtime's ids belong to and the usable context. What callers do with it is theirs: the generator wraps
it in a streaming backend (``shared.serving.backends``), eval scores and generates with it
(``shared.eval.engine_backend``).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from shared.engine import Engine, EngineConfig
from shared.model.hf import CONFIG_FILE
from shared.quant.llama_cpp import context_limit, gguf_file, load_llama
from shared.quant.quantized_checkpoint import QUANT_FILE, load_quantized_engine_model
from shared.registry import MANIFEST, MODEL_KINDS, Artifact, Registry
from shared.serving.errors import ServingError
from shared.tokenizer.gguf_vocab import hf_tokenizer_from_gguf
from shared.tokenizer.hf_format import TOKENIZER_FILE, load_tokenizer

#: artifact kind -> the runtime that opens it (the registry's ``MODEL_KINDS``, each with its runtime).
RUNTIMES = {"hf-model": "engine", "quantized": "engine", "gguf": "llama.cpp"}


@dataclass
class OpenModel:
    """A saved model opened on its runtime: ``engine`` (hf-model, quantized) or ``llama`` (gguf) is set."""

    kind: str
    path: Path
    engine: Engine | None = None
    llama: Any = None  # a llama_cpp.Llama
    gguf: Path | None = None  # the model file, for a gguf artifact

    @property
    def runtime(self) -> str:
        return RUNTIMES[self.kind]

    @cached_property
    def tokenizer(self):
        """The tokenizer of the runtime's ids: the engine's (None for a quantized directory saved without
        one), or an HF tokenizer rebuilt from the GGUF file's own vocabulary (the ids llama.cpp uses)."""
        return self.engine.tokenizer if self.engine is not None else hf_tokenizer_from_gguf(self.gguf)

    @property
    def context(self) -> int:
        """Usable positions: the engine's ``max_seq_len``, or llama.cpp's context capped at the trained one."""
        return self.engine.max_seq_len if self.engine is not None else context_limit(self.llama)

    def close(self) -> None:
        if self.llama is not None:
            self.llama.close()


def artifact_kind(path: str | Path) -> str | None:
    """The kind of what is saved at ``path``: its ``journey.json``'s when it is a registered artifact, else
    inferred from its files (see the module docstring); None when it holds no model."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        return Registry.load(path).kind
    if gguf_file(path) is not None:
        return "gguf"
    if (path / QUANT_FILE).is_file():
        return "quantized"
    if (path / CONFIG_FILE).is_file():
        return "hf-model"
    return None


def _open_hf(path: Path, config: EngineConfig, **_) -> OpenModel:
    from shared.model.hf import is_moe_checkpoint

    if is_moe_checkpoint(path):
        return OpenModel("hf-model", path, engine=_moe_engine(path, config))
    return OpenModel("hf-model", path, engine=Engine.from_checkpoint(path, config))



def _moe_engine(path: Path, config: EngineConfig) -> Engine:
    from shared.engine.engine import _DTYPES
    from shared.engine.moe_model import MoEEngineModel
    from shared.model.hf import load_moe

    dtype = _DTYPES[config.dtype]
    tokenizer = load_tokenizer(path) if (path / TOKENIZER_FILE).is_file() else None
    return Engine(MoEEngineModel.from_moe(load_moe(path), dtype=dtype), tokenizer, config)


def _open_quantized(path: Path, config: EngineConfig, **_) -> OpenModel:
    model = load_quantized_engine_model(path, dtype=config.dtype, backend=config.linear_backend)
    tokenizer = load_tokenizer(path) if (path / TOKENIZER_FILE).is_file() else None
    return OpenModel("quantized", path, engine=Engine(model, tokenizer, config))


def _open_gguf(path: Path, config: EngineConfig, *, logits_all: bool, n_threads: int | None) -> OpenModel:
    file = gguf_file(path)
    if file is None:
        raise ServingError(f"{path} is a gguf artifact without a .gguf file; rerun the stage that made it")
    return OpenModel("gguf", path, llama=load_llama(file, n_threads=n_threads, logits_all=logits_all), gguf=file)


# The same keys as RUNTIMES and the registry's MODEL_KINDS (tested).
_OPENERS: dict[str, Callable[..., OpenModel]] = {"hf-model": _open_hf, "quantized": _open_quantized,
                                                 "gguf": _open_gguf}


def open_model(model: Artifact | str | Path, *, config: EngineConfig | None = None, logits_all: bool = False,
               n_threads: int | None = None) -> OpenModel:
    """Open the saved model ``model`` (an ``Artifact``, or a directory / .gguf path) on its kind's runtime.

    ``config``: the engine's settings (hf-model, quantized; default ``EngineConfig()``). ``logits_all``
    and ``n_threads`` are llama.cpp's (gguf): keep every position's logits (for scoring), and its
    thread count (None: the library's default). ``ServingError`` 404 for a missing path, 400 for a
    kind no runtime opens (see the module docstring).
    """
    if isinstance(model, Artifact):
        path, kind, name = model.dir, model.kind, model.id
    else:
        path = Path(model)
        if not path.exists():
            raise ServingError(f"no model at {path}: name a registered artifact (`journey artifacts`) or a path",
                               status=404)
        kind, name = artifact_kind(path), str(path)
    opener = _OPENERS.get(kind)
    if opener is None:
        what = f"is a {kind} artifact" if kind else \
            "holds no model (config.json + weights, quantization.json or a .gguf file)"
        raise ServingError(f"{name} {what}, not a model; the runtimes open the kinds {', '.join(MODEL_KINDS)}: "
                           "open a model artifact, not a dataset, tokenizer, index or report", status=400)
    return opener(path, config or EngineConfig(), logits_all=logits_all, n_threads=n_threads)
