"""Small controlled experiments over the pretraining stage.

- ``vocab_size_experiment``: tokenizers of several sizes, the same model body trained on each for
  the same steps and batch (equal compute up to the embedding/unembedding matmul), compared on
  validation bits per byte (tokenizer-independent, unlike loss per token), tokens/s and the share
  of parameters spent on embeddings.
- ``lr_schedule_experiment``: the same model and data under each LR schedule; loss curves side by side.
- ``moe_experiment`` (in ``moe_experiment``): MoE top-1/top-2/fine-grained against dense models of equal active
  and equal total parameters; its settings are ``ExperimentConfig.moe``.
- ``parallelism_experiment`` (in ``parallel_experiment``): one tiny model under DDP, FSDP2 and ZeRO-1/2/3 on N
  ranks, measured memory, step time and communication beside the memory planner; settings ``ExperimentConfig.parallel``.
- ``finetune_methods_experiment`` (in ``finetune_experiment``): full fine-tuning vs LoRA ranks (vs QLoRA on a
  GPU) from one start model; it shares ``ExperimentConfig`` and the table writer defined here.

Every pretraining run inside is an ordinary registered artifact (``<run>/pretrain-v4096``,
``<run>/pretrain-wsd``), and the experiment itself is an artifact holding the table (Markdown + JSON)
and the PNG chart (``write_experiment``).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from shared.config import ConfigError, JobConfig, deep_merge, help_field, load_config  # noqa: E402
from shared.registry import Artifact, Registry  # noqa: E402
from shared.tokenizer.artifact import train_tokenizer_artifact  # noqa: E402
from shared.tokenizer.tokenizer_config import TokenizerConfig  # noqa: E402
from shared.training.parallel_experiment import ParallelExperimentConfig  # noqa: E402
from shared.training.pretrain_config import PretrainConfig  # noqa: E402
from shared.training.runner import run_pretraining  # noqa: E402
from shared.training.schedules import SCHEDULES, lr_at  # noqa: E402

#: A finetune-methods arm: ``full``, ``lora-r<rank>`` or ``qlora-r<rank>``.
METHOD_ARM = re.compile(r"^(full|(q?lora)-r([1-9][0-9]*))$")


@dataclass
class ExperimentConfig(JobConfig):
    """One experiment: its arms are ordinary artifacts of ``run``; its table is ``<run>/<stage>-<name>``."""

    run: str = help_field("experiments", "run name holding every artifact of the experiment")
    stage: str = help_field("experiment", "the table's artifact is <run>/<stage>-<name> (e.g. "
                            "experiment-lr-schedules); each arm is a stage of its own (pretrain-v4096, pretrain-wsd)")
    overwrite: bool = help_field(False, "retrain arms that already exist in the run (default: reuse them, so an "
                                 "interrupted experiment resumes arm by arm); the table is always rewritten")
    preset: str = help_field("tiny", "tokenizer, pretrain and (finetune-methods) sft preset the runs start from")
    steps: int = help_field(200, "optimizer steps per training run (equal for every arm)")
    vocab_sizes: list[int] = help_field([1024, 4096, 16384], "vocab-size arms")
    schedules: list[str] = help_field(list(SCHEDULES), "lr-schedule arms")
    tokenizer: dict = help_field({}, "overrides for every tokenizer training")
    pretrain: dict = help_field({}, "overrides for every pretraining run (e.g. pretrain.train.lr=1e-3)")
    init_from: str = help_field("cpt", "finetune-methods: the model every arm starts from (an artifact name or an "
                                "HF checkpoint dir)")
    methods: list[str] = help_field(["full", "lora-r8", "lora-r16", "lora-r32", "qlora-r16"],
                                    "finetune-methods arms: full, lora-r<rank>, qlora-r<rank> (qlora needs CUDA)")
    finetune: dict = help_field({}, "overrides for every finetune-methods arm: SFT job keys on the sft preset "
                                "(e.g. train.batch_size=8, data=..., use_gpu=true)")
    parallel: ParallelExperimentConfig = field(default_factory=ParallelExperimentConfig, metadata={
        "help": "parallelism experiment: arms, workers, model and batch, memory budget"})
    moe: dict = help_field({}, "moe experiment settings (shared.training.moe_experiment.DEFAULTS): arms, n_experts, "
                           "expert_hidden, capacity_factor, aux_weight, z_weight, bias_rate, save")

    def validate(self) -> None:
        super().validate()
        bad = [s for s in self.schedules if s not in SCHEDULES]
        if bad:
            raise ConfigError(f"unknown schedule {bad[0]!r}; choose from {list(SCHEDULES)}")
        if not self.vocab_sizes or min(self.vocab_sizes) < 512:
            raise ConfigError("vocab_sizes must be a non-empty list of sizes >= 512")
        bad = [m for m in self.methods if not METHOD_ARM.match(m)]
        if bad or not self.methods:
            raise ConfigError(f"unknown finetune method arm {bad[0] if bad else '(none)'!r}; write full, lora-r<rank> "
                             "or qlora-r<rank>, e.g. methods=[full,lora-r8,lora-r16]")
        self.parallel.validate()


def _pretrain_cfg(cfg: ExperimentConfig, stage: str, tokenizer: str, **extra: Any) -> PretrainConfig:
    base = deep_merge({"run": cfg.run, "stage": stage, "tokenizer": tokenizer, "overwrite": cfg.overwrite,
                       "train": {"max_steps": cfg.steps, "eval_every": max(1, cfg.steps // 5)}}, cfg.pretrain)
    base = deep_merge(base, extra)
    if cfg.runs_dir:
        base["runs_dir"] = cfg.runs_dir
    return load_config(PretrainConfig, "pretrain", cfg.preset, base=base)


def _existing(cfg: ExperimentConfig, stage: str) -> Artifact | None:
    """The arm ``stage`` of an earlier, interrupted run of the experiment, unless ``overwrite`` asks to redo it."""
    if cfg.overwrite:
        return None
    try:
        return Registry(cfg.runs_dir).resolve(f"{cfg.run}/{stage}")
    except LookupError:
        return None


def _tokenizer(cfg: ExperimentConfig, stage: str, vocab_size: int | None = None) -> Artifact:
    existing = _existing(cfg, stage)
    if existing is not None:
        return existing
    base = {"run": cfg.run, "stage": stage, "overwrite": cfg.overwrite, **cfg.tokenizer}
    if vocab_size:
        base["vocab_size"] = vocab_size
    if cfg.runs_dir:
        base["runs_dir"] = cfg.runs_dir
    return train_tokenizer_artifact(load_config(TokenizerConfig, "tokenizer", cfg.preset, base=base))


def _train(cfg: ExperimentConfig, pcfg: PretrainConfig) -> Artifact:
    existing = _existing(cfg, pcfg.stage)
    return existing if existing is not None else run_pretraining(pcfg)


def _history(art: Artifact) -> list[dict[str, Any]]:
    with open(art.dir / "metrics.jsonl", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def _cell(value: Any) -> str:
    if value is None:  # an arm that did not run (e.g. QLoRA without a GPU): its status column says why
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def write_experiment(registry: Registry, cfg: ExperimentConfig, stage: str, rows: list[dict[str, Any]],
                     columns: list[str], parents: list[str], fig) -> Artifact:
    """Save ``fig`` (PNG) and ``rows`` (Markdown over ``columns``, JSON in full); register the experiment
    as artifact ``<cfg.run>/<stage>``."""
    out = registry.stage_dir(cfg.run, stage, overwrite=True)
    fig.savefig(out / f"{stage}.png", dpi=110)
    plt.close(fig)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row[c]) for c in columns) + " |")
    (out / f"{stage}.md").write_text("\n".join(lines) + "\n")
    (out / f"{stage}.json").write_text(json.dumps(rows, indent=2))
    print("\n".join(lines))
    return registry.register(cfg.run, stage, "experiment", parents=parents, config=cfg,
                             metrics={"rows": rows})


def vocab_size_experiment(cfg: ExperimentConfig) -> Artifact:
    """Train a tokenizer and the same model body per vocab size; compare bits per byte and speed."""
    rows, arts = [], []
    for size in cfg.vocab_sizes:
        tok = _tokenizer(cfg, f"tokenizer-v{size}", size)
        art = _train(cfg, _pretrain_cfg(cfg, f"pretrain-v{size}", tok.id))
        m, model = art.metrics, art.extra["model"]
        embed = model["vocab_size"] * model["n_embd"] + model["block_size"] * model["n_embd"]
        rows.append({"vocab_size": size, "val_bpb": m["val_bpb"], "val_loss_per_token": m["val_loss"],
                     "tokens_per_s": m["tokens_per_s"], "bytes_per_s": m["tokens_per_s"] * _bytes_per_token(art),
                     "embedding_share": embed / m["n_params"], "n_params": m["n_params"]})
        arts.append(art)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    labels = [str(r["vocab_size"]) for r in rows]
    for ax, key, title in zip(axes, ("val_bpb", "bytes_per_s", "embedding_share"),
                              ("val bits/byte (lower is better)", "training bytes/s", "share of params in embeddings")):
        ax.bar(labels, [r[key] for r in rows], color="tab:blue")
        ax.set_title(title)
        ax.set_xlabel("vocab size")
    fig.suptitle(f"vocab size at equal compute ({cfg.steps} steps)")
    fig.tight_layout()
    cols = ["vocab_size", "val_bpb", "val_loss_per_token", "tokens_per_s", "bytes_per_s", "embedding_share", "n_params"]
    return write_experiment(Registry(cfg.runs_dir), cfg, f"{cfg.stage}-vocab-size", rows, cols,
                            [a.id for a in arts], fig)


def _bytes_per_token(art: Artifact) -> float:
    meta = json.loads((Path(art.extra["data_dir"]) / "meta.json").read_text())
    return meta["n_bytes"]["train"] / meta["n_tokens"]["train"]


def lr_schedule_experiment(cfg: ExperimentConfig) -> Artifact:
    """Same model, data and steps under each schedule; loss and LR curves side by side."""
    tok = _tokenizer(cfg, "tokenizer")
    rows, arts, val_curves, lr_curves = [], [], {}, {}
    for schedule in cfg.schedules:
        pcfg = _pretrain_cfg(cfg, f"pretrain-{schedule}", tok.id, train={"schedule": schedule})
        art = _train(cfg, pcfg)
        hist = _history(art)
        val_curves[schedule] = [(r["step"], r["val_loss"]) for r in hist if "val_loss" in r]
        o = pcfg.train
        lr_curves[schedule] = [(s, lr_at(s, o.max_steps, o.lr, schedule, o.warmup, o.min_lr_ratio, o.decay_ratio))
                               for s in range(o.max_steps)]
        rows.append({"schedule": schedule, "final_val_loss": art.metrics["val_loss"],
                     "final_train_loss": hist[-1]["train_loss"], "val_bpb": art.metrics["val_bpb"]})
        arts.append(art)
    fig, (ax_loss, ax_lr) = plt.subplots(1, 2, figsize=(12, 4))
    for name, pts in val_curves.items():
        ax_loss.plot(*zip(*pts), marker="o", markersize=3, label=name)
    for name, pts in lr_curves.items():
        ax_lr.plot(*zip(*pts), label=name)
    ax_loss.set(title="validation loss", xlabel="step", ylabel="nats/token")
    ax_lr.set(title="learning rate", xlabel="step")
    for ax in (ax_loss, ax_lr):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    cols = ["schedule", "final_val_loss", "final_train_loss", "val_bpb"]
    return write_experiment(Registry(cfg.runs_dir), cfg, f"{cfg.stage}-lr-schedules", rows, cols,
                            [a.id for a in arts], fig)


__all__ = ["ExperimentConfig", "METHOD_ARM", "write_experiment", "vocab_size_experiment",
           "lr_schedule_experiment"]
