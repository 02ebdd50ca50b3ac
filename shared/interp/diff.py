"""What one training stage changed: two models of the same shape compared on a fixed prompt set.

``compare(a, b, prompts)`` returns a ``StageDiff`` with
- per residual-stream layer (0 = embeddings, ``l`` = after block ``l - 1``): the mean cosine similarity
  of the two models' activations and the normalized distance ``||b - a|| / ||a||``, per token;
- per head: how much its attention moved, the mean total-variation distance between the two
  patterns (0 = same, 1 = disjoint) over every query of every prompt;
- per weight matrix: the relative change ``||W_b - W_a|| / ||W_a||``;
and ``logit_lens(model, ids)`` reads the residual stream through the final LayerNorm and unembedding
at every layer (TransformerLens' logit lens). Plots and tables are in ``plots`` and ``report``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from shared.interp.bridge import InterpError, Loaded, attention_stack, run_cached
from shared.model.hf import load_gpt

_RESID = ("hook_resid_pre", "hook_resid_post", "hook_pattern")


@dataclass
class StageDiff:
    a: str
    b: str
    cosine: list[float]  # per residual-stream layer
    distance: list[float]
    head_change: torch.Tensor  # [layer, head]
    weight_change: dict[str, float]

    def top_heads(self, k: int) -> list[tuple[str, float]]:
        flat = self.head_change.flatten()
        order = flat.argsort(descending=True)[:k]
        n_heads = self.head_change.shape[1]
        return [(f"L{int(i) // n_heads}H{int(i) % n_heads}", float(flat[i])) for i in order]

    def summary(self) -> dict:
        name, value = self.top_heads(1)[0]
        return {"final_cosine": self.cosine[-1], "final_distance": self.distance[-1],
                "most_changed_head": name, "most_changed_head_tv": value,
                "mean_weight_change": sum(self.weight_change.values()) / len(self.weight_change)}


def check_same_shape(a: Loaded, b: Loaded) -> None:
    keys = ("n_layers", "n_heads", "d_model", "d_vocab")
    shape_a, shape_b = ({k: getattr(m.bridge.cfg, k) for k in keys} for m in (a, b))
    if shape_a != shape_b:
        raise InterpError(f"cannot diff {a.name} and {b.name}: their shapes differ ({shape_a} vs {shape_b}); "
                          "compare models of one lineage (e.g. pretrain, sft, dpo of the same run)")


def _stream(cache, n_layers: int) -> torch.Tensor:
    """``[layer + 1, pos, d_model]``: embeddings, then the output of each block (batch of one)."""
    return torch.stack([cache["blocks.0.hook_resid_pre"][0]] +
                       [cache[f"blocks.{l}.hook_resid_post"][0] for l in range(n_layers)])


def compare(a: Loaded, b: Loaded, prompts: list[list[int]]) -> StageDiff:
    """Activation, attention and weight changes from ``a`` to ``b`` on ``prompts`` (token id lists)."""
    check_same_shape(a, b)
    cos, dist, tv, n_tokens = 0.0, 0.0, 0.0, 0
    for ids in prompts:
        tokens = torch.tensor([ids])
        (_, ca), (_, cb) = run_cached(a, tokens, _RESID), run_cached(b, tokens, _RESID)
        ra, rb = _stream(ca, a.n_layers), _stream(cb, b.n_layers)
        cos = cos + torch.nn.functional.cosine_similarity(ra, rb, dim=-1).sum(-1)
        dist = dist + ((rb - ra).norm(dim=-1) / ra.norm(dim=-1).clamp_min(1e-8)).sum(-1)
        pa, pb = attention_stack(ca, a.n_layers)[:, 0], attention_stack(cb, b.n_layers)[:, 0]
        tv = tv + 0.5 * (pa - pb).abs().sum(-1).sum(-1)  # [layer, head], summed over queries
        n_tokens += len(ids)  # every token is one query of every head
    return StageDiff(a.name, b.name, (cos / n_tokens).tolist(), (dist / n_tokens).tolist(), tv / n_tokens,
                     weight_change(a, b))


def weight_change(a: Loaded, b: Loaded) -> dict[str, float]:
    """``||W_b - W_a|| / ||W_a||`` for every weight matrix and embedding (biases and LayerNorms left out)."""
    wa, wb = load_gpt(a.path).state_dict(), load_gpt(b.path).state_dict()
    out = {}
    for name, pa in wa.items():
        if pa.ndim < 2 or name == "lm_head.weight":  # the head is tied to wte
            continue
        short = name.removeprefix("transformer.").removesuffix(".weight").replace("h.", "L", 1)
        out[short] = float((wb[name] - pa).norm() / pa.norm().clamp_min(1e-12))
    return out


@torch.no_grad()
def logit_lens(model: Loaded, ids: list[int]) -> tuple[list[str], list[int], list[float]]:
    """At the last position, per residual-stream layer: labels, the lens' top-1 token id, and the
    probability the lens gives the model's own final prediction."""
    _, cache = run_cached(model, torch.tensor([ids]), ("hook_resid_pre", "hook_resid_post"))
    lens = cache.logit_lens(positions=-1, return_type="probs")
    probs = lens.values[:, 0]  # [layer, vocab]
    final = int(probs[-1].argmax())
    return lens.labels, probs.argmax(-1).tolist(), probs[:, final].tolist()
