"""A plan as an aligned text table plus its problems (``render_text``), or as JSON (``to_json``)."""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

from shared.plan.memory import USABLE_FRACTION, gib, param_count
from shared.plan.parallelism import ParallelismPlan
from shared.plan.plan import Plan, StageRow


def duration(seconds: Optional[float]) -> str:
    """``42 s``, ``5.3 min``, ``2.1 h``; ``?`` when unknown."""
    if seconds is None:
        return "?"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def count(n: Optional[float]) -> str:
    """``1.2M``, ``10.0B``, ``950``; ``-`` when unknown."""
    if n is None:
        return "-"
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:.0f}"


COLUMNS = ("stage", "model", "device", "steps", "tokens", "weights", "grads", "optim", "buffers", "activ", "total",
           "time")


def _cells(row: StageRow) -> list[str]:
    mem = row.memory
    device = f"{row.device}×{row.workers}" + (f" {row.precision}" if row.precision else "")
    model = f"{count(param_count(row.model).total)} {row.model.label}" if row.model else "-"
    # an inference stage has no gradients or optimizer state: "-" rather than a 0.0 that reads as rounded
    mems = [gib(v) if v or i not in (1, 2, 3) else "-" for i, v in enumerate(
        (mem.weights, mem.gradients, mem.optimizer, mem.buffers, mem.activations, mem.total))] if mem else ["-"] * 6
    return [row.stage, model, device, count(row.steps), count(row.tokens), *mems, duration(row.time_s)]


def _table(header: tuple[str, ...], rows: list[list[str]], left: tuple[int, ...] = (0, 1, 2)) -> list[str]:
    widths = [max(len(r[i]) for r in [list(header), *rows]) for i in range(len(header))]
    fmt = lambda cells: "  ".join(c.ljust(w) if i in left else c.rjust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return [fmt(list(header)), fmt(["-" * w for w in widths]), *[fmt(r) for r in rows]]


def render_text(plan: Plan) -> str:
    """The plan for a person: the table, then data, time basis and notes per stage, the total, each GPU
    training stage's parallelism table and choices (``render_parallelism``), the problems."""
    gpu = plan.gpu
    where = (f"{plan.gpus_visible} visible GPU(s), memory checked against the {gpu.name} ({gpu.memory / 1e9:.0f} GB)"
             if gpu.visible else f"no GPU visible here; GPU memory checked against a {gpu.name} "
                                 f"({gpu.memory / 1e9:.0f} GB, gpu=NAME to change)")
    lines = [f"journey plan: preset {plan.preset}, run {plan.run}; {where}", *plan.notes, "",
             "memory per GPU in GiB (per host process for CPU stages)", ""]
    lines += _table(COLUMNS, [_cells(r) for r in plan.rows])
    lines += ["", f"total time: {duration(plan.total_s)}"
              + (f" + the stages not timed ({', '.join(plan.untimed)})" if plan.untimed else ""), ""]
    for row in plan.rows:
        lines.append(f"{row.stage}:")
        for check in row.data:
            mark = "ok" if check.ok else "PROBLEM"
            size = f", {check.size_bytes / 1e6:,.1f} MB" if check.size_bytes else ""
            lines.append(f"    data   {check.source}: {check.detail}{size} [{mark}]")
        if row.model_from:
            lines.append(f"    model  {row.model_from}")
        if row.tokens is not None:
            lines.append(f"    tokens {row.tokens:,} {row.tokens_what}")
        lines.append(f"    time   {row.time_basis or '-'}")
        for note in (row.memory.notes if row.memory else []) + row.notes:
            lines.append(f"    note   {note}")
    lines.append("")
    for row in plan.rows:
        if row.parallelism is not None:
            lines += render_parallelism(row.stage, row.parallelism) + [""]
    if plan.problems:
        lines.append(f"{len(plan.problems)} problem(s):")
        for k, p in enumerate(plan.problems, 1):
            lines += [f"  {k}. [{p.stage}] {p.message}", f"     fix: {p.fix}"]
    else:
        lines.append("no problems found")
    return "\n".join(lines)


STRATEGY_COLUMNS = ("gpus", "strategy", "weights", "grads", "optim", "buffers", "activ", "total", "host", "fits",
                    "max micro-batch")


def render_parallelism(stage: str, par: ParallelismPlan) -> list[str]:
    """Every strategy's bytes per GPU for each setting (GiB), then the strategy chosen for each, with its reason."""
    lines = [f"parallelism of {stage}: {count(par.params)} parameters, micro-batch {par.micro_batch} x {par.seq} "
             f"tokens per GPU, {par.precision}; GiB per GPU (shared.plan.memory); fits = total within "
             f"{USABLE_FRACTION:.0%} of the GPU", ""]
    rows = []
    for sp in par.settings:
        usable = USABLE_FRACTION * sp.setting.memory
        for b, mb in zip(sp.rows, sp.max_batch):
            rows.append([f"{sp.setting.n_gpus} x {sp.setting.memory / 1e9:.0f} GB", b.strategy.label,
                         *(gib(v) if v else "-" for v in (b.weights, b.gradients, b.optimizer, b.buffers)),
                         gib(b.activations), gib(b.total), gib(b.host) if b.host else "-",
                         "yes" if b.total <= usable else "no", str(mb)])
    lines += _table(STRATEGY_COLUMNS, rows, left=(0, 1))
    lines.append("")
    for sp in par.settings:
        lines.append(f"choice on {sp.setting.label}: "
                     f"{sp.choice.choice.strategy.label if sp.choice.choice else 'none fits'}")
        lines.append(f"    {sp.choice.reason}")
    return lines


def to_json(plan: Plan) -> dict[str, Any]:
    """The plan as plain data: every row (memory in bytes, with its total), the problems, the totals."""
    def row(r: StageRow) -> dict[str, Any]:
        out = dataclasses.asdict(r)
        out["model"] = None if r.model is None else {**dataclasses.asdict(r.model),
                                                      "params": param_count(r.model).total}
        if r.memory is not None:
            out["memory"]["total"] = r.memory.total
        if r.parallelism is not None:
            for sp, d in zip(r.parallelism.settings, out["parallelism"]["settings"]):
                for b, rd in zip([*sp.rows, *([sp.choice.choice] if sp.choice.choice else [])],
                                 [*d["rows"], *([d["choice"]["choice"]] if sp.choice.choice else [])]):
                    rd.update(state=b.state, total=b.total, label=b.strategy.label)
                d["choice"].pop("tried")  # every configuration computed: the rows and the choice say enough
        for check, d in zip(r.data, out["data"]):
            d["ok"] = check.ok
        return out
    return {"preset": plan.preset, "run": plan.run, "gpu": dataclasses.asdict(plan.gpu),
            "gpus_visible": plan.gpus_visible, "stages": [row(r) for r in plan.rows],
            "total_s": plan.total_s, "untimed": plan.untimed, "notes": plan.notes,
            "problems": [dataclasses.asdict(p) for p in plan.problems]}


__all__ = ["count", "duration", "render_parallelism", "render_text", "to_json"]
