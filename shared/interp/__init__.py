"""Mechanistic interpretability of the journey's GPT-2 models (TransformerLens, offline).

- ``bridge``: an artifact as a TransformerLens ``TransformerBridge``; prompt / layer / head checks.
- ``attention``: attention patterns of a prompt as PNG heatmaps and an interactive HTML page.
- ``induction``: induction and previous-token heads on repeated random tokens, across training snapshots.
- ``diff``: what a stage changed (residual stream, attention per head, weights) and the logit lens.
- ``plots`` / ``report``: the PNGs and the markdown section; ``stage``: the interpret stage and commands.
"""
from shared.interp.bridge import InterpError, Loaded, load_bridge
from shared.interp.interpret_config import InterpretConfig

__all__ = ["InterpError", "InterpretConfig", "Loaded", "load_bridge"]
