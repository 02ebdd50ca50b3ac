"""The ``parallelism`` keys, declared once for every training job (torch-free: config modules import it).

``ParallelismFields`` is a dataclass mixin holding the six keys; ``PretrainConfig`` and ``PostTrainConfig``
both inherit it, so pretraining and every post-training stage (finetune, sft, dpo, reward, rl) read the
same names with the same help and the same validation:

- ``parallelism``: ``ddp`` (everything replicated, gradients all-reduced), ``fsdp`` (PyTorch FSDP2
  ``fully_shard`` per transformer block and the root), ``zero1`` / ``zero2`` / ``zero3`` (DeepSpeed ZeRO:
  optimizer state / + gradients / + parameters partitioned across the workers);
- ``fsdp_reshard_after_forward`` (fsdp: true = ZeRO-3-like full shard, false = ZeRO-2-like),
  ``fsdp_cpu_offload`` (fsdp, CUDA only), ``activation_checkpointing`` (any strategy),
  ``zero_offload_optimizer`` (zero1/2/3), ``zero_offload_params`` (zero3).

``parallel_options()`` returns them as a ``ParallelOptions``, which ``validate(use_gpu)`` checks (one
``ConfigError`` naming the field and the alternatives). Who applies them: our pretraining loop through
``shared.training.parallel.wrap``; the HF/TRL trainers through ``shared.training.trl_worker``
(``TrainingArguments``: DeepSpeed dict, accelerate's FSDP2 plugin). Whatever the strategy, the artifact
is the same gathered HF checkpoint. With ``num_workers=1`` nothing is divided (one shard holds it all),
but the run is real: the offload options still move state to host memory, which is why they are allowed.
"""
from __future__ import annotations

from dataclasses import dataclass

from shared.config import ConfigError, help_field

STRATEGIES = ("ddp", "fsdp", "zero1", "zero2", "zero3")
ZERO_STAGES = {"zero1": 1, "zero2": 2, "zero3": 3}


@dataclass
class ParallelOptions:
    """The strategy and its knobs (the ``parallelism`` keys of a training job)."""

    strategy: str = "ddp"
    fsdp_reshard_after_forward: bool = True
    fsdp_cpu_offload: bool = False
    activation_checkpointing: bool = False
    zero_offload_optimizer: bool = False
    zero_offload_params: bool = False

    @property
    def zero_stage(self) -> int:
        """The DeepSpeed ZeRO stage (0 when the strategy is not DeepSpeed)."""
        return ZERO_STAGES.get(self.strategy, 0)

    def validate(self, use_gpu: bool) -> None:
        """Raise ``ConfigError`` naming the field and the fix for an unknown or unsupported combination."""
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"parallelism: unknown strategy {self.strategy!r}; choose one of {list(STRATEGIES)}")
        if self.strategy != "fsdp" and (self.fsdp_cpu_offload or not self.fsdp_reshard_after_forward):
            raise ConfigError("fsdp_cpu_offload / fsdp_reshard_after_forward=false apply to parallelism=fsdp only; "
                              "set parallelism=fsdp or drop them (for ZeRO offload use zero_offload_optimizer)")
        if self.fsdp_cpu_offload and not use_gpu:
            raise ConfigError("fsdp_cpu_offload needs CUDA (FSDP2 offloads GPU shards to host memory; on CPU there "
                              "is nothing to offload); set use_gpu=true, drop fsdp_cpu_offload, or use "
                              "parallelism=zero1|zero2|zero3 with zero_offload_optimizer=true")
        if self.strategy not in ZERO_STAGES and (self.zero_offload_optimizer or self.zero_offload_params):
            raise ConfigError("zero_offload_optimizer / zero_offload_params need parallelism=zero1, zero2 or zero3 "
                              f"(got {self.strategy!r}); for FSDP use fsdp_cpu_offload")
        if self.zero_offload_params and self.strategy != "zero3":
            raise ConfigError("zero_offload_params needs parallelism=zero3 (only ZeRO-3 partitions parameters)")


@dataclass
class ParallelismFields:
    """Mixin: the ``parallelism`` keys of a training job config (see the module docstring)."""

    parallelism: str = help_field("ddp", f"data-parallel strategy across the workers: {list(STRATEGIES)}; ddp "
                                  "replicates everything, fsdp is PyTorch FSDP2 (fully_shard per block), zero1/2/3 "
                                  "DeepSpeed ZeRO (shared/training/parallel_config.py)")
    fsdp_reshard_after_forward: bool = help_field(True, "fsdp: free gathered parameters after forward (ZeRO-3-like); "
                                                  "false keeps them until backward (ZeRO-2-like, more memory, "
                                                  "one all-gather less)")
    fsdp_cpu_offload: bool = help_field(False, "fsdp: keep parameter, gradient and optimizer shards in host memory "
                                        "(needs CUDA)")
    activation_checkpointing: bool = help_field(False, "recompute each block's activations in backward instead of "
                                                "storing them (any strategy)")
    zero_offload_optimizer: bool = help_field(False, "zero1/2/3: keep the optimizer state in CPU memory (ZeRO-Offload)")
    zero_offload_params: bool = help_field(False, "zero3: keep the parameters in CPU memory too")

    def parallel_options(self) -> ParallelOptions:
        """The ``parallelism`` keys as ``ParallelOptions``."""
        return ParallelOptions(self.parallelism, self.fsdp_reshard_after_forward, self.fsdp_cpu_offload,
                               self.activation_checkpointing, self.zero_offload_optimizer, self.zero_offload_params)


__all__ = ["ParallelOptions", "ParallelismFields", "STRATEGIES", "ZERO_STAGES"]
