"""Our C++ kernels (``kernels_src/``), built at first use, and the engine's uses of them.

``kernels()`` builds ``kernels_src/kernels.cpp`` (which includes ``gemv.h``, ``attention.h`` and
``decode_step.h``) with ``torch.utils.cpp_extension.load`` (``-O3 -march=native -fopenmp``: the JIT
build runs on the machine that serves, so native is right) into torch's extension cache and returns
the module; the name carries a hash of every file in ``kernels_src`` (torch's cache only watches the
listed source, not the headers), so an edit rebuilds once (~40 s on the 2-core dev machine; a cached
load ~0.1 s). It returns None, with one warning, when the build fails (no compiler) or when
``GPT_JOURNEY_NO_KERNELS=1`` (for A/B timing): every caller then keeps its torch path.
``shared.engine.kernels`` (the GEMVs, their contract and tests) reads the same module.

``decode_attention(qkv, k_cache, v_cache, positions, scale)``: for decode tokens ``r = 0..n-1`` (slot
``r`` of the cache, ``n = len(positions)``), writes token ``r``'s key and value, taken from row ``r``
of the fused projection output ``qkv [n_tokens, 3 * n_head * head_dim]``, at position
``positions[r]`` of ``k_cache``/``v_cache`` ``[slots, n_head, max_len, head_dim]``, and returns
``[n, n_head * head_dim]``: per head, ``softmax(scale * q . K[0..pos]) . V[0..pos]``, fp32
throughout (equal to ``F.scaled_dot_product_attention`` with the engine's decode mask up to
rounding). Why: torch's path costs ~45 us of dispatch per layer at batch 1 (``attention.h``).

``decode_model(engine_model)``: the whole batch-1..4 decode step in one C++ call
(``decode_step.h``), or None when some layer has no ``native_op`` (a kernel our C++ can run: the
``gemv`` backend's fp32 layers, INT8 and INT4 weight-only) or the model is not fp32 on CPU. Its
``step(tokens, positions, k_cache, v_cache)`` returns the logits ``[n, vocab]`` of decode tokens
``tokens[r]`` at ``positions[r]`` in slots ``0..n-1`` and writes their K/V, as ``EngineModel.forward``
does for a decode-only step (tested against it).
"""
from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import torch

_SOURCES = Path(__file__).with_name("kernels_src")
_state: dict[str, object] = {}


def kernels():
    """The built extension module, or None (see the module docstring)."""
    if "module" not in _state:
        module = None
        if os.environ.get("GPT_JOURNEY_NO_KERNELS") != "1":
            digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(_SOURCES.iterdir()) if p.is_file()))
            try:
                from torch.utils.cpp_extension import load
                module = load(name=f"gpt_journey_kernels_{digest.hexdigest()[:10]}",
                              sources=[str(_SOURCES / "kernels.cpp")],
                              extra_cflags=["-O3", "-march=native", "-fopenmp"], extra_ldflags=["-fopenmp"],
                              verbose=False)
            except Exception as e:  # noqa: BLE001 - any build failure means: keep the torch path
                warnings.warn(f"GPT Journey's C++ kernels did not build ({type(e).__name__}: {str(e)[:300]}); "
                              "falling back to torch (slower at small batches). Install g++ (and ninja) to get them.",
                              RuntimeWarning, stacklevel=3)
        _state["module"] = module
    return _state["module"]


def decode_attention_available() -> bool:
    """True when the kernels are built (building them on first call)."""
    return kernels() is not None


def decode_attention(qkv: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, positions: list[int],
                     scale: float) -> torch.Tensor:
    return kernels().decode_attention(qkv, k_cache, v_cache, positions, scale)


def decode_model(model):
    """A ``DecodeModel`` over ``model``'s weights (no copies), or None; see the module docstring."""
    m = kernels()
    if m is None or model.dtype != torch.float32 or model.device.type != "cpu":
        return None
    ops = {name: getattr(layer, "native_op", None) for name, layer in model.linears()}
    if any(op is None for op in ops.values()):
        return None
    blocks = [m.DecodeBlock(b.ln_1_weight, b.ln_1_bias, ops[f"h.{i}.qkv"], ops[f"h.{i}.attn_out"], b.ln_2_weight,
                            b.ln_2_bias, ops[f"h.{i}.fc"], ops[f"h.{i}.fc_out"]) for i, b in enumerate(model.blocks)]
    cfg = model.config
    return m.DecodeModel(model.wte, model.wpe, blocks, model.ln_f_weight, model.ln_f_bias, ops["lm_head"],
                         cfg.n_head, cfg.layer_norm_eps)
