"""Config of the pretraining and continued-pretraining jobs (``configs/pretrain``, ``configs/cpt``).

One dataclass per concern; every field says what it does. Loaded by ``shared.config.load_config``.
``PretrainConfig`` takes the job fields (run, stage, workers, seed, precision) from
``shared.config.TrainJobConfig`` and its ``train:`` section from ``TrainLoopConfig``, the names
post-training uses too (docs/architecture.md, Configs).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal, Optional

from shared.config import ConfigError, TrainJobConfig, TrainLoopConfig, help_field, require_positive
from shared.data.split import DOC_SPLIT_SEED, DOC_VAL_FRACTION
from shared.model.presets import PRESETS
from shared.training.parallel_config import ParallelismFields
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
    repeat_fraction: float = help_field(0.0, "share of each training batch's windows in which a span of the text "
                                        "is written again later (shared/data/repeats.py): copying to learn, "
                                        "for induction heads; validation stays natural text")
    repeat_source: Literal["text", "random"] = help_field(
        "text", "what the repeated span is: the window's own text, or random token ids written twice "
        "(the synthetic copy task; only copying predicts the second copy)")


@dataclass
class ModelConfig:
    preset: str = help_field("tiny", f"architecture preset: {sorted(PRESETS)}")
    n_layer: Optional[int] = help_field(None, "override the preset's number of layers")
    n_head: Optional[int] = help_field(None, "override the preset's number of heads")
    n_embd: Optional[int] = help_field(None, "override the preset's width")
    block_size: Optional[int] = help_field(None, "override the preset's context length")
    dropout: float = help_field(0.0, "dropout probability (0 for pretraining at this scale)")


@dataclass
class PretrainLoopConfig(TrainLoopConfig):
    """The pretraining ``train:`` section: the shared loop keys plus AdamW's betas, the schedule's
    floor and decay share, and the cadence of validation, checkpoints and snapshots."""

    SCHEDULES: ClassVar[tuple[str, ...]] = SCHEDULES

    schedule: str = help_field("cosine", f"learning-rate schedule: {list(SCHEDULES)}")
    weight_decay: float = help_field(0.1, "AdamW weight decay, applied to matrices only")
    eval_every: int = help_field(100, "evaluate every N steps (and at step 0 and the end)")
    log_every: int = help_field(10, "log train loss / tokens/s every N steps")
    min_lr_ratio: float = help_field(0.1, "final learning rate as a fraction of lr")
    decay_ratio: float = help_field(0.2, "wsd only: share of steps spent in the final decay")
    beta1: float = help_field(0.9, "AdamW beta1")
    beta2: float = help_field(0.95, "AdamW beta2")
    eval_batches: int = help_field(8, "batches per validation estimate")
    ckpt_every: Optional[int] = help_field(200, "report a Ray Train checkpoint every N steps (None = four per "
                                           "run); an interrupted stage continues from the last one when rerun")
    snapshot_every: int = help_field(0, "also save the weights and the tokenizer as an HF checkpoint under "
                                     "<artifact>/snapshots/step_<N>/ at step 0 and every N steps (0 = off); "
                                     "the interpret stage reads them to show when induction heads form")

    def validate(self) -> None:
        super().validate()
        require_positive(self, ("eval_batches",), "train.")
        if self.snapshot_every < 0:
            raise ConfigError(f"train.snapshot_every must be >= 0 (0 = no snapshots), got {self.snapshot_every}")


@dataclass
class PretrainConfig(ParallelismFields, TrainJobConfig):
    """Pretraining from scratch (``init_from`` unset) or continued pretraining (``init_from`` set), under any
    ``parallelism`` strategy (the keys of ``shared.training.parallel_config.ParallelismFields``)."""

    # Keys of the pre-``train:`` layout, so an old preset or override names its new key.
    RENAMED: ClassVar[dict[str, str]] = {
        "optim": "train", "eval_every": "train.eval_every", "log_every": "train.log_every",
        "eval_batches": "train.eval_batches", "ckpt_every": "train.ckpt_every",
        "snapshot_every": "train.snapshot_every"}

    stage: str = help_field("pretrain", "stage name of the artifact this job writes")
    num_workers: int = help_field(1, "Ray Train workers (DDP: gloo on CPU, NCCL on GPU)")
    seed: int = help_field(1337, "seed of init and batch sampling")
    tokenizer: str = help_field("tokenizer", "tokenizer artifact name or HF tokenizer directory")
    init_from: Optional[str] = help_field(None, "artifact to continue from (continued pretraining)")
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "architecture (ignored with init_from)"})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "training corpus"})
    eval_data: dict = help_field({}, "extra validation sets {name: source}, e.g. {general: builtin:python-docs}; "
                                 "the training corpus' own val split is always evaluated as 'val'")
    eval_max_bytes: Optional[int] = help_field(None, "byte cap when reading the extra validation corpora")
    eval_text_field: Optional[str] = help_field(
        None, "field holding the text in the extra validation sets (None = data.text_field); CPT on code "
              "(codeparrot's `content`) with FineWeb-Edu (`text`) held out as general needs both")
    train: PretrainLoopConfig = field(default_factory=PretrainLoopConfig,
                                      metadata={"help": "optimizer, schedule and the eval/log/checkpoint cadence"})
    compile: Literal["auto", "on", "off"] = help_field("off", "torch.compile the model (auto = on CUDA only; "
                                                       "parallelism=ddp only)")
    max_failures: int = help_field(2, "Ray Train restarts from the last checkpoint after a worker failure")
    fail_at_step: Optional[int] = help_field(None, "testing hook: raise once in rank 0 after this step")
    tensorboard: bool = help_field(False, "also write TensorBoard event files into the artifact")

    def validate(self) -> None:
        super().validate()
        self.train.validate()  # from_dict validated it already; a config built in code has not been
        if self.model.preset not in PRESETS:
            raise ConfigError(f"model.preset: unknown preset {self.model.preset!r}; choose one of {sorted(PRESETS)}")
        if not 0 < self.data.val_fraction < 1:
            raise ConfigError(f"data.val_fraction must be in (0, 1), got {self.data.val_fraction}")
        if not 0 <= self.data.repeat_fraction <= 1:
            raise ConfigError(f"data.repeat_fraction must be in [0, 1], got {self.data.repeat_fraction}")
        self.parallel_options().validate(self.use_gpu)
        if self.compile == "on" and self.parallelism != "ddp":
            raise ConfigError(f"compile=on works with parallelism=ddp only (got {self.parallelism!r}); "
                              "set compile=off or parallelism=ddp")


@dataclass
class CPTConfig(PretrainConfig):
    """Continued pretraining: pretraining that must start from a model (``init_from``)."""

    stage: str = help_field("cpt", "stage name of the artifact this job writes")

    def validate(self) -> None:
        super().validate()
        if not self.init_from:
            raise ConfigError("continued pretraining needs init_from=<artifact> (e.g. init_from=pretrain); "
                              "to train from scratch run the pretrain stage")
