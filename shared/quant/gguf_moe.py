"""Export our MoE checkpoints (Qwen2-MoE, Ernie-4.5-MoE) and their dense twins to llama.cpp GGUF.

``export_moe_gguf(hf_dir, out_path, dtype="f16" | "f32")`` writes a directory ``shared.model.hf.save_moe_checkpoint``
wrote as a GGUF v3 file; ``shared.quant.gguf_export.export_gguf`` calls it for such a directory, so callers use
that one entry point. The checkpoint is read by ``shared.model.hf.load_moe`` (which validates it) and converted
back to its HF module (``moe_to_hf``), whose parameters, in HF's names and layout, are what is written:

==================  ===============  ==========================================================================
HF ``model_type``    llama.cpp arch   what llama.cpp computes (its graph for that arch)
==================  ===============  ==========================================================================
qwen2_moe, MoE       ``qwen2moe``     softmax router, top-k weights never renormalised, shared expert always
                                      present and scaled by sigmoid(ffn_gate_inp_shexp . x), q/k/v biases,
                                      rotate-half (NEOX) RoPE
qwen2_moe, dense     ``qwen2``        the dense twin (``n_experts=0``): the same block with one SwiGLU MLP
ernie4_5_moe         ``ernie4_5-moe`` softmax router, selection by probs + ``exp_probs_b`` (the balancing
                                      bias), top-k weights renormalised, ungated shared expert, no q/k/v
                                      biases, interleaved (NORM) RoPE: the q/k rows are already permuted for
                                      it by ``shared.model.hf`` when saving
==================  ===============  ==========================================================================

Tensors (``gguf.TENSOR_NAMES``; matrices (out, in) row-major = ggml ``ne [in, out]``, as ``nn.Linear``):
``token_embd``, ``output_norm``, per block ``attn_norm``, ``attn_q/k/v`` (+ ``.bias`` for Qwen2), ``attn_output``,
``ffn_norm``, and the MLP: ``ffn_gate_inp`` (router, (E, C)), ``ffn_gate_exps`` / ``ffn_up_exps`` (E, F, C) split from
HF's fused ``experts.gate_up_proj`` (E, 2F, C) (gate first, as ``Experts.expert`` chunks it), ``ffn_down_exps``
(E, C, F), the shared expert ``ffn_{gate,up,down}_shexp`` and its gate ``ffn_gate_inp_shexp`` (C,) (Qwen2-MoE),
the bias ``exp_probs_b.bias`` (E,) (Ernie), or ``ffn_gate/up/down`` (dense). The head is tied: llama.cpp's
qwen2 and ernie4_5-moe reuse ``token_embd`` when there is no ``output`` tensor, but its qwen2moe loader requires
one, so there the embedding is written a second time as ``output`` (``_OUTPUT_REQUIRED``). Routers stay F32 at
every dtype (as llama.cpp's own converter keeps ``ffn_gate_inp``, and as our router computes): F16 router weights
would change which experts are picked.
Qwen2-MoE without a shared expert: llama.cpp's qwen2moe requires one, so one of width ``_ZERO_SHARED`` whose
projections are 0 is written: it adds exactly 0.

Hyper-parameters (``gguf.Keys.LLM`` / ``Keys.Attention`` / ``Keys.Rope``): context, embedding and block counts,
``feed_forward_length``, ``attention.head_count`` and ``head_count_kv``, ``attention.layer_norm_rms_epsilon``,
``rope.freq_base``, ``rope.dimension_count`` and for MoE ``expert_count``, ``expert_used_count``,
``expert_feed_forward_length``, ``expert_shared_feed_forward_length``, plus for Ernie ``expert_shared_count``,
``leading_dense_block_count`` (0) and ``interleave_moe_layer_step`` (1). The tokenizer is written exactly as for
GPT-2 (``shared.quant.gguf_export.add_tokenizer``).

What llama.cpp cannot express raises ``GGUFExportError`` before anything is written (``gguf_arch``): a
Qwen2-MoE with ``norm_topk_prob=True`` (llama.cpp's qwen2moe never renormalises the top-k weights, and ignores
``expert_weights_norm``: such a file's logits were off by ~1 on a random model, checked with llama-cpp-python
0.3.36). Ernie-4.5-MoE's selection bias is honoured (a random bias changes HF's logits by far more than the
export differs from them). Every supported combination is checked against transformers' logits by
tests/shared/quant/test_gguf_moe.py: an F32 file read with an F32 K/V cache matches to ~2e-6.

What this module does not do: GPT-2 (``shared.quant.gguf_export``), quantize (``shared.quant.llama_cpp``), or
MoE checkpoints other than ours (HF MoE models with q/k norms, grouped routing, sliding windows...).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from gguf import MODEL_ARCH, MODEL_ARCH_NAMES, MODEL_TENSOR, TENSOR_NAMES

from shared.model.hf import MOE_MODEL_TYPES, load_moe, moe_architecture, moe_to_hf
from shared.quant.gguf_export import GGUFExportError, add_tensors, add_tokenizer, check_dtype, gguf_writer
from shared.tokenizer.hf_format import load_tokenizer

#: HF model_type of our MoE checkpoints -> llama.cpp architecture (dense twins of qwen2_moe: ``qwen2``).
ARCHS = {"qwen2_moe": MODEL_ARCH.QWEN2MOE, "ernie4_5_moe": MODEL_ARCH.ERNIE4_5_MOE}
assert set(ARCHS) == set(MOE_MODEL_TYPES), "a new MoE architecture needs its llama.cpp mapping here"
DENSE_ARCH = MODEL_ARCH.QWEN2
#: Width of the all-zero shared expert written for a Qwen2-MoE without one: a multiple of 32 so that Q8_0/Q4_0
#: blocks fit its rows (llama.cpp refuses to quantize a tensor whose rows are not whole blocks).
_ZERO_SHARED = 32
#: Architectures whose llama.cpp loader requires an ``output`` tensor even when the head is tied (found by loading
#: files without it: qwen2moe fails with "tensor 'output.weight' not found"; qwen2 and ernie4_5-moe reuse token_embd).
_OUTPUT_REQUIRED = {MODEL_ARCH.QWEN2MOE}

# HF parameter stem after ``model.layers.N.`` -> llama.cpp tensor. Experts are split apart in ``gguf_moe_tensors``.
_BLOCK = {
    "input_layernorm": MODEL_TENSOR.ATTN_NORM, "post_attention_layernorm": MODEL_TENSOR.FFN_NORM,
    "self_attn.q_proj": MODEL_TENSOR.ATTN_Q, "self_attn.k_proj": MODEL_TENSOR.ATTN_K,
    "self_attn.v_proj": MODEL_TENSOR.ATTN_V, "self_attn.o_proj": MODEL_TENSOR.ATTN_OUT,
    "mlp.gate": MODEL_TENSOR.FFN_GATE_INP,  # the router
    "mlp.gate_proj": MODEL_TENSOR.FFN_GATE, "mlp.up_proj": MODEL_TENSOR.FFN_UP,  # dense MLP
    "mlp.down_proj": MODEL_TENSOR.FFN_DOWN,
    # the shared expert: Qwen2-MoE's ``shared_expert`` (and its gate), Ernie's ``shared_experts`` (renamed to it)
    "mlp.shared_expert.gate_proj": MODEL_TENSOR.FFN_GATE_SHEXP, "mlp.shared_expert.up_proj": MODEL_TENSOR.FFN_UP_SHEXP,
    "mlp.shared_expert.down_proj": MODEL_TENSOR.FFN_DOWN_SHEXP,
    "mlp.shared_expert_gate": MODEL_TENSOR.FFN_GATE_INP_SHEXP,
}
_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")
_TOP = {"model.embed_tokens": MODEL_TENSOR.TOKEN_EMBD, "model.norm": MODEL_TENSOR.OUTPUT_NORM}


def gguf_arch(cfg) -> MODEL_ARCH:
    """The llama.cpp architecture a ``MoEConfig`` is exported as, or a ``GGUFExportError`` saying why none fits."""
    hf_arch = moe_architecture(cfg)
    if not cfg.moe:
        return DENSE_ARCH
    if hf_arch == "qwen2_moe" and cfg.norm_topk_prob:
        raise GGUFExportError(
            f"this Qwen2-MoE renormalises its top-{cfg.top_k} expert weights (norm_topk_prob=True), which llama.cpp's "
            "qwen2moe never does, so llama.cpp would compute a different model; export it only if trained with "
            "norm_topk_prob=False (Switch-style raw router weights, our moe-top1/moe-top2 arms)")
    return ARCHS[hf_arch]


def _name(tensor: MODEL_TENSOR, kind: str, bid: int | None = None) -> str:
    return f"{TENSOR_NAMES[tensor].format(bid=bid)}.{kind}"


def gguf_moe_tensors(hf_model, cfg) -> dict[str, np.ndarray]:
    """Every tensor of the HF model ``hf_model`` (built by ``moe_to_hf``) under its GGUF name, fp32, in llama.cpp's
    layout (see the module docstring); the tied head only where the arch requires it."""
    arch = gguf_arch(cfg)
    out: dict[str, np.ndarray] = {}
    for key, value in hf_model.state_dict().items():
        array = value.detach().to(torch.float32).cpu().numpy()
        if key == "lm_head.weight":
            if arch in _OUTPUT_REQUIRED:
                out[_name(MODEL_TENSOR.OUTPUT, "weight")] = array
            continue  # else tied: llama.cpp reuses token_embd as the output matrix
        stem, _, kind = key.rpartition(".")
        if stem in _TOP:
            out[_name(_TOP[stem], kind)] = array
            continue
        match = _LAYER.fullmatch(stem)
        if match is None:
            raise GGUFExportError(f"parameter {key!r} has no llama.cpp tensor; this is a bug in shared.quant.gguf_moe")
        bid, rest = int(match.group(1)), match.group(2).replace(".shared_experts.", ".shared_expert.")
        if key.endswith("mlp.experts.gate_up_proj"):  # (E, 2F, C): gate rows first, then up
            gate, up = np.split(array, 2, axis=1)
            out[_name(MODEL_TENSOR.FFN_GATE_EXP, "weight", bid)] = gate
            out[_name(MODEL_TENSOR.FFN_UP_EXP, "weight", bid)] = up
        elif key.endswith("mlp.experts.down_proj"):  # (E, C, F) = ggml ne [F, C, E], as llama.cpp wants
            out[_name(MODEL_TENSOR.FFN_DOWN_EXP, "weight", bid)] = array
        elif key.endswith("e_score_correction_bias"):  # HF (1, E); llama.cpp's exp_probs_b.bias (E,)
            out[_name(MODEL_TENSOR.FFN_EXP_PROBS_B, "bias", bid)] = array.reshape(-1)
        elif rest.startswith("mlp.shared_expert") and cfg.shared_hidden == 0:
            continue  # Qwen2-MoE's zero-width placeholder: replaced by _zero_shared_expert below
        elif rest in _BLOCK:
            tensor = _BLOCK[rest]
            out[_name(tensor, kind, bid)] = array.reshape(-1) if tensor == MODEL_TENSOR.FFN_GATE_INP_SHEXP else array
        else:
            raise GGUFExportError(f"parameter {key!r} has no llama.cpp tensor; this is a bug in shared.quant.gguf_moe")
    if arch == MODEL_ARCH.QWEN2MOE and cfg.shared_hidden == 0:
        for bid in range(cfg.n_layer):
            out.update(_zero_shared_expert(bid, cfg.n_embd))
    return out


def _zero_shared_expert(bid: int, n_embd: int) -> dict[str, np.ndarray]:
    """A shared expert that adds exactly 0 (see the module docstring)."""
    zeros = lambda *shape: np.zeros(shape, dtype=np.float32)  # noqa: E731
    return {_name(MODEL_TENSOR.FFN_GATE_SHEXP, "weight", bid): zeros(_ZERO_SHARED, n_embd),
            _name(MODEL_TENSOR.FFN_UP_SHEXP, "weight", bid): zeros(_ZERO_SHARED, n_embd),
            _name(MODEL_TENSOR.FFN_DOWN_SHEXP, "weight", bid): zeros(n_embd, _ZERO_SHARED),
            # The gate's value is irrelevant (it scales 0), but not 0: llama.cpp's logits came out NaN with an
            # all-zero gate vector (measured with llama-cpp-python 0.3.36), and any other value gives exactly 0.
            _name(MODEL_TENSOR.FFN_GATE_INP_SHEXP, "weight", bid): np.ones(n_embd, dtype=np.float32)}


def export_moe_gguf(hf_dir: str | Path, out_path: str | Path, dtype: Literal["f16", "f32"] = "f16",
                    name: str | None = None) -> Path:
    """Write the MoE (or dense-twin) checkpoint in ``hf_dir`` (weights + tokenizer) to GGUF ``out_path``."""
    np_dtype, file_type = check_dtype(dtype)
    hf_dir, out_path = Path(hf_dir), Path(out_path)
    model = load_moe(hf_dir)
    cfg = model.config
    arch = gguf_arch(cfg)
    tokenizer = load_tokenizer(hf_dir)
    hf_model = moe_to_hf(model)
    tensors = gguf_moe_tensors(hf_model, cfg)
    routers = [k for k in tensors if k.startswith("blk.") and ".ffn_gate_inp." in k]
    with gguf_writer(out_path, MODEL_ARCH_NAMES[arch]) as writer:
        writer.add_name(name or hf_dir.resolve().name)
        writer.add_context_length(cfg.block_size)
        writer.add_embedding_length(cfg.n_embd)
        writer.add_block_count(cfg.n_layer)
        writer.add_feed_forward_length(cfg.dense_hidden if not cfg.moe else cfg.expert_hidden)
        writer.add_head_count(cfg.n_head)
        writer.add_head_count_kv(cfg.n_head)
        writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
        writer.add_rope_freq_base(cfg.rope_theta)
        writer.add_rope_dimension_count(cfg.n_embd // cfg.n_head)
        if cfg.moe:
            writer.add_expert_count(cfg.n_experts)
            writer.add_expert_used_count(cfg.top_k)
            writer.add_expert_feed_forward_length(cfg.expert_hidden)
            shared = cfg.shared_hidden or (_ZERO_SHARED if arch == MODEL_ARCH.QWEN2MOE else 0)
            if shared:
                writer.add_expert_shared_feed_forward_length(shared)
            if arch == MODEL_ARCH.ERNIE4_5_MOE:
                writer.add_expert_shared_count(1 if cfg.shared_hidden else 0)
                writer.add_leading_dense_block_count(0)
                writer.add_interleave_moe_layer_step(1)
        writer.add_file_type(int(file_type))
        add_tokenizer(writer, tokenizer, cfg.vocab_size, hf_dir)
        add_tensors(writer, tensors, np_dtype, keep_f32=routers)
    return out_path


def export_and_check(hf_dir: str | Path, out_path: str | Path, windows: list[list[int]],
                     dtype: Literal["f16", "f32"] = "f16") -> dict:
    """Export ``hf_dir`` to ``out_path`` and score llama.cpp against transformers on token ``windows``.

    Returns ``{"gguf": path or None, "llama_top1": share of positions where llama.cpp's most likely next token is
    transformers', "llama_max_abs_diff": largest logit difference, "why": None or why a part did not run}``:
    an architecture llama.cpp cannot express (``GGUFExportError``), llama-cpp-python missing or llama.cpp refusing
    the file leaves the numbers None and says why, instead of failing the caller (an experiment that only
    reports this).
    """
    from transformers import AutoModelForCausalLM

    from shared.quant.llama_cpp import LlamaCppError, LlamaCppUnavailable, llama_logits, load_llama

    result = {"gguf": None, "llama_top1": None, "llama_max_abs_diff": None, "why": None}
    try:
        result["gguf"] = str(export_moe_gguf(hf_dir, out_path, dtype=dtype))
        llama = load_llama(out_path, logits_all=True)
    except (GGUFExportError, LlamaCppUnavailable, LlamaCppError) as err:
        result["why"] = str(err)
        return result
    same = total = 0
    worst = 0.0
    try:
        hf = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
        for ids in windows:
            with torch.no_grad():
                want = hf(torch.tensor([ids])).logits[0].numpy()
            got = llama_logits(llama, ids)
            same += int((got.argmax(-1) == want.argmax(-1)).sum())
            total += len(ids)
            worst = max(worst, float(np.abs(got - want).max()))
    finally:
        llama.close()
    result.update(llama_top1=same / total if total else None, llama_max_abs_diff=worst)
    return result
