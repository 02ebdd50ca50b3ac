"""DeepSpeed ZeRO configs, for the HF/TRL trainers and for our pretraining loop, from ``ParallelOptions``.

ZeRO partitions training state across data-parallel workers: stage 1 the optimizer state, stage 2
also the gradients, stage 3 also the parameters (gathered layer by layer in forward/backward).
CPU offload moves the optimizer state (any stage) or the parameters (stage 3) to host memory. The
stage and the offload flags are the ``parallelism`` keys (``parallelism=zero1|zero2|zero3``,
``zero_offload_optimizer``, ``zero_offload_params``: ``shared.training.parallel_config``), validated there.
For the HF Trainer (``deepspeed_dict``) the values it knows (batch size, accumulation, lr, precision)
are left ``"auto"`` so the two configs can never disagree: the Trainer fills them in.

On CPU DeepSpeed runs on its CPU accelerator over gloo (``DS_ACCELERATOR=cpu``, set by the worker
before DeepSpeed is imported), which makes ZeRO testable on a laptop; the same config runs on
GPUs with NCCL. This module only builds dicts; it does not import DeepSpeed (nor torch).
"""
from __future__ import annotations

from typing import Any

from shared.training.parallel_config import ParallelOptions

#: DeepSpeed's default gradient reduce (and ZeRO-1/2 all-gather) bucket, in elements.
DS_BUCKET_ELEMENTS = 500_000_000


def zero_bucket_elements(n_params: int) -> int:
    """The reduce / all-gather bucket our pretraining loop asks DeepSpeed for: its default, but never larger
    than the model. DeepSpeed allocates the bucket whole, so below 5e8 parameters the default reserves
    memory no gradient can ever fill (2 GB in fp32 for a 137k-parameter model, measured by the batch search
    of ``journey experiment parallelism``); the memory planner counts the same size."""
    return max(1, min(DS_BUCKET_ELEMENTS, int(n_params)))


def _zero_section(opts: ParallelOptions, on_cpu: bool) -> dict[str, Any]:
    zero: dict[str, Any] = {"stage": opts.zero_stage, "overlap_comm": not on_cpu, "contiguous_gradients": True}
    if opts.zero_offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": not on_cpu}
    if opts.zero_stage == 3:
        # Save a consolidated 16-bit copy so rank 0 can write a normal HF checkpoint.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
        if opts.zero_offload_params:
            zero["offload_param"] = {"device": "cpu", "pin_memory": not on_cpu}
    return zero


def deepspeed_dict(opts: ParallelOptions, on_cpu: bool) -> dict[str, Any] | None:
    """The ``deepspeed=`` dict for ``TrainingArguments`` (None unless ``opts.strategy`` is zero1/2/3)."""
    if not opts.zero_stage:
        return None
    return {
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "zero_optimization": _zero_section(opts, on_cpu),
        # DeepSpeed's fused CPU Adam needs a C++ build; torch's AdamW works everywhere and is what
        # the non-DeepSpeed path uses too, so methods compare like for like.
        "optimizer": {"type": "AdamW", "params": {"lr": "auto", "weight_decay": "auto", "betas": "auto",
                                                   "eps": "auto", "torch_adam": True}},
        # No "scheduler" entry: the HF Trainer then drives the lr with its own schedule (cosine, ...),
        # the same one as without DeepSpeed.
    }


def pretrain_deepspeed_dict(zero_stage: int, *, micro_batch: int, grad_accum: int, world: int, grad_clip: float,
                            precision: str, on_cpu: bool, offload_optimizer: bool = False,
                            offload_params: bool = False, n_params: int | None = None) -> dict[str, Any]:
    """The ``deepspeed.initialize`` config for our own pretraining loop (``shared.training.parallel``).

    Same ZeRO section as ``deepspeed_dict``; without a Trainer to fill in ``"auto"`` the values come from
    the loop's config; ``n_params`` caps the buckets at the model's size (``zero_bucket_elements``). No
    ``optimizer`` entry: the loop hands DeepSpeed its own AdamW (weight-decay groups as under DDP, so
    strategies compare like for like) and sets the lr itself every step.
    """
    opts = ParallelOptions(f"zero{zero_stage}", zero_offload_optimizer=offload_optimizer,
                           zero_offload_params=offload_params)
    opts.validate(use_gpu=not on_cpu)
    zero = _zero_section(opts, on_cpu)
    if n_params is not None:
        zero["reduce_bucket_size"] = zero_bucket_elements(n_params)
        if zero_stage < 3:
            zero["allgather_bucket_size"] = zero_bucket_elements(n_params)
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
