"""Loss-curve plots from a metric history (list of per-step dicts)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: we only ever write PNGs
import matplotlib.pyplot as plt  # noqa: E402


def plot_history(history: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Train loss per step plus every ``*_loss`` validation series, one PNG."""
    curves = {"train": [(r["step"], r["train_loss"]) for r in history if "train_loss" in r]}
    val_keys = sorted({k for r in history for k in r if k.endswith("_loss") and k != "train_loss"})
    for key in val_keys:
        name = key.removesuffix("_loss")
        curves["val" if name == "val" else f"{name} (val)"] = [(r["step"], r[key]) for r in history if key in r]
    return plot_curves(curves, path, title, "loss (nats/token)")


def plot_curves(curves: dict[str, list[tuple[int, float]]], path: str | Path, title: str, ylabel: str) -> Path:
    """Several named (step, value) series on one axis: for side-by-side experiments."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, pts in curves.items():
        if pts:
            ax.plot(*zip(*pts), label=name)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
