"""``EngineModel``: GPT-2's forward pass over a ``StepBatch`` with a preallocated ``KVCache``.

Same math as ``shared.model.gpt.GPT`` (and HF ``GPT2LMHeadModel``): pre-LayerNorm blocks, fused
q/k/v projection, tanh-GELU, learned positions, tied embeddings. Built once from a ``GPT`` (weights
copied, so the engine never aliases a model that is still training) and then used only under
``torch.inference_mode``.

A decode-only step of 1-4 tokens runs as one C++ call (``shared.engine.native.decode_model``) when
every linear layer is one our kernels run (the ``gemv`` backend, which ``auto`` picks on CPU, and the
INT8/INT4 weight-only layers): same math, without ~30-40 us of Python per block. ``GPT_JOURNEY_NO_FUSED=1``
turns it off (for A/B timing). Otherwise:

One call runs one engine step: every token of the step (one per decoding request, plus prompt
chunks) goes through each linear layer together, so weights stream from memory once per step
however many requests share it; attention is per group: one batched call for all decode tokens
over their cached keys, one causal call per prompt chunk. K/V of every token are written into
the cache in place; nothing grows. Logits are computed only for ``batch.logit_rows``: the tied
lm_head is a third of GPT-2 small's weights, so skipping it for prompt tokens matters.

The linear layers (``qkv``, ``attn_out``, ``fc``, ``fc_out`` per block, and ``lm_head``) follow the
contract in ``shared.engine.linear``; ``linears()`` lists them by name and ``replace_linear`` swaps
one (this is where ``shared.quant`` plugs in). The embedding table is kept twice, as a lookup table
(one row read per token) and inside ``lm_head`` in that layer's own layout.

This module does not sample, schedule or tokenize.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from shared.engine import native as native_kernels
from shared.engine.cache import KVCache, StepBatch
from shared.engine.errors import EngineError
from shared.engine.linear import backend_linear, resolve_backend
from shared.model.gpt import GPT, GPTConfig

#: ``make_linear(name, weight (out, in), bias or None) -> module`` honouring the linear contract.
LinearFactory = Callable[[str, torch.Tensor, "torch.Tensor | None"], nn.Module]
BLOCK_LINEARS = ("qkv", "attn_out", "fc", "fc_out")
MAX_FUSED_ROWS = 4  # the fused decode step's GEMVs take 1..4 rows (kMaxRows in kernels_src/gemv.h)


class EngineBlock(nn.Module):
    """One transformer block's weights; the computation lives in ``EngineModel.forward``."""

    def __init__(self, ln_1: tuple[torch.Tensor, torch.Tensor], ln_2: tuple[torch.Tensor, torch.Tensor],
                 linears: dict[str, nn.Module]):
        super().__init__()
        self.register_buffer("ln_1_weight", ln_1[0])
        self.register_buffer("ln_1_bias", ln_1[1])
        self.register_buffer("ln_2_weight", ln_2[0])
        self.register_buffer("ln_2_bias", ln_2[1])
        for name in BLOCK_LINEARS:
            setattr(self, name, linears[name])


class EngineModel(nn.Module):
    """GPT-2 inference over a ``StepBatch``; see the module docstring for the contract."""

    def __init__(self, config: GPTConfig, wte: torch.Tensor, wpe: torch.Tensor, blocks: list[EngineBlock],
                 ln_f: tuple[torch.Tensor, torch.Tensor], lm_head: nn.Module):
        super().__init__()
        self.config = config
        self.register_buffer("wte", wte)
        self.register_buffer("wpe", wpe)
        self.blocks = nn.ModuleList(blocks)
        self.register_buffer("ln_f_weight", ln_f[0])
        self.register_buffer("ln_f_bias", ln_f[1])
        self.lm_head = lm_head
        self._refresh()

    def _refresh(self) -> None:
        # Per-layer tuples of plain references: nn.Module attribute lookups cost ~0.5 us each, and a
        # decode step makes ~10 per layer; rebuilt whenever a layer is replaced.
        self._layers = [(b.ln_1_weight, b.ln_1_bias, b.qkv, b.attn_out, b.ln_2_weight, b.ln_2_bias, b.fc, b.fc_out)
                        for b in self.blocks]
        # The whole decode step in one C++ call when every layer has a kernel our C++ runs (shared.engine.native).
        self._fused = native_kernels.decode_model(self) if os.environ.get("GPT_JOURNEY_NO_FUSED") != "1" else None
        # [logits, their argmax] of the last fused step (see greedy_tokens); a list filled in place, as
        # nn.Module.__setattr__ costs microseconds a step
        self._last_fused: list = [None, None]

    @property
    def dtype(self) -> torch.dtype:
        return self.wte.dtype

    @property
    def device(self) -> torch.device:
        return self.wte.device

    @classmethod
    def from_gpt(cls, gpt: GPT, *, backend: str = "auto", dtype: torch.dtype = torch.float32,
                 batch_hint: int = 16, make_linear: LinearFactory | None = None) -> EngineModel:
        """An engine model with copies of ``gpt``'s weights in ``dtype`` on ``gpt``'s device.

        ``make_linear`` builds each linear layer from its name (``h.3.fc``, ``lm_head``), weight (out, in)
        and bias; by default the ``backend`` ("auto", "dense", "onednn", "gemv") layer for ``batch_hint`` rows.
        """
        if not isinstance(gpt, GPT):
            raise EngineError(f"EngineModel.from_gpt needs a shared.model.gpt.GPT, got {type(gpt).__name__}; load "
                              "HF checkpoints with shared.model.hf.load_gpt (or Engine.from_checkpoint)")
        device = gpt.transformer.wte.weight.device
        if make_linear is None:
            concrete = resolve_backend(backend, device)

            def make_linear(name, weight, bias):  # noqa: ARG001 - the name is for custom factories
                return backend_linear(weight, bias, concrete, batch_hint)

        def t(x: torch.Tensor) -> torch.Tensor:
            return x.detach().to(dtype=dtype, copy=True)

        blocks = []
        for i, b in enumerate(gpt.transformer.h):
            sources = {"qkv": b.attn.c_attn, "attn_out": b.attn.c_proj, "fc": b.mlp.c_fc, "fc_out": b.mlp.c_proj}
            linears = {name: make_linear(f"h.{i}.{name}", t(m.weight), None if m.bias is None else t(m.bias))
                       for name, m in sources.items()}
            blocks.append(EngineBlock((t(b.ln_1.weight), t(b.ln_1.bias)), (t(b.ln_2.weight), t(b.ln_2.bias)),
                                      linears))
        wte = t(gpt.transformer.wte.weight)
        ln_f = gpt.transformer.ln_f
        cfg = GPTConfig(**{**gpt.config.__dict__, "dropout": 0.0})
        return cls(cfg, wte, t(gpt.transformer.wpe.weight), blocks, (t(ln_f.weight), t(ln_f.bias)),
                   make_linear("lm_head", wte, None)).eval()

    # ------------------------------------------------------------------ the quantization seam

    def linears(self) -> Iterator[tuple[str, nn.Module]]:
        """``(name, layer)`` for every linear layer: ``h.<i>.qkv|attn_out|fc|fc_out`` and ``lm_head``."""
        for i, block in enumerate(self.blocks):
            for name in BLOCK_LINEARS:
                yield f"h.{i}.{name}", getattr(block, name)
        yield "lm_head", self.lm_head

    def replace_linear(self, name: str, module: nn.Module) -> None:
        """Swap the layer called ``name`` (see ``linears``) for ``module`` with the same in/out features."""
        old = dict(self.linears()).get(name)
        if old is None:
            raise EngineError(f"no linear layer named {name!r}; names are h.<i>.{{{','.join(BLOCK_LINEARS)}}} "
                              "and lm_head (see EngineModel.linears())")
        shape = (getattr(module, "in_features", None), getattr(module, "out_features", None))
        if shape != (old.in_features, old.out_features):
            raise EngineError(f"replacement for {name} maps {shape[0]} -> {shape[1]} features but the layer maps "
                              f"{old.in_features} -> {old.out_features}; build it from that layer's weight")
        if name == "lm_head":
            self.lm_head = module
        else:
            _, index, attr = name.split(".")
            setattr(self.blocks[int(index)], attr, module)
        self._refresh()

    def decode_bytes_per_token(self) -> int:
        """Bytes one decode step at batch 1 must read: every linear layer, LayerNorms, one embedding row each."""
        total = sum(layer_nbytes(m) for _, m in self.linears())
        small = [self.ln_f_weight, self.ln_f_bias] + [b for blk in self.blocks for b in blk.buffers(recurse=False)]
        total += sum(b.numel() * b.element_size() for b in small)
        return total + (self.wte.shape[1] + self.wpe.shape[1]) * self.wte.element_size()

    # ------------------------------------------------------------------ forward

    def forward(self, batch: StepBatch, cache: KVCache) -> torch.Tensor:
        """Logits ``[len(batch.logit_rows), vocab]`` after writing the step's K/V into ``cache``."""
        cfg = self.config
        n_tokens, width = batch.num_tokens, cfg.n_embd
        if (self._fused is not None and not batch.chunks and 0 < n_tokens <= MAX_FUSED_ROWS
                and len(batch.logit_row_ids) == n_tokens):  # a decode-only step: logits for every token
            last = self._last_fused
            last[0], last[1] = self._fused.step_argmax(batch.token_ids, batch.decode_positions, cache.k, cache.v)
            return last[0]
        heads, head_dim = cfg.n_head, width // cfg.n_head
        eps = cfg.layer_norm_eps
        # torch.* rather than F.*: the functional wrappers add a few microseconds of checks per call.
        x = torch.embedding(self.wte, batch.tokens)
        x += torch.embedding(self.wpe, batch.positions)
        # A decode-only step on CPU in fp32 runs attention (and its cache write) as one C++ call per layer
        native = (not batch.chunks and batch.n_decode > 0 and x.dtype == torch.float32 and x.device.type == "cpu"
                  and native_kernels.decode_attention_available())
        scale = head_dim ** -0.5
        for layer, (ln1_w, ln1_b, qkv, attn_out, ln2_w, ln2_b, fc, fc_out) in enumerate(self._layers):
            h = torch.layer_norm(x, (width,), ln1_w, ln1_b, eps)
            if native:
                kc, vc = cache.layers[layer]
                y = native_kernels.decode_attention(qkv(h), kc, vc, batch.decode_positions, scale)
            else:
                q, k, v = qkv(h).view(n_tokens, 3, heads, head_dim).unbind(1)
                y = self._attend(cache.layers[layer], q, k, v, batch).reshape(n_tokens, width)
            x += attn_out(y)
            h = torch.layer_norm(x, (width,), ln2_w, ln2_b, eps)
            x += fc_out(F.gelu(fc(h), approximate="tanh"))
        rows = batch.logit_rows
        if rows.numel() == 0:
            return x.new_empty(0, cfg.vocab_size)
        if rows.numel() != n_tokens:
            x = x.index_select(0, rows)
        return self.lm_head(torch.layer_norm(x, (width,), self.ln_f_weight, self.ln_f_bias, eps))

    def greedy_tokens(self, logits: torch.Tensor) -> list[int] | None:
        """Each row's argmax (as ``torch.argmax``: the first NaN, else the first maximum) when ``logits`` is
        the tensor the last fused decode step returned, unchanged since; None for any other logits.

        Why: the fused step takes the argmax in C++ right after the lm_head, while the logits are in
        cache; from Python after the step it costs ~25-70 us more (the logits and numpy's code come cold
        once a 500 MB GPT-2 124M FP32 step has streamed through the caches). The caller must not have
        modified the logits (a repetition penalty does, in place).
        """
        last = self._last_fused
        return last[1] if last[0] is logits else None

    @staticmethod
    def _attend(layer_cache: tuple[torch.Tensor, torch.Tensor], q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                batch: StepBatch) -> torch.Tensor:
        """Attention output ``[n_tokens, n_head, head_dim]``; writes the step's K/V into the layer's cache."""
        kc, vc = layer_cache  # [slots, heads, max_len, head_dim]
        n = batch.n_decode
        decoded = None
        if n:
            if n == 1:  # batch-1 decode: plain slicing, no index tensors
                pos = batch.decode_positions[0]
                kc[0, :, pos] = k[0]
                vc[0, :, pos] = v[0]
            else:
                rows, pos = batch.decode_slots, batch.positions[:n]
                kc[rows, :, pos] = k[:n]
                vc[rows, :, pos] = v[:n]
            span = batch.decode_span
            decoded = F.scaled_dot_product_attention(q[:n].unsqueeze(2), kc[:n, :, :span], vc[:n, :, :span],
                                                     attn_mask=batch.decode_mask)  # [n, heads, 1, head_dim]
            if not batch.chunks:
                return decoded.reshape(n, q.shape[1], q.shape[2])
        y = q.new_empty(q.shape)
        if decoded is not None:
            y[:n] = decoded.squeeze(2)
        for c in batch.chunks:
            rows = slice(c.offset, c.offset + c.length)
            kt, vt, qt = k[rows].transpose(0, 1), v[rows].transpose(0, 1), q[rows].transpose(0, 1)  # [heads, len, hd]
            end = c.start + c.length
            kc[c.slot, :, c.start:end] = kt
            vc[c.slot, :, c.start:end] = vt
            if c.mask is None:  # prompt start: attend within the chunk only
                out = F.scaled_dot_product_attention(qt[None], kt[None], vt[None], is_causal=True)
            else:  # continuation: the cached prefix plus this chunk, causally
                out = F.scaled_dot_product_attention(qt[None], kc[c.slot, :, :end][None], vc[c.slot, :, :end][None],
                                                     attn_mask=c.mask)
            y[rows] = out[0].transpose(0, 1)
        return y


def layer_nbytes(module: nn.Module) -> int:
    """Bytes of a linear layer's weights: its ``nbytes`` attribute if it has one (quantized layers),
    else its parameters and buffers plus a oneDNN ``packed`` weight."""
    if isinstance(getattr(module, "nbytes", None), int):
        return module.nbytes
    tensors = list(module.parameters()) + list(module.buffers())
    packed = getattr(module, "packed", None)
    if isinstance(packed, torch.Tensor):
        tensors.append(packed)
    return sum(t.numel() * t.element_size() for t in tensors)
