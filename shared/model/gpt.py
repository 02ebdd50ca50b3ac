"""The GPT-2 model, readable top to bottom (nanoGPT style).

Same math as Hugging Face ``GPT2LMHeadModel`` (pre-LayerNorm blocks, tanh-GELU, learned positions,
tied input/output embeddings), so a checkpoint converts both ways with identical logits
(``shared.model.hf``). Parameter names follow nanoGPT (``transformer.h.0.attn.c_attn.weight``) and
use ``nn.Linear`` layout (out, in); HF's ``Conv1D`` stores the transpose.

Why our own class instead of ``GPT2LMHeadModel`` for training: fused ``scaled_dot_product_attention``
(flash/memory-efficient kernels), no HF bookkeeping per call, and it compiles cleanly; it is about
3x faster per step on CPU (``benchmarks/pretrain_throughput.py``). Everything outside the pretraining
loop uses the saved HF checkpoint.

What this module does not do: generation with a KV cache (``shared.engine``), LoRA, quantization.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GPTConfig:
    """Architecture hyper-parameters (the fields of HF ``GPT2Config`` we use)."""

    vocab_size: int = 50257
    block_size: int = 1024  # context length (HF: n_positions)
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    layer_norm_eps: float = 1e-5

    def validate(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)  # q, k, v in one matmul
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.c_proj.residual_scaled = True  # GPT-2 init: scale residual projections by 1/sqrt(2*n_layer)
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)  # HF resid_pdrop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, n_head, T, head_dim)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C)))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)
        self.c_proj.residual_scaled = True
        self.dropout = nn.Dropout(cfg.dropout)  # HF resid_pdrop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))  # HF "gelu_new"


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        cfg.validate()
        self.config = cfg
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.vocab_size, cfg.n_embd),
            wpe=nn.Embedding(cfg.block_size, cfg.n_embd),
            drop=nn.Dropout(cfg.dropout),
            h=nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)]),
            ln_f=nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps),
        ))
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied, as in GPT-2
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            std = 0.02
            if getattr(module, "residual_scaled", False):
                std /= math.sqrt(2 * self.config.n_layer)
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count (tied weights counted once); non_embedding drops wte and wpe."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wte.weight.numel() + self.transformer.wpe.weight.numel()
        return n

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """Return ``(logits, loss)``; loss is mean cross-entropy over ``targets`` (``-1`` ignored)."""
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds the context length {self.config.block_size}")
        pos = torch.arange(T, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def flops_per_token(self) -> float:
        """Training FLOPs per token (6N + attention), as in the PaLM appendix; used for MFU."""
        cfg = self.config
        return 6 * self.num_params(non_embedding=True) + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size


def grow_vocabulary(model: GPT, vocab_size: int) -> GPT:
    """``model`` with an embedding (and the tied head) of ``vocab_size`` rows; the forward pass of old ids unchanged.

    The new rows start as the mean of the existing ones: a token the model never saw then gets the
    average input vector and an average logit, instead of a random direction. Used when special
    tokens are appended to the vocabulary of a model pretrained without them (HF ``gpt2`` has exactly
    50,257 rows; build-nanogpt and llm.c pad to 50,304 and need no growth).
    """
    old = model.config.vocab_size
    if vocab_size < old:
        raise ValueError(f"cannot shrink the vocabulary from {old} to {vocab_size} rows")
    if vocab_size == old:
        return model
    grown = GPT(dataclasses.replace(model.config, vocab_size=vocab_size))
    state = dict(model.state_dict())
    wte = state["transformer.wte.weight"]
    extra = wte.mean(dim=0, keepdim=True).expand(vocab_size - old, -1)
    state["transformer.wte.weight"] = torch.cat([wte, extra])
    state["lm_head.weight"] = state["transformer.wte.weight"]
    grown.load_state_dict(state)
    return grown
