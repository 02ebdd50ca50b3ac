"""Every PNG of the interpretability report (matplotlib, Agg backend). Each function writes one file.

Plotting only: the numbers come from ``attention``, ``induction`` and ``diff``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: we only ever write PNGs
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def _safe(label: str) -> str:
    return label.replace("$", r"\$")  # a bare $ would start matplotlib mathtext


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _ticks(ax, labels: Sequence[str]) -> None:
    n = len(labels)
    size = max(3.0, min(8.0, 220 / max(n, 1)))
    ax.set_xticks(range(n), [_safe(t) for t in labels], rotation=90, fontsize=size)
    ax.set_yticks(range(n), [_safe(t) for t in labels], fontsize=size)


def heatmap_grid(patterns: torch.Tensor, path: Path, title: str, labels: Sequence[str] | None = None) -> Path:
    """``patterns`` ``[rows, cols, query, key]`` as a grid of heatmaps; token labels on the axes if given."""
    rows, cols, n = patterns.shape[0], patterns.shape[1], patterns.shape[-1]
    cell = max(2.0, min(6.0, 0.16 * n)) if labels is not None else 1.6
    fig, axes = plt.subplots(rows, cols, figsize=(cell * cols + 1, cell * rows + 0.8), squeeze=False,
                             layout="constrained")
    for r in range(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.imshow(patterns[r, c].float().numpy(), cmap="viridis", vmin=0.0, vmax=1.0)
            if labels is not None:
                _ticks(ax, labels)
                ax.set_title(f"head {c}", fontsize=9)
            else:
                ax.set_xticks([]), ax.set_yticks([])
                ax.set_title(f"L{r}H{c}", fontsize=7)
    fig.suptitle(_safe(title), fontsize=10)
    return _save(fig, path)


def single_heatmap(pattern: torch.Tensor, path: Path, title: str, labels: Sequence[str]) -> Path:
    """One head's ``[query, key]`` pattern, large, with the tokens on both axes and a colour bar."""
    size = max(4.0, min(14.0, 0.22 * len(labels)))
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    image = ax.imshow(pattern.float().numpy(), cmap="viridis", vmin=0.0, vmax=1.0)
    _ticks(ax, labels)
    ax.set_xlabel("key (attended to)"), ax.set_ylabel("query (attending)")
    fig.colorbar(image, ax=ax, fraction=0.046)
    ax.set_title(_safe(title))
    return _save(fig, path)


def score_heatmaps(panels: dict[str, torch.Tensor], path: Path, title: str, vmax: float | None = 1.0) -> Path:
    """Per-head scores ``[layer, head]`` (one panel per entry of ``panels``), each cell annotated."""
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels) + 0.6, 3.2), squeeze=False,
                             layout="constrained")
    for ax, (name, scores) in zip(axes[0], panels.items()):
        data = scores.float().numpy()
        image = ax.imshow(data, cmap="magma", vmin=0.0, vmax=vmax if vmax is not None else max(float(data.max()), 1e-6))
        for (l, h), value in np.ndenumerate(data):
            ax.text(h, l, f"{value:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if value < 0.6 * (image.get_clim()[1]) else "black")
        ax.set_xlabel("head"), ax.set_ylabel("layer"), ax.set_title(_safe(name), fontsize=9)
        ax.set_xticks(range(data.shape[1])), ax.set_yticks(range(data.shape[0]))
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.suptitle(_safe(title), fontsize=10)
    return _save(fig, path)


def phase_change(steps: list[int], loss_drop: list[float], max_score: list[float], head_scores: dict[str, list[float]],
                 path: Path, title: str, threshold: float) -> Path:
    """In-context improvement and induction scores against the training step (the "phase change" plot)."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7.5, 6.5), sharex=True)
    top.plot(steps, loss_drop, "o-", color="tab:blue", label="in-context loss drop (nats)")
    top.set_ylabel("loss(1st half) - loss(2nd half)", color="tab:blue")
    twin = top.twinx()
    twin.plot(steps, max_score, "s--", color="tab:red", label="best induction score")
    twin.set_ylabel("best induction score", color="tab:red"), twin.set_ylim(0, 1)
    top.set_title(_safe(title), fontsize=10), top.grid(alpha=0.3)
    for name, series in head_scores.items():
        bottom.plot(steps, series, "o-", label=name, markersize=3)
    bottom.axhline(threshold, color="grey", linestyle=":", label=f"threshold {threshold}")
    bottom.set_xlabel("training step"), bottom.set_ylabel("induction score"), bottom.set_ylim(0, 1)
    bottom.legend(fontsize=7, ncol=3), bottom.grid(alpha=0.3)
    return _save(fig, path)


def _line_panels(panels: dict[str, dict[str, list[float]]], width: float, height: float):
    """A row of panels, one per key of ``panels``, each with one line per name over index 0..n-1."""
    fig, axes = plt.subplots(1, len(panels), figsize=(width * len(panels), height), squeeze=False)
    for ax, lines in zip(axes[0], panels.values()):
        for name, values in lines.items():
            ax.plot(range(len(values)), values, "o-", label=name)
    return fig, zip(axes[0], panels)


def layer_curves(series: dict[str, dict[str, list[float]]], path: Path, title: str) -> Path:
    """One panel per metric (e.g. cosine similarity), one line per model pair, x = residual-stream layer."""
    fig, panels = _line_panels(series, 5.2, 3.6)
    for ax, metric in panels:
        ax.set_xlabel("residual stream (0 = embeddings, l = after block l-1)")
        ax.set_title(metric, fontsize=9), ax.grid(alpha=0.3), ax.legend(fontsize=7)
    fig.suptitle(_safe(title), fontsize=10)
    return _save(fig, path)


def weight_bars(changes: dict[str, dict[str, float]], path: Path, title: str) -> Path:
    """Relative weight change per matrix (x) for each model pair (bars side by side)."""
    names = list(next(iter(changes.values())))
    fig, ax = plt.subplots(figsize=(max(7.0, 0.28 * len(names) * max(1, len(changes) / 2)), 4.0))
    width = 0.8 / len(changes)
    for i, (pair, values) in enumerate(changes.items()):
        ax.bar(np.arange(len(names)) + i * width, [values[n] for n in names], width, label=pair)
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=90, fontsize=7)
    ax.set_ylabel("||W_b - W_a|| / ||W_a||"), ax.set_title(_safe(title), fontsize=10)
    ax.legend(fontsize=7), ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def logit_lens(curves: dict[str, dict[str, list[float]]], path: Path, title: str) -> Path:
    """Per prompt (panel), per model (line): probability the lens at each layer gives the model's final answer."""
    fig, panels = _line_panels(curves, 4.6, 3.4)
    for ax, prompt in panels:
        ax.set_title(_safe(prompt), fontsize=8), ax.set_ylim(0, 1), ax.grid(alpha=0.3)
        ax.set_xlabel("residual stream read at"), ax.set_ylabel("p(final top-1 token)")
        ax.legend(fontsize=7)
    fig.suptitle(_safe(title), fontsize=10)
    return _save(fig, path)
