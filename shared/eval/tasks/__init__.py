"""Our own evaluation suite: one task per file over ``base``, run together by :func:`run_suite`.

    metrics = run_suite("runs/tiny4/sft", limit=200, out_dir="runs/tiny4/sft/eval")
    metrics["instructions/exact_match"], metrics["tool_use/success"], metrics["skipped"]

``TASKS`` maps each name to its task (``instructions``, ``chat_format``, ``tool_use``,
``safety``, ``rag``); ``TASKS[name].description`` says in one sentence how it scores. The result
is flat, ``{"<task>/<metric>": float}``, plus ``"skipped": {task: reason}`` for tasks that cannot
run here (a missing service); a skipped task reports no numbers at all. With ``out_dir``, each
task's per-example rows (id, reply, verdicts) go to ``<task>.json`` and the metrics to
``metrics.json``. Tasks needing greedy replies to the same prompts share one generation pass.

This package does not rank models or draw tables: that is the scorecard's job.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shared.eval.checkpoint import EvalError, require_causal_lm
from shared.eval.engine_backend import engine_replies, is_quantized
from shared.eval.tasks.base import EvalContext, EvalTask
from shared.eval.tasks.chat_format import ChatFormat
from shared.eval.tasks.instructions import Instructions
from shared.eval.tasks.rag import Rag
from shared.eval.tasks.safety import Safety
from shared.eval.tasks.tool_use import ToolUse

TASKS: dict[str, EvalTask] = {task.name: task for task in (Instructions(), ChatFormat(), ToolUse(), Safety(), Rag())}


def run_suite(model_path: str | Path, tasks: Sequence[str] | None = None, *, limit: int | None = None,
              max_new_tokens: int = 48, batch_size: int = 32, seed: int = 0,
              out_dir: str | Path | None = None) -> dict[str, Any]:
    """Run ``tasks`` (default: all of ``TASKS``) on the checkpoint at ``model_path``; see the module docstring.

    ``limit`` caps each task's prompt pool (``base.EvalContext``); ``max_new_tokens``, ``batch_size``
    and ``seed`` go to greedy generation.
    """
    names = check_task_names(tasks)
    root = require_causal_lm(model_path)
    # A quantized variant has no HF weights: our engine generates its replies.
    reply_fn = engine_replies(root, max_new_tokens) if is_quantized(root) else None
    ctx = EvalContext(root, limit=limit, max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed,
                      reply_fn=reply_fn)
    return run_tasks(ctx, names, out_dir)


def check_task_names(tasks: Sequence[str] | None) -> list[str]:
    """``tasks`` as a list (all of ``TASKS`` for ``None``); an ``EvalError`` naming unknown ones."""
    if isinstance(tasks, str):  # "safety" would otherwise read as six one-letter task names
        tasks = [tasks]
    names = list(TASKS) if tasks is None else list(tasks)
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise EvalError(f"unknown evaluation task(s) {unknown}; the tasks are {sorted(TASKS)}")
    if not names:
        raise EvalError(f"no evaluation tasks asked for; pass some of {sorted(TASKS)} or None for all")
    return names


def run_tasks(ctx: EvalContext, names: Sequence[str], out_dir: str | Path | None = None) -> dict[str, Any]:
    """The suite on an existing context (a scripted stand-in in tests); ``run_suite`` without the loading."""
    metrics: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for name in check_task_names(names):
        task = TASKS[name]
        reason = task.unavailable(ctx)
        if reason is not None:
            skipped[name] = reason
            continue
        metrics.update({f"{name}/{metric}": value for metric, value in task.run(ctx).items()})
    metrics["skipped"] = skipped
    if out_dir is not None:
        write_results(Path(out_dir), metrics, ctx)
    return metrics


def write_results(out_dir: Path, metrics: dict[str, Any], ctx: EvalContext) -> None:
    """``metrics.json`` (the numbers, the skipped tasks, the settings) and ``<task>.json`` rows per task."""
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = {"model_path": str(ctx.model_path), "limit": ctx.limit, "max_new_tokens": ctx.max_new_tokens,
                "batch_size": ctx.batch_size, "seed": ctx.seed}
    (out_dir / "metrics.json").write_text(json.dumps({"settings": settings, "metrics": metrics}, indent=1) + "\n")
    for task, rows in ctx.rows.items():
        (out_dir / f"{task}.json").write_text(json.dumps({"task": task, "description": TASKS[task].description,
                                                          "rows": rows}, indent=1) + "\n")


__all__ = ["TASKS", "EvalContext", "EvalTask", "run_suite", "run_tasks"]
