"""AdamW with weight-decay groups: matrices (and embeddings) decay, biases and LayerNorm gains don't."""
from __future__ import annotations

import torch


def build_adamw(model: torch.nn.Module, lr: float, weight_decay: float, betas: tuple[float, float]) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel exists on CUDA and (torch >= 2.4) on CPU; on CPU it is ~8% faster per training
    # step than foreach for the benchmark model (benchmarks/pretrain_throughput.py).
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True)
