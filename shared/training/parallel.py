"""Data-parallel strategies of the pretraining loop: DDP, FSDP2 and DeepSpeed ZeRO-1/2/3 behind one interface.

``wrap(model, options, ...)`` takes the plain ``GPT`` (already holding the weights to start from) and
returns a ``Parallel``; the loop only calls its methods, so it reads the same whatever the strategy:

- ``forward_model``: the module the training forward goes through; ``model``: the same network for
  evaluation (every rank must run it: under FSDP and ZeRO-3 a forward gathers parameters);
- ``micro_batch(last)``: context around one micro-batch's forward and backward (skips the gradient
  sync of all but the last one where the strategy allows);
- ``backward(loss)``, ``step()``: one micro-batch's backward of the *unscaled* loss, and the optimizer
  step with gradient clipping at the end of a step (DeepSpeed does both inside its engine);
- ``set_lr(lr)``; ``optimizer`` exposes ``param_groups``;
- ``full_state_dict()``: the whole model as plain fp32 CPU tensors under the ``GPT`` keys, on rank 0
  (other ranks get ``{}``); a collective, so every rank calls it. The driver turns it into the HF
  artifact, so the artifact is the same whatever the strategy;
- ``optimizer_state()`` / ``load_optimizer_state(state)``: a picklable optimizer state for checkpoints
  (a collective too). DDP: the optimizer's own state dict; FSDP: the full, unsharded state keyed by
  parameter name (``torch.distributed.checkpoint.state_dict``), so it loads on any number of ranks;
  ZeRO: every rank's partition gathered to rank 0 (DeepSpeed's ``state_dict`` per rank), which loads
  only on the same number of ranks. ``check_resume`` refuses a checkpoint of another strategy or,
  for ZeRO, another world size, with a message saying so;
- ``local_state_bytes()``: bytes of parameters, gradients and optimizer state this rank holds (its
  shards only, master copies included), by summing the tensors' storage sizes: what the memory
  planner (``shared.plan.memory``) is checked against.

Strategies (``STRATEGIES``): ``ddp`` (gradients all-reduced, everything replicated), ``fsdp``
(``fully_shard`` on every transformer block and the root; ``reshard_after_forward`` true frees the
gathered parameters after forward, ZeRO-3-like, false keeps them until backward, ZeRO-2-like),
``zero1/2/3`` (DeepSpeed's engine around our model and our AdamW, config from
``shared.training.deepspeed_config.pretrain_deepspeed_dict``). The options themselves (``ParallelOptions``,
``STRATEGIES``, ``ZERO_STAGES``) are declared in ``shared.training.parallel_config`` and re-exported
here. On CPU DeepSpeed needs ``DS_ACCELERATOR=cpu`` before its first import: ``wrap`` sets it.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Callable

import torch
import torch.distributed as dist

from shared.training.optim import build_adamw
# The keys live torch-free in parallel_config (config modules import them); re-exported here.
from shared.training.parallel_config import STRATEGIES, ZERO_STAGES, ParallelOptions


def _storage_bytes(tensors, seen: set[int]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views of one flat buffer count once)."""
    total = 0
    for t in tensors:
        if t is None or not isinstance(t, torch.Tensor):
            continue
        if hasattr(t, "to_local"):  # DTensor: this rank's shard
            t = t.to_local()
        storage = t.untyped_storage()
        if storage.nbytes() == 0 or storage.data_ptr() in seen:
            continue
        seen.add(storage.data_ptr())
        total += storage.nbytes()
    return total


def _optimizer_tensors(optimizer: torch.optim.Optimizer):
    for state in optimizer.state.values():
        yield from (v for v in state.values() if isinstance(v, torch.Tensor) and v.dim() > 0)


class Parallel:
    """DDP (and a single process): the reference strategy; the others override what differs."""

    strategy = "ddp"

    def __init__(self, model: torch.nn.Module, opts: ParallelOptions, device: torch.device, world: int,
                 make_optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer], *, precision: str,
                 grad_clip: float, grad_accum: int, micro_batch: int):
        self.model, self.opts, self.device, self.world = model, opts, device, world
        self.precision, self.grad_clip, self.grad_accum, self.micro_batch_size = (precision, grad_clip, grad_accum,
                                                                                  micro_batch)
        self.rank = dist.get_rank() if world > 1 else 0
        self._setup(make_optimizer)

    def _setup(self, make_optimizer) -> None:
        _maybe_checkpoint_blocks(self.model, self.opts.activation_checkpointing)
        self.forward_model = self.model
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.forward_model = DistributedDataParallel(self.model, device_ids=ids)
        self.optimizer = make_optimizer(self.model)

    def micro_batch(self, last: bool):
        # DDP: skip the gradient all-reduce on all but the last micro-batch.
        if last or not hasattr(self.forward_model, "no_sync"):
            return contextlib.nullcontext()
        return self.forward_model.no_sync()

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.grad_accum).backward()

    def step(self) -> None:
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        if self.rank != 0:
            return {}
        return {k: v.detach().float().cpu().clone() for k, v in self.model.state_dict().items()}

    def optimizer_state(self) -> Any:
        return self.optimizer.state_dict() if self.rank == 0 else None

    def load_optimizer_state(self, state: Any) -> None:
        self.optimizer.load_state_dict(state)

    def check_resume(self, saved: dict[str, Any]) -> None:
        """Refuse a checkpoint written under another strategy (its optimizer state has another layout)."""
        strategy = saved.get("parallelism", "ddp")
        if strategy != self.strategy:
            raise RuntimeError(f"the checkpoint to resume from was written with parallelism={strategy}, this run uses "
                               f"parallelism={self.strategy}; rerun with parallelism={strategy} or overwrite=true")

    def checkpoint_extra(self) -> dict[str, Any]:
        return {"parallelism": self.strategy, "world": self.world}

    def local_state_bytes(self) -> dict[str, int]:
        """Parameters, gradients and optimizer state held by this rank (see the module docstring)."""
        seen: set[int] = set()
        params = list(self.model.parameters())
        return {"params": _storage_bytes(params, seen),
                "grads": _storage_bytes([p.grad for p in params], seen),
                "optimizer": _storage_bytes(_optimizer_tensors(self.optimizer), seen)}


def _maybe_checkpoint_blocks(model: torch.nn.Module, enabled: bool) -> None:
    """Recompute each transformer block's activations in backward instead of storing them."""
    if not enabled:
        return
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
    blocks = model.transformer.h
    for i, block in enumerate(blocks):
        blocks[i] = checkpoint_wrapper(block)


class FSDPParallel(Parallel):
    """PyTorch FSDP2: ``fully_shard`` per block, then the root (embeddings, final norm, tied head)."""

    strategy = "fsdp"

    def _setup(self, make_optimizer) -> None:
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard
        _maybe_checkpoint_blocks(self.model, self.opts.activation_checkpointing)
        kw: dict[str, Any] = {"reshard_after_forward": self.opts.fsdp_reshard_after_forward,
                              "offload_policy": CPUOffloadPolicy() if self.opts.fsdp_cpu_offload else OffloadPolicy()}
        if self.precision == "bf16":  # bf16 compute and all-gathers, fp32 gradient reduction and master weights
            kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for block in self.model.transformer.h:
            fully_shard(block, **kw)
        fully_shard(self.model, **kw)
        self.forward_model = self.model
        self.optimizer = make_optimizer(self.model)  # over the DTensor shards: its state is sharded too

    def micro_batch(self, last: bool):
        self.model.set_requires_gradient_sync(last)  # reduce-scatter once per step, not per micro-batch
        return contextlib.nullcontext()

    def _options(self, **kw):
        from torch.distributed.checkpoint.state_dict import StateDictOptions
        return StateDictOptions(full_state_dict=True, **kw)

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict
        state = get_model_state_dict(self.model, options=self._options(cpu_offload=True))  # rank 0 only
        if self.rank != 0:
            return {}
        return {_plain_key(k): v.float().clone() for k, v in state.items()}

    def optimizer_state(self) -> Any:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
        state = get_optimizer_state_dict(self.model, self.optimizer, options=self._options(cpu_offload=True))
        return state if self.rank == 0 else None

    def load_optimizer_state(self, state: Any) -> None:
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict
        set_optimizer_state_dict(self.model, self.optimizer, state, options=self._options())


def _plain_key(key: str) -> str:
    """The ``GPT`` key of a state-dict key (activation checkpointing wraps blocks in a module of its own)."""
    return key.replace("_checkpoint_wrapped_module.", "")


class DeepSpeedParallel(Parallel):
    """DeepSpeed ZeRO-1/2/3: the engine owns gradient partitioning, accumulation, clipping and the step."""

    def _setup(self, make_optimizer) -> None:
        if self.device.type != "cuda":
            os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before DeepSpeed is first imported
        import deepspeed

        from shared.training.deepspeed_config import pretrain_deepspeed_dict
        self.strategy = self.opts.strategy
        _maybe_checkpoint_blocks(self.model, self.opts.activation_checkpointing)
        config = pretrain_deepspeed_dict(ZERO_STAGES[self.strategy], micro_batch=self.micro_batch_size,
                                         grad_accum=self.grad_accum, world=self.world, grad_clip=self.grad_clip,
                                         precision=self.precision, on_cpu=self.device.type != "cuda",
                                         offload_optimizer=self.opts.zero_offload_optimizer,
                                         offload_params=self.opts.zero_offload_params,
                                         n_params=sum(p.numel() for p in self.model.parameters()))
        self.engine, self.optimizer, _, _ = deepspeed.initialize(model=self.model, optimizer=make_optimizer(self.model),
                                                                 config=config, dist_init_required=False)
        self.forward_model = self.engine
        self.model = self.engine.module

    def micro_batch(self, last: bool):
        self._last_micro = last
        return contextlib.nullcontext()  # the engine counts micro-batches against gradient_accumulation_steps

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)  # divides by gradient_accumulation_steps itself
        if not self._last_micro:
            self.engine.step()  # before the boundary it only counts the micro-batch

    def step(self) -> None:
        self.engine.step()  # at the accumulation boundary: clip, update, zero the gradients

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        # The fp32 master weights, not the module's 16-bit copy under bf16: DeepSpeed assembles each parameter
        # from the ranks' fp32 partitions (a collective: every rank calls it, in the same order).
        from deepspeed.utils import safe_get_full_fp32_param
        full = {id(p): safe_get_full_fp32_param(p) for p in self.model.parameters()}
        if self.rank != 0:
            return {}
        params = dict(self.model.named_parameters(remove_duplicate=False))  # tied weights under both names
        return {k: (full[id(params[k])] if k in params else v).detach().float().cpu().clone()
                for k, v in self.model.state_dict(keep_vars=True).items()}

    def optimizer_state(self) -> Any:
        mine = self.optimizer.state_dict()
        if self.world == 1:
            return [mine]
        gathered = [None] * self.world if self.rank == 0 else None
        dist.gather_object(mine, gathered, dst=0)
        return gathered

    def load_optimizer_state(self, state: Any) -> None:
        self.optimizer.load_state_dict(state, load_optimizer_states=True, load_from_fp32_weights=True)

    def check_resume(self, saved: dict[str, Any]) -> None:
        super().check_resume(saved)
        if saved.get("world", self.world) != self.world:
            raise RuntimeError(f"the checkpoint to resume from holds ZeRO optimizer partitions of {saved['world']} "
                               f"ranks and this run has {self.world}; rerun with num_workers={saved['world']} or "
                               "overwrite=true")

    def local_state_bytes(self) -> dict[str, int]:
        seen: set[int] = set()
        opt = self.optimizer
        params = [getattr(p, "ds_tensor", p) for p in self.model.parameters()]  # ZeRO-3: the local partition
        params += list(getattr(opt, "bit16_groups_flat", []) or [])
        params += list(getattr(opt, "fp16_partitioned_groups_flat", []) or [])
        master = list(getattr(opt, "single_partition_of_fp32_groups", []) or [])
        master += list(getattr(opt, "fp32_partitioned_groups_flat", []) or [])
        grads = [p.grad for p in self.model.parameters()] + [m.grad for m in master]
        # Where DeepSpeed keeps the reduced gradients between backward and step (stage 1/2 and stage 3).
        averaged = getattr(opt, "averaged_gradients", None) or {}
        grads += [g for group in averaged.values() for g in (group or [])]
        grads += [getattr(opt, name, None) for name in ("grads_in_partition", "grad_partitions_flat_buffer")]
        grads += list(getattr(opt, "ipg_buffer", None) or [])
        inner = getattr(opt, "optimizer", opt)
        return {"params": _storage_bytes(params, seen), "grads": _storage_bytes(grads, seen),
                "optimizer": _storage_bytes(master, seen) + _storage_bytes(_optimizer_tensors(inner), seen)}


def wrap(model: torch.nn.Module, opts: ParallelOptions, device: torch.device, world: int, precision: str, *,
         lr: float, weight_decay: float, betas: tuple[float, float], grad_clip: float, grad_accum: int,
         micro_batch: int) -> Parallel:
    """Wrap ``model`` (on ``device``, with its starting weights) and build its AdamW under ``opts.strategy``."""
    cls = {"ddp": Parallel, "fsdp": FSDPParallel}.get(opts.strategy, DeepSpeedParallel)
    return cls(model, opts, device, world, lambda m: build_adamw(m, lr, weight_decay, betas), precision=precision,
               grad_clip=grad_clip, grad_accum=grad_accum, micro_batch=micro_batch)


__all__ = ["Parallel", "ParallelOptions", "STRATEGIES", "ZERO_STAGES", "wrap"]
