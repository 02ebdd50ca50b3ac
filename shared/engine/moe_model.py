"""``MoEEngineModel``: the engine's step interface (``forward(StepBatch, KVCache)``) over ``shared.model.moe.MoEGPT``.

So ``Engine`` (continuous batching, chunked prefill, sampling, streaming) generates from a saved MoE (a
Qwen2-MoE checkpoint, ``shared.model.hf.save_moe_checkpoint``) as from GPT-2: it is an ``EngineModel``
whose step runs the MoE blocks: RMSNorm, q/k/v with RoPE applied at each token's position before its K/V
enter the cache, attention through ``EngineModel._attend`` (the same cache layout and masks), then the
routed experts of ``MoEMLP`` in eval mode (every token to its top-k, no capacity: as HF and as training
evaluates). Logits only for ``batch.logit_rows``, as ``EngineModel``.

What it does not do (GPT-2's ``EngineModel`` does): the fused C++ decode step and the native decode
attention (their kernels are written for GPT-2's LayerNorm/GELU block), and the linear-layer seam
(``linears``/``replace_linear``: quantizing expert weights is not implemented, so it lists no layers and
``shared.quant`` refuses nothing silently: it finds nothing to quantize). Weights are copied in ``dtype``.
"""
from __future__ import annotations

import copy
from collections.abc import Iterator

import torch
import torch.nn as nn

from shared.engine.cache import KVCache, StepBatch
from shared.engine.errors import EngineError
from shared.engine.model import EngineModel
from shared.model.moe import MoEGPT, apply_rope, rope


class MoEEngineModel(EngineModel):
    """A copy of an ``MoEGPT`` in eval mode, stepped over a ``StepBatch`` with a ``KVCache``."""

    def __init__(self, moe: MoEGPT):  # noqa: D107 - EngineModel's __init__ builds GPT-2 blocks: not called
        nn.Module.__init__(self)
        self.moe = moe.eval()
        self.config = moe.config  # n_layer, n_head, n_embd, block_size, vocab_size: what Engine reads
        self._last_fused = [None, None]  # no fused step: greedy_tokens always answers None

    @classmethod
    def from_moe(cls, model: MoEGPT, *, dtype: torch.dtype = torch.float32) -> MoEEngineModel:
        if not isinstance(model, MoEGPT):
            raise EngineError(f"MoEEngineModel.from_moe needs a shared.model.moe.MoEGPT, got {type(model).__name__}; "
                              "load Qwen2-MoE checkpoints with shared.model.hf.load_moe")
        return cls(copy.deepcopy(model).to(dtype)).eval()

    @property
    def dtype(self) -> torch.dtype:
        return self.moe.model.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.moe.model.embed_tokens.weight.device

    def linears(self) -> Iterator[tuple[str, nn.Module]]:
        return iter(())

    def replace_linear(self, name: str, module: nn.Module) -> None:
        raise EngineError("the MoE engine model has no replaceable linear layers (quantizing experts is not "
                          "implemented); serve it unquantized")

    def decode_bytes_per_token(self) -> int:
        """Bytes a batch-1 decode step reads: every weight except the routed experts the token skips."""
        cfg = self.config
        total = sum(p.numel() * p.element_size() for p in self.moe.parameters())
        if cfg.moe:
            per_expert = sum(p[0].numel() * p.element_size() for m in self.moe.moe_layers()[:1]
                             for p in (m.experts.gate_up_proj, m.experts.down_proj))
            total -= cfg.n_layer * (cfg.n_experts - cfg.top_k) * per_expert
        return total

    @torch.inference_mode()
    def forward(self, batch: StepBatch, cache: KVCache) -> torch.Tensor:
        cfg = self.config
        n_tokens, width = batch.num_tokens, cfg.n_embd
        heads, head_dim = cfg.n_head, width // cfg.n_head
        x = self.moe.model.embed_tokens(batch.tokens)
        cos, sin = rope(head_dim, batch.positions, cfg.rope_theta, x.dtype)  # each token at its own position
        cos, sin = cos[:, None], sin[:, None]  # broadcast over heads: q/k are [n_tokens, heads, head_dim]
        for layer, block in enumerate(self.moe.model.layers):
            attn = block.self_attn
            h = block.input_layernorm(x)
            q, k, v = (p(h).view(n_tokens, heads, head_dim) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            y = self._attend(cache.layers[layer], q, k, v, batch).reshape(n_tokens, width)
            x = x + attn.o_proj(y)
            x = x + block.mlp(block.post_attention_layernorm(x)[None])[0]
        rows = batch.logit_rows
        if rows.numel() == 0:
            return x.new_empty(0, cfg.vocab_size)
        if rows.numel() != n_tokens:
            x = x.index_select(0, rows)
        return self.moe.lm_head(self.moe.model.norm(x))


__all__ = ["MoEEngineModel"]
