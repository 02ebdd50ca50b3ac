"""A Mixture-of-Experts language model (and its dense twin), saved as Hugging Face Qwen2-MoE or Ernie-4.5-MoE.

Why not GPT-2 blocks: no Hugging Face MoE architecture has LayerNorm + learned positions + GELU experts,
so a GPT-2-style MoE could be read by nothing but this file. The blocks are therefore those the HF MoE
architectures share: pre-RMSNorm, RoPE, attention, SwiGLU experts stored fused (``experts.gate_up_proj``
(E, 2F, C), ``experts.down_proj`` (E, C, F)), an fp32 softmax router without bias (``mlp.gate.weight``),
tied embeddings; parameter names are HF's. Two architectures in transformers 5 cover every variant here:
- Qwen2-MoE (``shared.model.hf.moe_to_hf`` picks it for ``balance="aux"``): q/k/v biases, an optional shared
  expert behind a sigmoid gate, and ``norm_topk_prob=False`` available, which Switch top-1 needs (Mixtral
  and Ernie always renormalise the top-k weights, so top-1 would get weight 1.0 and the router no gradient
  from the LM loss). Its dense layer (``n_experts=0``) is the dense baseline: comparisons change only the MLP.
- Ernie-4.5-MoE (for ``balance="bias"``): the only softmax-router HF MoE with a selection-only expert bias
  (``moe_statics.e_score_correction_bias``), ungated shared experts, no q/k/v biases, renormalised top-k,
  and interleaved RoPE (an exact row permutation of q/k, done when saving). The fine-grained variant is
  built to match it: ``qkv_bias=False, shared_gate=False, norm_topk_prob=True``.
Others do not fit: OLMoE/Qwen3-MoE add q/k norms, DeepSeek-V3/GLM-4-MoE use sigmoid scores with MLA or
grouped routing.

Routing (``MoEMLP``), per token x:
- logits = x W_r in fp32 (autocast off), probs = softmax(logits); the top-k experts by ``probs`` (plus the
  balancing bias, below) are chosen and weighted by their probs (``norm_topk_prob=False``: Switch keeps the
  raw gate value for top-1, which is what lets the LM loss train the router), or by probs renormalised
  over the k chosen (``norm_topk_prob=True``).
- Capacity (training only): expert e takes at most ``ceil(capacity_factor * N * k / E)`` of the N tokens'
  N*k assignments, first choices before second choices, earlier tokens first (Switch/GShard order); an
  assignment over capacity is dropped: it adds nothing, so a token whose every choice is dropped passes
  through on the residual (plus the shared expert). ``capacity_factor<=0`` disables it. In eval mode every
  token goes to its top-k, as HF's implementation (and inference in the papers) does, so the saved model
  and ours agree exactly.
- Losses (training): Switch load balancing ``aux_weight * E * sum_i f_i P_i`` (f_i: share of the N*k
  assignments, before dropping, that chose expert i; P_i: mean router prob of i) and the ST-MoE router
  z-loss ``z_weight * mean(logsumexp(logits)^2)``; both summed over MoE layers and added to the LM loss.
- Bias balancing (``balance="bias"``, DeepSeek-V3's auxiliary-loss-free method): a per-expert bias (a buffer,
  not trained) is added to the softmax probs for *selection only* (DeepSeek-V3 adds it to its sigmoid
  affinities; softmax keeps one router for every variant, and is what Ernie-4.5-MoE does); the weights stay
  the unbiased probs. The rate must stay below the spread of the probs (~1/E): a bias step larger than it
  makes selection flip back and forth every step (seen with 0.01 at E=8 early in training). After each
  optimizer step ``update_routing_bias()`` moves it by ``bias_rate * sign(mean load - load)``. It stays part
  of routing at inference (as in DeepSeek-V3), which is why such a model is saved as Ernie-4.5-MoE.

Per step, each MoE layer keeps router statistics (``router_stats()``): assignments per expert before
dropping and the number dropped. What this module does not do: expert parallelism, token-choice with
expert-choice routing, KV-cached generation (the engine's job), saving (``shared.model.hf``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

BALANCE = ("aux", "bias")


@dataclass
class MoEConfig:
    """Architecture and routing hyper-parameters. ``n_experts=0`` is the dense twin."""

    vocab_size: int = 4096
    block_size: int = 128  # HF max_position_embeddings
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    dense_hidden: int = 344  # SwiGLU width of the dense MLP (n_experts=0): ~ 8/3 * n_embd, as a 4x GELU MLP
    n_experts: int = 4
    top_k: int = 1
    expert_hidden: int = 344  # SwiGLU width of each routed expert
    shared_hidden: int = 0  # SwiGLU width of the shared expert (0 = none)
    shared_gate: bool = True  # scale the shared expert by sigmoid(w . x) (Qwen2-MoE) or add it as is (DeepSeek)
    qkv_bias: bool = True  # biases on q/k/v (Qwen2-MoE) or none (Ernie-4.5-MoE)
    norm_topk_prob: bool = False
    capacity_factor: float = 1.25  # training only; <= 0 = unlimited
    aux_weight: float = 1e-2
    z_weight: float = 1e-3
    balance: str = "aux"  # "aux" (Switch loss only) or "bias" (DeepSeek-V3 bias, plus aux_weight if > 0)
    bias_rate: float = 1e-3

    @property
    def moe(self) -> bool:
        return self.n_experts > 0

    def validate(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.n_embd % self.n_head or (self.n_embd // self.n_head) % 2:
            raise ValueError(f"n_embd={self.n_embd} must be n_head={self.n_head} times an even head size (RoPE)")
        if self.n_experts < 0:
            raise ValueError(f"n_experts must be >= 0 (0 = dense), got {self.n_experts}")
        if self.moe and not 1 <= self.top_k <= self.n_experts:
            raise ValueError(f"top_k={self.top_k} must be between 1 and n_experts={self.n_experts}")
        if not self.moe and self.dense_hidden <= 0:
            raise ValueError("a dense model (n_experts=0) needs dense_hidden > 0")
        if self.moe and self.expert_hidden <= 0:
            raise ValueError("an MoE model needs expert_hidden > 0")
        if self.balance not in BALANCE:
            raise ValueError(f"balance={self.balance!r} is unknown; choose from {list(BALANCE)}")


def swiglu_params(n_embd: int, hidden: int) -> int:
    return 3 * n_embd * hidden


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()  # statistics in fp32, as HF's Qwen2MoeRMSNorm
        return self.weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)


def rope(head_dim: int, positions: torch.Tensor, theta: float, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (T, head_dim) for rotate-half RoPE (HF's default RoPE)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float, device=positions.device) / head_dim))
    freqs = positions.float()[:, None] * inv_freq[None]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    def __init__(self, cfg: MoEConfig):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.n_embd // cfg.n_head
        self.q_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
        self.o_proj.residual_scaled = True

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = (p(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, C))


class SwiGLU(nn.Module):
    """One SwiGLU MLP (HF ``Qwen2MoeMLP``): down(silu(gate x) * up x)."""

    def __init__(self, n_embd: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(n_embd, hidden, bias=False)
        self.up_proj = nn.Linear(n_embd, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, n_embd, bias=False)
        self.down_proj.residual_scaled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Experts(nn.Module):
    """E SwiGLU experts stored fused, in HF ``Qwen2MoeExperts`` layout."""

    def __init__(self, n_experts: int, n_embd: int, hidden: int):
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.empty(n_experts, 2 * hidden, n_embd))
        self.down_proj = nn.Parameter(torch.empty(n_experts, n_embd, hidden))
        for p in (self.gate_up_proj, self.down_proj):  # usable on its own; MoEGPT re-inits with GPT-2's scaling
            nn.init.normal_(p, std=0.02)

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        gate, up = F.linear(x, self.gate_up_proj[e]).chunk(2, dim=-1)
        return F.linear(F.silu(gate) * up, self.down_proj[e])


class Router(nn.Module):
    def __init__(self, cfg: MoEConfig):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cfg.n_experts, cfg.n_embd))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # fp32 even under bf16 autocast: softmax over small logit differences is where low precision hurts
        # (Switch Transformer, "selective precision").
        with torch.autocast(x.device.type, enabled=False):
            return F.linear(x.float(), self.weight.float())


def capacity(n_tokens: int, top_k: int, n_experts: int, factor: float) -> int:
    """Assignments expert e may take in one batch of ``n_tokens`` tokens."""
    return math.ceil(factor * n_tokens * top_k / n_experts)


def route(probs: torch.Tensor, top_k: int, bias: torch.Tensor | None, norm_topk: bool,
          cap: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k routing of N tokens over E experts, with an optional capacity.

    Returns ``(index (N, k), weight (N, k), kept (N, k) bool)``. Selection uses ``probs + bias``; weights are
    the unbiased probs (renormalised over the k if ``norm_topk``). An assignment is kept while its expert has
    taken fewer than ``cap`` assignments, counting all first choices (in token order) before second choices.
    """
    scores = probs if bias is None else probs + bias.to(probs.dtype)
    index = scores.topk(top_k, dim=-1).indices
    weight = probs.gather(-1, index)
    if norm_topk:
        weight = weight / weight.sum(-1, keepdim=True).clamp(min=1e-12)
    if cap is None:
        return index, weight, torch.ones_like(index, dtype=torch.bool)
    n, e = probs.shape
    order = F.one_hot(index.t().reshape(-1), e)  # (k*N, E): choice-major, so first choices queue first
    position = (order.cumsum(0) * order).sum(-1) - 1  # 0-based place in its expert's queue
    kept = (position < cap).view(top_k, n).t()
    return index, weight, kept


def balance_loss(probs: torch.Tensor, index: torch.Tensor, n_experts: int) -> torch.Tensor:
    """Switch Transformer's load-balancing loss (unweighted): ``E * sum_i f_i * P_i``.

    ``f_i``: share of the N*k assignments in ``index`` (N, k) that chose expert i (before capacity dropping;
    not differentiable), ``P_i``: mean of ``probs[:, i]`` (differentiable). 1.0 when both are uniform, ``E``
    when every token goes to one expert with probability 1.
    """
    f = torch.bincount(index.reshape(-1), minlength=n_experts).to(probs.dtype) / index.numel()
    return n_experts * (f * probs.mean(0)).sum()


def z_loss(logits: torch.Tensor) -> torch.Tensor:
    """ST-MoE's router z-loss (unweighted): mean over tokens of logsumexp(logits)^2; keeps router logits small."""
    return torch.logsumexp(logits, dim=-1).pow(2).mean()


class MoEMLP(nn.Module):
    """Routed experts (+ optional gated shared expert), HF ``Qwen2MoeSparseMoeBlock``'s weights and math."""

    def __init__(self, cfg: MoEConfig):
        super().__init__()
        self.cfg = cfg
        self.gate = Router(cfg)
        self.experts = Experts(cfg.n_experts, cfg.n_embd, cfg.expert_hidden)
        if cfg.shared_hidden:
            self.shared_expert = SwiGLU(cfg.n_embd, cfg.shared_hidden)
            if cfg.shared_gate:
                self.shared_expert_gate = nn.Linear(cfg.n_embd, 1, bias=False)
        self.register_buffer("routing_bias", torch.zeros(cfg.n_experts), persistent=True)
        # Statistics since the last reset_stats (assignments per expert before dropping, dropped), and the load
        # since the last bias update (one optimizer step, with any gradient accumulation).
        self.register_buffer("load", torch.zeros(cfg.n_experts), persistent=False)
        self.register_buffer("step_load", torch.zeros(cfg.n_experts), persistent=False)
        self.register_buffer("dropped", torch.zeros(()), persistent=False)
        self.register_buffer("assigned", torch.zeros(()), persistent=False)
        self.aux_loss = self.z_loss = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        B, T, C = x.shape
        flat = x.reshape(-1, C)
        logits = self.gate(flat)
        probs = logits.softmax(-1)
        cap = (capacity(flat.shape[0], cfg.top_k, cfg.n_experts, cfg.capacity_factor)
               if self.training and cfg.capacity_factor > 0 else None)
        bias = self.routing_bias if cfg.balance == "bias" else None
        index, weight, kept = route(probs, cfg.top_k, bias, cfg.norm_topk_prob, cap)
        with torch.no_grad():
            counts = torch.bincount(index.reshape(-1), minlength=cfg.n_experts).to(self.load.dtype)
            if self.training:
                self.load += counts
                self.step_load += counts
                self.dropped += (~kept).sum()
                self.assigned += index.numel()
        # Losses; under no_grad (eval) they are still computed so callers can log them.
        self.aux_loss = balance_loss(probs, index, cfg.n_experts)
        self.z_loss = z_loss(logits)

        out = torch.zeros_like(flat)
        w = (weight * kept).to(flat.dtype)
        for e in range(cfg.n_experts):
            token, slot = torch.where((index == e) & kept)
            if token.numel():
                out.index_add_(0, token, self.experts.expert(e, flat[token]) * w[token, slot, None])
        if cfg.shared_hidden:
            shared = self.shared_expert(flat)
            out = out + (torch.sigmoid(self.shared_expert_gate(flat)) * shared if cfg.shared_gate else shared)
        return out.view(B, T, C)

    @torch.no_grad()
    def update_bias(self) -> None:
        """DeepSeek-V3: bias_e += rate * sign(mean load - load_e), from the loads since the last update."""
        if self.step_load.sum() > 0:
            self.routing_bias += self.cfg.bias_rate * torch.sign(self.step_load.mean() - self.step_load)
        self.step_load.zero_()

    def reset_stats(self) -> None:
        self.load.zero_()
        self.dropped.zero_()
        self.assigned.zero_()


class Block(nn.Module):
    def __init__(self, cfg: MoEConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.n_embd, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.n_embd, cfg.rms_norm_eps)
        self.mlp = MoEMLP(cfg) if cfg.moe else SwiGLU(cfg.n_embd, cfg.dense_hidden)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class MoEGPT(nn.Module):
    """The language model. ``forward(idx, targets)`` -> ``(logits, loss)``; loss = CE + aux + z terms."""

    def __init__(self, cfg: MoEConfig):
        super().__init__()
        cfg.validate()
        self.config = cfg
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.model.layers = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.model.norm = RMSNorm(cfg.n_embd, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.model.embed_tokens.weight  # tied
        self.apply(self._init_weights)
        self.last_losses: dict[str, float] = {}

    def _init_weights(self, module: nn.Module) -> None:
        std = 0.02
        if isinstance(module, nn.Linear):
            scale = 1 / math.sqrt(2 * self.config.n_layer) if getattr(module, "residual_scaled", False) else 1.0
            nn.init.normal_(module.weight, std=std * scale)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
        elif isinstance(module, (Experts, Router)):
            for name, p in module.named_parameters(recurse=False):
                scale = 1 / math.sqrt(2 * self.config.n_layer) if name == "down_proj" else 1.0
                nn.init.normal_(p, std=std * scale)

    def moe_layers(self) -> list[MoEMLP]:
        return [b.mlp for b in self.model.layers if isinstance(b.mlp, MoEMLP)]

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds the context length {self.config.block_size}")
        x = self.model.embed_tokens(idx)
        cos, sin = rope(self.config.n_embd // self.config.n_head, torch.arange(T, device=idx.device),
                        self.config.rope_theta, x.dtype)
        for block in self.model.layers:
            x = block(x, cos, sin)
        logits = self.lm_head(self.model.norm(x))
        if targets is None:
            return logits, None
        ce = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1)
        loss = ce
        layers = self.moe_layers()
        if layers:
            aux = sum(m.aux_loss for m in layers)
            z = sum(m.z_loss for m in layers)
            loss = ce + self.config.aux_weight * aux + self.config.z_weight * z
            self.last_losses = {"ce": ce.item(), "aux": aux.item() / len(layers), "z": z.item() / len(layers)}
        return logits, loss

    # ---------------------------------------------------------------- routing bookkeeping

    def update_routing_bias(self) -> None:
        """After an optimizer step: move each layer's bias toward balance (balance='bias' only)."""
        if self.config.balance == "bias":
            for m in self.moe_layers():
                m.update_bias()

    def router_stats(self, reset: bool = True) -> dict:
        """Since the last reset: per-layer load fractions (before dropping) and the dropped-assignment rate."""
        layers = self.moe_layers()
        if not layers:
            return {}
        loads = [(m.load / m.load.sum().clamp(min=1)).tolist() for m in layers]
        assigned = sum(float(m.assigned) for m in layers)
        dropped = sum(float(m.dropped) for m in layers)
        stats = {"load": loads, "dropped_frac": dropped / assigned if assigned else 0.0}
        if reset:
            for m in layers:
                m.reset_stats()
        return stats

    # ---------------------------------------------------------------- sizes

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def active_params(self) -> int:
        """Parameters one token uses (the routed experts it is not sent to left out), embeddings included once."""
        cfg = self.config
        n = self.num_params()
        if cfg.moe:
            n -= cfg.n_layer * (cfg.n_experts - cfg.top_k) * swiglu_params(cfg.n_embd, cfg.expert_hidden)
        return n

    def flops_per_token(self) -> float:
        """Training FLOPs per token: 6 x active matmul params (the tied head included once, the embedding lookup
        not) + causal attention's 12 L C T, as ``GPT.flops_per_token``."""
        cfg = self.config
        return 6 * self.active_params() + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size


__all__ = ["MoEConfig", "MoEGPT", "MoEMLP", "route", "capacity", "balance_loss", "z_loss", "swiglu_params",
           "BALANCE"]
