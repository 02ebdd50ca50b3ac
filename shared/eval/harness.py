"""The bridge to EleutherAI's lm-evaluation-harness: benchmark any HF causal-LM checkpoint.

``run_lm_eval(model_path, tasks, ...)`` loads the checkpoint with lm-eval's own HF model class
(``HFLM``), runs ``lm_eval.simple_evaluate`` (CPU by default) and returns
``{task: {"acc": .., "acc_stderr": .., "acc_norm": .., "acc_norm_stderr": .., "n": ..}}``: whatever
metrics the task has, as plain floats (a stderr lm-eval cannot give, with n = 1, is NaN), and
``n``, the number of documents scored, as an int. Needs ``lm-eval`` (tested with 0.4.13).

Tasks:

- ``STANDARD_TASKS`` (HellaSwag, ARC-Easy, ARC-Challenge, TruthfulQA MC1/MC2). With
  ``source="hub"`` they are lm-eval's registered tasks, which download from the HF Hub. With
  ``source="local"`` (the default) they are our YAMLs in ``lm_eval_tasks/``, which mirror lm-eval's
  definitions but read local files in the datasets' published schemas from ``data_dir``::

      <data_dir>/hellaswag/validation.jsonl                  Rowan/hellaswag
      <data_dir>/ai2_arc/ARC-Easy/test.jsonl                 allenai/ai2_arc, config ARC-Easy
      <data_dir>/ai2_arc/ARC-Challenge/test.jsonl            allenai/ai2_arc, config ARC-Challenge
      <data_dir>/truthful_qa/multiple_choice/validation.jsonl  truthfulqa/truthful_qa, config multiple_choice

  Each split may also be ``<split>.json``, ``<split>.parquet`` or the Hub's parquet shards
  ``<split>-00000-of-00001.parquet``; all splits of one task must share a format. Other splits next
  to the evaluated one (``train.jsonl``, ``validation.jsonl``) are used for few-shot examples, as
  lm-eval would; without them lm-eval draws shots from the evaluated split.
- ``JOURNEY_TASKS`` (``shared.eval.journey_tasks``): our own tasks over builtin data, generated
  into ``cache_dir`` on first use; they need no ``data_dir`` and ignore ``source``.

For each local task a one-line YAML that ``include``s the shipped one and adds the data files is
written to a temporary directory and handed to lm-eval by path: lm-eval has no other way to point
a task at files chosen at run time. This module does not score chat generations (``chat_eval``)
and does not format results into reports (the scorecard does).
"""
from __future__ import annotations

import importlib.metadata
import json
import logging
import math
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from shared.eval.checkpoint import EvalError, require_causal_lm
from shared.eval.engine_backend import lm_or_none
from shared.eval.journey_tasks import JOURNEY_TASKS, task_data_file

__all__ = ["JOURNEY_TASKS", "LOCAL_LAYOUT", "SOURCES", "STANDARD_TASKS", "build_task_specs", "run_lm_eval",
           "samples_path"]

TASKS_DIR = Path(__file__).with_name("lm_eval_tasks")
SOURCES: tuple[str, ...] = ("local", "hub")
SUFFIXES = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}  # file suffix -> datasets builder
NOISY_LOGGERS = ("lm_eval", "lm-eval", "datasets", "transformers", "filelock", "fsspec")


@dataclass(frozen=True)
class LocalLayout:
    """Where a standard task's files live under ``data_dir`` and what their rows hold."""

    folder: str  # relative to data_dir, named like the Hub dataset (and config)
    eval_split: str  # the split lm-eval scores; must exist
    splits: Mapping[str, str]  # YAML key -> split, for every split the task's YAML names
    required: tuple[str, ...]  # fields the task reads; checked on the first row
    schema: str  # the published schema, for error messages


_HELLASWAG_SCHEMA = ("Rowan/hellaswag rows: ind, activity_label, ctx_a, ctx_b, ctx, endings (4 strings), source_id, "
                     "split, split_type, label (the right ending's index as a string, '0'..'3')")
_ARC_SCHEMA = ("allenai/ai2_arc rows: id, question, choices {text: [..], label: [..]}, answerKey (one of "
               "choices.label)")
_TRUTHFULQA_SCHEMA = ("truthfulqa/truthful_qa multiple_choice rows: question, mc1_targets {choices: [..], "
                      "labels: [..]}, mc2_targets {choices: [..], labels: [..]} (true choices first, labels 1)")
_ARC_SPLITS = {"training_split": "train", "validation_split": "validation", "test_split": "test"}
_ARC_FIELDS = ("question", "choices", "answerKey")

LOCAL_LAYOUT: dict[str, LocalLayout] = {
    "hellaswag": LocalLayout("hellaswag", "validation", {"training_split": "train", "validation_split": "validation"},
                             ("activity_label", "ctx_a", "ctx_b", "endings", "label"), _HELLASWAG_SCHEMA),
    "arc_easy": LocalLayout("ai2_arc/ARC-Easy", "test", _ARC_SPLITS, _ARC_FIELDS, _ARC_SCHEMA),
    "arc_challenge": LocalLayout("ai2_arc/ARC-Challenge", "test", _ARC_SPLITS, _ARC_FIELDS, _ARC_SCHEMA),
    "truthfulqa_mc1": LocalLayout("truthful_qa/multiple_choice", "validation", {"validation_split": "validation"},
                                  ("question", "mc1_targets"), _TRUTHFULQA_SCHEMA),
    "truthfulqa_mc2": LocalLayout("truthful_qa/multiple_choice", "validation", {"validation_split": "validation"},
                                  ("question", "mc2_targets"), _TRUTHFULQA_SCHEMA),
}
STANDARD_TASKS: tuple[str, ...] = tuple(LOCAL_LAYOUT)
KNOWN_TASKS: tuple[str, ...] = STANDARD_TASKS + JOURNEY_TASKS


def run_lm_eval(model_path: str | Path, tasks: Sequence[str], *, source: str = "local",
                data_dir: str | Path | None = None, limit: int | None = None, num_fewshot: int | None = None,
                batch_size: int = 16, device: str = "cpu", cache_dir: str | Path | None = None, seed: int = 0,
                out_path: str | Path | None = None) -> dict[str, dict[str, float]]:
    """Evaluate the checkpoint at ``model_path`` on ``tasks``; metrics per task (see module docstring).

    ``limit`` caps the documents per task, ``num_fewshot`` overrides the tasks' default shots
    (lm-eval keeps TruthfulQA at 0), ``seed`` seeds lm-eval's sampling and the journey data.
    With ``out_path`` the full result (metrics, the config used, task configs, lm-eval version)
    is also written there as JSON, and every scored document beside it (``<out>.samples.jsonl``:
    the exact context and continuations lm-eval scored, their log-likelihoods, the target and
    the document's metrics), for looking into a surprising number. Every input problem is an
    ``EvalError`` raised before the model loads.
    """
    started = time.time()
    root = require_causal_lm(model_path)
    with tempfile.TemporaryDirectory(prefix="journey-lm-eval-") as work_dir, _quiet_logs():
        specs = build_task_specs(tasks, source=source, data_dir=data_dir, cache_dir=cache_dir, seed=seed,
                                 work_dir=work_dir)
        lm_eval, HFLM, TaskManager = _import_lm_eval()

        # Only hub tasks need lm-eval's index of its ~15k registered tasks (seconds to build);
        # ours are passed by path.
        needs_index = source == "hub" and any(t in STANDARD_TASKS for t in tasks)
        lm = lm_or_none(root) or HFLM(pretrained=str(root), device=device, batch_size=batch_size)
        results = lm_eval.simple_evaluate(
            model=lm, tasks=specs, task_manager=TaskManager(include_defaults=needs_index), limit=limit,
            num_fewshot=num_fewshot, log_samples=out_path is not None, random_seed=seed, numpy_random_seed=seed,
            torch_random_seed=seed, fewshot_random_seed=seed)
    metrics = {task: _task_metrics(results, task) for task in dict.fromkeys(tasks)}
    if out_path is not None:
        config = {"model_path": str(root), "tasks": list(dict.fromkeys(tasks)), "source": source,
                  "data_dir": None if data_dir is None else str(data_dir), "limit": limit, "num_fewshot": num_fewshot,
                  "batch_size": batch_size, "device": device, "seed": seed,
                  "cache_dir": None if cache_dir is None else str(cache_dir)}
        _write_json(out_path, {
            "metrics": metrics, "config": config, "lm_eval_version": importlib.metadata.version("lm_eval"),
            "n_shot": results.get("n-shot"), "versions": results.get("versions"),
            "task_configs": results.get("configs"), "elapsed_s": round(time.time() - started, 2)})
        rows = (_sample_row(task, sample) for task, samples in results["samples"].items() for sample in samples)
        samples_path(out_path).write_text("".join(json.dumps(_finite(r)) + "\n" for r in rows), encoding="utf-8")
    return metrics


def _import_lm_eval():
    """lm-eval's entry points, imported late: the import takes seconds and input errors should not wait."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as exc:
        raise EvalError(f"lm-evaluation-harness is not importable ({exc}); pip install 'lm-eval>=0.4.13'") from None
    return lm_eval, HFLM, TaskManager


def samples_path(out_path: str | Path) -> Path:
    """Where ``run_lm_eval(..., out_path=...)`` writes the per-document rows: ``lm_eval.samples.jsonl``."""
    out = Path(out_path)
    return out.with_name(f"{out.stem}.samples.jsonl")


def build_task_specs(tasks: Sequence[str], *, source: str = "local", data_dir: str | Path | None = None,
                     cache_dir: str | Path | None = None, seed: int = 0, work_dir: str | Path) -> list[str]:
    """What ``simple_evaluate`` gets for ``tasks``: lm-eval task names (hub) or YAML paths in ``work_dir``.

    Checks every input first (names, source, data files and their schema) and raises
    ``EvalError`` naming the fix; builds missing journey data into ``cache_dir``.
    """
    if isinstance(tasks, str) or not tasks:
        raise EvalError(f"tasks must be a non-empty list of task names, got {tasks!r}; "
                        f"known tasks: {list(KNOWN_TASKS)}")
    unknown = [t for t in tasks if t not in KNOWN_TASKS]
    if unknown:
        raise EvalError(f"unknown task(s) {unknown}; known tasks: {list(KNOWN_TASKS)}")
    if source not in SOURCES:
        raise EvalError(f"unknown source {source!r}; choose one of {list(SOURCES)} ('local' reads data_dir, "
                        "'hub' lets lm-eval download)")
    standard = [t for t in dict.fromkeys(tasks) if t in STANDARD_TASKS]
    if source == "local" and standard and data_dir is None:
        raise EvalError(f"source='local' needs data_dir= for {standard} (a folder laid out as in "
                        "shared/eval/harness.py's docstring), or use source='hub' on a machine with Hub access")
    specs = []
    for task in dict.fromkeys(tasks):
        if task in JOURNEY_TASKS:
            files = {"test": [str(task_data_file(task, cache_dir, seed))]}
            specs.append(_write_spec(work_dir, task, "json", files, overrides={}))
        elif source == "hub":
            specs.append(task)
        else:
            specs.append(_local_spec(task, Path(data_dir), work_dir))
    return specs


def _local_spec(task: str, data_dir: Path, work_dir: str | Path) -> str:
    """The run-time YAML of a standard task over the files under ``data_dir``."""
    layout = LOCAL_LAYOUT[task]
    folder = data_dir / layout.folder
    found = {split: _split_files(folder, split) for split in layout.splits.values()}
    if found[layout.eval_split] is None:
        raise EvalError(f"{task}: expected {folder / (layout.eval_split + '.jsonl')} (or .json / .parquet / "
                        f"{layout.eval_split}-*.parquet) holding {layout.schema}; export the split there or "
                        "use source='hub'")
    present = {split: f for split, f in found.items() if f is not None}
    builder, eval_files = present[layout.eval_split]
    formats = {split: fmt for split, (fmt, _) in present.items()}
    if len(set(formats.values())) > 1:
        raise EvalError(f"{task}: splits in {folder} mix formats ({formats}); datasets reads one format per "
                        "task, so convert them all to jsonl (or all to parquet)")
    _check_fields(task, eval_files[0], layout)
    files = {split: [str(p) for p in paths] for split, (_, paths) in present.items()}
    # A split the YAML names but the folder lacks must be unset, or lm-eval asks datasets for it.
    overrides = {key: None for key, split in layout.splits.items() if split not in files}
    return _write_spec(work_dir, task, builder, files, overrides)


def _split_files(folder: Path, split: str) -> tuple[str, list[Path]] | None:
    """``(datasets builder, files)`` of ``split`` in ``folder``, or None when it has none."""
    for suffix, builder in SUFFIXES.items():
        if (folder / f"{split}{suffix}").is_file():
            return builder, [folder / f"{split}{suffix}"]
    shards = sorted(folder.glob(f"{split}-*.parquet"))  # the Hub's own export: test-00000-of-00001.parquet
    return ("parquet", shards) if shards else None


def _check_fields(task: str, path: Path, layout: LocalLayout) -> None:
    """Fail early, naming the schema, when the first row lacks a field the task reads."""
    fields = _first_row_fields(path)
    missing = [f for f in layout.required if f not in fields]
    if missing:
        raise EvalError(f"{task}: {path} lacks field(s) {missing} (it has {sorted(fields)}); expected {layout.schema}")


def _first_row_fields(path: Path) -> set[str]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return set(pq.read_schema(path).names)
    with path.open(encoding="utf-8") as fh:
        first = next((line for line in fh if line.strip()), "")
        if first.lstrip().startswith("["):  # a JSON array file rather than JSON lines
            fh.seek(0)
            rows = json.load(fh)
            return set(rows[0]) if rows and isinstance(rows[0], dict) else set()
    try:
        row = json.loads(first)
    except json.JSONDecodeError as exc:
        raise EvalError(f"{path} is not JSON lines ({exc}); write one JSON object per line") from None
    return set(row) if isinstance(row, dict) else set()


def _write_spec(work_dir: str | Path, task: str, builder: str, files: dict[str, list[str]],
                overrides: dict[str, Any]) -> str:
    spec = {"include": str(TASKS_DIR / f"{task}.yaml"), "dataset_path": builder,
            "dataset_kwargs": {"data_files": files}, **overrides}
    path = Path(work_dir) / f"{task}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return str(path)


def _task_metrics(results: dict, task: str) -> dict[str, float]:
    """lm-eval's ``{"acc,none": .., "acc_stderr,none": ..}`` as ``{"acc": .., "acc_stderr": .., "n": ..}``."""
    raw = results["results"][task]
    metrics: dict[str, float] = {}
    for key, value in raw.items():
        name, _, filter_name = key.partition(",")
        if not filter_name:
            continue  # "alias" and other labels
        metrics[name] = float("nan") if value in ("N/A", None) else float(value)
    metrics["n"] = int(results["n-samples"][task]["effective"])
    return metrics


def _sample_row(task: str, sample: dict) -> dict:
    """One scored document of a loglikelihood task, without lm-eval's hashes and raw doc."""
    arguments = sample["arguments"]
    return {"task": task, "doc_id": sample["doc_id"], "target": sample["target"], "context": arguments[0][0],
            "continuations": [continuation for _, continuation in arguments],
            "loglikelihoods": [float(resp[0]) for resp in sample["filtered_resps"]],
            **{m: float(sample[m]) for m in sample.get("metrics", []) if m in sample}}


def _write_json(path: str | Path, payload: dict) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Task configs hold functions and Jinja; NaN (no stderr) becomes null so the file is strict JSON.
    text = json.dumps(_finite(payload), indent=2, default=str, allow_nan=False)
    out.write_text(text + "\n", encoding="utf-8")


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


@contextmanager
def _quiet_logs() -> Iterator[None]:
    """lm-eval, datasets and transformers log at INFO per task and per step: keep warnings only."""
    loggers = [logging.getLogger(name) for name in NOISY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
