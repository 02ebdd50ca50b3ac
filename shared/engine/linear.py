"""The linear layers of the engine's forward pass, and the seam where quantized layers plug in.

Contract of an engine linear layer: an ``nn.Module`` with ``in_features``, ``out_features`` and
``forward(x: [N, in_features]) -> [N, out_features]`` computing ``x @ W.T + b`` in the engine's
dtype (rows are tokens of the flattened step batch, so ``x`` is always 2-D). ``EngineModel`` calls
its layers only through that contract, so ``shared.quant`` swaps in INT8/INT4 weight-only layers
with ``EngineModel.replace_linear`` (or builds them up front through ``EngineModel.from_gpt``'s
``make_linear`` factory) without touching the model code.

Why not ``nn.Linear``: for one-token decode every matmul is a matrix-vector product that must
stream the whole weight from memory, and how fast that goes depends on the weight's layout. On
the x86 CPUs we serve from (MKL on AMD EPYC, 2 threads, measured while writing this module):
- ``nn.Linear``'s (out, in) layout reaches ~14 GB/s on the 154 MB tied lm_head, the transposed
  (in, out) layout with ``addmm`` ~24 GB/s: ``DenseLinear`` stores the transpose.
- MKL's small-M GEMM is slow (batch 4 costs almost 2x batch 1); oneDNN with weights prepacked once
  in its blocked format keeps batches of 2-32 rows near the memory bound: ``OneDNNLinear``, the
  default on CPU. At batch 1 it is the faster one on 2 threads (~22 vs ~27 ms per GPT-2-small
  forward), while on a single thread MKL's GEMV with the transposed layout wins by ~15%
  (``linear_backend="dense"`` for single-threaded batch-1 serving). Its weight is an opaque oneDNN
  tensor (no state_dict, no ``.to``), so it is built last, from plain weights, and never trained
  or saved.

This module does not quantize and does not choose what to quantize (``shared.quant``).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from shared.engine import kernels
from shared.engine.errors import EngineError


class DenseLinear(nn.Module):
    """``x @ W.T + b`` with ``W`` stored transposed, (in, out), for fast matrix-vector products."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight_t", weight.detach().t().contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is None:
            return torch.mm(x, self.weight_t)
        return torch.addmm(self.bias, x, self.weight_t)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class OneDNNLinear(nn.Module):
    """``x @ W.T + b`` through oneDNN with ``W`` prepacked once for batches around ``batch_hint`` rows."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, batch_hint: int):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        # A plain attribute, not a buffer: oneDNN tensors have no storage, so state_dict/.to() cannot handle them.
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), batch_hint)
        self.register_buffer("bias", None if bias is None else bias.detach().contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class GemvLinear(nn.Module):
    """``x @ W.T + b`` with ``W`` (out, in): 1..4 rows through our fp32 GEMV kernel, more rows through oneDNN.

    Why: at batch 1 a decode step streams every weight from DRAM once, and oneDNN's GEMV pulls ~27 GB/s
    where our kernel, prefetching into L2 far ahead (``shared.engine.kernels``, built at first use), reads
    as fast as ``torch.sum`` over the same weights (~30-50 GB/s, the VM's bandwidth moves). Prefill and
    larger batches are matrix-matrix work: a ``OneDNNLinear`` holds a second, prepacked copy of the weight
    for them (torch's ``F.linear`` when oneDNN is missing), so the layer costs twice the fp32 weight
    memory. Without a compiler the kernel path is off and it is that second layer throughout.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, batch_hint: int = 16):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight", weight.detach().contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().contiguous())
        self._fits = kernels.fits
        self.native_op = (kernels.linear_op("f32", self.weight, bias=self.bias)
                          if self.weight.dtype == torch.float32 else None)
        self.many_rows = OneDNNLinear(weight, bias, batch_hint) if onednn_available() else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.native_op is not None and self._fits(x):
            return self.native_op(x.contiguous())
        if self.many_rows is not None:
            return self.many_rows(x)
        return torch.nn.functional.linear(x, self.weight, self.bias)

    @property
    def nbytes(self) -> int:
        """Bytes a decode step reads: the plain weight and bias (the prepacked copy serves larger batches)."""
        return sum(t.numel() * t.element_size() for t in (self.weight, self.bias) if t is not None)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def resolve_backend(backend: str, device: torch.device) -> str:
    """The concrete backend ("dense", "onednn" or "gemv") for ``backend`` on ``device``.

    "auto" on CPU: "gemv" when our kernels build (fastest batch-1 decode, oneDNN for more rows), else
    "onednn" when PyTorch has it; "dense" elsewhere.
    """
    if backend == "auto":
        if device.type != "cpu":
            return "dense"
        return "gemv" if kernels.available() else "onednn" if onednn_available() else "dense"
    if backend == "gemv" and device.type != "cpu":
        raise EngineError(f"linear_backend='gemv' runs our CPU GEMV kernel; this is {device.type}: use 'auto' or 'dense'")
    if backend == "onednn" and (device.type != "cpu" or not onednn_available()):
        raise EngineError(f"linear_backend='onednn' needs a CPU build of PyTorch with oneDNN (mkldnn); this is "
                          f"{device.type} with mkldnn available={onednn_available()}: use 'auto' or 'dense'")
    return backend


def backend_linear(weight: torch.Tensor, bias: torch.Tensor | None, backend: str, batch_hint: int = 16) -> nn.Module:
    """An engine linear layer for ``weight`` (out, in) and ``bias`` with a concrete ``backend``."""
    if backend == "onednn":
        return OneDNNLinear(weight, bias, batch_hint)
    if backend == "gemv":
        return GemvLinear(weight, bias, batch_hint)
    return DenseLinear(weight, bias)
