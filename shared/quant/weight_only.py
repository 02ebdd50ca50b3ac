"""INT8 / INT4 weight-only and dynamic INT8 linear layers for the engine, and the math that quantizes them.

Each layer honours the engine's linear contract (``shared.engine.linear``): ``in_features``,
``out_features``, ``forward(x [N, in]) -> [N, out]`` = ``x @ W.T + b`` in ``x``'s dtype, where ``W``
is the *dequantized* weight (``layer.dequantize()``). Layers are built with ``from_float(weight,
bias, ...)`` or, from the portable tensors a checkpoint stores, ``from_portable(...)``;
``portable()`` gives those tensors back (``shared.quant.quantized_checkpoint`` reads and writes them).

Schemes (the portable format in brackets; ``W_hat`` is the dequantized weight):
- ``int8``: per-output-channel symmetric; ``W_hat[o, i] = q[o, i] * scale[o]``
  [``qweight`` int8 (out, in), ``scales`` f32 (out,)]. Kernel: ``aten._weight_int8pack_mm``.
- ``int4``: group-wise asymmetric over ``group_size`` consecutive inputs (32, 64, 128 or 256: what
  the kernel supports), tinygemm's zero-point convention ``W_hat = (q - 8) * scale + zero`` with
  ``q`` in 0..15 [``qweight`` uint8 (out, in/2), two ``q`` per byte, low nibble = even input
  column; ``scales``, ``zeros`` f32 (out, in/group_size)]. Kernel: ``aten._weight_int4pack_mm_for_cpu``
  over ``aten._convert_weight_to_int4pack_for_cpu``'s packed weight, whose layout is private to
  the kernel (blocked by the CPU's vector width): it is never saved, only rebuilt from the nibbles.
- ``int8-dynamic``: the ``int8`` weights, activations quantized per call to uint8 (per tensor) by
  fbgemm's ``quantized::linear_dynamic`` with a weight prepacked once (what ``torch.ao``'s
  ``quantize_dynamic`` builds). Integer GEMM with fp32 output.

Measured on this project's CPUs (AMD EPYC, AVX512-BF16, torch 2.13) while writing this module:
the two ``aten`` weight-only kernels have a vectorized path only for bfloat16 activations; with fp32
activations they fall back to scalar code 10-30x slower than the fp32 layer they replace. So the
weight-only layers compute in ``compute_dtype`` (default "bfloat16": ``x`` is cast in, the output
cast back, scales and zeros held in that dtype) and "float32" stays available for bit-exact checks.
Scales and zeros are rounded to bfloat16 *before* the weights are quantized against them, so the
dequantized weight is the same in both compute dtypes and a checkpoint loads into either.

Batch-1 decode (1..4 fp32 rows on CPU) goes through our own GEMV kernels instead
(``shared.engine.kernels``), since the aten kernels reach only ~12-20 GB/s there. int8, and int4
with ``compute_dtype="float32"``, keep fp32 activations and accumulate in fp32 (more exact than the
bf16 path). int4 with ``compute_dtype="bfloat16"`` on CPUs with AVX512-VNNI rounds the activations
to int8 per 32 inputs and multiplies in integers, as llama.cpp's Q4_0 does (the counterpart of the
bf16 rounding the aten kernel applies; the quantize stage's decode-path top-1 agreement with FP32
measures it: 0.941 for the tiny journey's INT4 model, 0.915 on the prefill path). More rows (prefill, batches) keep
the aten kernels. The int4 layer keeps a second copy of its nibbles in
the GEMV's layout (the aten layout is private): int4 layers hold twice their weight bytes in
memory, though a step reads only one copy. If the kernels cannot be built, everything runs as before.

Speed, gpt2-124m through the engine, batch-1 decode, 2 threads (2-core EPYC Zen 4, noisy; same-run
figures in ``docs/inference.md``): int8 ~91 tok/s with the aten kernel, ~200-260 with ours and the
fused decode step; int4 g32 ~255-340 with int8 activations (~220 with fp32 ones); llama.cpp Q8_0
~150-170, Q4_0 ~205-240. The aten weight-only kernels are GEMV-like
(cost grows ~linearly with rows): prefill of 4x128 tokens runs at 0.7x (int8) / 0.8x (int4) of fp32
and batch-8 decode at 0.75x / 1.3x, while int8-dynamic (a real int8 GEMM) is ~2.2x fp32 on both.
Dynamic INT8 is the fastest on large batches but the least accurate, and batch-dependent.

This module does not decide which layers to quantize, measure quality or save files.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn as nn

from shared.engine import kernels

SCHEMES = ("int8", "int4", "int8-dynamic")
INT4_GROUP_SIZES = (32, 64, 128, 256)
COMPUTE_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
_INT4_ROWS = 16  # the int4 packer needs out_features divisible by 16: we pad with zero rows
#: The bf16 int8 kernel reads 16 inputs at a time with no tail loop: other widths give garbage or crash.
INT8_BF16_IN_MULTIPLE = 16
_HAS_INT8_KERNEL = hasattr(torch.ops.aten, "_weight_int8pack_mm")
_HAS_INT4_KERNEL = hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu")


class QuantError(ValueError):
    """A quantization request or quantized file that cannot be served; the message names the fix."""


# ----------------------------------------------------------------------------- quantization math

def _bf16_exact(t: torch.Tensor) -> torch.Tensor:
    """``t`` (f32) rounded to the nearest bfloat16 value, kept in f32."""
    return t.to(torch.bfloat16).to(torch.float32)


def _checked_weight(weight: torch.Tensor) -> torch.Tensor:
    if weight.dim() != 2:
        raise QuantError(f"a linear weight must be 2-D (out, in), got shape {tuple(weight.shape)}")
    w = weight.detach().to(torch.float32)
    if not torch.isfinite(w).all():
        raise QuantError("the weight holds NaN or inf values; the checkpoint is damaged or training diverged: "
                         "quantize a healthy checkpoint")
    return w


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q int8 (out, in), scale f32 (out,))`` with ``q`` in -127..127, ``W ~= q * scale[:, None]``."""
    w = _checked_weight(weight)
    amax = w.abs().amax(dim=1)
    # An all-zero row gets scale 1 (its q are 0 anyway): avoids 0/0.
    scale = _bf16_exact(torch.where(amax > 0, amax / 127, torch.ones_like(amax)))
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def quantize_int4(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(q uint8 (out, in) in 0..15, scales f32 (out, groups), zeros f32 (out, groups))``.

    ``W ~= (q - 8) * scale + zero`` per group of ``group_size`` inputs, with ``q = 0`` at the group's
    minimum and ``q = 15`` at its maximum (asymmetric: all 16 levels used).
    """
    check_group_size(group_size)
    w = _checked_weight(weight)
    out_f, in_f = w.shape
    if in_f % group_size:
        raise QuantError(f"in_features={in_f} is not divisible by group_size={group_size}; pick a group size "
                         f"dividing it (one of {[g for g in INT4_GROUP_SIZES if in_f % g == 0] or 'none'}) or "
                         "keep this layer unquantized")
    g = w.reshape(out_f, in_f // group_size, group_size)
    lo, hi = g.amin(dim=-1), g.amax(dim=-1)
    # A constant group (e.g. zero padding) gets a scale that puts its value exactly at q = 0.
    flat = torch.where(lo == 0, torch.ones_like(lo), lo.abs() / 8)
    scale = _bf16_exact(torch.where(hi > lo, (hi - lo) / 15, flat))
    zero = _bf16_exact(lo + 8 * scale)
    # Quantize against the rounded scale and zero, so rounding them costs nothing extra.
    q = torch.round((g - zero[..., None]) / scale[..., None] + 8).clamp_(0, 15).to(torch.uint8)
    return q.reshape(out_f, in_f), scale, zero


def dequantize_int4(q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor) -> torch.Tensor:
    """The f32 weight (out, in) that int4 ``q`` (0..15), ``scales`` and ``zeros`` stand for."""
    out_f, in_f = q.shape
    groups = scales.shape[1]
    g = q.reshape(out_f, groups, in_f // groups).to(torch.float32)
    return ((g - 8) * scales[..., None] + zeros[..., None]).reshape(out_f, in_f)


def pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """uint8 (out, in) values 0..15 -> uint8 (out, in/2), low nibble = even column."""
    return (q[:, 0::2] | (q[:, 1::2] << 4)).contiguous()


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of ``pack_nibbles``."""
    return torch.stack((packed & 15, packed >> 4), dim=-1).reshape(packed.shape[0], -1)


def check_group_size(group_size: int) -> None:
    if group_size not in INT4_GROUP_SIZES:
        raise QuantError(f"int4 group_size={group_size!r} is not supported by the CPU int4 kernel; use one of "
                         f"{list(INT4_GROUP_SIZES)} (smaller groups: more accurate, more scale bytes)")


def compute_dtype_of(name: str) -> torch.dtype:
    if name not in COMPUTE_DTYPES:
        raise QuantError(f"compute_dtype={name!r} is unknown; use 'bfloat16' (fast CPU kernels) or 'float32' "
                         "(exact but slow)")
    return COMPUTE_DTYPES[name]


def _bias(bias: torch.Tensor | None) -> torch.Tensor | None:
    return None if bias is None else bias.detach().clone().contiguous()


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """``t`` contiguous at a 64-byte-aligned address (a copy if needed).

    The AVX512 bf16 path of ``_weight_int8pack_mm`` loads aligned vectors without checking and
    segfaults otherwise (measured: a weight 28 bytes into a safetensors buffer, an input 2 bytes
    off); torch's own allocations are 64-byte aligned, so only views need the copy.
    """
    if t.is_contiguous() and t.data_ptr() % 64 == 0:
        return t
    return t.clone(memory_format=torch.contiguous_format)


def _f32_or_none(t: torch.Tensor | None) -> bool:
    return t is None or (t.dtype == torch.float32 and t.is_contiguous())


def _nbytes(*tensors: torch.Tensor | None) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


# ----------------------------------------------------------------------------- layers

class Int8WeightOnlyLinear(nn.Module):
    """``x @ (q * scale).T + b`` through ``aten._weight_int8pack_mm``; see the module docstring."""

    scheme = "int8"

    def __init__(self, qweight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None,
                 compute_dtype: str = "bfloat16"):
        super().__init__()
        self.out_features, self.in_features = qweight.shape
        self.compute_dtype = compute_dtype
        dtype = compute_dtype_of(compute_dtype)
        if dtype == torch.bfloat16 and self.in_features % INT8_BF16_IN_MULTIPLE:
            raise QuantError(f"int8 with compute_dtype='bfloat16' needs in_features divisible by "
                             f"{INT8_BF16_IN_MULTIPLE} (the kernel has no tail loop), got {self.in_features}; use "
                             "compute_dtype='float32' or keep this layer float")
        self.register_buffer("qweight", _aligned(qweight))
        self.register_buffer("scales", _aligned(scales.to(dtype)))
        self.register_buffer("bias", _bias(bias))
        # Our batch-1 GEMV (shared.engine.kernels) with fp32 scales: the same values (bf16-exact), 4 B per row.
        self.native_op = (kernels.linear_op("int8", self.qweight, self.scales.to(torch.float32).contiguous(),
                                            bias=self.bias) if _f32_or_none(self.bias) else None)

    @classmethod
    def from_float(cls, weight: torch.Tensor, bias: torch.Tensor | None, *, compute_dtype: str = "bfloat16"):
        return cls(*quantize_int8(weight), bias, compute_dtype)

    @classmethod
    def from_portable(cls, tensors: dict[str, torch.Tensor], bias: torch.Tensor | None, *,
                      compute_dtype: str = "bfloat16", **_):
        return cls(tensors["qweight"], tensors["scales"], bias, compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.native_op is not None and kernels.fits(x):  # decode: our fp32 GEMV (1.4x the aten kernel)
            return self.native_op(x.contiguous())
        if _HAS_INT8_KERNEL:
            xc = x.to(self.scales.dtype) if x.dtype != self.scales.dtype else _aligned(x)
            y = torch.ops.aten._weight_int8pack_mm(xc, self.qweight, self.scales)
        else:  # torch builds without the fused kernel: dequantize on the fly (slow, same math)
            y = torch.mm(x.to(self.scales.dtype), (self.qweight.to(self.scales.dtype) * self.scales[:, None]).t())
        y = y.to(x.dtype)
        return y if self.bias is None else y.add_(self.bias)

    def dequantize(self) -> torch.Tensor:
        return self.qweight.to(torch.float32) * self.scales.to(torch.float32)[:, None]

    def portable(self) -> dict[str, torch.Tensor]:
        return {"qweight": self.qweight, "scales": self.scales.to(torch.float32)}

    @property
    def nbytes(self) -> int:
        return _nbytes(self.qweight, self.scales, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"compute_dtype={self.compute_dtype}")


class Int4WeightOnlyLinear(nn.Module):
    """``x @ W_hat.T + b`` through ``aten._weight_int4pack_mm_for_cpu``; see the module docstring."""

    scheme = "int4"

    def __init__(self, q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bias: torch.Tensor | None,
                 group_size: int, compute_dtype: str = "bfloat16"):
        super().__init__()
        if not _HAS_INT4_KERNEL:
            raise QuantError(f"int4 needs torch.ops.aten._weight_int4pack_mm_for_cpu (PyTorch >= 2.5), missing in "
                             f"torch {torch.__version__}; upgrade PyTorch or use scheme 'int8'")
        check_group_size(group_size)
        self.out_features, self.in_features = q.shape
        groups = (self.out_features, self.in_features // group_size)
        if self.in_features % group_size or tuple(scales.shape) != groups or tuple(zeros.shape) != groups:
            raise QuantError(f"int4 weight {tuple(q.shape)} with scales {tuple(scales.shape)} and zeros "
                             f"{tuple(zeros.shape)} does not fit group_size={group_size}; quantize with quantize_int4")
        self.group_size, self.compute_dtype = group_size, compute_dtype
        pad = -self.out_features % _INT4_ROWS  # zero rows (q 8, scale 1, zero 0 -> weight 0), sliced off the output
        q32 = torch.nn.functional.pad(q.to(torch.int32), (0, 0, 0, pad), value=8)
        sz = torch.stack((torch.nn.functional.pad(scales, (0, 0, 0, pad), value=1.0),
                          torch.nn.functional.pad(zeros, (0, 0, 0, pad), value=0.0)), dim=-1)
        # The kernel wants [groups, out, 2] in the activations' dtype; its packed weight is ISA-specific.
        self.register_buffer("packed", torch.ops.aten._convert_weight_to_int4pack_for_cpu(q32.contiguous(), 1))
        self.register_buffer("scales_and_zeros",
                             sz.transpose(0, 1).contiguous().to(compute_dtype_of(compute_dtype)))
        self.register_buffer("bias", _bias(bias))
        self.native_op = None
        if kernels.available() and _f32_or_none(self.bias):
            # Our batch-1 GEMV reads its own copy in its own layout (shared.engine.kernels.repack_int4): the torch
            # kernel's packed layout is private, and that kernel stays for prefill and large batches. Costs a
            # second copy of the int4 weights in memory (not in bytes read).
            # compute_dtype "bfloat16" already rounds activations to 8 significant bits in the aten kernel; the
            # GEMV's counterpart on AVX512-VNNI CPUs rounds them to int8 per 32 inputs (as llama.cpp's Q4_0
            # dot does), multiplies in integers and reads the scales and zeros as bf16 (they are bf16-exact).
            s32 = self.scales_and_zeros[:, :self.out_features].to(torch.float32).transpose(0, 1)
            scale32, zero32 = s32[..., 0].contiguous(), s32[..., 1].contiguous()
            if compute_dtype == "bfloat16" and kernels.has_int8_activations():
                self.native_op = kernels.linear_op(
                    "int4-q8", kernels.repack_int4(q, int8_activations=True),
                    torch.stack((scale32, zero32), dim=-1).to(torch.bfloat16).contiguous(), None, group_size, self.bias)
            else:
                self.native_op = kernels.linear_op("int4", kernels.repack_int4(q), scale32,
                                                   (zero32 - 8 * scale32).contiguous(), group_size, self.bias)

    @classmethod
    def from_float(cls, weight: torch.Tensor, bias: torch.Tensor | None, *, group_size: int = 32,
                   compute_dtype: str = "bfloat16"):
        return cls(*quantize_int4(weight, group_size), bias, group_size, compute_dtype)

    @classmethod
    def from_portable(cls, tensors: dict[str, torch.Tensor], bias: torch.Tensor | None, *, group_size: int,
                      compute_dtype: str = "bfloat16", **_):
        return cls(unpack_nibbles(tensors["qweight"]), tensors["scales"], tensors["zeros"], bias, group_size,
                   compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.native_op is not None and kernels.fits(x):  # decode: our GEMV
            return self.native_op(x.contiguous())
        if x.shape[0] == 0:  # the kernel cannot reduce over an empty batch
            return x.new_empty(0, self.out_features)
        sz = self.scales_and_zeros
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x.to(sz.dtype), self.packed, self.group_size, sz)
        if y.shape[1] != self.out_features:
            y = y[:, :self.out_features]
        y = y.to(x.dtype) if y.dtype != x.dtype else y.contiguous()  # a cast of the sliced view is contiguous too
        return y if self.bias is None else y.add_(self.bias)

    def unpack(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(q uint8 (out, in), scales f32, zeros f32 (out, groups))`` read back from the packed weight.

        The packed layout is private to the kernel (and ISA-specific), so the kernel itself reads it:
        with scale 1 and zero 0 it returns ``q - 8`` for an identity input, exactly (small integers,
        fp32 accumulation), whatever the layout.
        """
        n_pad = self.packed.shape[0]
        groups = self.in_features // self.group_size
        unit = torch.zeros(groups, n_pad, 2, dtype=torch.bfloat16)
        unit[..., 0] = 1
        eye = torch.eye(self.in_features, dtype=torch.bfloat16)
        rows = [torch.ops.aten._weight_int4pack_mm_for_cpu(eye[start:start + 256], self.packed, self.group_size, unit)
                for start in range(0, self.in_features, 256)]  # 256 rows at a time bounds the temporary
        q = (torch.cat(rows).t()[:self.out_features].to(torch.float32) + 8).round().to(torch.uint8)
        sz = self.scales_and_zeros.to(torch.float32).transpose(0, 1)[:self.out_features]
        return q.contiguous(), sz[..., 0].contiguous(), sz[..., 1].contiguous()

    def dequantize(self) -> torch.Tensor:
        return dequantize_int4(*self.unpack())

    def portable(self) -> dict[str, torch.Tensor]:
        q, scales, zeros = self.unpack()
        return {"qweight": pack_nibbles(q), "scales": scales, "zeros": zeros}

    @property
    def nbytes(self) -> int:
        return _nbytes(self.packed, self.scales_and_zeros, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"group_size={self.group_size}, compute_dtype={self.compute_dtype}")


def dynamic_int8_available() -> bool:
    engines = torch.backends.quantized.supported_engines
    return hasattr(torch.ops.quantized, "linear_dynamic") and any(e in engines for e in ("x86", "fbgemm"))


class DynamicInt8Linear(nn.Module):
    """int8 weights (per channel) x activations quantized per call (per tensor), fp32 output; fbgemm.

    ``reduce_range`` quantizes activations to 7 bits, torch's default for fbgemm/x86: on CPUs without
    AVX512-VNNI the int8 dot product accumulates pairs in int16 and 8-bit activations can saturate.
    It costs accuracy (measured in the tests); False is safe on VNNI CPUs such as the EPYCs we serve on.

    One activation scale per call, shared by all its rows: a token's logits depend on the other
    tokens of the step (its prompt chunk, other requests' decode rows), so unlike the weight-only
    schemes greedy output can change with batching (measured: 1 of 4 replies of the tiny test model).
    """

    scheme = "int8-dynamic"

    def __init__(self, qweight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None,
                 reduce_range: bool = True):
        super().__init__()
        if not dynamic_int8_available():
            raise QuantError("int8-dynamic needs torch.ops.quantized.linear_dynamic with the x86/fbgemm engine, "
                             f"which this PyTorch build lacks (engines: {torch.backends.quantized.supported_engines}); "
                             "use scheme 'int8'")
        self.out_features, self.in_features = qweight.shape
        self.reduce_range = bool(reduce_range)
        out_dtype = None if bias is None else bias.dtype
        self._out_dtype = out_dtype
        with warnings.catch_warnings():
            # torch >= 2.10 flags quantized-tensor creation as deprecated (pytorch#184982); the module
            # docstring says this scheme depends on it, and the constructor fails clearly once it is gone.
            warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
            wq = torch._make_per_channel_quantized_tensor(
                qweight, scales.to(torch.float64), torch.zeros(self.out_features, dtype=torch.long), 0)
        # A plain attribute, not a buffer: the prepacked weight is an opaque torchbind object.
        self.packed = torch.ops.quantized.linear_prepack(wq, None if bias is None else bias.float().contiguous())
        self.register_buffer("scales", scales.to(torch.float32).contiguous())

    @classmethod
    def from_float(cls, weight: torch.Tensor, bias: torch.Tensor | None, *, reduce_range: bool = True):
        return cls(*quantize_int8(weight), bias, reduce_range)

    @classmethod
    def from_portable(cls, tensors: dict[str, torch.Tensor], bias: torch.Tensor | None, *,
                      reduce_range: bool = True, **_):
        return cls(tensors["qweight"], tensors["scales"], bias, reduce_range)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.quantized.linear_dynamic(x.to(torch.float32), self.packed, self.reduce_range)
        return y.to(x.dtype)

    def _unpacked(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        wq, bias = torch.ops.quantized.linear_unpack(self.packed)
        return wq.int_repr(), bias

    @property
    def bias(self) -> torch.Tensor | None:
        bias = self._unpacked()[1]
        return None if bias is None else bias.to(self._out_dtype)

    def dequantize(self) -> torch.Tensor:
        return self._unpacked()[0].to(torch.float32) * self.scales[:, None]

    def portable(self) -> dict[str, torch.Tensor]:
        return {"qweight": self._unpacked()[0], "scales": self.scales}

    @property
    def nbytes(self) -> int:
        # int8 weights + f32 scales + f32 bias; fbgemm adds an int32 column offset per output (counted).
        has_bias = self._out_dtype is not None
        return self.out_features * (self.in_features + 4 + 4 + (4 if has_bias else 0))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self._out_dtype is not None}, reduce_range={self.reduce_range}")


LAYER_TYPES: dict[str, type[nn.Module]] = {
    "int8": Int8WeightOnlyLinear, "int4": Int4WeightOnlyLinear, "int8-dynamic": DynamicInt8Linear,
}
QUANTIZED_TYPES = tuple(LAYER_TYPES.values())
