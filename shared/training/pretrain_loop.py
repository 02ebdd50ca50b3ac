"""Our pretraining loop: the function every Ray Train worker runs.

Contract of ``train_loop_per_worker(spec)``:
- ``spec`` is ``TrainSpec.to_dict()``: the resolved ``PretrainConfig`` dataclass itself (it
  pickles), the model config, token-shard directories and (for continued pretraining) an initial
  state dict path.
- Each step samples its micro-batches from a generator seeded by ``(seed, step, rank, micro)``,
  so a run resumed from a checkpoint sees exactly the batches an uninterrupted run would: with
  the model, optimizer and step restored, the loss curve continues identically.
- The data-parallel strategy (``parallelism``: ddp, fsdp, zero1/2/3) lives in ``shared.training.parallel``;
  the loop only calls its ``Parallel``. Whatever the strategy, the checkpoint's ``model`` is the full,
  gathered fp32 state dict under the ``GPT`` keys, so the driver writes the same HF artifact.
- Every ``train.ckpt_every`` steps (``checkpoint_interval()``) and at the end, rank 0 reports a Ray
  Train checkpoint holding the model, optimizer, step, metric history and the strategy (with the world
  size: a ZeRO optimizer state is per rank), plus ``checkpoint.json``
  (its step and the state file's size, written after the state: ``checkpoint_step`` reads it to
  tell a complete checkpoint from one cut short); other ranks report the same metrics without one
  (Ray Train v2 wants every rank to call ``report``).
- It starts from, in this order: the checkpoint Ray Train hands a worker it restarted after a
  failure (``ray.train.get_checkpoint()``), the checkpoint an interrupted earlier attempt left
  (``spec.resume_from``, chosen by the driver: ``shared.training.resume``), or step 0.
- On rank 0, every logged step goes to ``spec.progress_file`` (``shared.progress``) with its loss.
- Validation runs at step 0, every ``train.eval_every`` steps and at the end, on every named val set.
- With ``train.snapshot_every`` set, rank 0 also saves the weights with the tokenizer files as an HF
  checkpoint under ``snapshot_dir/step_<N>/`` at step 0 and every ``train.snapshot_every`` steps before
  the last (a resumed run rewrites the ones it repeats), for looking at how the model changed during
  training (``shared.interp``); ``AutoTokenizer.from_pretrained`` loads each as it loads the artifact.

It does not write artifacts: the driver turns the final checkpoint into an HF artifact.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from shared.data import TokenDataset
from shared.data.repeats import repeat_spans
from shared.model.gpt import GPT, GPTConfig
from shared.model.hf import save_hf_checkpoint
from shared.progress import report_progress
from shared.training.hardware import autocast, peak_flops, resolve_precision
from shared.training.parallel import Parallel, wrap
from shared.training.pretrain_config import PretrainConfig
from shared.training.schedules import lr_at

STATE_FILE = "train_state.pt"
MARKER_FILE = "checkpoint.json"  # {"step", "bytes"}: written after STATE_FILE, so its presence means complete


@dataclass
class TrainSpec:
    """Everything a worker needs; it crosses process boundaries by pickling."""

    config: PretrainConfig  # the resolved job config
    model: dict[str, Any]  # GPTConfig fields
    train_dir: str  # token shards of the training corpus
    val_dirs: dict[str, str] = field(default_factory=dict)  # name -> shard dir (its 'val' split)
    init_state: str | None = None  # state dict to start from (continued pretraining)
    fail_marker: str | None = None  # testing hook: file created when the injected failure fired
    snapshot_dir: str | None = None  # where rank 0 writes the ``train.snapshot_every`` HF snapshots
    tokenizer_dir: str | None = None  # tokenizer files copied into every snapshot
    resume_from: str | None = None  # checkpoint directory of an interrupted earlier attempt to continue from
    progress_file: str | None = None  # where rank 0 reports its step (shared.progress); None = nowhere

    def to_dict(self) -> dict[str, Any]:
        """Ray Train's ``train_loop_config``: the fields as they are (the config stays a dataclass)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


class InjectedFailure(RuntimeError):
    """Raised once by ``fail_at_step`` to exercise fault tolerance."""


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _device(use_gpu: bool) -> torch.device:
    if use_gpu and torch.cuda.is_available():
        import ray.train.torch
        return ray.train.torch.get_device()
    return torch.device("cpu")


def _build_model(spec: TrainSpec, device: torch.device) -> GPT:
    torch.manual_seed(spec.config.seed)
    model = GPT(GPTConfig(**spec.model))
    if spec.init_state:
        model.load_state_dict(torch.load(spec.init_state, map_location="cpu", weights_only=True))
    return model.to(device)


def _batch_generator(seed: int, step: int, rank: int, micro: int) -> torch.Generator:
    # Large odd multipliers keep (step, rank, micro) streams apart; the seed is the only global.
    return torch.Generator().manual_seed(seed + 1_000_003 * step + 10_007 * rank + 101 * micro)


@torch.no_grad()
def evaluate(model: torch.nn.Module, datasets: dict[str, TokenDataset], batches: int, batch_size: int,
             block_size: int, precision: str, device: torch.device) -> dict[str, float]:
    """Mean val loss, perplexity and bits per byte on each named dataset's deterministic windows."""
    was_training = model.training
    model.eval()
    out: dict[str, float] = {}
    for name, ds in datasets.items():
        losses = []
        for x, y in ds.iter_eval_batches(batch_size, block_size, batches):
            with autocast(precision, device):
                _, loss = model(x.to(device), y.to(device))
            losses.append(loss.item())
        mean = sum(losses) / len(losses)
        out[f"{name}_loss"] = mean
        out[f"{name}_ppl"] = math.exp(min(mean, 50.0))
        out[f"{name}_bpb"] = mean / math.log(2) / ds.bytes_per_token
    model.train(was_training)
    return out


def _save_state(path: Path, state: dict[str, Any]) -> None:
    torch.save(state, path / STATE_FILE)
    (path / MARKER_FILE).write_text(json.dumps({"step": state["step"], "bytes": (path / STATE_FILE).stat().st_size}))


def checkpoint_step(directory: str | Path) -> int | None:
    """The step of the checkpoint in ``directory``, or None unless it is complete (its marker names a state
    file of the size written: a copy cut short by a crash has a smaller one or none)."""
    directory = Path(directory)
    try:
        marker = json.loads((directory / MARKER_FILE).read_text())
        complete = (directory / STATE_FILE).stat().st_size == marker["bytes"]
        return int(marker["step"]) if complete else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_state(directory: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by the loop (model, optimizer, step, history)."""
    return torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=False)


def _report(metrics: dict[str, Any], par: Parallel, step: int, history: list, rank: int, with_ckpt: bool) -> None:
    import ray.train
    if not with_ckpt:
        ray.train.report(metrics)
        return
    # Every rank takes part in gathering (FSDP and ZeRO hold shards); rank 0 gets the full state.
    model_state, optimizer_state = par.full_state_dict(), par.optimizer_state()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:  # side effects on rank 0 only
            _save_state(Path(tmp), {"model": model_state, "optimizer": optimizer_state, "step": step,
                                    "history": history, **par.checkpoint_extra()})
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint)


def _maybe_snapshot(spec: TrainSpec, source: Parallel | GPT, step: int, rank: int) -> None:
    """Save the snapshot due at ``step`` from ``source``: the run's ``Parallel`` (every rank calls: a sharded
    model is gathered first) or, on one process, a plain ``GPT``."""
    every = spec.config.train.snapshot_every
    if not every or not spec.snapshot_dir or step % every:
        return
    if isinstance(source, Parallel):
        state = source.full_state_dict()  # a collective: every rank gathers, rank 0 gets the weights
        if rank != 0:
            return
        model = GPT(GPTConfig(**spec.model))
        model.load_state_dict(state)
    elif rank != 0:
        return
    else:
        model = source
    save_hf_checkpoint(model, Path(spec.snapshot_dir) / f"step_{step:06d}", tokenizer_dir=spec.tokenizer_dir)


def _maybe_fail(spec: TrainSpec, step: int, rank: int) -> None:
    at = spec.config.fail_at_step
    if at is None or step != at or rank != 0 or not spec.fail_marker:
        return
    marker = Path(spec.fail_marker)
    if marker.exists():
        return  # already failed once: the restarted run must go through
    marker.write_text(str(step))
    raise InjectedFailure(f"injected failure after step {step} (fail_at_step)")


def _checkpoint_to_start_from(resume_from: str | None) -> dict[str, Any] | None:
    """The checkpoint to start from (see the module docstring), or None to start at step 0."""
    import ray.train
    ckpt = ray.train.get_checkpoint()  # this fit's own latest: newer than resume_from when there is one
    if ckpt is not None:
        with ckpt.as_directory() as d:
            return load_state(d)
    return load_state(resume_from) if resume_from else None


def train_loop_per_worker(spec_dict: dict[str, Any]) -> None:
    """The Ray Train worker function (see module docstring)."""
    spec = TrainSpec(**spec_dict)
    cfg, o = spec.config, spec.config.train
    torch.set_num_threads(cfg.cpus_per_worker)
    rank, world = _rank_world()
    device = _device(cfg.use_gpu)
    precision = resolve_precision(cfg.precision, device)
    model = _build_model(spec, device)
    saved = _checkpoint_to_start_from(spec.resume_from)
    if saved is not None:  # the full weights go into the plain model, before any strategy shards it
        model.load_state_dict(saved["model"])
    par = wrap(model, cfg.parallel_options(), device, world, precision, lr=o.lr, weight_decay=o.weight_decay,
               betas=(o.beta1, o.beta2), grad_clip=o.grad_clip, grad_accum=o.grad_accum, micro_batch=o.batch_size)
    start, history = 0, []
    if saved is not None:
        par.check_resume(saved)
        par.load_optimizer_state(saved["optimizer"])
        start, history = saved["step"], saved["history"]
    model = par.model  # the network to evaluate (DeepSpeed's engine.module; the sharded module under FSDP)
    train_model = _compile(par.forward_model, cfg, device)
    train_ds = TokenDataset(spec.train_dir, "train")
    val_sets = {name: TokenDataset(d, "val") for name, d in spec.val_dirs.items()}
    B, T = o.batch_size, spec.model["block_size"]
    tokens_per_step = B * T * o.grad_accum * world
    flops_per_token, peak = model.flops_per_token(), peak_flops(device)
    if start == 0:
        metrics = {"step": 0, "tokens": 0, **evaluate(model, val_sets, o.eval_batches, B, T, precision, device)}
        history.append(metrics)
        _maybe_snapshot(spec, par, 0, rank)
    progress = _progress(rank, start, o.max_steps)
    ckpt_every = o.checkpoint_interval()
    if rank == 0:
        report_progress(spec.progress_file, start, o.max_steps)
    t0, window_tokens = time.perf_counter(), 0
    for step in range(start, o.max_steps):
        lr = lr_at(step, o.max_steps, o.lr, o.schedule, o.warmup, o.min_lr_ratio, o.decay_ratio)
        par.set_lr(lr)
        loss = _train_step(par, train_model, train_ds, cfg, step, rank, precision, device, T)
        done = step + 1
        window_tokens += tokens_per_step
        _maybe_fail(spec, done, rank)
        if done < o.max_steps:  # the final weights are the artifact itself
            _maybe_snapshot(spec, par, done, rank)
        metrics = {"step": done, "tokens": done * tokens_per_step, "train_loss": loss, "lr": lr}
        logged = done % o.log_every == 0 or done == o.max_steps
        if logged:
            dt = time.perf_counter() - t0
            metrics["tokens_per_s"] = window_tokens / dt
            if peak:
                metrics["mfu"] = flops_per_token * metrics["tokens_per_s"] / (peak * world)
            t0, window_tokens = time.perf_counter(), 0
        if done % o.eval_every == 0 or done == o.max_steps:
            metrics.update(evaluate(model, val_sets, o.eval_batches, B, T, precision, device))
        if logged and rank == 0:
            report_progress(spec.progress_file, done, o.max_steps, loss=loss,
                            **{k: v for k, v in metrics.items() if k not in ("step", "train_loss")})
        history.append(metrics)
        progress.update(1)
        progress.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}")
        if done % ckpt_every == 0 or done == o.max_steps:
            _report(metrics, par, done, history, rank, with_ckpt=True)
    if start >= o.max_steps:  # resumed from the final checkpoint (the driver died before registering): hand it back
        _report(history[-1], par, start, history, rank, with_ckpt=True)
    progress.close()


def _compile(module: torch.nn.Module, cfg: PretrainConfig, device: torch.device) -> torch.nn.Module:
    """torch.compile the training forward when asked (``auto``: on CUDA under DDP; the config allows ``on`` with
    DDP only)."""
    use_compile = cfg.compile == "on" or (cfg.compile == "auto" and device.type == "cuda" and cfg.parallelism == "ddp")
    return torch.compile(module) if use_compile else module


def _train_step(par: Parallel, model: torch.nn.Module, ds: TokenDataset, cfg: PretrainConfig,
                step: int, rank: int, precision: str, device: torch.device, block_size: int) -> float:
    """One optimizer step over ``grad_accum`` micro-batches (``model`` is ``par``'s training forward, compiled or
    not); returns the mean micro-batch loss."""
    o = cfg.train
    accum = o.grad_accum
    total = 0.0
    for micro in range(accum):
        generator = _batch_generator(cfg.seed, step, rank, micro)
        x, y = repeat_spans(*ds.get_batch(o.batch_size, block_size, generator), cfg.data.repeat_fraction, generator,
                            ds.vocab_size if cfg.data.repeat_source == "random" else None)
        with par.micro_batch(last=micro == accum - 1):
            with autocast(precision, device):
                _, loss = model(x.to(device), y.to(device))
            par.backward(loss)
        total += loss.item()
    par.step()
    return total / accum


def _progress(rank: int, start: int, total: int):
    from tqdm.auto import tqdm
    disable = rank != 0 or os.environ.get("JOURNEY_NO_PROGRESS") == "1"
    return tqdm(total=total, initial=start, desc="train", disable=disable, mininterval=2.0, dynamic_ncols=True)
