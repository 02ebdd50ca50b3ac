"""Our batch-1 (up to ``MAX_ROWS`` rows) GEMV kernels for the engine's linear layers: fp32 in, fp32 out.

Contract: ``int8_gemv(x, q, scale, bias)`` = ``x @ (q * scale[:, None]).T + bias`` and
``int4_gemv(x, blocks, scales, zz, group_size, bias)`` = ``x @ W_hat.T + bias`` with
``W_hat[o, i] = q[o, i] * scales[o, g] + zz[o, g]`` (``zz = zero - 8 * scale``, the tinygemm
convention of ``shared.quant.weight_only`` rewritten as one multiply-add), ``blocks`` being
``repack_int4(q)``. ``x`` is fp32, contiguous, with 1..``MAX_ROWS`` rows; accumulation is fp32
(tested against a float64 reference to within ``1e-5 * sum_i |x_i * W_hat[o, i]|``). The AVX-512
paths turn weights into floats by placing the integer in the mantissa of 1.0 (see ``shared/engine/kernels_src/gemv.h``),
so they sum ``x`` against an offset weight and subtract the offset once per row: rounding is
relative to ``sum |x|`` rather than ``sum |x * w|``, still inside that bound on the tested shapes.
``int4_q8_gemv`` (AVX512-VNNI builds) rounds ``x`` to int8 per 32 inputs first and sums integer
products (``vpdpbusd``); its result is exact to the same bound for that rounded ``x`` (the zero
term uses the exact ``x``), i.e. off from ``x @ W_hat.T`` by at most half a rounding step of each
input times ``|scale * q|``. It reads bf16 (scale, zero) pairs: 20 bytes per 32 weights at group 32.

Why our own code: torch's fused weight-only kernels (``_weight_int8pack_mm``,
``_weight_int4pack_mm_for_cpu``) vectorize only bf16 activations and, at batch 1 on this project's
2-core EPYC, reach ~12-20 GB/s of weights; a decode step is a string of matrix-vector products
bound by how fast the weights stream, so a GEMV that widens the weights in registers and keeps
fp32 activations is both faster and more exact (and with int8 activations faster still, for int4,
whose fp32 path is compute-bound). The C++ (``shared/engine/kernels_src/gemv.h``) is built at first use by
``shared.engine.native.kernels()`` (``-O3 -march=native``, one extension for all our C++) into
torch's extension cache, once per source change (~40 s cold on the 2-core dev machine).

``available()`` is False, with one warning, when the build fails (no compiler): the layers then
keep their torch kernels. ``GPT_JOURNEY_NO_KERNELS=1`` turns the kernels off (for A/B timing).

This module does not choose when to use the kernels (the layers do: ``shared.engine.linear``'s
``gemv`` backend for fp32 weights and ``shared.quant.weight_only``'s INT8/INT4 layers, for fp32 CPU
activations with at most ``MAX_ROWS`` rows) and does not quantize. It lives in the engine, beside the
C++ it loads, because the engine's own layers call it; ``shared.quant`` imports it from here.
"""
from __future__ import annotations

import torch

from shared.engine import native

MAX_ROWS = 4  # must match kMaxRows in gemv.h; more rows (prefill, batches) keep the aten kernels


def _load():
    return native.kernels()


def available() -> bool:
    """True when the kernels are built (building them on first call)."""
    return _load() is not None


def isa() -> str:
    """The vector path compiled in: "avx512", "avx2" or "scalar" ("" if unavailable)."""
    m = _load()
    return m.isa() if m is not None else ""


def linear_op(kind: str, w: torch.Tensor, s: torch.Tensor | None = None, z: torch.Tensor | None = None,
              group: int = 0, bias: torch.Tensor | None = None):
    """A checked, callable layer for our kernels, or None when they are not built.

    ``kind``: "f32" (``w`` fp32 (out, in)), "int8" (``w``, ``s`` = scale, as ``int8_gemv``), "int4"
    (``w`` = blocks, ``s`` = scales, ``z`` = zz, as ``int4_gemv``), "int4-q8" (as ``int4_q8_gemv``,
    ``s`` = scale_zero). ``op(x)`` for contiguous ``x`` that ``fits``; layers build it once (a decode step
    makes ~50 linear calls and each Python-level check costs ~1 us) and expose it as ``native_op``,
    which the fused decode step (``shared.engine.native.decode_model``) runs directly.
    """
    m = _load()
    return None if m is None else m.LinearOp(kind, w, s, z, group, bias)


def fits(x: torch.Tensor) -> bool:
    """Whether ``x`` is what a ``linear_op`` takes: fp32 on CPU with 1..MAX_ROWS rows."""
    return 0 < x.shape[0] <= MAX_ROWS and x.dtype is torch.float32 and x.is_cpu


def f32_gemv(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ w.T + bias`` for fp32 ``w`` (out, in): the engine's ``linear_backend="gemv"`` decode path."""
    return _load().f32_gemv(x.contiguous(), w, bias)


def int8_gemv(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return _load().int8_gemv(x.contiguous(), q, scale, bias)


def int4_gemv(x: torch.Tensor, blocks: torch.Tensor, scales: torch.Tensor, zz: torch.Tensor, group_size: int,
              bias: torch.Tensor | None) -> torch.Tensor:
    return _load().int4_gemv(x.contiguous(), blocks, scales, zz, group_size, bias)


def int4_q8_gemv(x: torch.Tensor, blocks: torch.Tensor, scale_zero: torch.Tensor, group_size: int,
                 bias: torch.Tensor | None) -> torch.Tensor:
    """``int4_gemv`` with ``x`` rounded to int8 per 32 inputs and integer dot products (AVX512-VNNI).

    ``blocks`` = ``repack_int4(q, int8_activations=True)``; ``scale_zero`` bfloat16 (out, groups, 2)
    holds ``(scale, zero)`` of ``W_hat = (q - 8) * scale + zero``. Only with ``has_int8_activations()``.
    """
    return _load().int4_q8_gemv(x.contiguous(), blocks, scale_zero, group_size, bias)


def has_int8_activations() -> bool:
    """Whether ``int4_q8_gemv`` is built in (CPUs with AVX512-VNNI)."""
    m = _load()
    return m is not None and m.has_q8_activations()


def repack_int4(q: torch.Tensor, int8_activations: bool = False) -> torch.Tensor:
    """uint8 (out, in) values 0..15 -> uint8 (out, in/2) in the kernel's layout for ``in`` (``int4_layout``).

    Pass the same ``int8_activations`` as to ``int4_gemv``: that path always reads the 32 layout.

    - 128 (AVX-512 builds, ``in`` a multiple of 128): per 128 inputs 16 little-endian uint32, nibble
      ``k`` of word ``j`` = ``q[j + 16 k]``: one 64-byte load holds 8 vectors of 16 weights, each
      taken out with a shift and a mask (no shuffles, the bottleneck of byte-widening on Zen 4).
    - 32 (otherwise): per 32 inputs 16 bytes, byte ``j`` = ``q[j] | q[j + 16] << 4``, so one 16-byte
      load widens to inputs 0..15 (low nibbles) and 16..31 (high nibbles).
    ``in`` must be a multiple of 32 (every supported group size is).
    """
    out_f, in_f = q.shape
    if in_f % 32:
        raise ValueError(f"repack_int4 needs in_features divisible by 32, got {in_f}")
    q = q.to(torch.uint8)
    if int4_layout(in_f, int8_activations) == 128:
        t = q.reshape(out_f, in_f // 128, 4, 2, 16)  # [superblock, byte m of a word, nibble half, word j]
        return (t[:, :, :, 0] | (t[:, :, :, 1] << 4)).transpose(2, 3).reshape(out_f, in_f // 2).contiguous()
    b = q.reshape(out_f, in_f // 32, 2, 16)
    return (b[:, :, 0] | (b[:, :, 1] << 4)).reshape(out_f, in_f // 2).contiguous()


def int4_layout(in_features: int, int8_activations: bool = False) -> int:
    """Inputs per layout block the int4 kernel uses for rows of ``in_features``: 128 or 32."""
    return _load().int4_layout(in_features, int8_activations)
