"""The Ray Train worker that runs one TRL trainer (SFT, DPO, reward, GRPO/RLOO) on any HF model.

``TrlSpec`` is everything a worker needs: the algorithm (``Algorithm``: its ``build_trainer``
function itself, no lookup by name), the job's config dataclass (``PostTrainConfig`` subclass; it
pickles, so Ray ships it as is), the start model and the rows (``TrainRows``). ``trl_train_worker``:

1. seeds, then loads the model and its tokenizer once (``load_model``): a causal LM prepared with
   the configured method (full / LoRA / QLoRA, ``finetune_methods``), or for the reward model a
   one-score sequence classifier (full, or LoRA which TRL applies from the trainer's ``peft_config``),
2. asks the algorithm for a TRL trainer over that model, ``build_trainer(model, tokenizer, cfg,
   rows, args)``; ``args`` are the common ``TrainingArguments`` keywords built here
   (``training_arguments``, with the job's ``parallelism`` mapped by ``parallel_arguments``: the HF
   Trainer owns the DeepSpeed engine or the FSDP2 sharding, Ray Train owns the processes and the
   process group), to which the algorithm's TRL config adds its own keys,
3. trains, evaluates, saves on every rank (ZeRO-3 and FSDP gather the sharded weights while saving:
   the artifact is the same full HF checkpoint whatever the strategy),
4. on rank 0 turns what was saved into a plain HF checkpoint (LoRA adapters merged, the adapter
   kept in ``adapter/``) plus ``log_history.json``, and reports it as the Ray Train checkpoint.

Resuming: with ``spec.checkpoint_dir`` set (the stage's ``<runs>/<run>/_ckpt/<stage>/trainer``), the
HF Trainer saves a full checkpoint (weights, optimizer, scheduler, RNG states, log history) there
every ``train.ckpt_every`` steps, two kept, but not after the last step (the final weights are
saved and reported right away). With ``spec.resume_from`` (an interrupted attempt's
``checkpoint-N``, chosen by the driver) training continues from it: same batches, same schedule,
and the log history carries on from step N. On rank 0, every log line goes to
``spec.progress_file`` (``shared.progress``) with the step, ``max_steps`` and the latest numbers.

Parallelism (``parallel_arguments``; the keys are ``shared.training.parallel_config``'s): ``ddp`` adds
nothing (the Trainer wraps the model in DDP itself); ``zero1/2/3`` pass the DeepSpeed dict of
``shared.training.deepspeed_config``; ``fsdp`` turns on accelerate's FSDP2 plugin (``fsdp_config``
version 2, ``fully_shard`` on each block the model's ``_no_split_modules`` names, then the root;
``reshard_after_forward`` and ``cpu_offload`` from the keys; ``FULL_STATE_DICT``, so ``save_model``
gathers one full checkpoint on rank 0; a LoRA adapter is gathered the same way and merged as under
ddp). Activation checkpointing (``cfg.checkpointing``) is FSDP's own under fsdp with method=full, HF
gradient checkpointing on the model otherwise (``_fsdp_checkpoints`` says why). On CPU, accelerate
(1.16) keeps its FSDP plugin only for GPU-like device types and silently falls back to DDP for
``MULTI_CPU``, although FSDP2 runs on CPU over gloo (our pretraining uses it): ``_accelerate_fsdp_on_cpu``
configures accelerate's state as FSDP before the trainer exists, the TrainingArguments reuse it
(``accelerator_config.use_configured_state``), and ``_check_strategy`` refuses to train under any
other strategy than the config's.

Not here: resolving artifacts, reading datasets, registering (the drivers; ``posttrain`` runs this
worker). This module imports no algorithm: each algorithm module hands its ``Algorithm`` in.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

from shared.config import ConfigError
from shared.progress import report_progress
from shared.training.deepspeed_config import deepspeed_dict
from shared.training.hardware import resolve_precision
from shared.training.posttrain_config import REWARD_METHOD_ERROR, REWARD_METHODS, PostTrainConfig

LOG_HISTORY = "log_history.json"


@dataclass
class TrainRows:
    """What an algorithm trains on: its rows (TRL's dataset rows) and the other models it reads."""

    train: list[dict[str, Any]]
    eval: list[dict[str, Any]] = field(default_factory=list)
    reference_path: Optional[str] = None  # DPO: the frozen reference when it is not the start model itself
    reward_model_path: Optional[str] = None  # RL: the reward model scoring each completion
    replay_texts: list[str] = field(default_factory=list)  # SFT: text mixed into chat rows (shared.training.replay)


#: ``build_trainer(model, tokenizer, cfg, rows, args)`` -> a TRL trainer over the loaded model; its TRL
#: config takes ``args`` (``training_arguments``) plus the algorithm's own keys. Loading is the worker's.
BuildTrainer = Callable[[Any, Any, PostTrainConfig, TrainRows, dict[str, Any]], Any]


@dataclass(frozen=True)
class Algorithm:
    """One post-training algorithm as the worker runs it (each algorithm module defines its own)."""

    name: str  # sft | dpo | reward | rl: names the run in messages
    build_trainer: BuildTrainer
    sequence_classifier: bool = False  # the model is a one-score sequence classifier (the reward model)


@dataclass
class TrlSpec:
    """Everything one Ray Train worker needs; pickled to the workers as is."""

    algorithm: Algorithm
    config: PostTrainConfig
    model_path: str  # HF checkpoint (or hub id) to start from
    rows: TrainRows
    checkpoint_dir: Optional[str] = None  # where the HF Trainer saves resumable checkpoints; None = none saved
    resume_from: Optional[str] = None  # an interrupted attempt's HF checkpoint (checkpoint-N) to continue from
    progress_file: Optional[str] = None  # where rank 0 reports its step (shared.progress); None = nowhere


def training_arguments(cfg: PostTrainConfig, output_dir: str, has_eval: bool, checkpoints: bool = False,
                       resuming: bool = False) -> dict[str, Any]:
    """Keyword arguments every TRL config takes (it subclasses ``TrainingArguments``).

    ``checkpoints``: save a resumable checkpoint into ``output_dir`` every ``train.ckpt_every`` steps
    (two kept); otherwise nothing is saved during training. ``resuming``: skip the evaluation at the
    start, which the resumed checkpoint's log history holds already.
    """
    import torch

    loop = cfg.train
    precision = resolve_precision(cfg.precision, torch.device(cfg.device))
    return dict(
        output_dir=output_dir, max_steps=loop.max_steps, per_device_train_batch_size=loop.batch_size,
        per_device_eval_batch_size=loop.batch_size, gradient_accumulation_steps=loop.grad_accum,
        learning_rate=loop.lr, lr_scheduler_type=loop.schedule,
        warmup_steps=loop.warmup,  # transformers reads < 1 as a ratio of max_steps, like our config
        weight_decay=loop.weight_decay, max_grad_norm=loop.grad_clip or 1e9, optim=loop.optim,
        logging_steps=loop.log_every, eval_strategy="steps" if has_eval else "no",
        eval_steps=loop.eval_every if has_eval else None, eval_on_start=has_eval and not resuming,
        report_to=[],
        seed=cfg.seed, data_seed=cfg.seed, bf16=precision == "bf16", fp16=precision == "fp16",
        use_cpu=not cfg.use_gpu, dataloader_num_workers=0, disable_tqdm=_rank() != 0,
        gradient_checkpointing=False,  # enabled on the model itself (load_model), or FSDP's own
        ddp_find_unused_parameters=False,  # every parameter that trains gets a gradient each step
        **(dict(save_strategy="steps", save_steps=loop.checkpoint_interval(), save_total_limit=2)
           if checkpoints else dict(save_strategy="no")),
        **parallel_arguments(cfg),
    )


def parallel_arguments(cfg: PostTrainConfig) -> dict[str, Any]:
    """The ``TrainingArguments`` keys of ``cfg``'s ``parallelism`` (see the module docstring)."""
    opts = cfg.parallel_options()
    if opts.zero_stage:
        return {"deepspeed": deepspeed_dict(opts, on_cpu=not cfg.use_gpu)}
    if opts.strategy != "fsdp":
        return {}  # ddp: the Trainer's own DistributedDataParallel when there are several workers
    fsdp_config = {
        "version": 2,
        "reshard_after_forward": opts.fsdp_reshard_after_forward,
        "cpu_offload": opts.fsdp_cpu_offload,
        # No transformer_layer_cls_to_wrap: accelerate then wraps the classes the model's _no_split_modules
        # names (GPT2Block, LlamaDecoderLayer, ...), also through a PEFT wrapper.
        "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "state_dict_type": "FULL_STATE_DICT",  # save_model gathers the full weights on rank 0
        "activation_checkpointing": _fsdp_checkpoints(cfg),
        # Every worker loads the full model anyway (load_model); sharding from rank 0's copy would only
        # save host memory after loading.
        "cpu_ram_efficient_loading": False,
    }
    args: dict[str, Any] = {"fsdp": True, "fsdp_config": fsdp_config}
    if not cfg.use_gpu:
        args["accelerator_config"] = {"use_configured_state": True}  # _accelerate_fsdp_on_cpu's state
    return args


def _fsdp_checkpoints(cfg: PostTrainConfig) -> bool:
    """FSDP's own activation checkpointing, rather than HF gradient checkpointing on the model.

    Not for adapters: FSDP's checkpoint wrapper renames the blocks (``._checkpoint_wrapped_module``), and
    PEFT finds the adapter weights to save by module name, so it would save an empty adapter (measured:
    peft with accelerate 1.16); HF gradient checkpointing keeps the names and runs under FSDP2 as well.
    """
    return cfg.checkpointing and cfg.parallelism == "fsdp" and cfg.method.method == "full"


def _accelerate_fsdp_on_cpu(args: dict[str, Any]) -> None:
    """Configure accelerate's process state as FSDP2 over gloo, for a trainer built from ``args`` on CPU.

    accelerate's ``AcceleratorState`` keeps the FSDP plugin only for GPU-like distributed types; for
    ``MULTI_CPU`` it drops it and the Trainer runs plain DDP. The plugin's code path itself (fully_shard,
    full state dict gathering, gradient clipping over DTensors) is device-agnostic, so the state is set
    up here as accelerate would on a GPU: the same plugin the Trainer would build (from a
    ``TrainingArguments`` of the same ``args``), its mixed precision, ``distributed_type`` FSDP. The
    trainer's ``TrainingArguments`` reuse this state (``accelerator_config.use_configured_state``).
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
    from transformers import TrainingArguments

    probe = TrainingArguments(**{k: v for k, v in args.items() if k != "accelerator_config"})
    plugin = FullyShardedDataParallelPlugin(**probe.fsdp_plugin_args)
    Accelerator(cpu=True, mixed_precision=probe.mixed_precision)  # MULTI_CPU over the existing process group
    state = AcceleratorState()
    if state.mixed_precision != "no":
        plugin.set_mixed_precision(state.mixed_precision)
    state.fsdp_plugin = plugin
    state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP


def _rank() -> int:
    try:
        import ray.train
        return ray.train.get_context().get_world_rank()
    except Exception:  # outside Ray Train (direct calls in tests, benchmarks on a box without Ray)
        return int(os.environ.get("RANK", 0))


# ----------------------------------------------------------------------------- loading the model

def load_model(algorithm: Algorithm, model_path: str, cfg: PostTrainConfig):
    """``(model, tokenizer)`` the algorithm trains, seeded by ``cfg.seed`` first (a fresh head or
    fresh adapters are random): a causal LM prepared with ``cfg.method``, or a sequence classifier."""
    from transformers import set_seed

    set_seed(cfg.seed)
    # HF gradient checkpointing on the model, unless FSDP checkpoints the blocks itself (parallel_arguments).
    method = replace(cfg.method, gradient_checkpointing=cfg.checkpointing and not _fsdp_checkpoints(cfg))
    if algorithm.sequence_classifier:
        return load_sequence_classifier(model_path, method, cfg.device)
    # finetune_methods imports peft (seconds): only workers and preflight pay for it, not every import of a stage.
    from shared.training.finetune_methods import load_for_finetuning
    return load_for_finetuning(model_path, method, cfg.device)


def load_sequence_classifier(path: str, method, device: str = "cpu"):
    """``(model, tokenizer)``: a one-output sequence classifier over the checkpoint at ``path``.

    Full fine-tuning trains every weight; for LoRA the caller's trainer wraps the model (TRL's
    ``peft_config``), so here the model stays plain. QLoRA is refused (4-bit loading is for causal LMs).
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from shared.training.finetune_methods import enable_gradient_checkpointing  # peft: see load_model

    method.validate()
    if method.method not in REWARD_METHODS:
        raise ConfigError(f"{REWARD_METHOD_ERROR}, not {method.method!r}")
    # transformers reports score.weight as MISSING here: expected, the head is new and trains from scratch.
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model.config.pad_token_id = tokenizer.pad_token_id  # the classifier reads the last non-pad token
    model = model.to(device)
    if method.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return model, tokenizer


# ----------------------------------------------------------------------------- the worker

def trl_train_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train entry point: ``loop_config["spec"]`` is the ``TrlSpec`` (see the module docstring)."""
    spec: TrlSpec = loop_config["spec"]
    cfg = spec.config
    if not cfg.use_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before DeepSpeed is first imported
    import ray.train
    import torch
    torch.set_num_threads(cfg.cpus_per_worker)

    rank = _rank()
    with tempfile.TemporaryDirectory() as work:
        args = training_arguments(cfg, spec.checkpoint_dir or str(Path(work) / "trainer"),
                                  has_eval=bool(spec.rows.eval), checkpoints=spec.checkpoint_dir is not None,
                                  resuming=spec.resume_from is not None)
        if cfg.parallelism == "fsdp" and not cfg.use_gpu:
            _accelerate_fsdp_on_cpu(args)
        model, tokenizer = load_model(spec.algorithm, spec.model_path, cfg)
        trainer = spec.algorithm.build_trainer(model, tokenizer, cfg, spec.rows, args)
        _check_strategy(trainer, cfg)
        trainer.add_callback(stage_callback(spec.progress_file))
        trainer.train(resume_from_checkpoint=spec.resume_from)
        final = trainer.evaluate() if spec.rows.eval else {}
        saved = Path(work) / "saved"
        trainer.save_model(str(saved))  # every rank: ZeRO-3 gathers the shards here
        checkpoint, metrics = None, {k: v for k, v in final.items() if isinstance(v, (int, float))}
        if rank == 0:
            out = Path(work) / "final"
            finalize_checkpoint(trainer, saved, out, spec)
            (out / LOG_HISTORY).write_text(json.dumps(trainer.state.log_history + [{"final_eval": final}]))
            checkpoint = ray.train.Checkpoint.from_directory(str(out))
        ray.train.report(metrics, checkpoint=checkpoint)


def _check_strategy(trainer, cfg: PostTrainConfig) -> None:
    """Refuse to train under another strategy than the config's (accelerate falls back to DDP silently)."""
    wanted = {"fsdp": trainer.is_fsdp_enabled, "ddp": not (trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled)}
    if not wanted.get(cfg.parallelism, trainer.is_deepspeed_enabled):
        raise RuntimeError(f"parallelism={cfg.parallelism} was asked for but the HF Trainer set up "
                           f"{trainer.accelerator.state.distributed_type}; see shared/training/trl_worker.py")


def stage_callback(progress_path: Optional[str]):
    """A ``TrainerCallback`` that reports progress on rank 0 at every log and skips the save after the last step.

    The HF Trainer saves a checkpoint after the last step too when it saves by steps; the worker
    saves the final weights itself right after, and the stage deletes its checkpoints once they are
    in the artifact, so that one would only cost time and disk.
    """
    from transformers import TrainerCallback  # transformers costs seconds: paid where a trainer runs

    class StageCallback(TrainerCallback):
        def __init__(self):
            self.latest: dict[str, float] = {}  # train and eval logs arrive separately: report both

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            self.latest.update({k: v for k, v in logs.items() if isinstance(v, (int, float))})
            report_progress(progress_path, state.global_step, state.max_steps, **self.latest)

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= state.max_steps:
                control.should_save = False
            return control

    return StageCallback()


def finalize_checkpoint(trainer, saved: Path, out: Path, spec: TrlSpec) -> None:
    """A plain HF checkpoint in ``out``: copied as saved, or the LoRA adapter merged into its base."""
    tokenizer = trainer.processing_class
    if not (saved / "adapter_config.json").exists():
        shutil.copytree(saved, out, ignore=shutil.ignore_patterns("training_args.bin"))
        tokenizer.save_pretrained(out)
        return
    # Merge from disk, not from the live model: under ZeRO-3 the live weights are partitioned.
    from peft import PeftModel

    from shared.training.finetune_methods import merge_and_save  # peft: see load_model
    base = _load_base(spec)
    merge_and_save(PeftModel.from_pretrained(base, str(saved)), out, tokenizer, adapter_dir=out / "adapter")


def _load_base(spec: TrlSpec):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    if spec.algorithm.sequence_classifier:
        return AutoModelForSequenceClassification.from_pretrained(spec.model_path, num_labels=1)
    return AutoModelForCausalLM.from_pretrained(spec.model_path)


__all__ = ["Algorithm", "BuildTrainer", "LOG_HISTORY", "TrainRows", "TrlSpec", "finalize_checkpoint",
           "load_model", "load_sequence_classifier", "parallel_arguments", "stage_callback", "training_arguments",
           "trl_train_worker"]
