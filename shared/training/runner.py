"""Driver side of (continued) pretraining: data prep, Ray Train ``TorchTrainer``, artifact.

``run_pretraining(cfg)``:
1. resolves the tokenizer (and ``init_from``) artifacts,
2. tokenizes the training corpus and any extra validation corpora into memory-mapped shards
   (a Ray Data pipeline by default), cached per run by data fingerprint,
3. decides whether this attempt continues an interrupted one (``shared.training.resume``: the
   stage has no ``journey.json`` and its checkpoints were written under the same config, tokenizer,
   start model and data), printing ``resuming <stage> from step N (checkpoint ...)`` when it does,
4. runs ``train_loop_per_worker`` under ``TorchTrainer`` with ``FailureConfig(max_failures)``: a worker
   that dies is restarted from the last reported checkpoint; the workers split the model and its state
   by ``parallelism`` (ddp, fsdp, zero1/2/3: ``shared.training.parallel``), and every checkpoint holds
   the full gathered weights, so what follows is the same for every strategy,
5. converts the final checkpoint to an HF ``GPT2LMHeadModel`` directory with the tokenizer, writes
   the metric history (``metrics.jsonl``) and a loss-curve PNG, registers the artifact (with
   ``extra["resumed_from_step"]``: 0 when it started fresh) and deletes the checkpoints.

Checkpoints live in ``<runs>/<run>/_ckpt/<stage>/``: Ray Train's storage for this attempt
(``ray/<stage>/checkpoint_*``, two kept) and ``resume/``, the checkpoint an interrupted attempt
left, which this one starts from. Ray Train v2 would by itself hand a new ``fit()`` with the same
run name and storage the latest checkpoint of the old run (its checkpoint-manager snapshot),
whatever config wrote it; so the driver wipes Ray's storage before every fit and passes the
checkpoint it chose explicitly (``TrainSpec.resume_from``): what resumes is decided here, by the
rules of ``shared.training.resume``.
"""
from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from shared.cluster import ensure_ray, fit
from shared.data import DataError, TokenDataset, build_shards, iter_corpus
from shared.model.gpt import GPT, GPTConfig
from shared.model.hf import load_gpt, save_hf_checkpoint
from shared.model.presets import model_config
from shared.progress import progress_file
from shared.registry import Artifact, Registry
from shared.registry.registry import MANIFEST
from shared.training.curves import plot_history
from shared.training.pretrain_config import DataConfig, PretrainConfig
from shared.training.pretrain_loop import TrainSpec, checkpoint_step, load_state, train_loop_per_worker
from shared.training.resume import ResumePlan, artifact_stamp, checkpoint_root, discard, plan_resume, resume_key

RESUME_DIR = "resume"  # under the stage's checkpoint root: the interrupted attempt's checkpoint this one starts from
RAY_DIR = "ray"  # under the stage's checkpoint root: Ray Train's storage for this attempt (<stage>/checkpoint_*)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:60] or "corpus"


def prepare_corpus(registry: Registry, run: str, data: DataConfig, tokenizer_dir: Path, max_bytes: int | None = None):
    """Tokenize ``data.source`` into ``<runs>/<run>/_data/<slug>/`` (reused when the fingerprint matches)."""
    cap = max_bytes if max_bytes is not None else data.max_bytes
    out = registry.root / run / "_data" / f"{_slug(data.source)}-{cap or 'all'}-{tokenizer_dir.parent.name}"
    docs = iter_corpus(data.source, max_bytes=cap, text_field=data.text_field)
    return build_shards(docs, tokenizer_dir, out, val_fraction=data.val_fraction, seed=data.seed,
                        engine=data.engine)


def _model_config(cfg: PretrainConfig, init_model: GPT | None, vocab_size: int) -> GPTConfig:
    if init_model is not None:
        return init_model.config
    m = cfg.model
    return model_config(m.preset, vocab_size=vocab_size, n_layer=m.n_layer, n_head=m.n_head, n_embd=m.n_embd,
                        block_size=m.block_size, dropout=m.dropout)


def _check_token_counts(train_dir: Path, val_dirs: dict[str, str], block_size: int) -> None:
    """Fail on the driver, before any worker starts, when a split is shorter than one window."""
    for name, directory, split in [("training corpus", train_dir, "train")] + [
            (f"validation set {n!r}", d, "val") for n, d in val_dirs.items()]:
        n_tokens = len(TokenDataset(directory, split))
        if n_tokens < block_size + 1:
            raise DataError(f"the {split} split of the {name} has {n_tokens} tokens, fewer than one window "
                            f"(block_size+1 = {block_size + 1}); raise data.max_bytes or lower model.block_size")


def _latest_checkpoint(directory: Path) -> tuple[Path, int] | None:
    """The newest complete checkpoint under a stage's checkpoint root: ``resume/`` (or ``resume.new/``, a
    move cut short) or one Ray Train wrote (``ray/<stage>/checkpoint_*``); None when there is none."""
    candidates = [directory / RESUME_DIR, directory / f"{RESUME_DIR}.new",
                  *directory.glob(f"{RAY_DIR}/*/checkpoint_*")]
    found = [(step, path) for path in candidates if (step := checkpoint_step(path)) is not None]
    if not found:
        return None
    step, path = max(found, key=lambda f: f[0])
    return path, step


def _stage_resume_checkpoint(plan: ResumePlan) -> str | None:
    """Move the checkpoint to resume from to ``resume/`` and wipe Ray's storage; its path, or None when fresh.

    Ray Train would otherwise restore its own latest checkpoint by itself (module docstring). The move
    is a rename on one filesystem; ``resume.new`` is where a move cut short leaves it, found next time.
    """
    if not plan.resuming:
        return None
    target = plan.directory / RESUME_DIR
    if plan.checkpoint != target:
        staging = plan.directory / f"{RESUME_DIR}.new"
        if plan.checkpoint != staging:
            shutil.rmtree(staging, ignore_errors=True)
            shutil.move(str(plan.checkpoint), str(staging))
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    shutil.rmtree(plan.directory / RAY_DIR, ignore_errors=True)
    return str(target)


def _fit(spec: TrainSpec, cfg: PretrainConfig, storage: Path):
    """Run the worker loop under Ray Train (its storage: ``storage/<stage>``) and return the Result."""
    import ray.train
    from ray.train.torch import TorchTrainer

    ensure_ray()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=spec.to_dict(),
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                               resources_per_worker={"CPU": cfg.cpus_per_worker}),
        run_config=ray.train.RunConfig(
            name=cfg.stage, storage_path=str(storage),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2)),
    )
    return fit(trainer)


def run_pretraining(cfg: PretrainConfig) -> Artifact:
    """Pretrain (or continue pretraining) and register the resulting HF checkpoint."""
    registry = Registry(cfg.runs_dir)
    t_start = time.perf_counter()
    tok = registry.resolve(cfg.tokenizer, run=cfg.run)
    init = registry.resolve(cfg.init_from, run=cfg.run) if cfg.init_from else None
    finished = (registry.root / cfg.run / cfg.stage / MANIFEST).exists()  # stage_dir unmarks it on overwrite
    out_dir = registry.stage_dir(cfg.run, cfg.stage, overwrite=cfg.overwrite)
    train = prepare_corpus(registry, cfg.run, cfg.data, tok.dir)
    val_dirs, fingerprints = {"val": str(train.out_dir)}, {"val": train.fingerprint}
    for name, source in cfg.eval_data.items():
        extra = DataConfig(source=source, val_fraction=cfg.data.val_fraction, seed=cfg.data.seed,
                           engine=cfg.data.engine, text_field=cfg.eval_text_field or cfg.data.text_field)
        shards = prepare_corpus(registry, cfg.run, extra, tok.dir, cfg.eval_max_bytes)
        val_dirs[name], fingerprints[name] = str(shards.out_dir), shards.fingerprint
    t_data = time.perf_counter() - t_start

    init_model = load_gpt(init.dir) if init is not None else None  # read the checkpoint once
    model_cfg = _model_config(cfg, init_model, train.vocab_size)
    if model_cfg.vocab_size < train.vocab_size:
        raise ValueError(f"the model's vocabulary ({model_cfg.vocab_size}) is smaller than the tokenizer's "
                         f"({train.vocab_size}); continue from a model trained with this tokenizer")
    _check_token_counts(train.out_dir, val_dirs, model_cfg.block_size)
    init_state = None
    if init_model is not None:
        init_state = str(out_dir / "_init_state.pt")
        torch.save(init_model.state_dict(), init_state)
    key = resume_key(cfg, {"tokenizer": artifact_stamp(tok), "init_from": artifact_stamp(init),
                           "data": train.fingerprint, "eval_data": fingerprints})
    plan = plan_resume(checkpoint_root(registry.root, cfg.run, cfg.stage), cfg.stage, key, _latest_checkpoint,
                       finished=finished)
    storage = plan.directory / RAY_DIR
    resume_from = _stage_resume_checkpoint(plan)
    if resume_from is None:  # a resumed run keeps the snapshots before its step and rewrites the later ones
        shutil.rmtree(out_dir / "snapshots", ignore_errors=True)  # an overwritten stage's old ones would mislead
    spec = TrainSpec(config=cfg, model=asdict(model_cfg), train_dir=str(train.out_dir), val_dirs=val_dirs,
                     init_state=init_state, fail_marker=str(out_dir / "_failed_once"),
                     snapshot_dir=str(out_dir / "snapshots") if cfg.train.snapshot_every else None,
                     tokenizer_dir=str(tok.dir), resume_from=resume_from,
                     progress_file=str(progress_file(registry.root, cfg.run, cfg.stage)))
    result = _fit(spec, cfg, storage)
    t_train = time.perf_counter() - t_start - t_data
    if result.checkpoint is None:
        raise RuntimeError(f"training finished without a checkpoint; see the Ray logs under {storage}")
    with result.checkpoint.as_directory() as d:
        state = load_state(d)
    if init_state:
        Path(init_state).unlink(missing_ok=True)
    art = _finish(registry, cfg, out_dir, model_cfg, state, tok, init, train,
                  timings={"data_s": t_data, "train_s": t_train}, resumed_from_step=plan.step)
    discard(plan.directory)  # after registering: a crash before it can still resume from the final checkpoint
    return art


def _write_tensorboard(history: list[dict[str, Any]], log_dir: Path) -> None:
    """Every numeric metric of every step as a TensorBoard scalar (tensorboardX ships with Ray Train)."""
    from tensorboardX import SummaryWriter
    with SummaryWriter(str(log_dir)) as writer:
        for row in history:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    writer.add_scalar(key, value, row["step"])


def _finish(registry: Registry, cfg: PretrainConfig, out_dir: Path, model_cfg: GPTConfig, state: dict[str, Any],
            tok: Artifact, init: Artifact | None, train, timings: dict[str, float],
            resumed_from_step: int = 0) -> Artifact:
    """Write the HF checkpoint, metric history and loss curve; register the artifact."""
    model = GPT(model_cfg)
    model.load_state_dict(state["model"])
    save_hf_checkpoint(model, out_dir, tokenizer_dir=tok.dir)
    history = state["history"]
    with open(out_dir / "metrics.jsonl", "w", encoding="utf-8") as fh:
        for row in history:
            fh.write(json.dumps(row) + "\n")
    plot_history(history, out_dir / "loss_curve.png", title=f"{cfg.run}/{cfg.stage}")
    if cfg.tensorboard:
        _write_tensorboard(history, out_dir / "tensorboard")
    first, last = history[0], history[-1]
    metrics: dict[str, Any] = {k: v for k, v in last.items() if k.endswith(("_loss", "_ppl", "_bpb"))}
    metrics.update({f"initial_{k}": v for k, v in first.items() if k.endswith(("_loss", "_bpb"))})
    rates = [r["tokens_per_s"] for r in history if "tokens_per_s" in r]
    metrics.update(steps=state["step"], tokens=last.get("tokens", 0), n_params=model.num_params(),
                   tokens_per_s=sum(rates) / len(rates) if rates else None)
    if any("mfu" in r for r in history):
        metrics["mfu"] = max(r["mfu"] for r in history if "mfu" in r)
    parents = [tok.id] + ([init.id] if init else [])
    return registry.register(cfg.run, cfg.stage, "hf-model", parents=parents, config=cfg, metrics=metrics,
                             timings=timings, data_fingerprint=train.fingerprint,
                             extra={"model": asdict(model_cfg), "data_dir": str(train.out_dir),
                                    "resumed_from_step": resumed_from_step})
