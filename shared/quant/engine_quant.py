"""Quantize an engine model's linear layers: which layers, with which scheme, and the bytes report.

Two ways in, one rule for every layer (``quantize_linear``):
- ``quantize_engine_model(model, "int8"|"int4"|"int8-dynamic", ...)`` swaps the layers of a built
  ``EngineModel`` in place through ``EngineModel.replace_linear`` and returns a ``QuantReport``.
- ``QuantizingFactory(spec)`` is a ``make_linear`` for ``EngineModel.from_gpt``: layers are quantized
  as they are built, so the fp32 copies never all exist at once; ``factory.report(model)`` afterwards.
  ``build_quantized_engine_model(gpt, spec)`` does both steps.

Which layers: all of them (``h.<i>.qkv|attn_out|fc|fc_out`` and the tied ``lm_head``, the largest
matrix and, on gpt2-124m, ~30% of the bytes a decode step reads) unless ``include_lm_head=False``.
An int4 layer whose ``in_features`` is not divisible by ``group_size`` (or a bf16 int8 layer whose
``in_features`` is not a multiple of 16, which that kernel cannot handle) stays float, recorded in
the report with the reason (GPT-2's widths, multiples of 64, never hit this for groups <= 64).

Bytes: per layer, what its forward reads (weights + scales + zeros + bias: ``layer.nbytes`` or the
float tensors); model totals add the embeddings, positions and LayerNorms (the lookup table is
counted once; the float lm_head keeps its own copy, as the engine does).

This module does not measure quality (``shared.quant.quality``) or write files
(``shared.quant.quantized_checkpoint``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn

from shared.engine.linear import DenseLinear, GemvLinear, OneDNNLinear, backend_linear, resolve_backend
from shared.engine.model import EngineModel, layer_nbytes
from shared.model.gpt import GPT
from shared.quant.weight_only import (
    COMPUTE_DTYPES, INT8_BF16_IN_MULTIPLE, LAYER_TYPES, QUANTIZED_TYPES, SCHEMES, QuantError, check_group_size,
)

FLOAT = "float"  # the scheme name of a layer left unquantized


@dataclass(frozen=True)
class QuantSpec:
    """What to quantize and how.

    - ``scheme``: "int8" (weight-only, per channel), "int4" (weight-only, per group) or
      "int8-dynamic" (int8 weights and per-call int8 activations).
    - ``group_size``: int4 inputs per scale/zero (32, 64, 128, 256); ignored by the int8 schemes.
    - ``include_lm_head``: quantize the tied output projection too (False keeps it float).
    - ``compute_dtype``: activations' dtype inside the aten weight-only kernels, "bfloat16" (fast) or
      "float32" (exact, ~10-30x slower on CPU); see ``shared.quant.weight_only``. Batch-1 decode
      (<= 4 rows) runs our fp32 GEMV (``shared.engine.kernels``) whichever is chosen.
    - ``reduce_range``: int8-dynamic only: 7-bit activations (safe on CPUs without VNNI).
    """

    scheme: str = "int8"
    group_size: int = 32
    include_lm_head: bool = True
    compute_dtype: str = "bfloat16"
    reduce_range: bool = True

    def validate(self) -> None:
        if self.scheme not in SCHEMES:
            raise QuantError(f"unknown quantization scheme {self.scheme!r}; choose one of {list(SCHEMES)}")
        if self.scheme == "int4":
            check_group_size(self.group_size)
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise QuantError(f"compute_dtype={self.compute_dtype!r} is unknown; use one of {list(COMPUTE_DTYPES)}")

    def layer_options(self) -> dict:
        """Keyword arguments of the scheme's ``from_float`` / ``from_portable``."""
        return {"int8": {"compute_dtype": self.compute_dtype},
                "int4": {"group_size": self.group_size, "compute_dtype": self.compute_dtype},
                "int8-dynamic": {"reduce_range": self.reduce_range}}[self.scheme]


@dataclass
class LayerReport:
    name: str
    scheme: str  # a scheme name or "float"
    in_features: int
    out_features: int
    bytes_before: int
    bytes_after: int
    note: str = ""


@dataclass
class QuantReport:
    """Per-layer schemes and bytes, and model totals (see the module docstring)."""

    spec: QuantSpec
    layers: list[LayerReport] = field(default_factory=list)
    model_bytes_before: int = 0
    model_bytes_after: int = 0

    @property
    def linear_bytes_before(self) -> int:
        return sum(r.bytes_before for r in self.layers)

    @property
    def linear_bytes_after(self) -> int:
        return sum(r.bytes_after for r in self.layers)

    @property
    def unquantized(self) -> list[str]:
        return [r.name for r in self.layers if r.scheme == FLOAT]

    def to_dict(self) -> dict:
        return {"spec": asdict(self.spec), "layers": [asdict(r) for r in self.layers],
                "linear_bytes_before": self.linear_bytes_before, "linear_bytes_after": self.linear_bytes_after,
                "model_bytes_before": self.model_bytes_before, "model_bytes_after": self.model_bytes_after,
                "compression": round(self.model_bytes_before / max(self.model_bytes_after, 1), 3),
                "unquantized": self.unquantized}


def skip_reason(spec: QuantSpec, name: str, in_features: int) -> str:
    """Why layer ``name`` stays float under ``spec`` ("" if it is quantized)."""
    if name == "lm_head" and not spec.include_lm_head:
        return "include_lm_head=False"
    if spec.scheme == "int4" and in_features % spec.group_size:
        return f"in_features={in_features} not divisible by group_size={spec.group_size}"
    if spec.scheme == "int8" and spec.compute_dtype == "bfloat16" and in_features % INT8_BF16_IN_MULTIPLE:
        return f"in_features={in_features} not divisible by {INT8_BF16_IN_MULTIPLE} (bf16 int8 kernel)"
    return ""


def quantize_linear(spec: QuantSpec, name: str, weight: torch.Tensor,
                    bias: torch.Tensor | None) -> tuple[nn.Module, LayerReport]:
    """The quantized layer for ``name`` under ``spec`` (check ``skip_reason`` first) and its report.

    ``weight`` (out, in) and ``bias`` are in the engine's dtype, which the quantized layer outputs.
    """
    out_f, in_f = weight.shape
    before = weight.numel() * weight.element_size() + (0 if bias is None else bias.numel() * bias.element_size())
    try:
        layer = LAYER_TYPES[spec.scheme].from_float(weight, bias, **spec.layer_options())
    except QuantError as e:
        raise QuantError(f"layer {name}: {e}") from e
    return layer, LayerReport(name, spec.scheme, in_f, out_f, before, layer.nbytes)


def float_report(name: str, layer: nn.Module, reason: str) -> LayerReport:
    nbytes = layer_nbytes(layer)
    return LayerReport(name, FLOAT, layer.in_features, layer.out_features, nbytes, nbytes, reason)


def float_weight(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(weight (out, in), bias)`` of a float engine layer (``DenseLinear``, ``GemvLinear``, ``OneDNNLinear``,
    ``nn.Linear``)."""
    if isinstance(layer, DenseLinear):
        return layer.weight_t.t(), layer.bias
    if isinstance(layer, GemvLinear):
        return layer.weight, layer.bias
    if isinstance(layer, OneDNNLinear):
        # The oneDNN weight is opaque; multiplying the identity by it gives W.T exactly (one 1 x w
        # product per output, the rest adds zeros), in the layer's own dtype.
        dtype = layer.bias.dtype if layer.bias is not None else layer.packed.dtype
        eye = torch.eye(layer.in_features, dtype=dtype)
        return torch.ops.mkldnn._linear_pointwise(eye, layer.packed, None, "none", [], "").t(), layer.bias
    if isinstance(layer, nn.Linear):
        return layer.weight.detach(), None if layer.bias is None else layer.bias.detach()
    if isinstance(layer, QUANTIZED_TYPES):
        raise QuantError(f"the layer is already quantized ({layer.scheme}); quantize the fp32 model (reload it)")
    raise QuantError(f"cannot read the weight of a {type(layer).__name__}; quantize an EngineModel built with the "
                     "'auto', 'gemv', 'dense' or 'onednn' backend")


def non_linear_bytes(model: EngineModel) -> int:
    """Bytes of an engine model's tensors outside its linear layers (embeddings, positions, LayerNorms)."""
    tensors = [model.wte, model.wpe, model.ln_f_weight, model.ln_f_bias]
    tensors += [b for block in model.blocks for b in block.buffers(recurse=False)]
    return sum(t.numel() * t.element_size() for t in tensors)


def _finish(spec: QuantSpec, layers: list[LayerReport], model: EngineModel) -> QuantReport:
    rest = non_linear_bytes(model)
    return QuantReport(spec, layers, rest + sum(r.bytes_before for r in layers),
                       rest + sum(r.bytes_after for r in layers))


def quantize_engine_model(model: EngineModel, scheme: str = "int8", *, group_size: int = 32,
                          include_lm_head: bool = True, compute_dtype: str = "bfloat16",
                          reduce_range: bool = True) -> QuantReport:
    """Swap ``model``'s float linear layers for quantized ones in place; the report (see ``QuantSpec``)."""
    spec = QuantSpec(scheme, group_size, include_lm_head, compute_dtype, reduce_range)
    spec.validate()
    reports = []
    for name, old in list(model.linears()):
        reason = skip_reason(spec, name, old.in_features)
        if reason:  # decided before reading the weight back: a oneDNN lm_head costs a 4 x 50257 x 768 B copy
            reports.append(float_report(name, old, reason))
            continue
        layer, report = quantize_linear(spec, name, *float_weight(old))
        model.replace_linear(name, layer)
        reports.append(report)
    return _finish(spec, reports, model)


class QuantizingFactory:
    """``make_linear`` for ``EngineModel.from_gpt`` that quantizes per ``spec``; float layers use ``backend``."""

    def __init__(self, spec: QuantSpec, *, backend: str = "auto", batch_hint: int = 16):
        spec.validate()
        self.spec, self.backend, self.batch_hint = spec, backend, batch_hint
        self.layers: list[LayerReport] = []

    def __call__(self, name: str, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
        reason = skip_reason(self.spec, name, weight.shape[1])
        if reason:
            layer = backend_linear(weight, bias, resolve_backend(self.backend, weight.device), self.batch_hint)
            report = float_report(name, layer, reason)
        else:
            layer, report = quantize_linear(self.spec, name, weight, bias)
        self.layers.append(report)
        return layer

    def report(self, model: EngineModel) -> QuantReport:
        return _finish(self.spec, list(self.layers), model)


def build_quantized_engine_model(gpt: GPT, spec: QuantSpec, *, dtype: torch.dtype = torch.float32,
                                 backend: str = "auto") -> tuple[EngineModel, QuantReport]:
    """An ``EngineModel`` of ``gpt`` quantized per ``spec``, and its report."""
    factory = QuantizingFactory(spec, backend=backend)
    model = EngineModel.from_gpt(gpt, dtype=dtype, make_linear=factory)
    return model, factory.report(model)
