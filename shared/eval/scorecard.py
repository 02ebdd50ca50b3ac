"""The scorecard: every model artifact of a run measured the same way, side by side.

``evaluate_artifact(path, ...)`` runs the configured tasks on one checkpoint: held-out perplexity
(``shared.eval.perplexity``), our suite (``shared.eval.tasks``) and lm-eval tasks
(``shared.eval.harness``). It returns flat metrics named ``<task>/<metric>`` and writes the full
results under ``<artifact>/eval/``, so they stay with the artifact they describe.

``run_eval(cfg)`` is ``journey eval``: with ``artifact=`` it evaluates that one artifact and merges
the metrics into its manifest; otherwise it evaluates every model artifact of the run, as Ray
tasks (``parallel`` at a time), and registers the scorecard artifact ``<run>/eval`` holding
``scorecard.json`` (every value, the stderr where the task has one, the parent each artifact is
compared with), ``scorecard.md`` (rows = metrics, columns = artifacts, each cell with its delta
against the parent artifact) and ``scorecard.png`` (one small bar chart per metric), plus
``training_curves.png`` from the stages' logs. No peer tool produces this view of a whole lineage.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shared.cluster import ensure_ray
from shared.eval.checkpoint import EvalError, require_causal_lm
from shared.eval.eval_config import PERPLEXITY, EvalConfig
from shared.eval.harness import JOURNEY_TASKS, STANDARD_TASKS, run_lm_eval
from shared.eval.perplexity import heldout_perplexity, training_curves
from shared.eval.tasks import TASKS, run_suite
from shared.registry import ArtifactNotFound, Registry

LOWER_IS_BETTER = ("loss", "ppl", "bpb", "stray_role")


# ---------------------------------------------------------------- tasks
def known_tasks() -> dict[str, tuple[str, ...]]:
    """Task names by group: perplexity, our suite, lm-eval."""
    return {"perplexity": (PERPLEXITY,), "suite": tuple(TASKS), "lm_eval": tuple(JOURNEY_TASKS) + tuple(STANDARD_TASKS)}


def split_tasks(tasks: Sequence[str], source: str = "local", data_dir: str | None = None) -> dict[str, list[str]]:
    """``{"perplexity": [...], "suite": [...], "lm_eval": [...]}``; an unknown name or a missing data dir raises."""
    groups = known_tasks()
    out: dict[str, list[str]] = {group: [] for group in groups}
    for task in tasks:
        group = next((g for g, names in groups.items() if task in names), None)
        if group is None:
            known = ", ".join(n for names in groups.values() for n in names)
            raise EvalError(f"unknown eval task {task!r}; known tasks: {known}")
        out[group].append(task)
    standard = [t for t in out["lm_eval"] if t in STANDARD_TASKS]
    if standard and source == "local" and not data_dir:
        raise EvalError(f"{', '.join(standard)} with source=local need data_dir=<folder with local copies of the "
                        "datasets> (layout in shared/eval/harness.py), or source=hub on a machine with hub access")
    return out


def evaluate_artifact(path: str | Path, cfg: EvalConfig) -> dict[str, Any]:
    """Run ``cfg.tasks`` on the checkpoint at ``path``: ``{"metrics", "skipped", "seconds"}`` (see module doc)."""
    root = require_causal_lm(path)
    groups = split_tasks(cfg.tasks, cfg.source, cfg.data_dir)
    out_dir = root / "eval"
    out_dir.mkdir(exist_ok=True)
    metrics: dict[str, float] = {}
    skipped: dict[str, str] = {}
    seconds: dict[str, float] = {}
    if groups["perplexity"]:
        t0 = time.perf_counter()
        ppl = heldout_perplexity(root, max_tokens=cfg.ppl_tokens, batch_size=cfg.batch_size, device=cfg.device)
        metrics.update({f"{PERPLEXITY}/{k}": v for k, v in ppl.items()})
        seconds[PERPLEXITY] = time.perf_counter() - t0
    if groups["suite"]:
        t0 = time.perf_counter()
        suite = run_suite(root, groups["suite"], limit=cfg.suite_limit, max_new_tokens=cfg.max_new_tokens,
                          seed=cfg.seed, out_dir=out_dir)
        skipped.update(suite.pop("skipped", {}) or {})
        metrics.update({k: float(v) for k, v in suite.items() if isinstance(v, (int, float))})
        seconds["suite"] = time.perf_counter() - t0
    if groups["lm_eval"]:
        t0 = time.perf_counter()
        results = run_lm_eval(root, groups["lm_eval"], source=cfg.source, data_dir=cfg.data_dir, limit=cfg.limit,
                              num_fewshot=cfg.num_fewshot, batch_size=cfg.batch_size, device=cfg.device,
                              seed=cfg.seed, out_path=out_dir / "lm_eval.json")
        for task, values in results.items():
            metrics.update({f"{task}/{k}": float(v) for k, v in values.items() if isinstance(v, (int, float))})
        seconds["lm_eval"] = time.perf_counter() - t0
    result = {"path": str(root), "tasks": list(cfg.tasks), "metrics": metrics, "skipped": skipped, "seconds": seconds}
    (out_dir / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


# ---------------------------------------------------------------- scorecard
def is_stderr(metric: str) -> bool:
    return metric.endswith("_stderr")


def is_count(metric: str) -> bool:
    """Sample sizes (``n``, ``n_full``, ...): shown beside the task, not compared as scores."""
    leaf = metric.rsplit("/", 1)[-1]
    return leaf == "n" or leaf.startswith("n_")


def metric_order(metrics: set[str], tasks: Sequence[str]) -> list[str]:
    """Metrics grouped by task in the order the tasks were asked for, alphabetical within a task."""
    rank = {t: i for i, t in enumerate(tasks)}
    return sorted(metrics, key=lambda m: (rank.get(m.split("/", 1)[0], len(rank)), m))


def lower_is_better(metric: str) -> bool:
    leaf = metric.rsplit("/", 1)[-1]
    return any(leaf.endswith(s) for s in LOWER_IS_BETTER)


def compared_parent(artifact, evaluated: set[str], registry) -> str | None:
    """The nearest ancestor of ``artifact`` that is also on the scorecard (e.g. dpo -> sft, past prefs)."""
    return next((a.id for a in registry.ancestors(artifact) if a.id in evaluated), None)


def build_scorecard(results: dict[str, dict[str, Any]], parents: dict[str, str | None],
                    tasks: Sequence[str] = ()) -> dict[str, Any]:
    """The scorecard as data: ``metrics[m][artifact]``, ``stderr``, ``deltas`` against each artifact's parent,
    and ``counts`` (each task's sample sizes per artifact)."""
    names = list(results)
    everything = {m for r in results.values() for m in r["metrics"]}
    all_metrics = metric_order({m for m in everything if not is_stderr(m) and not is_count(m)}, tasks)
    counts = {m: {a: results[a]["metrics"].get(m) for a in names} for m in metric_order(
        {m for m in everything if is_count(m)}, tasks)}
    table: dict[str, dict[str, float | None]] = {}
    stderr: dict[str, dict[str, float]] = {}
    deltas: dict[str, dict[str, float | None]] = {}
    for m in all_metrics:
        table[m] = {a: results[a]["metrics"].get(m) for a in names}
        stderr[m] = {a: results[a]["metrics"][f"{m}_stderr"] for a in names if f"{m}_stderr" in results[a]["metrics"]}
        deltas[m] = {}
        for a in names:
            p = parents.get(a)
            v, pv = table[m][a], (table[m].get(p) if p else None)
            deltas[m][a] = v - pv if isinstance(v, (int, float)) and isinstance(pv, (int, float)) else None
    skipped = {a: r["skipped"] for a, r in results.items() if r.get("skipped")}
    return {"artifacts": names, "parents": parents, "metrics": table, "stderr": stderr, "deltas": deltas,
            "counts": counts,
            "lower_is_better": [m for m in all_metrics if lower_is_better(m)], "skipped": skipped,
            "seconds": {a: r.get("seconds", {}) for a, r in results.items()}}


def _cell(value: float | None, err: float | None, delta: float | None) -> str:
    if value is None:
        return "-"
    text = f"{value:.4g}" + (f" ± {err:.2g}" if err else "")
    return text + (f" ({delta:+.3g})" if delta is not None else "")


def scorecard_markdown(card: dict[str, Any]) -> str:
    """Rows = metrics (arrow = better direction), columns = artifacts; cells "value ± stderr (delta vs parent)"."""
    names = card["artifacts"]
    short = [n.split("/", 1)[-1] for n in names]
    lines = ["| metric | " + " | ".join(short) + " |", "|---|" + "---|" * len(names)]
    for m, row in card["metrics"].items():
        arrow = "↓" if m in card["lower_is_better"] else "↑"
        cells = [_cell(row[a], card["stderr"].get(m, {}).get(a), card["deltas"][m][a]) for a in names]
        lines.append(f"| {m} {arrow} | " + " | ".join(cells) + " |")
    parents = ", ".join(f"{a.split('/', 1)[-1]} vs {p.split('/', 1)[-1]}" for a, p in card["parents"].items() if p)
    notes = [f"Deltas in parentheses are against the parent artifact ({parents})." if parents else ""]
    sizes = {m: {v for v in row.values() if v is not None} for m, row in card.get("counts", {}).items()}
    if sizes:
        notes.append("Sample sizes: " + ", ".join(
            f"{m} = {'/'.join(f'{v:g}' for v in sorted(vs))}" for m, vs in sizes.items() if vs) + ".")
    skipped: dict[tuple[str, str], list[str]] = {}  # (task, reason) -> artifacts: one line per distinct reason
    for a, reasons in card["skipped"].items():
        for task, why in reasons.items():
            skipped.setdefault((task, why), []).append(a.split("/", 1)[-1])
    for (task, why), arts in skipped.items():
        who = "all artifacts" if len(arts) == len(names) else ", ".join(arts)
        notes.append(f"- {task} skipped for {who}: {why}")
    return "\n".join(lines) + "\n\n" + "\n".join(n for n in notes if n) + "\n"


def scorecard_png(card: dict[str, Any], png: str | Path) -> Path:
    """One small bar chart per metric, the artifacts in lineage order on each."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    metrics = list(card["metrics"])
    names = [n.split("/", 1)[-1] for n in card["artifacts"]]
    cols = min(5, max(1, len(metrics)))
    rows = (len(metrics) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.1 * cols, 2.4 * rows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, m in zip(axes.flat, metrics):
        values = [card["metrics"][m][a] for a in card["artifacts"]]
        ax.bar(names, [v if v is not None else 0 for v in values],
               color=[colors[i % len(colors)] for i in range(len(names))],
               yerr=[card["stderr"].get(m, {}).get(a, 0) for a in card["artifacts"]])
        ax.set_title(m + (" ↓" if m in card["lower_is_better"] else " ↑"), fontsize=8)
        ax.tick_params(axis="x", labelsize=7, rotation=30)
        ax.tick_params(axis="y", labelsize=7)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    fig.suptitle("Scorecard: every artifact on the same tasks")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return Path(png)


# ---------------------------------------------------------------- running
def _evaluate_in_ray(paths: dict[str, str], cfg: EvalConfig) -> dict[str, dict[str, Any]]:
    """Evaluate each artifact in its own Ray task, at most ``cfg.parallel`` at once; results by artifact id."""
    import ray
    from tqdm import tqdm
    ensure_ray()

    @ray.remote(num_cpus=cfg.cpus_per_task)
    def evaluate(path: str) -> dict[str, Any]:
        import torch
        os.environ["TQDM_DISABLE"] = "1"  # lm-eval's per-request bars from every task; the driver shows one
        torch.set_num_threads(cfg.cpus_per_task)
        return evaluate_artifact(path, cfg)

    pending = dict.fromkeys(paths)
    queue, running, results = list(paths.items()), {}, {}
    with tqdm(total=len(paths), desc="eval", unit="artifact", disable=None) as bar:
        while queue or running:
            while queue and len(running) < cfg.parallel:
                name, path = queue.pop(0)
                running[evaluate.remote(path)] = name
            done, _ = ray.wait(list(running), num_returns=1)
            for ref in done:
                name = running.pop(ref)
                results[name] = ray.get(ref)  # a task's EvalError surfaces here with its message
                bar.update(1)
                bar.set_postfix_str(name)
    return {name: results[name] for name in pending}  # lineage order, not completion order


def run_eval(cfg: EvalConfig):
    """``journey eval``: one artifact (returns its result dict) or a run's scorecard (returns the artifact)."""
    registry = Registry(cfg.runs_dir)
    split_tasks(cfg.tasks, cfg.source, cfg.data_dir)  # unknown tasks fail before any model loads
    if cfg.artifact:
        try:
            artifact = registry.resolve(cfg.artifact, cfg.run)
        except ArtifactNotFound:
            if not Path(cfg.artifact).is_dir():
                raise
            # A plain directory (e.g. an HF checkpoint not made by a stage): evaluated after the causal-LM
            # check, with no manifest to update.
            return {"artifact": None, **evaluate_artifact(cfg.artifact, cfg)}
        require_causal_lm(artifact.dir)
        result = evaluate_artifact(artifact.dir, cfg)
        registry.update_metrics(artifact, **{f"eval/{k}": v for k, v in result["metrics"].items()})
        return {"artifact": artifact.id, **result}
    run = cfg.run or (registry.runs() or [None])[-1]
    if run is None:
        raise EvalError(f"no runs under {registry.root}; run `journey run` first or pass artifact=<path>")
    # quantized: INT8/INT4 variants run by our engine; gguf: llama.cpp files (shared.eval.engine_backend)
    models = [a for a in registry.artifacts(run) if a.kind in cfg.kinds]
    if not models:
        raise EvalError(f"run {run!r} has no model artifacts to evaluate (kinds {cfg.kinds})")
    out_dir = registry.stage_dir(run, cfg.stage, overwrite=cfg.overwrite)
    t0 = time.perf_counter()
    results = _evaluate_in_ray({a.id: a.path for a in models}, cfg)
    evaluated = set(results)
    parents = {a.id: compared_parent(a, evaluated, registry) for a in models}
    card = build_scorecard(results, parents, cfg.tasks)
    (out_dir / "scorecard.json").write_text(json.dumps(card, indent=1) + "\n")
    (out_dir / "scorecard.md").write_text(f"# Scorecard: run {run}\n\n" + scorecard_markdown(card))
    scorecard_png(card, out_dir / "scorecard.png")
    training_curves(models, out_dir / "training_curves.png")
    for a in models:
        registry.update_metrics(a, **{f"eval/{k}": v for k, v in results[a.id]["metrics"].items()})
    headline = {f"{a.stage}/{m}": card["metrics"][m][a.id] for a in models for m in HEADLINE_METRICS
                if card["metrics"].get(m, {}).get(a.id) is not None}
    return registry.register(run, cfg.stage, "report", parents=[a.id for a in models], config=cfg,
                             metrics=headline, timings={"eval": time.perf_counter() - t0})


# What the scorecard artifact's own manifest keeps per model (the full table is in scorecard.json).
HEADLINE_METRICS = ("perplexity/general_bpb", "perplexity/domain_bpb", "instructions/exact_match",
                    "chat_format/format_ok", "tool_use/success", "safety/refusal_rate_harmful",
                    "journey_docs_cloze/acc", "journey_facts_mc/acc")
