"""The fields every stage job shares, declared once (``docs/architecture.md``, section Configs).

- ``JobConfig``: where the job's artifact goes (``run``, ``stage``, ``runs_dir``, ``overwrite``).
  Every stage's config derives from it.
- ``TrainJobConfig``: a job that trains under Ray Train adds its workers and numerics
  (``num_workers``, ``cpus_per_worker``, ``use_gpu``, ``seed``, ``precision``).
- ``TrainLoopConfig``: the ``train:`` section, with the same names for pretraining and
  post-training (steps, batch, learning rate and schedule, clipping, eval, log and checkpoint cadence). Each
  family subclasses it for its own extras and its own list of schedules.

A subclass changes a default by redeclaring the field (``stage: str = help_field("sft", ...)``);
dataclasses keep the field where the base declared it, so ``--help`` lists the shared fields
first. Old key names are listed in a class's ``RENAMED`` (old key -> new dotted key from the job
config's root; ``shared.config.base.from_dict`` turns them into an error that names the new key).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, Optional

from shared.config.base import ConfigError, help_field, require_positive

Precision = Literal["auto", "fp32", "bf16", "fp16"]


@dataclass
class JobConfig:
    """What every stage job has: the artifact it writes and where."""

    RENAMED: ClassVar[dict[str, str]] = {}

    run: str = help_field("default", "run name: the artifact goes to <runs_dir>/<run>/<stage>")
    stage: str = help_field("job", "stage name of the artifact this job writes")
    runs_dir: Optional[str] = help_field(None, "artifact root (default $JOURNEY_RUNS or ./runs)")
    overwrite: bool = help_field(False, "replace an existing artifact of the same run/stage")

    def validate(self) -> None:
        # run=None reaches here only from a subclass that types it Optional and picks the run itself
        # (eval: the newest run); from_dict refuses None for a plain str.
        if self.run is not None and (not self.run or "/" in self.run or self.run.startswith(".")):
            raise ConfigError(f"run must be a plain name (no '/', not starting with '.'), got {self.run!r}")
        if not self.stage or "/" in self.stage or self.stage.startswith("."):
            raise ConfigError(f"stage must be a plain name (no '/', not starting with '.'), got {self.stage!r}")


@dataclass
class TrainJobConfig(JobConfig):
    """A job that trains under Ray Train: its workers, its seed and its numerics."""

    num_workers: int = help_field(1, "Ray Train workers (data parallel; ZeRO partitions across them)")
    cpus_per_worker: int = help_field(2, "CPU cores per worker (sets torch threads)")
    use_gpu: bool = help_field(False, "one GPU per worker")
    seed: int = help_field(1234, "seed of init, shuffling and sampling")
    precision: Precision = help_field(
        "auto", "auto = bf16 where the hardware supports it (CUDA, CPUs with AVX512-BF16/AMX); fp32; bf16; fp16")

    @property
    def device(self) -> str:
        """The torch device type a worker of this job trains on."""
        return "cuda" if self.use_gpu else "cpu"

    def validate(self) -> None:
        super().validate()
        require_positive(self, ("num_workers", "cpus_per_worker"))


@dataclass
class TrainLoopConfig:
    """The ``train:`` section: the optimizer loop, under the same names in every training stage."""

    SCHEDULES: ClassVar[tuple[str, ...]] = ()  # each family lists the schedules it implements

    max_steps: int = help_field(1000, "optimizer steps")
    batch_size: int = help_field(16, "sequences (or pairs) per micro-batch per worker")
    grad_accum: int = help_field(1, "micro-batches per optimizer step")
    lr: float = help_field(1e-3, "peak learning rate")
    schedule: str = help_field("cosine", "learning-rate schedule")
    warmup: float = help_field(0.05, "warmup: steps if >= 1, else a ratio of max_steps")
    weight_decay: float = help_field(0.0, "AdamW weight decay")
    grad_clip: float = help_field(1.0, "clip the global gradient norm to this (0 = off)")
    eval_every: int = help_field(100, "evaluate the held-out loss every N steps")
    log_every: int = help_field(10, "log every N steps")
    ckpt_every: Optional[int] = help_field(
        None, "save a resumable checkpoint every N steps (None = four per run, every max_steps // 4); a stage "
        "that crashed or was interrupted continues from its last one when rerun in the same run")

    def checkpoint_interval(self) -> int:
        """Steps between resumable checkpoints: ``ckpt_every``, or a quarter of the run when it is None."""
        return self.ckpt_every if self.ckpt_every is not None else max(1, self.max_steps // 4)

    def validate(self) -> None:
        require_positive(self, ("max_steps", "batch_size", "grad_accum", "eval_every", "log_every"), "train.")
        if self.ckpt_every is not None:
            require_positive(self, ("ckpt_every",), "train.")
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be > 0, got {self.lr}")
        if self.warmup < 0:
            raise ConfigError(f"train.warmup must be >= 0, got {self.warmup}")
        if self.grad_clip < 0:
            raise ConfigError(f"train.grad_clip must be >= 0 (0 = off), got {self.grad_clip}")
        if self.SCHEDULES and self.schedule not in self.SCHEDULES:
            raise ConfigError(f"train.schedule: unknown schedule {self.schedule!r}; choose one of "
                              f"{list(self.SCHEDULES)}")


__all__ = ["JobConfig", "Precision", "TrainJobConfig", "TrainLoopConfig"]
