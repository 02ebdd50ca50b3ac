"""Our C++ kernels, built at first use, and the engine's decode-attention kernel.

``load_extension(name, source, extra_cflags)`` builds one C++ file with
``torch.utils.cpp_extension.load`` (``-O3 -march=native -fopenmp``: the JIT build runs on the machine
that serves, so native is right) into torch's extension cache, once per source change, and returns
the module, or None with one warning when it cannot be built (no compiler) or when
``GPT_JOURNEY_NO_KERNELS=1`` (for A/B timing). Callers then keep their torch path.
``shared.quant.kernels`` (the weight-only GEMVs) builds through it too.

``decode_attention(qkv, k_cache, v_cache, positions, scale)``: for decode tokens ``r = 0..n-1`` (slot
``r`` of the cache, ``n = len(positions)``), writes token ``r``'s key and value, taken from row ``r``
of the fused projection output ``qkv [n_tokens, 3 * n_head * head_dim]``, at position
``positions[r]`` of ``k_cache``/``v_cache`` ``[slots, n_head, max_len, head_dim]``, and returns
``[n, n_head * head_dim]``: per head, ``softmax(scale * q . K[0..pos]) . V[0..pos]``, fp32
throughout (equal to ``F.scaled_dot_product_attention`` with the engine's decode mask up to
rounding). Why it exists: see ``kernels_src/decode_attention.cpp`` (torch's path costs ~45 us of
dispatch per layer at batch 1, a tenth of an int4 decode step of GPT-2 124M).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

_SOURCES = Path(__file__).with_name("kernels_src")
_built: dict[str, object] = {}


def load_extension(name: str, source: Path, extra_cflags: tuple[str, ...] = ()):
    """The built extension ``name`` from ``source``, or None (see the module docstring)."""
    if name not in _built:
        module = None
        if os.environ.get("GPT_JOURNEY_NO_KERNELS") != "1":
            try:
                from torch.utils.cpp_extension import load
                module = load(name=name, sources=[str(source)],
                              extra_cflags=["-O3", "-march=native", "-fopenmp", *extra_cflags],
                              extra_ldflags=["-fopenmp"], verbose=False)
            except Exception as e:  # noqa: BLE001 - any build failure means: keep the torch path
                warnings.warn(f"C++ kernel {name} did not build ({type(e).__name__}: {str(e)[:300]}); falling "
                              "back to torch (slower at small batches). Install g++ (and ninja) to get it.",
                              RuntimeWarning, stacklevel=3)
        _built[name] = module
    return _built[name]


def _attention():
    # -ffast-math lets GCC vectorize the softmax's exp through glibc's libmvec (see the .cpp)
    return load_extension("gpt_journey_decode_attention", _SOURCES / "decode_attention.cpp", ("-ffast-math",))


def decode_attention_available() -> bool:
    """True when the decode-attention kernel is built (building it on first call)."""
    return _attention() is not None


def decode_attention(qkv: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, positions: list[int],
                     scale: float) -> torch.Tensor:
    return _attention().decode_attention(qkv, k_cache, v_cache, positions, scale)
