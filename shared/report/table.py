"""What each stage changed, as one colour table: the scorecard's metrics against the models of the run.

Rows are the scorecard's metrics grouped by task (``↑``: higher is better, ``↓``: lower is better,
as the scorecard recorded it in ``lower_is_better``); columns are the models in lineage order. Each
cell holds the value and its change against the model that one was made from (the scorecard's
``parents`` and ``deltas``: dpo against sft, a quantized variant against the model it quantizes),
coloured green when better, red when worse, uncoloured when unchanged. Where both values carry a
standard error (lm-eval tasks), a change smaller than 1.96 of their combined standard error is
drawn faint: it may be noise.
"""
from __future__ import annotations

import math
from typing import Any

from shared.report.doc import Cell, Table
from shared.report.fmt import is_number, num, signed

NOISE_Z = 1.96  # a change within this many combined standard errors is shown as possibly noise


def tone(card: dict[str, Any], metric: str, artifact: str) -> str | None:
    """``better`` / ``worse`` / ``same`` (``-faint`` within the noise) against the compared parent; None without one."""
    delta = (card.get("deltas", {}).get(metric) or {}).get(artifact)
    parent = (card.get("parents") or {}).get(artifact)
    if not is_number(delta) or parent is None:
        return None
    value = card["metrics"][metric].get(artifact)
    if abs(delta) <= 1e-12 + 1e-9 * abs(value if is_number(value) else 0):
        return "same"
    lower = metric in card.get("lower_is_better", [])
    verdict = "better" if (delta < 0) == lower else "worse"
    errors = card.get("stderr", {}).get(metric) or {}
    se_a, se_p = errors.get(artifact), errors.get(parent)
    if is_number(se_a) and is_number(se_p) and abs(delta) < NOISE_Z * math.hypot(se_a, se_p):
        return verdict + "-faint"
    return verdict


def ordered_models(card: dict[str, Any], lineage: list[str]) -> list[str]:
    """The scorecard's models in lineage order (models the run no longer holds keep the scorecard's order, last)."""
    rank = {a: i for i, a in enumerate(lineage)}
    names = list(card.get("artifacts") or [])
    return sorted(names, key=lambda a: (rank.get(a, len(rank)), names.index(a)))


def scorecard_table(card: dict[str, Any], lineage: list[str]) -> Table:
    """The colour table (see module docstring)."""
    models = ordered_models(card, lineage)
    parents = card.get("parents") or {}
    header: list[str | Cell] = ["task", "metric"] + [
        Cell(a.split("/", 1)[-1], sub=f"vs {parents[a].split('/', 1)[-1]}" if parents.get(a) else "")
        for a in models]
    rows: list[list[str | Cell]] = []
    last_task = None
    for metric, values in card["metrics"].items():
        task, _, leaf = metric.rpartition("/")
        arrow = "↓" if metric in card.get("lower_is_better", []) else "↑"
        cells: list[str | Cell] = [task if task != last_task else "", f"{leaf or metric} {arrow}"]
        last_task = task
        errors = card.get("stderr", {}).get(metric) or {}
        for a in models:
            v = values.get(a)
            if not is_number(v):
                cells.append(Cell("-"))
                continue
            delta = (card.get("deltas", {}).get(metric) or {}).get(a)
            text = num(v) + (f" ± {errors[a]:.2g}" if is_number(errors.get(a)) else "")
            cells.append(Cell(text, sub=signed(delta) if is_number(delta) else "", tone=tone(card, metric, a),
                              title=f"{metric}: {a}"))
        rows.append(cells)
    return Table(header, rows, css="scorecard")


def tally(card: dict[str, Any], artifact: str) -> dict[str, int]:
    """How many metrics ``artifact`` is better / worse / level on against the model it was made from."""
    out = {"better": 0, "worse": 0, "same": 0}
    for metric in card.get("metrics", {}):
        t = tone(card, metric, artifact)
        if t:
            out[t.removesuffix("-faint")] += 1
    return out


def sample_sizes(card: dict[str, Any]) -> str:
    """``instructions/n = 134, ...``: each task's sample sizes (several when the models differ)."""
    parts = []
    for metric, row in (card.get("counts") or {}).items():
        sizes = sorted({v for v in row.values() if is_number(v)})
        if sizes:
            parts.append(f"{metric} = {'/'.join(num(v) for v in sizes)}")
    return ", ".join(parts)
