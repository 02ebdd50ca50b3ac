"""Save a quantized ``EngineModel`` as an artifact payload directory, and load it back ready to serve.

The directory (format "gpt-journey-quantized", version 1):
- ``config.json`` (and ``generation_config.json``, tokenizer files) copied from the parent HF
  checkpoint, so tools that only read the config and tokenizer keep working; there is no
  ``model.safetensors``: ``AutoModelForCausalLM.from_pretrained`` cannot load this directory.
- ``quantized.safetensors``: every tensor the engine needs, in portable layouts (see
  ``shared.quant.weight_only``): per linear layer ``<name>.qweight`` / ``.scales`` / ``.zeros``
  (int4 only) / ``.bias``, or ``<name>.weight`` / ``.bias`` for a layer kept float (a float lm_head
  tied to the embedding stores nothing); plus ``wte``, ``wpe``, ``ln_f.weight``, ``ln_f.bias`` and
  ``h.<i>.ln_1.weight`` ... in f32. Layer names are ``EngineModel.linears()``'s.
- ``quantization.json``: format and version, the scheme and group size, and per layer its scheme,
  shape, bias flag and options (group size, compute dtype, reduce_range); the load follows it.

``save_quantized(gpt, parent_dir, out_dir, scheme=...)`` quantizes and saves in one call (the quantize
stage); ``save_quantized_checkpoint(model, out_dir, parent_dir=...)`` saves an already quantized model.
``load_quantized_engine_model(dir)`` rebuilds the engine model without the fp32 checkpoint (the int4
kernel layout is rebuilt for the loading CPU); ``shared.serving.runtime.open_model`` serves it (an
``Engine`` with the directory's tokenizer) for an artifact of kind ``quantized``. Every problem (missing file, unknown format or scheme, a tensor
missing, of the wrong shape or dtype, a damaged file) raises ``QuantError`` naming the fix.

This module does not choose schemes, measure quality or decide which runtime opens an artifact
(``shared.serving.runtime``); ``journey.json`` is the stage's to write.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from shared.engine.linear import backend_linear, resolve_backend
from shared.engine.model import BLOCK_LINEARS, EngineBlock, EngineModel
from shared.model.gpt import GPTConfig
from shared.model.hf import CONFIG_FILE, TOKENIZER_FILES, CheckpointError, gpt_config_from_hf
from shared.quant.engine_quant import FLOAT, QuantReport, QuantSpec, build_quantized_engine_model, float_weight
from shared.quant.weight_only import LAYER_TYPES, QUANTIZED_TYPES, SCHEMES, QuantError, check_group_size

FORMAT, FORMAT_VERSION = "gpt-journey-quantized", 1
QUANT_FILE, WEIGHTS_FILE = "quantization.json", "quantized.safetensors"
_COPIED = (CONFIG_FILE, "generation_config.json", *TOKENIZER_FILES)
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
_LAYER_OPTIONS = ("group_size", "compute_dtype", "reduce_range")  # per-layer settings kept in quantization.json


# ----------------------------------------------------------------------------- save

def _layer_entry(name: str, layer, wte: torch.Tensor) -> tuple[dict, dict[str, torch.Tensor]]:
    """(quantization.json entry, tensors to store) of one linear layer."""
    info = {"in_features": layer.in_features, "out_features": layer.out_features}
    if isinstance(layer, QUANTIZED_TYPES):
        tensors = dict(layer.portable())
        bias = layer.bias
        info["scheme"] = layer.scheme
        info.update({k: getattr(layer, k) for k in _LAYER_OPTIONS if hasattr(layer, k)})
    else:
        weight, bias = float_weight(layer)
        tied = name == "lm_head" and weight.shape == wte.shape and torch.equal(weight, wte)
        tensors = {} if tied else {"weight": weight.float()}
        info.update(scheme=FLOAT, tied=tied)
    info["bias"] = bias is not None
    if bias is not None:
        tensors["bias"] = bias.float()
    return info, {f"{name}.{k}": v.contiguous() for k, v in tensors.items()}


def _non_linear(model: EngineModel) -> dict[str, torch.Tensor]:
    tensors = {"wte": model.wte, "wpe": model.wpe, "ln_f.weight": model.ln_f_weight, "ln_f.bias": model.ln_f_bias}
    for i, b in enumerate(model.blocks):
        tensors.update({f"h.{i}.ln_1.weight": b.ln_1_weight, f"h.{i}.ln_1.bias": b.ln_1_bias,
                        f"h.{i}.ln_2.weight": b.ln_2_weight, f"h.{i}.ln_2.bias": b.ln_2_bias})
    return {k: v.float().contiguous() for k, v in tensors.items()}


def save_quantized_checkpoint(model: EngineModel, out_dir: str | Path, *, parent_dir: str | Path,
                              report=None) -> Path:
    """Write ``model`` (quantized layers and all) to ``out_dir``; see the module docstring.

    ``parent_dir``: the HF checkpoint it was quantized from (config and tokenizer are copied; its
    architecture must match). ``report``: the ``QuantReport``, stored in ``quantization.json``.
    """
    from safetensors.torch import save_file

    parent = Path(parent_dir)
    if not (parent / CONFIG_FILE).is_file():
        raise QuantError(f"parent checkpoint {parent} has no {CONFIG_FILE}; pass the HF checkpoint directory the "
                         "model was quantized from")
    try:
        parent_cfg = gpt_config_from_hf(json.loads((parent / CONFIG_FILE).read_text()), source=str(parent))
    except (CheckpointError, json.JSONDecodeError) as e:
        raise QuantError(f"cannot read the parent config: {e}") from e
    if _arch(parent_cfg) != _arch(model.config):
        raise QuantError(f"the model ({_arch(model.config)}) is not the parent checkpoint's architecture "
                         f"({_arch(parent_cfg)}); pass the checkpoint this model was quantized from")
    tensors = _non_linear(model)
    layers = {}
    for name, layer in model.linears():
        layers[name], stored = _layer_entry(name, layer, model.wte)
        tensors.update(stored)
    schemes = sorted({e["scheme"] for e in layers.values()} - {FLOAT})
    group_sizes = sorted({e["group_size"] for e in layers.values() if "group_size" in e})
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION,
            "scheme": schemes[0] if len(schemes) == 1 else (schemes or [FLOAT]),
            "group_size": group_sizes[0] if len(group_sizes) == 1 else (group_sizes or None),
            "torch_version": torch.__version__, "parent": str(parent), "layers": layers,
            "report": None if report is None else report.to_dict()}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / QUANT_FILE).unlink(missing_ok=True)  # an earlier save's: the directory is incomplete until the end
    save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)})
    for name in _COPIED:
        if (parent / name).is_file():
            shutil.copy2(parent / name, out / name)
    # Written last: a directory with quantization.json is complete.
    (out / QUANT_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return out


def save_quantized(gpt, parent_dir: str | Path, out_dir: str | Path, *, scheme: str, group_size: int = 32,
                   include_lm_head: bool = True, compute_dtype: str = "bfloat16",
                   reduce_range: bool = True) -> QuantReport:
    """Quantize ``gpt`` (loaded from the HF checkpoint ``parent_dir``) per ``QuantSpec`` and save it to
    ``out_dir``; the report (also in ``quantization.json``)."""
    spec = QuantSpec(scheme, group_size, include_lm_head, compute_dtype, reduce_range)
    model, report = build_quantized_engine_model(gpt, spec)
    save_quantized_checkpoint(model, out_dir, parent_dir=parent_dir, report=report)
    return report


def _arch(cfg: GPTConfig) -> dict:
    return {k: getattr(cfg, k) for k in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd")}


# ----------------------------------------------------------------------------- load

def read_quantization_meta(path: str | Path) -> dict:
    """``quantization.json`` of a quantized directory, with its format checked."""
    file = Path(path) / QUANT_FILE
    if not file.is_file():
        raise QuantError(f"{path} has no {QUANT_FILE}: it is not a quantized checkpoint (or its save was cut "
                         "short); quantize the HF checkpoint with save_quantized_checkpoint, or load an HF "
                         "checkpoint with Engine.from_checkpoint")
    try:
        meta = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise QuantError(f"{file} is not valid JSON ({e}); the file is damaged: re-run the quantize stage") from e
    found = meta.get("format") if isinstance(meta, dict) else None
    if found != FORMAT:
        raise QuantError(f"{file} is not a {FORMAT} file (format={found!r}); re-run the quantize stage")
    if meta.get("format_version") != FORMAT_VERSION:
        raise QuantError(f"{file} has format_version {meta.get('format_version')!r}, this code reads "
                         f"{FORMAT_VERSION}; load it with the code version that wrote it, or re-quantize")
    if not isinstance(meta.get("layers"), dict):
        raise QuantError(f"{file} lists no layers; the file is damaged: re-run the quantize stage")
    return meta


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    file = path / WEIGHTS_FILE
    if not file.is_file():
        raise QuantError(f"{path} has {QUANT_FILE} but no {WEIGHTS_FILE}; copy the whole directory or re-quantize")
    try:
        # Copies: load_file maps the file shared, so rewriting it in place would change a live model.
        return {name: t.clone() for name, t in load_file(str(file)).items()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise QuantError(f"{file} cannot be read ({e}); the file is damaged or truncated: re-run the quantize "
                         "stage") from e


class _Tensors:
    """The loaded tensors, each taken with its shape and dtype checked."""

    def __init__(self, tensors: dict[str, torch.Tensor], source: Path):
        self.tensors, self.source = tensors, source

    def take(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        t = self.tensors.pop(name, None)
        if t is None:
            raise QuantError(f"{self.source / WEIGHTS_FILE} lacks tensor {name!r} that {QUANT_FILE} and "
                             f"{CONFIG_FILE} call for; the files do not belong together: re-run the quantize stage")
        if tuple(t.shape) != shape or t.dtype != dtype:
            raise QuantError(f"tensor {name!r} is {t.dtype} {tuple(t.shape)} but the config needs {dtype} {shape}; "
                             "the files do not belong together: re-run the quantize stage")
        return t


def _expected_shapes(cfg: GPTConfig) -> dict[str, tuple[int, int]]:
    c = cfg.n_embd
    per_block = {"qkv": (3 * c, c), "attn_out": (c, c), "fc": (4 * c, c), "fc_out": (c, 4 * c)}
    shapes = {f"h.{i}.{n}": per_block[n] for i in range(cfg.n_layer) for n in BLOCK_LINEARS}
    return {**shapes, "lm_head": (cfg.vocab_size, c)}


def _build_layer(name: str, info: dict, shape: tuple[int, int], store: _Tensors, wte: torch.Tensor,
                 dtype: torch.dtype, backend: str, compute_dtype: str | None):
    scheme = info.get("scheme")
    out_f, in_f = shape
    if (info.get("out_features"), info.get("in_features")) != shape:
        raise QuantError(f"{QUANT_FILE} gives layer {name} shape {info.get('out_features')}x{info.get('in_features')} "
                         f"but {CONFIG_FILE} implies {out_f}x{in_f}; the files do not belong together")
    bias = store.take(f"{name}.bias", (out_f,), torch.float32).to(dtype) if info.get("bias") else None
    if scheme == FLOAT:
        if info.get("tied"):
            weight = wte
        else:
            weight = store.take(f"{name}.weight", shape, torch.float32).to(dtype)
        return backend_linear(weight, bias, resolve_backend(backend, weight.device))
    if scheme not in SCHEMES:
        raise QuantError(f"layer {name} uses scheme {scheme!r}, which this code does not know (it knows "
                         f"{list(SCHEMES)} and {FLOAT!r}); load it with the code version that wrote it")
    options = {k: info[k] for k in _LAYER_OPTIONS if k in info}
    if compute_dtype is not None and "compute_dtype" in options:
        options["compute_dtype"] = compute_dtype
    if scheme == "int4":
        group = options.get("group_size")
        check_group_size(group)
        if in_f % group:
            raise QuantError(f"layer {name}: in_features={in_f} is not divisible by its group_size={group}")
        portable = {"qweight": store.take(f"{name}.qweight", (out_f, in_f // 2), torch.uint8),
                    "scales": store.take(f"{name}.scales", (out_f, in_f // group), torch.float32),
                    "zeros": store.take(f"{name}.zeros", (out_f, in_f // group), torch.float32)}
    else:
        portable = {"qweight": store.take(f"{name}.qweight", shape, torch.int8),
                    "scales": store.take(f"{name}.scales", (out_f,), torch.float32)}
    return LAYER_TYPES[scheme].from_portable(portable, bias, **options)


def load_quantized_engine_model(path: str | Path, *, dtype: str = "float32", backend: str = "auto",
                                compute_dtype: str | None = None) -> EngineModel:
    """The ``EngineModel`` saved in ``path`` (see the module docstring), ready for ``Engine``.

    ``dtype``: the engine's dtype ("float32" or "bfloat16"); ``backend``: linear backend of layers kept
    float; ``compute_dtype``: override the weight-only layers' saved compute dtype.
    """
    path = Path(path)
    if dtype not in _DTYPES:
        raise QuantError(f"dtype={dtype!r} is unsupported; use 'float32' or 'bfloat16'")
    meta = read_quantization_meta(path)
    try:
        cfg = gpt_config_from_hf(json.loads((path / CONFIG_FILE).read_text()), source=str(path))
    except FileNotFoundError as e:
        raise QuantError(f"{path} has no {CONFIG_FILE}; copy the whole directory or re-quantize") from e
    except (CheckpointError, json.JSONDecodeError) as e:
        raise QuantError(f"{path / CONFIG_FILE} cannot be used: {e}") from e
    cfg = GPTConfig(**{**cfg.__dict__, "dropout": 0.0})
    shapes = _expected_shapes(cfg)
    if set(meta["layers"]) != set(shapes):
        raise QuantError(f"{QUANT_FILE} lists layers {sorted(set(meta['layers']) ^ set(shapes))[:5]} that do not "
                         f"match the {cfg.n_layer}-layer model of {CONFIG_FILE}; the files do not belong together")
    store = _Tensors(_read_tensors(path), path)
    torch_dtype, c = _DTYPES[dtype], cfg.n_embd

    def take(name: str, shape: tuple[int, ...]) -> torch.Tensor:
        return store.take(name, shape, torch.float32).to(torch_dtype)

    wte, wpe = take("wte", (cfg.vocab_size, c)), take("wpe", (cfg.block_size, c))

    def layer(name: str):
        return _build_layer(name, meta["layers"][name], shapes[name], store, wte, torch_dtype, backend,
                            compute_dtype)

    blocks = []
    for i in range(cfg.n_layer):
        norms = [take(f"h.{i}.{n}", (c,)) for n in ("ln_1.weight", "ln_1.bias", "ln_2.weight", "ln_2.bias")]
        blocks.append(EngineBlock((norms[0], norms[1]), (norms[2], norms[3]),
                                  {n: layer(f"h.{i}.{n}") for n in BLOCK_LINEARS}))
    ln_f = (take("ln_f.weight", (c,)), take("ln_f.bias", (c,)))
    lm_head = layer("lm_head")
    if store.tensors:
        raise QuantError(f"{path / WEIGHTS_FILE} holds tensors {sorted(store.tensors)[:5]} that {QUANT_FILE} does "
                         "not describe; the files do not belong together: re-run the quantize stage")
    return EngineModel(cfg, wte, wpe, blocks, ln_f, lm_head).eval()

