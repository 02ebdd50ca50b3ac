"""Training throughput for a plan's time estimates: measured here first, else a published reference.

Measured: an earlier artifact of the registry of the same stage family and the same model shape,
made on the same kind of device (CPU, or a GPU of the same family). Pretraining artifacts record
``tokens_per_s``; a post-training artifact gives ``tokens per step × steps / train_s`` (its
evaluation passes included, so it is what a run of that stage really sustains). A stage that does
not train (prefs, quantize, eval, ...) is timed from an earlier artifact's wall time, scaled by its
amount of work (``plan.work_units``).

Reference (no measurement here): GPT-2 124M pretraining in llm.c (C/CUDA, bf16, flash attention,
fused AdamW), per GPU, scaled to another shape by its training FLOPs per token
(``flops_per_token``). These are what a well-tuned loop reaches; our PyTorch loop, and more so the
HF/TRL post-training path, is slower, so a reference-based time is a lower bound.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from shared.plan.hardware import known_family
from shared.plan.memory import ModelShape, param_count
from shared.registry import Artifact

GPT2_124M = ModelShape(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)

#: Tokens/s per GPU of GPT-2 124M pretraining (B·T = 0.5M-token steps, seq 1024), with where it comes from.
REFERENCE_TOKENS_PER_S: dict[str, tuple[float, str]] = {
    # 10B tokens in 45 min on 8xH100 = 3.70M tokens/s over 8 GPUs.
    "H100": (10e9 / (45 * 60) / 8, "llm.c GPT-2 124M: 10B tokens in 45 min on 8xH100 "
                                   "(github.com/KellerJordan/modded-nanogpt README)"),
    "H200": (10e9 / (45 * 60) / 8, "H100's llm.c figure (same compute; H200 adds memory)"),
    # 10B tokens in ~90 min on 8xA100 80GB SXM = 1.85M tokens/s over 8 GPUs.
    "A100": (10e9 / (90 * 60) / 8, "llm.c GPT-2 124M: 10B tokens in ~90 min on 8xA100 80GB SXM "
                                   "(github.com/karpathy/llm.c/discussions/481)"),
}
REFERENCE_TOKENS_PER_S["A100-40GB"] = REFERENCE_TOKENS_PER_S["A100"]

#: Stages whose artifacts time each other: pretraining and continued pretraining run one loop.
FAMILIES = {"pretrain": "pretrain", "cpt": "pretrain"}
#: Post-training stages that score a pair of sequences per example (chosen and rejected).
PAIRED = ("dpo", "reward")


def flops_per_token(shape: ModelShape, seq: int) -> float:
    """Training FLOPs per token: ``6·N + 12·L·d·s`` (N without the embeddings; PaLM appendix B, as
    ``GPT.flops_per_token`` computes MFU)."""
    d = shape.n_embd
    non_embedding = param_count(shape, positions=False).total - shape.vocab_size * d * (1 if shape.tied else 2)
    return 6 * non_embedding + 12 * shape.n_layer * d * seq


@dataclass(frozen=True)
class Throughput:
    """Tokens per second of one worker, and where the number comes from."""

    tokens_per_s: float
    source: str
    measured: bool


def reference_throughput(shape: ModelShape, seq: int, gpu_family: Optional[str]) -> Optional[Throughput]:
    """The llm.c reference for ``gpu_family``, scaled from GPT-2 124M to ``shape`` by FLOPs per token."""
    if gpu_family not in REFERENCE_TOKENS_PER_S:
        return None
    tps, source = REFERENCE_TOKENS_PER_S[gpu_family]
    scale = flops_per_token(GPT2_124M, 1024) / flops_per_token(shape, seq)
    return Throughput(tps * scale, f"reference: {source}" + ("" if abs(scale - 1) < 1e-9 else
                                                            f", scaled ×{scale:.3g} by FLOPs/token"), False)


def read_shape(directory: Path) -> Optional[ModelShape]:
    """The model shape of an HF checkpoint directory (its ``config.json``), or None."""
    try:
        return ModelShape.from_hf_config(json.loads((Path(directory) / "config.json").read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def artifact_shape(artifact: Artifact, root: Path) -> Optional[ModelShape]:
    """The shape of the model an artifact is, or was made from (its first parent with a checkpoint)."""
    shape = read_shape(artifact.dir)
    for parent in artifact.parents:
        if shape is not None:
            break
        shape = read_shape(root / parent)
    return shape


def _same_device(artifact: Artifact, use_gpu: bool, gpu_family: Optional[str]) -> bool:
    if bool(artifact.config.get("use_gpu", False)) != use_gpu:
        return False
    if not use_gpu:
        return True
    names = artifact.environment.get("gpus") or []
    return bool(names) and known_family(names[0]) == gpu_family


def tokens_per_step(stage: str, config: dict[str, Any]) -> Optional[int]:
    """Tokens one optimizer step reads, over all workers, from a (plain-dict) stage config.

    Pretraining: ``batch · block · grad_accum · workers`` (block from the artifact's model). Post-
    training: ``batch · max_length · grad_accum · workers``, doubled for paired data (DPO, reward);
    an upper bound where sequences are padded rather than packed.
    """
    train = config.get("train") or {}
    if "batch_size" not in train:
        return None
    workers = int(config.get("num_workers", 1))
    seq = train.get("max_length") or config.get("_block_size")
    if not seq:
        return None
    pairs = 2 if stage in PAIRED else 1
    return int(train["batch_size"] * seq * train.get("grad_accum", 1) * workers * pairs)


def measured_throughput(artifacts: Iterable[Artifact], root: Path, stage: str, shape: ModelShape,
                        use_gpu: bool, gpu_family: Optional[str]) -> Optional[Throughput]:
    """Tokens/s per worker of the newest matching training artifact (same stage family, shape, device)."""
    family = FAMILIES.get(stage, stage)
    # the same stage first (cpt's artifacts time cpt), then the rest of its family, newest first
    for art in sorted(artifacts, key=lambda a: (a.stage == stage, a.created_at), reverse=True):
        if FAMILIES.get(art.stage, art.stage) != family or not _same_device(art, use_gpu, gpu_family):
            continue
        if artifact_shape(art, root) != shape:
            continue
        workers = max(1, int(art.config.get("num_workers", 1)))
        if isinstance(art.metrics.get("tokens_per_s"), (int, float)):
            return Throughput(art.metrics["tokens_per_s"] / workers, f"measured: {art.id}", True)
        train_s, steps = art.timings.get("train_s"), art.metrics.get("steps")
        per_step = tokens_per_step(art.stage, {**art.config, "_block_size": shape.block_size})
        if train_s and steps and per_step:
            return Throughput(per_step * steps / train_s / workers, f"measured: {art.id}", True)
    return None


def measured_wall(artifacts: Iterable[Artifact], root: Path, stage: str, shape: Optional[ModelShape],
                  work: Callable[[dict[str, Any]], Optional[float]]) -> Optional[tuple[float, float, str]]:
    """``(seconds, work units, artifact id)`` of the newest artifact of ``stage`` made from a model of
    ``shape`` (any, when ``shape`` is None) whose config gives a work amount; None if there is none."""
    for art in sorted(artifacts, key=lambda a: a.created_at, reverse=True):
        if art.stage != stage or not art.timings:
            continue
        if shape is not None and artifact_shape(art, root) != shape:
            continue
        units = work(art.config)
        if units:
            # total_s where a stage records it beside its parts (the tokenizer); else the parts add up
            seconds = art.timings.get("total_s") or sum(art.timings.values())
            return seconds, units, art.id
    return None


__all__ = ["FAMILIES", "GPT2_124M", "REFERENCE_TOKENS_PER_S", "Throughput", "artifact_shape", "flops_per_token",
           "measured_throughput", "measured_wall", "read_shape", "reference_throughput", "tokens_per_step"]
