"""The finetune-methods experiment: full fine-tuning vs LoRA ranks (vs QLoRA on a CUDA GPU), measured alike.

``finetune_methods_experiment(cfg)`` starts every arm of ``cfg.methods`` (``full``, ``lora-r<rank>``,
``qlora-r<rank>``) from the same model (``cfg.init_from``) with the same SFT data, seed, steps and batch
(the ``cfg.preset`` sft preset plus ``cfg.finetune`` overrides; only the method section differs), and
records per arm: trainable and total parameters, peak memory, mean step time and the final eval loss.
The table (Markdown + JSON) and a bar chart (PNG) become the experiment artifact
``<run>/experiment-finetune-methods``, whose parent is the start model when it is a registered artifact.

How it measures:
- Each arm trains in its own fresh process: a Ray task with ``max_calls=1``, so the worker exits after
  one arm. A process' peak RSS only grows, and memory freed by one arm stays in the allocator's heap
  where the next arm would reuse it without the RSS moving; only a fresh process gives each arm the
  same clean start. A Ray task (rather than ``multiprocessing``) also lands on a node with a GPU when
  the experiment is submitted to a cluster whose head has none.
- Memory is ``MemoryTracker`` around building the trainer (model load, adapters, tokenized data) and
  ``trainer.train()``: on CPU the increase of the process' peak RSS, on CUDA the peak of
  ``torch.cuda.max_memory_allocated``; the table's ``memory_measure`` column says which.
- Step time is the wall time from the trainer's ``on_step_begin`` to ``on_step_end`` (CUDA synchronized),
  averaged over every step but the first, which pays for warm-up (allocations, kernel selection).
- QLoRA runs only where the arms run on CUDA (``use_gpu``, by default whether this machine has CUDA);
  otherwise its row says ``skipped: needs a CUDA GPU`` and carries no numbers. It is never emulated.

Not here: the SFT trainer itself (``sft.build_trainer``, on the model ``trl_worker.load_model`` loads), the method logic (``finetune_methods``),
saving fine-tuned checkpoints (the arms are measured, not kept).
"""
from __future__ import annotations

import dataclasses
import tempfile
import time
from typing import Any

import matplotlib

matplotlib.use("Agg")  # the chart is written to a file, on machines without a display
import matplotlib.pyplot as plt  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from shared.cluster import ensure_ray  # noqa: E402
from shared.config import ConfigError, deep_merge, from_dict, load_config, to_dict  # noqa: E402
from shared.registry import Artifact, Registry  # noqa: E402
from shared.training import sft  # noqa: E402
from shared.training.experiments import METHOD_ARM, ExperimentConfig, write_experiment  # noqa: E402
from shared.training.finetune_config import MethodConfig  # noqa: E402
from shared.training.posttrain import resolve_model  # noqa: E402
from shared.training.posttrain_config import SFTJobConfig  # noqa: E402
from shared.training.trl_worker import TrainRows, TrlSpec, load_model, training_arguments  # noqa: E402

STAGE = "experiment-finetune-methods"
NO_GPU = "skipped: needs a CUDA GPU"
MEASURES = {"cpu_peak_rss": "CPU peak RSS increase", "cuda_max_allocated": "GPU max allocated"}
COLUMNS = ["method", "status", "trainable_params", "trainable_pct", "peak_memory_mb", "memory_measure",
           "step_s", "eval_loss"]
MEASURED = ("trainable_params", "total_params", "trainable_pct", "peak_memory_mb", "memory_measure", "step_s",
            "eval_loss", "steps")
COLORS = {"full": "tab:red", "lora": "tab:blue", "qlora": "tab:green"}


def arm_method(arm: str) -> dict[str, Any]:
    """The ``MethodConfig`` keys an arm name sets: ``lora-r16`` -> ``{"method": "lora", "lora_r": 16}``."""
    match = METHOD_ARM.match(arm)
    if not match:
        raise ConfigError(f"unknown finetune method arm {arm!r}; write full, lora-r<rank> or qlora-r<rank>")
    if arm == "full":
        return {"method": "full"}
    return {"method": match.group(2), "lora_r": int(match.group(3))}


def sft_config(cfg: ExperimentConfig) -> SFTJobConfig:
    """The SFT job every arm shares: the sft preset, ``cfg.steps`` steps, ``cfg.finetune`` overrides."""
    import torch

    base = {"run": cfg.run, "stage": STAGE, "init_from": cfg.init_from, "train": {"max_steps": cfg.steps},
            "use_gpu": torch.cuda.is_available(), **({"runs_dir": cfg.runs_dir} if cfg.runs_dir else {})}
    job = load_config(SFTJobConfig, "sft", cfg.preset, base=deep_merge(base, cfg.finetune))
    if job.train.max_steps < 2:
        raise ConfigError(f"finetune-methods needs steps >= 2 (the first step is warm-up and not timed), "
                          f"got {job.train.max_steps}")
    if job.eval_examples < 1:
        raise ConfigError("finetune-methods compares the final eval loss: set finetune.eval_examples >= 1")
    if job.num_workers != 1:
        raise ConfigError(f"finetune-methods trains each arm in one process to measure it, but num_workers="
                          f"{job.num_workers}; set finetune.num_workers=1")
    return job


def arm_config(job: SFTJobConfig, arm: str) -> SFTJobConfig:
    """``job`` with the method section of ``arm``; checked here, so a bad combination fails before any arm trains."""
    return dataclasses.replace(job, method=from_dict(MethodConfig, {**to_dict(job.method), **arm_method(arm)}))


def check_context(model_path: str, job: SFTJobConfig) -> None:
    """Refuse a ``max_length`` beyond the model's context: its position table has no rows for it."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path)
    context = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    if context and job.train.max_length > context:
        raise ConfigError(f"finetune.train.max_length={job.train.max_length} exceeds the context of {model_path} "
                          f"({context} tokens); set finetune.train.max_length={context}")


# ----------------------------------------------------------------------------- one arm, in its own process

class StepTimer(TrainerCallback):
    """Wall time of every optimizer step (``on_step_begin`` to ``on_step_end``), CUDA work included."""

    def __init__(self, cuda: bool):
        self.cuda, self.times, self._start = cuda, [], 0.0

    def _now(self) -> float:
        if self.cuda:
            import torch
            torch.cuda.synchronize()  # kernels are asynchronous: without this a step would look free
        return time.perf_counter()

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = self._now()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(self._now() - self._start)


def train_arm(spec: TrlSpec) -> dict[str, Any]:
    """Train one arm (an SFT ``TrlSpec``) in this process and measure it; see the module docstring."""
    import torch
    import trl  # noqa: F401  (imported before the tracker starts: library code is not the method's memory)

    # finetune_methods imports peft (seconds): only the arm's own process needs it.
    from shared.training.finetune_methods import MemoryTracker, require_qlora_runtime, trainable_parameters

    cfg = spec.config
    device = torch.device(cfg.device)
    if cfg.method.method == "qlora":
        try:
            require_qlora_runtime(device)
        except ConfigError as exc:  # a missing runtime is a finding of the experiment, not a failure
            return {"status": f"skipped: {exc}"}
    torch.set_num_threads(cfg.cpus_per_worker)
    timer = StepTimer(device.type == "cuda")
    with tempfile.TemporaryDirectory() as work:
        # Evaluation during training is off (has_eval=False): it would only add time between the steps.
        args = training_arguments(cfg, work, has_eval=False)
        with MemoryTracker(device) as memory:
            model, tokenizer = load_model(spec.algorithm, spec.model_path, cfg)  # seeds with cfg.seed first
            trainer = spec.algorithm.build_trainer(model, tokenizer, cfg, spec.rows, args)
            trainer.add_callback(timer)
            trainer.train()
        eval_loss = trainer.evaluate()["eval_loss"]
    trainable, total = trainable_parameters(trainer.model)
    timed = timer.times[1:]
    return {"status": "ok", "trainable_params": trainable, "total_params": total,
            "peak_memory_bytes": memory.result["bytes"], "memory_kind": memory.result["kind"],
            "step_s": sum(timed) / len(timed), "steps": len(timer.times), "eval_loss": float(eval_loss)}


def _require_ray(use_gpu: bool) -> None:
    """Connect to Ray; with ``use_gpu`` check a GPU exists, since a task asking for one would wait forever."""
    import ray

    ensure_ray()
    if use_gpu and ray.cluster_resources().get("GPU", 0) < 1:
        raise ConfigError("finetune.use_gpu=true but the Ray cluster has no GPU; drop the override to run the "
                          "CPU arms (QLoRA is then listed as skipped), or run where a GPU is")


def _run_arm(spec: TrlSpec) -> dict[str, Any]:
    """``train_arm`` in a fresh Ray worker process (``max_calls=1``: the worker exits afterwards)."""
    import ray

    cfg = spec.config
    task = ray.remote(num_cpus=cfg.cpus_per_worker, num_gpus=1 if cfg.use_gpu else 0, max_calls=1)(train_arm)
    return ray.get(task.remote(spec))


# ----------------------------------------------------------------------------- the experiment

def _row(arm: str, result: dict[str, Any]) -> dict[str, Any]:
    row = {"method": arm, "status": result["status"], **dict.fromkeys(MEASURED)}  # None: the arm did not run
    if result["status"] == "ok":
        row.update({k: result[k] for k in ("trainable_params", "total_params", "step_s", "eval_loss", "steps")},
                   trainable_pct=100.0 * result["trainable_params"] / result["total_params"],
                   peak_memory_mb=result["peak_memory_bytes"] / 2**20,
                   memory_measure=MEASURES[result["memory_kind"]])
    return row


def _chart(rows: list[dict[str, Any]], job: SFTJobConfig):
    ran = [r for r in rows if r["status"] == "ok"]
    measure = ran[0]["memory_measure"] if ran else "peak memory"
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8))
    panels = (("trainable_params", "trainable parameters (log)"), ("peak_memory_mb", f"MiB, {measure}"),
              ("step_s", "mean step time (s)"), ("eval_loss", "final eval loss"))
    labels = [r["method"] for r in ran]
    colors = [COLORS[arm_method(r["method"])["method"]] for r in ran]
    for ax, (key, title) in zip(axes, panels):
        bars = ax.bar(labels, [r[key] for r in ran], color=colors)
        ax.bar_label(bars, fmt="{:.3g}", fontsize=8)  # the values, since a log axis hides the ratios
        ax.margins(y=0.15)  # room for the labels under the title
        ax.set_title(title)
        ax.tick_params(axis="x", rotation=30)
    axes[0].set_yscale("log")
    axes[0].set_ylim(bottom=1)  # log bars start at one parameter, not at an arbitrary decade
    skipped = [r["method"] for r in rows if r["status"] != "ok"]
    note = f"; not run: {', '.join(skipped)}" if skipped else ""
    fig.suptitle(f"fine-tuning methods: same data, {job.train.max_steps} steps of batch {job.train.batch_size}{note}")
    fig.tight_layout()
    return fig


def finetune_methods_experiment(cfg: ExperimentConfig) -> Artifact:
    """Run every arm of ``cfg.methods`` on the same model, data and steps; write and register the table."""
    registry = Registry(cfg.runs_dir)
    model = resolve_model(registry, cfg.init_from, cfg.run)
    job = sft_config(cfg)
    check_context(model.path, job)
    methods = {arm: arm_config(job, arm) for arm in cfg.methods}
    train_rows, eval_rows, _ = sft.training_rows(job)
    _require_ray(job.use_gpu)
    rows = []
    for arm, arm_job in methods.items():
        if arm_job.method.method == "qlora" and not job.use_gpu:
            result = {"status": NO_GPU}  # no worker started: there is nothing it could measure
        else:
            spec = TrlSpec(algorithm=sft.ALGORITHM, config=arm_job, model_path=model.path,
                           rows=TrainRows(train_rows, eval_rows))
            result = _run_arm(spec)
        rows.append(_row(arm, result))
    return write_experiment(registry, cfg, STAGE, rows, COLUMNS, model.parent_ids, _chart(rows, job))


__all__ = ["finetune_methods_experiment", "arm_config", "arm_method", "sft_config", "check_context",
           "train_arm", "StepTimer", "STAGE", "COLUMNS", "NO_GPU"]
