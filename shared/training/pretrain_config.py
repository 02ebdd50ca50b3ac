"""Config of the pretraining and continued-pretraining jobs (``configs/pretrain``, ``configs/cpt``).

One dataclass per concern; every field says what it does. Loaded by ``shared.config.load_config``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from shared.config import ConfigError, help_field, require_positive
from shared.data.split import DOC_SPLIT_SEED, DOC_VAL_FRACTION
from shared.model.presets import PRESETS
from shared.training.schedules import SCHEDULES


@dataclass
class DataConfig:
    source: str = help_field("builtin:python-docs", "corpus: builtin:python-docs, builtin:python-code, "
                             "a local file/dir (txt, md, jsonl, parquet), or hf:<dataset>[:<config>]")
    max_bytes: Optional[int] = help_field(None, "read at most this many bytes of text (None = all)")
    val_fraction: float = help_field(DOC_VAL_FRACTION, "share of documents held out for validation (the default is the journey's held-out split, which eval and retrieval also use)")
    seed: int = help_field(DOC_SPLIT_SEED, "seed of the deterministic document split")
    text_field: str = help_field("text", "field holding the text in jsonl/parquet/hub datasets")
    engine: Literal["local", "ray"] = help_field("ray", "tokenize in-process or as a Ray Data pipeline")


@dataclass
class ModelConfig:
    preset: str = help_field("tiny", f"architecture preset: {sorted(PRESETS)}")
    n_layer: Optional[int] = help_field(None, "override the preset's number of layers")
    n_head: Optional[int] = help_field(None, "override the preset's number of heads")
    n_embd: Optional[int] = help_field(None, "override the preset's width")
    block_size: Optional[int] = help_field(None, "override the preset's context length")
    dropout: float = help_field(0.0, "dropout probability (0 for pretraining at this scale)")


@dataclass
class OptimConfig:
    max_steps: int = help_field(1000, "optimizer steps")
    batch_size: int = help_field(16, "sequences per micro-batch per worker")
    grad_accum: int = help_field(1, "micro-batches per optimizer step")
    lr: float = help_field(1e-3, "peak learning rate")
    schedule: str = help_field("cosine", f"learning-rate schedule: {list(SCHEDULES)}")
    warmup: float = help_field(0.05, "warmup: steps if >= 1, else a ratio of max_steps")
    min_lr_ratio: float = help_field(0.1, "final learning rate as a fraction of lr")
    decay_ratio: float = help_field(0.2, "wsd only: share of steps spent in the final decay")
    weight_decay: float = help_field(0.1, "AdamW weight decay, applied to matrices only")
    beta1: float = help_field(0.9, "AdamW beta1")
    beta2: float = help_field(0.95, "AdamW beta2")
    grad_clip: float = help_field(1.0, "clip the global gradient norm to this (0 = off)")


@dataclass
class PretrainConfig:
    """Pretraining from scratch (``init_from`` unset) or continued pretraining (``init_from`` set)."""

    run: str = help_field("default", "run name: the artifact goes to <runs_dir>/<run>/<stage>")
    stage: str = help_field("pretrain", "stage name of the artifact this job writes")
    tokenizer: str = help_field("tokenizer", "tokenizer artifact name or HF tokenizer directory")
    init_from: Optional[str] = help_field(None, "artifact to continue from (continued pretraining)")
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "architecture (ignored with init_from)"})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "training corpus"})
    eval_data: dict = help_field({}, "extra validation sets {name: source}, e.g. {general: builtin:python-docs}; "
                                 "the training corpus' own val split is always evaluated as 'val'")
    eval_max_bytes: Optional[int] = help_field(None, "byte cap when reading the extra validation corpora")
    optim: OptimConfig = field(default_factory=OptimConfig, metadata={"help": "optimizer and schedule"})
    precision: Literal["auto", "fp32", "bf16", "fp16"] = help_field(
        "auto", "auto = bf16 autocast where the hardware supports it (CUDA, CPUs with AVX512-BF16/AMX)")
    compile: Literal["auto", "on", "off"] = help_field("off", "torch.compile the model (auto = on CUDA only)")
    num_workers: int = help_field(1, "Ray Train workers (DDP: gloo on CPU, NCCL on GPU)")
    cpus_per_worker: int = help_field(2, "CPU cores per worker (sets torch threads)")
    use_gpu: bool = help_field(False, "one GPU per worker")
    eval_every: int = help_field(100, "evaluate every N steps (and at step 0 and the end)")
    eval_batches: int = help_field(8, "batches per validation estimate")
    ckpt_every: int = help_field(200, "report a Ray Train checkpoint every N steps")
    snapshot_every: int = help_field(0, "also save the weights as an HF checkpoint (no tokenizer) under "
                                     "<artifact>/snapshots/step_<N>/ at step 0 and every N steps (0 = off); "
                                     "the interpret stage reads them to show when induction heads form")
    log_every: int = help_field(10, "log train loss / tokens/s every N steps")
    max_failures: int = help_field(2, "Ray Train restarts from the last checkpoint after a worker failure")
    seed: int = help_field(1337, "seed of init and batch sampling")
    fail_at_step: Optional[int] = help_field(None, "testing hook: raise once in rank 0 after this step")
    tensorboard: bool = help_field(False, "also write TensorBoard event files into the artifact")
    runs_dir: Optional[str] = help_field(None, "artifact root (default $JOURNEY_RUNS or ./runs)")
    overwrite: bool = help_field(False, "replace an existing artifact of the same run/stage")

    def validate(self) -> None:
        o = self.optim
        if o.schedule not in SCHEDULES:
            raise ConfigError(f"optim.schedule: unknown schedule {o.schedule!r}; choose one of {list(SCHEDULES)}")
        require_positive(o, ("max_steps", "batch_size", "grad_accum"), "optim.")
        if o.lr <= 0:
            raise ConfigError(f"optim.lr must be > 0, got {o.lr}")
        if self.model.preset not in PRESETS:
            raise ConfigError(f"model.preset: unknown preset {self.model.preset!r}; choose one of {sorted(PRESETS)}")
        if self.num_workers < 1 or self.cpus_per_worker < 1:
            raise ConfigError("num_workers and cpus_per_worker must be >= 1")
        if not 0 < self.data.val_fraction < 1:
            raise ConfigError(f"data.val_fraction must be in (0, 1), got {self.data.val_fraction}")
        require_positive(self, ("eval_every", "ckpt_every", "log_every", "eval_batches"))
        if self.snapshot_every < 0:
            raise ConfigError(f"snapshot_every must be >= 0 (0 = no snapshots), got {self.snapshot_every}")


@dataclass
class CPTConfig(PretrainConfig):
    """Continued pretraining: pretraining that must start from a model (``init_from``)."""

    stage: str = help_field("cpt", "stage name of the artifact this job writes")

    def validate(self) -> None:
        super().validate()
        if not self.init_from:
            raise ConfigError("continued pretraining needs init_from=<artifact> (e.g. init_from=pretrain); "
                              "to train from scratch run the pretrain stage")
