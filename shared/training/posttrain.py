"""Driver side of every TRL stage: resolve the start model, run the workers, collect the checkpoint.

``fit_trl(cfg, algo, train_rows, eval_rows, extra)`` runs ``trl_train_worker`` under Ray Train's
``TorchTrainer`` (``num_workers`` processes; gloo on CPU, NCCL on GPU; DeepSpeed inside the HF
Trainer when configured), copies the final checkpoint into the stage's artifact directory and
writes ``metrics.jsonl`` and ``loss_curve.png``. The calling stage (SFT, DPO, ...) evaluates the
result and registers the artifact: each knows its own headline metrics.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Sequence
from typing import Any

from shared.config import to_dict
from shared.registry import Artifact, ArtifactNotFound, Registry
from shared.training.curves import plot_curves
from shared.cluster import ensure_ray
from shared.training.trl_worker import LOG_HISTORY, TrlSpec, trl_train_worker


@dataclass
class ModelRef:
    """A model to start from: a registered artifact, or an HF directory / hub id outside the registry."""

    path: str
    artifact: Artifact | None = None

    @property
    def parent_ids(self) -> list[str]:
        return [self.artifact.id] if self.artifact else []


def resolve_model(registry: Registry, name: str, run: str) -> ModelRef:
    """``name`` as an artifact (``sft``, ``run/stage``, ``latest:sft``), else an HF dir or hub id."""
    try:
        art = registry.resolve(name, run=run)
    except ArtifactNotFound:
        if Path(name).is_dir() and (Path(name) / "config.json").exists():
            return ModelRef(str(Path(name).resolve()))
        if "/" in name and not Path(name).exists():
            return ModelRef(name)  # a hub id: from_pretrained fetches it (when online)
        raise
    if not (art.dir / "config.json").exists():
        raise ArtifactNotFound(f"artifact {art.id} is a {art.kind}, not a model checkpoint; "
                               "start from a model stage (pretrain, cpt, sft, dpo, ...)")
    return ModelRef(str(art.dir), art)


@dataclass
class FitResult:
    out_dir: Path
    history: list[dict[str, Any]]
    final_eval: dict[str, Any] = field(default_factory=dict)
    train_s: float = 0.0


def preflight(cfg, model: ModelRef) -> None:
    """Fail on the driver, before any worker starts, on a method the model or machine cannot run.

    QLoRA without a GPU and LoRA targets the model does not have are checked here on an empty
    (meta-device) copy of the architecture: no weights are read, so this is cheap even for 8B.
    """
    import torch
    from shared.training.finetune_config import MethodConfig
    from shared.training.finetune_methods import require_qlora_runtime, target_modules_for

    method: MethodConfig = cfg.method
    if method.method == "qlora":
        require_qlora_runtime(torch.device("cuda" if cfg.use_gpu else "cpu"))
    if method.method == "full" or (not Path(model.path).is_dir()):
        return  # hub ids: the architecture arrives with the download, checked in the worker
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM
    with init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model.path))
    target_modules_for(skeleton, method.target_spec())


def fit_trl(cfg, algo: str, model: ModelRef, out_dir: Path, train_rows: list[dict], eval_rows: list[dict],
            extra: dict[str, Any] | None = None) -> FitResult:
    """Train under Ray Train and leave an HF checkpoint + history in ``out_dir`` (see module docstring)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    preflight(cfg, model)
    ensure_ray()
    spec = TrlSpec(algo=algo, config=to_dict(cfg), model_path=model.path, train_rows=train_rows,
                   eval_rows=eval_rows, extra=extra or {})
    storage = Path(out_dir).parent / "_ray"
    t0 = time.perf_counter()
    result = TorchTrainer(
        trl_train_worker, train_loop_config=spec.to_dict(),
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                               resources_per_worker={"CPU": cfg.cpus_per_worker}),
        run_config=ray.train.RunConfig(name=cfg.stage, storage_path=str(storage)),
    ).fit()
    train_s = time.perf_counter() - t0
    if result.checkpoint is None:
        raise RuntimeError(f"{algo} training finished without a checkpoint; see the Ray logs under {storage}")
    with result.checkpoint.as_directory() as d:
        shutil.copytree(d, out_dir, dirs_exist_ok=True)
    log = json.loads((out_dir / LOG_HISTORY).read_text())
    final = log.pop()["final_eval"] if log and "final_eval" in log[-1] else {}
    (out_dir / LOG_HISTORY).unlink()
    history = [row for row in log if "step" in row]
    with open(out_dir / "metrics.jsonl", "w", encoding="utf-8") as fh:
        for row in history:
            fh.write(json.dumps(row) + "\n")
    plot_trl_history(history, out_dir / "loss_curve.png", f"{cfg.run}/{cfg.stage}")
    return FitResult(Path(out_dir), history, final, train_s)


def plot_trl_history(history: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Train and eval loss of an HF Trainer log history (``loss`` / ``eval_loss`` per ``step``)."""
    curves = {"train": [(r["step"], r["loss"]) for r in history if "loss" in r],
              "eval": [(r["step"], r["eval_loss"]) for r in history if "eval_loss" in r]}
    return plot_curves(curves, path, title, "loss")


def train_metrics(history: list[dict[str, Any]], final_eval: dict[str, Any]) -> dict[str, Any]:
    """Headline numbers of a run: first/last train loss, first/final eval loss and every final eval_* value."""
    train = [r["loss"] for r in history if "loss" in r]
    evals = [r["eval_loss"] for r in history if "eval_loss" in r]
    out: dict[str, Any] = {k: v for k, v in final_eval.items() if isinstance(v, (int, float))}
    if train:
        out.update(first_train_loss=train[0], last_train_loss=train[-1])
    if evals:
        out["first_eval_loss"] = evals[0]
    steps = [r["step"] for r in history]
    out["steps"] = max(steps) if steps else 0
    return out


def first_last(history: list[dict[str, Any]], keys: Sequence[str]) -> dict[str, Any]:
    """``first_<key>`` / ``last_<key>`` of each logged key (``/`` becomes ``_``) that the history holds."""
    out: dict[str, Any] = {}
    for key in keys:
        values = [r[key] for r in history if r.get(key) is not None]
        if values:
            name = key.replace("/", "_")
            out[f"first_{name}"], out[f"last_{name}"] = values[0], values[-1]
    return out


def model_lineage(registry: Registry, start: ModelRef, generations: int = 3) -> list[tuple[str, str]]:
    """``(label, path)`` of ``start`` and its registered model ancestors, oldest first, labelled by stage name.

    Each step follows the first parent that is a causal LM checkpoint (reward models and datasets
    are skipped), so RL <- DPO <- SFT <- CPT reads back from any of them.
    """
    chain, art = [], start.artifact
    chain.append((art.stage if art else "start", start.path))
    while art is not None and len(chain) < generations:
        parents = [registry.resolve(p) for p in art.parents]
        art = next((p for p in parents if p.kind == "hf-model" and (p.dir / "config.json").exists()), None)
        if art is not None:
            chain.append((art.id if any(art.stage == label for label, _ in chain) else art.stage, str(art.dir)))
    return chain[::-1]
