"""The Ray Train worker that runs one TRL trainer (SFT, DPO, reward, GRPO/RLOO) on any HF model.

``TrlSpec`` is everything a worker needs, plain data so Ray can ship it. ``trl_train_worker``:

1. loads the model with the configured method (full / LoRA / QLoRA, ``finetune_methods``),
2. asks the algorithm's builder (``BUILDERS[algo]``, one module per algorithm) for a TRL trainer
   over the rows it was given, with the common ``TrainingArguments`` built here (DeepSpeed ZeRO
   when ``deepspeed.zero_stage`` > 0: the HF Trainer owns the engine, Ray Train owns the
   processes and the process group),
3. trains, evaluates, saves on every rank (ZeRO-3 gathers the partitioned weights while saving),
4. on rank 0 turns what was saved into a plain HF checkpoint (LoRA adapters merged, the adapter
   kept in ``adapter/``) plus ``log_history.json``, and reports it as the Ray Train checkpoint.

Not here: resolving artifacts, reading datasets, registering (the driver, ``posttrain``).
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

LOG_HISTORY = "log_history.json"


@dataclass
class TrlSpec:
    algo: str  # sft | dpo | reward | rl
    config: dict[str, Any]  # the job config as a dict (PostTrainConfig subclass)
    model_path: str  # HF checkpoint to start from
    train_rows: list[dict[str, Any]]
    eval_rows: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # algorithm inputs: reference / reward model paths

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


ALGORITHMS = ("sft", "dpo", "reward", "rl")  # each a module shared.training.<algo> with build_trainer()


def builder(algo: str) -> Callable:
    """``build_trainer(spec, args)`` of one algorithm, imported only when used."""
    import importlib
    if algo not in ALGORITHMS:
        raise ValueError(f"unknown post-training algorithm {algo!r}; choose one of {list(ALGORITHMS)}")
    return importlib.import_module(f"shared.training.{algo}").build_trainer


def training_arguments(cfg: dict[str, Any], output_dir: str, has_eval: bool) -> dict[str, Any]:
    """Keyword arguments every TRL config takes (it subclasses ``TrainingArguments``)."""
    from shared.training.deepspeed_config import DeepSpeedConfig, deepspeed_dict
    from shared.training.hardware import resolve_precision
    import torch

    loop, use_gpu = cfg["train"], cfg["use_gpu"]
    device = torch.device("cuda" if use_gpu else "cpu")
    precision = resolve_precision(loop["precision"], device)
    return dict(
        output_dir=output_dir, max_steps=loop["max_steps"], per_device_train_batch_size=loop["batch_size"],
        per_device_eval_batch_size=loop["batch_size"], gradient_accumulation_steps=loop["grad_accum"],
        learning_rate=loop["lr"], lr_scheduler_type=loop["schedule"],
        warmup_steps=loop["warmup"],  # transformers reads < 1 as a ratio of max_steps, like our config
        weight_decay=loop["weight_decay"], max_grad_norm=loop["grad_clip"] or 1e9, optim=loop["optim"],
        logging_steps=loop["log_every"], eval_strategy="steps" if has_eval else "no",
        eval_steps=loop["eval_every"] if has_eval else None, eval_on_start=has_eval, save_strategy="no",
        report_to=[],
        seed=loop["seed"], data_seed=loop["seed"], bf16=precision == "bf16", fp16=precision == "fp16",
        use_cpu=not use_gpu, dataloader_num_workers=0, disable_tqdm=_rank() != 0,
        deepspeed=deepspeed_dict(DeepSpeedConfig(**cfg["deepspeed"]), on_cpu=not use_gpu),
        gradient_checkpointing=False,  # the method config enables it on the model itself
        ddp_find_unused_parameters=False,  # every parameter that trains gets a gradient each step
    )


def _rank() -> int:
    try:
        import ray.train
        return ray.train.get_context().get_world_rank()
    except Exception:  # outside Ray Train (direct calls in tests, benchmarks on a box without Ray)
        return int(os.environ.get("RANK", 0))


def trl_train_worker(spec_dict: dict[str, Any]) -> None:
    """Ray Train entry point (see the module docstring)."""
    spec = TrlSpec(**spec_dict)
    cfg = spec.config
    if not cfg["use_gpu"]:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before DeepSpeed is first imported
    import torch
    torch.set_num_threads(cfg["cpus_per_worker"])
    torch.manual_seed(cfg["train"]["seed"])
    import ray.train

    rank = _rank()
    with tempfile.TemporaryDirectory() as work:
        args = training_arguments(cfg, str(Path(work) / "trainer"), has_eval=bool(spec.eval_rows))
        trainer = builder(spec.algo)(spec, args)
        trainer.train()
        final = trainer.evaluate() if spec.eval_rows else {}
        saved = Path(work) / "saved"
        trainer.save_model(str(saved))  # every rank: ZeRO-3 gathers the shards here
        checkpoint, metrics = None, {k: v for k, v in final.items() if isinstance(v, (int, float))}
        if rank == 0:
            out = Path(work) / "final"
            finalize_checkpoint(trainer, saved, out, spec)
            (out / LOG_HISTORY).write_text(json.dumps(trainer.state.log_history + [{"final_eval": final}]))
            checkpoint = ray.train.Checkpoint.from_directory(str(out))
        ray.train.report(metrics, checkpoint=checkpoint)


def finalize_checkpoint(trainer, saved: Path, out: Path, spec: TrlSpec) -> None:
    """A plain HF checkpoint in ``out``: copied as saved, or the LoRA adapter merged into its base."""
    import shutil

    tokenizer = trainer.processing_class
    if not (saved / "adapter_config.json").exists():
        shutil.copytree(saved, out, ignore=shutil.ignore_patterns("training_args.bin"))
        tokenizer.save_pretrained(out)
        return
    # Merge from disk, not from the live model: under ZeRO-3 the live weights are partitioned.
    from peft import PeftModel
    from shared.training.finetune_methods import merge_and_save
    base = _load_base(spec)
    merge_and_save(PeftModel.from_pretrained(base, str(saved)), out, tokenizer, adapter_dir=out / "adapter")


def _load_base(spec: TrlSpec):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    cls = AutoModelForSequenceClassification if spec.algo == "reward" else AutoModelForCausalLM
    kwargs = {"num_labels": 1} if spec.algo == "reward" else {}
    return cls.from_pretrained(spec.model_path, **kwargs)
