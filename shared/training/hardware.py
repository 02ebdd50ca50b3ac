"""What the hardware can do: device, bf16 support, autocast context, peak FLOPs for MFU.

Kept apart from the loop so benchmarks and tests make the same choice the trainer makes.
"""
from __future__ import annotations

import contextlib
from functools import lru_cache
from pathlib import Path

import torch

# Dense bf16 peak FLOP/s of common accelerators, for MFU. Unknown devices report no MFU.
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}


@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """True on CPUs with native bf16 matmul (AVX512-BF16 or AMX), where bf16 autocast speeds training up."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags for f in ("avx512_bf16", "amx_bf16"))


def resolve_precision(precision: str, device: torch.device) -> str:
    """Turn ``auto`` into ``bf16`` or ``fp32`` for ``device``; reject what the device cannot do."""
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_has_bf16() else "fp32"
    if precision == "fp16" and device.type == "cpu":
        raise ValueError("precision=fp16 needs a GPU; use precision=bf16 or fp32 on CPU")
    return precision


def autocast(precision: str, device: torch.device):
    """Autocast context for the forward pass (a no-op for fp32). Weights and optimizer stay fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def peak_flops(device: torch.device) -> float | None:
    """Peak bf16 FLOP/s of ``device`` if known (MFU is only reported on known GPUs)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
