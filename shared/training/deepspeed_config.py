"""DeepSpeed ZeRO configs for the HF/TRL trainers, built from one small typed config.

ZeRO partitions training state across data-parallel workers: stage 1 the optimizer state, stage 2
also the gradients, stage 3 also the parameters (gathered layer by layer in forward/backward).
CPU offload moves the optimizer state (any stage) or the parameters (stage 3) to host memory.
Values the HF Trainer knows (batch size, accumulation, lr, precision) are left ``"auto"`` so
the two configs can never disagree: the Trainer fills them in.

On CPU DeepSpeed runs on its CPU accelerator over gloo (``DS_ACCELERATOR=cpu``, set by the worker
before DeepSpeed is imported), which makes ZeRO testable on a laptop; the same config runs on
GPUs with NCCL. This module only builds dicts; it does not import DeepSpeed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared.config import ConfigError, help_field


@dataclass
class DeepSpeedConfig:
    zero_stage: int = help_field(0, "ZeRO stage 1/2/3 through DeepSpeed; 0 = no DeepSpeed (plain DDP)")
    offload_optimizer: bool = help_field(False, "keep optimizer state in CPU memory (ZeRO-Offload)")
    offload_params: bool = help_field(False, "keep parameters in CPU memory (ZeRO-3 only, ZeRO-Infinity style)")

    def validate(self) -> None:
        if self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"deepspeed.zero_stage must be 0 (off), 1, 2 or 3, got {self.zero_stage}")
        if self.offload_params and self.zero_stage != 3:
            raise ConfigError("deepspeed.offload_params needs deepspeed.zero_stage=3 (only ZeRO-3 partitions "
                              "parameters); set zero_stage=3 or drop offload_params")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ConfigError("deepspeed.offload_optimizer needs a ZeRO stage; set deepspeed.zero_stage=1, 2 or 3")

    @property
    def enabled(self) -> bool:
        return self.zero_stage > 0


def deepspeed_dict(cfg: DeepSpeedConfig, on_cpu: bool) -> dict[str, Any] | None:
    """The ``deepspeed=`` dict for ``TrainingArguments`` (None when ZeRO is off)."""
    if not cfg.enabled:
        return None
    zero: dict[str, Any] = {"stage": cfg.zero_stage, "overlap_comm": not on_cpu, "contiguous_gradients": True}
    if cfg.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": not on_cpu}
    if cfg.zero_stage == 3:
        # Save a consolidated 16-bit copy so rank 0 can write a normal HF checkpoint.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
        if cfg.offload_params:
            zero["offload_param"] = {"device": "cpu", "pin_memory": not on_cpu}
    return {
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "zero_optimization": zero,
        # DeepSpeed's fused CPU Adam needs a C++ build; torch's AdamW works everywhere and is what
        # the non-DeepSpeed path uses too, so methods compare like for like.
        "optimizer": {"type": "AdamW", "params": {"lr": "auto", "weight_decay": "auto", "betas": "auto",
                                                   "eps": "auto", "torch_adam": True}},
        # No "scheduler" entry: the HF Trainer then drives the lr with its own schedule (cosine, ...),
        # the same one as without DeepSpeed.
    }


def pretrain_deepspeed_dict(zero_stage: int, *, micro_batch: int, grad_accum: int, world: int, grad_clip: float,
                            precision: str, on_cpu: bool, offload_optimizer: bool = False,
                            offload_params: bool = False) -> dict[str, Any]:
    """The ``deepspeed.initialize`` config for our own pretraining loop (``shared.training.parallel``).

    Same ZeRO section as ``deepspeed_dict``; without a Trainer to fill in ``"auto"`` the values come from
    the loop's config. No ``optimizer`` entry: the loop hands DeepSpeed its own AdamW (weight-decay
    groups as under DDP, so strategies compare like for like) and sets the lr itself every step.
    """
    cfg = DeepSpeedConfig(zero_stage, offload_optimizer, offload_params)
    cfg.validate()
    zero = deepspeed_dict(cfg, on_cpu)["zero_optimization"]
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": micro_batch * grad_accum * world,
        "gradient_clipping": grad_clip,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16"},
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,  # torch's AdamW, which DeepSpeed does not list as tested
        "steps_per_print": 10 ** 9,  # the loop logs; keep DeepSpeed quiet
        "wall_clock_breakdown": False,
    }
