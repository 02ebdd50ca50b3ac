"""Attention patterns of one prompt: per-layer heatmaps with the tokens on the axes, a grid of all heads, HTML.

``write_attention(model, prompt, out_dir)`` writes
- ``layer_<l>.png``: every head of layer ``l`` side by side, query tokens down, key tokens across;
- ``grid.png``: all layers x heads at a glance (no labels), the overview the report embeds;
- ``head_<l>_<h>.png`` for the heads picked with ``layer`` / ``head``, one large heatmap each;
- ``attention.html``: an interactive page (circuitsvis ``attention_heads``, JavaScript inlined so it
  works offline: hover a cell for its weight, click a head to enlarge it);
and returns the file paths. It does not interpret the patterns (``induction`` scores heads).
"""
from __future__ import annotations

import html
from pathlib import Path

import torch

from shared.interp.bridge import Loaded, attention_stack, check_head, encode, run_cached, token_labels
from shared.interp.plots import heatmap_grid, single_heatmap


def attention_patterns(model: Loaded, ids: list[int]) -> torch.Tensor:
    """Attention weights for one token sequence: ``[layer, head, query, key]``."""
    _, cache = run_cached(model, torch.tensor([ids]), ("hook_pattern",))
    return attention_stack(cache, model.n_layers)[:, 0]


def write_attention(model: Loaded, prompt: str, out_dir: str | Path, layer: int | None = None,
                    head: int | None = None) -> dict[str, Path]:
    """Draw ``model``'s attention on ``prompt`` into ``out_dir`` (see module docstring)."""
    check_head(model, layer, head)
    ids = encode(model, prompt)
    labels = token_labels(model, ids)
    patterns = attention_patterns(model, ids)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for l in range(model.n_layers):
        written[f"layer_{l}"] = heatmap_grid(
            patterns[l:l + 1], out / f"layer_{l}.png", f"{model.name}: layer {l} attention", labels=labels)
    written["grid"] = heatmap_grid(patterns, out / "grid.png", f"{model.name}: attention of every head "
                                   f"(rows: layers, columns: heads; {len(ids)} tokens)")
    if layer is not None:
        for h in [head] if head is not None else range(model.n_heads):
            written[f"head_{layer}_{h}"] = single_heatmap(
                patterns[layer, h], out / f"head_{layer}_{h}.png", f"{model.name}: layer {layer} head {h}", labels)
    written["html"] = write_html(patterns, labels, out / "attention.html", f"{model.name} attention")
    return written


def write_html(patterns: torch.Tensor, labels: list[str], path: Path, title: str) -> Path:
    """One self-contained page with every head (circuitsvis, JavaScript inlined: no network needed)."""
    import circuitsvis.attention as cv_attention
    n_layers, n_heads = patterns.shape[:2]
    names = [f"L{l}H{h}" for l in range(n_layers) for h in range(n_heads)]
    # .local_src inlines the bundled JavaScript; str() of the widget would load it from a CDN.
    widget = cv_attention.attention_heads(attention=patterns.reshape(-1, *patterns.shape[2:]).float(),
                                          tokens=labels, attention_head_names=names).local_src
    page = (f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>\n"
            f"<body><h1>{html.escape(title)}</h1>\n<p>Rows are query tokens (where attention comes from), columns "
            f"are key tokens (what they attend to). Heads named L&lt;layer&gt;H&lt;head&gt;.</p>\n{widget}\n</body></html>\n")
    path.write_text(page, encoding="utf-8")
    return path
