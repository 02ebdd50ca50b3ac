"""``journey experiment parallelism``: one tiny model, batch and step count under each data-parallel strategy.

The arms (``ARMS``: ddp, zero1, zero2, fsdp without and with resharding, zero3) run one after the other in
one Ray Train ``TorchTrainer`` fit of ``_measure_worker`` on ``parallel.workers`` ranks (CPU + gloo here,
NCCL on GPUs; one worker group, so starting the workers is paid once), each on a fresh model wrapped by
``shared.training.parallel`` exactly as the pretraining loop does. Batches are
random token ids drawn from ``(seed, step, rank)``: the same on every arm, so the losses agree across
arms and only the layout of the state differs. Per rank it measures:

- ``state_bytes_per_rank``: parameters + gradients + optimizer state this rank holds, the sum of the
  storage sizes of its local tensors (shards, DeepSpeed's flat buffers and fp32 master partitions),
  taken after the last step's backward while the gradients are alive. Exact, and what the memory
  planner's ``state`` is checked against;
- ``peak_bytes``: on CUDA ``max_memory_allocated`` over the run; on CPU the growth of the worker's
  peak RSS over the training steps (``VmHWM`` after resetting it through ``/proc/self/clear_refs``, minus
  the RSS once the model and optimizer were built: the parameters themselves and the libraries' imports
  are not in it; gradients, optimizer moments created on the first step, activations, communication
  buffers and the allocator's caching are), so noisy;
- ``step_s`` (median over the steps after ``warmup_steps``) and ``tokens_per_s`` (all ranks' tokens);
- ``comm_bytes_per_step``: what this rank sends per step, counted by wrapping the collectives of
  ``ProcessGroup`` (see ``CommCounter``).

The driver adds what the theory says (``theory``, the memory planner, which the stage table hands in:
training may not import ``shared.plan``, see docs/architecture.md) and the largest micro-batch that fits
a per-rank memory budget: ``(budget - measured state) // activation bytes per sample``, the activation
bytes measured on the driver by summing the tensors autograd saves for backward at batch 1 and 2 (their
difference is the per-sample growth; activations are the same under every strategy, since none of them
divides them). The result is an ``experiment`` artifact: table (md + json) and a chart.
"""
from __future__ import annotations

import contextlib
import json
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist

from shared.config import ConfigError, help_field
from shared.model.gpt import GPT, GPTConfig
from shared.training.parallel import STRATEGIES, ParallelOptions, wrap

#: arm name -> (strategy, fsdp_reshard_after_forward)
ARMS: dict[str, tuple[str, bool]] = {"ddp": ("ddp", True), "zero1": ("zero1", True), "zero2": ("zero2", True),
                                     "fsdp-noreshard": ("fsdp", False), "fsdp": ("fsdp", True),
                                     "zero3": ("zero3", True)}
assert {s for s, _ in ARMS.values()} == set(STRATEGIES)

#: ``theory(strategy, reshard_after_forward, model, ranks, micro_batch, seq_len, precision)`` -> bytes of
#: weights + gradients + optimizer state per rank (``shared.plan.memory.strategy_bytes(...).state``).
Theory = Callable[[str, bool, dict, int, int, int, str], float]

#: Collectives of ``ProcessGroup`` and how many times its tensor's bytes each rank sends, on a ring over N
#: ranks: an all-reduce is a reduce-scatter then an all-gather, (N-1)/N of the tensor each; an all-gather
#: or reduce-scatter sends (N-1)/N of the full (gathered / unreduced) tensor; broadcast, gather, scatter
#: and reduce count the tensor once. The full tensor is the output of an all-gather, the input of a
#: reduce-scatter. This is the accounting of the ZeRO paper (§7: DDP moves 2Ψ, ZeRO-3 3Ψ elements).
RING_FACTORS: dict[str, Callable[[int], float]] = {
    "allreduce": lambda n: 2 * (n - 1) / n, "allreduce_coalesced": lambda n: 2 * (n - 1) / n,
    "allgather": lambda n: (n - 1) / n, "all_gather_single": lambda n: (n - 1) / n,
    "allgather_coalesced": lambda n: (n - 1) / n, "all_gather_single_coalesced": lambda n: (n - 1) / n,
    "_allgather_base": lambda n: (n - 1) / n,
    "reduce_scatter": lambda n: (n - 1) / n, "reduce_scatter_single": lambda n: (n - 1) / n,
    "reduce_scatter_single_coalesced": lambda n: (n - 1) / n, "_reduce_scatter_base": lambda n: (n - 1) / n,
    "broadcast": lambda n: 1.0, "gather": lambda n: 1.0, "scatter": lambda n: 1.0, "reduce": lambda n: 1.0,
}
#: Which positional argument holds the full tensor(s) of each collective (the output of an all-gather,
#: else the input): ``ProcessGroup.<name>(outputs, inputs, opts)`` or ``(tensors, opts)``.
_FULL_ARG = {"allgather": 0, "all_gather_single": 0, "allgather_coalesced": 0, "all_gather_single_coalesced": 0,
             "_allgather_base": 0, "reduce_scatter": 1, "reduce_scatter_single": 1,
             "reduce_scatter_single_coalesced": 1, "_reduce_scatter_base": 1, "gather": 1, "scatter": 0}


def _tensor_bytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(o) for o in obj)
    return 0


class CommCounter:
    """Counts the bytes this rank sends through collectives while ``counting`` is true.

    Why ``ProcessGroup`` methods: every ``torch.distributed`` collective (what FSDP2 and DeepSpeed call,
    whatever reference to the function they keep) ends in a method of the group object, so wrapping those
    methods on the class sees all of them. DDP's reducer calls the group from C++, which no Python wrapper
    sees: the experiment gives DDP the stock all-reduce comm hook, which goes through ``dist.all_reduce``
    (the same averaging DDP does by itself). Installed for the run, removed by ``close``.
    """

    def __init__(self, world: int):
        self.world, self.counting, self.bytes, self.by_op = world, False, 0.0, {}
        self._saved: dict[str, Any] = {}
        pg = dist.ProcessGroup
        for name, factor in RING_FACTORS.items():
            if name not in vars(pg):
                continue
            # Keep the class's own entry (pybind's method descriptor) to put back: the function getattr
            # returns does not bind ``self`` once stored on the class again.
            self._saved[name] = vars(pg)[name]
            setattr(pg, name, self._counted(name, getattr(pg, name), factor))

    def _counted(self, name: str, original, factor):
        counter = self

        def method(group, *args, **kwargs):
            if counter.counting and args:
                full = args[_FULL_ARG.get(name, 0)] if len(args) > _FULL_ARG.get(name, 0) else args[0]
                sent = _tensor_bytes(full) * factor(group.size())
                counter.bytes += sent
                counter.by_op[name] = counter.by_op.get(name, 0.0) + sent
            return original(group, *args, **kwargs)
        return method

    def close(self) -> None:
        for name, original in self._saved.items():
            setattr(dist.ProcessGroup, name, original)
        self._saved = {}


@dataclass
class ParallelExperimentConfig:
    """The ``parallel:`` section of ``ExperimentConfig``: what every arm of the parallelism experiment shares."""

    arms: list[str] = help_field(list(ARMS), f"strategies to compare: {list(ARMS)}")
    workers: int = help_field(2, "ranks per arm (Ray Train workers; gloo on CPU, NCCL on GPUs)")
    use_gpu: bool = help_field(False, "one GPU per worker")
    steps: int = help_field(6, "optimizer steps per arm (the experiment's own; top-level steps is for the "
                            "pretraining experiments)")
    warmup_steps: int = help_field(2, "first steps left out of the step time (setup, first all-gathers)")
    batch_size: int = help_field(4, "micro-batch per rank")
    block_size: int = help_field(64, "sequence length")
    n_layer: int = help_field(2, "layers of the model every arm trains")
    n_head: int = help_field(2, "heads")
    n_embd: int = help_field(64, "width")
    vocab_size: int = help_field(512, "vocabulary (random token ids: no tokenizer needed)")
    precision: str = help_field("fp32", "fp32 or bf16 (bf16: FSDP mixed precision, DeepSpeed bf16 engine)")
    memory_budget_mb: Optional[float] = help_field(None, "per-rank budget for the largest batch that fits (None: "
                                                   "the GPU's memory on CUDA, 256 MB on CPU)")
    cpus_per_worker: int = help_field(1, "CPU threads per worker")
    seed: int = help_field(1337, "seed of the model and the batches")

    def validate(self) -> None:
        bad = [a for a in self.arms if a not in ARMS]
        if bad or not self.arms:
            raise ConfigError(f"parallel.arms: unknown arm {bad[0] if bad else '(none)'!r}; choose from {list(ARMS)}")
        if self.workers < 1 or self.steps <= self.warmup_steps or self.warmup_steps < 0:
            raise ConfigError("parallel.workers must be >= 1 and parallel.steps > parallel.warmup_steps >= 0 "
                              f"(got workers={self.workers}, steps={self.steps}, warmup_steps={self.warmup_steps})")
        if self.precision not in ("fp32", "bf16"):
            raise ConfigError(f"parallel.precision must be fp32 or bf16, got {self.precision!r}")

    def model(self) -> dict[str, Any]:
        return asdict(GPTConfig(vocab_size=self.vocab_size, block_size=self.block_size, n_layer=self.n_layer,
                                n_head=self.n_head, n_embd=self.n_embd))


@dataclass
class RunSpec:
    """What ``_measure_worker`` gets (pickled by Ray): the arms to run one after the other in one worker group."""

    arms: list[str]
    cfg: ParallelExperimentConfig
    out_dir: str  # rank 0 writes <arm>.json (the per-rank rows) here, and <arm>.pt with ``probe``
    probe: bool = False  # testing: also save the gathered state dict and logits of a fixed batch per arm
    extra: dict[str, Any] = field(default_factory=dict)  # ParallelOptions overrides (activation_checkpointing, ...)


def _batch(cfg: ParallelExperimentConfig, step: int, rank: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(cfg.seed + 1_000_003 * step + 10_007 * rank)
    ids = torch.randint(0, cfg.vocab_size, (cfg.batch_size, cfg.block_size + 1), generator=g)
    return ids[:, :-1].to(device), ids[:, 1:].to(device)


def _rss_bytes(field_name: str) -> int:
    """``VmRSS`` or ``VmHWM`` (peak) of this process from ``/proc/self/status``; 0 where there is none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _reset_peak_rss() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # Linux: reset VmHWM to the current RSS


def _measure_worker(config: dict[str, Any]) -> None:
    """Ray Train worker: every arm of the spec in turn, one worker group for all (module docstring)."""
    import gc

    import ray.train
    spec: RunSpec = config["spec"]
    torch.set_num_threads(spec.cfg.cpus_per_worker)
    for arm in spec.arms:
        rows = _measure_arm(spec, arm)
        gc.collect()
        if rows is not None:
            Path(spec.out_dir, f"{arm}.json").write_text(json.dumps(rows))
    ray.train.report({"arms": len(spec.arms)})


def _measure_arm(spec: RunSpec, arm: str) -> list[dict[str, Any]] | None:
    """Train a fresh model ``cfg.steps`` steps under ``arm`` and measure; rank 0 gets every rank's row."""
    cfg = spec.cfg
    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    if cfg.use_gpu and torch.cuda.is_available():
        import ray.train.torch
        device = ray.train.torch.get_device()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    else:
        device = torch.device("cpu")
    strategy, reshard = ARMS[arm]
    options = ParallelOptions(strategy, fsdp_reshard_after_forward=reshard, **spec.extra)
    torch.manual_seed(cfg.seed)
    model = GPT(GPTConfig(**cfg.model())).to(device)
    n_params = sum(p.numel() for p in model.parameters())  # before any strategy shards them
    par = wrap(model, options, device, world, cfg.precision, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95),
               grad_clip=1.0, grad_accum=1, micro_batch=cfg.batch_size)
    if strategy == "ddp" and world > 1:  # make DDP's all-reduce visible to the counter (CommCounter)
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
        par.forward_model.register_comm_hook(dist.group.WORLD, allreduce_hook)
    # After the model and optimizer exist (and the strategy's libraries are imported): the growth is the run's.
    _reset_peak_rss()
    rss_before = _rss_bytes("VmRSS")
    counter = CommCounter(world)
    losses, times, comm, state = [], [], [], {}
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if cfg.precision == "bf16"
                else contextlib.nullcontext())
    try:
        for step in range(cfg.steps):
            x, y = _batch(cfg, step, rank, device)
            counter.bytes, counter.counting = 0.0, True
            t0 = time.perf_counter()
            with par.micro_batch(last=True):
                with autocast:
                    _, loss = par.forward_model(x, y)
                par.backward(loss)
            if step == cfg.steps - 1:
                counter.counting = False
                state = par.local_state_bytes()  # gradients are alive between backward and step
                counter.counting = True
            par.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
            counter.counting = False
            comm.append(counter.bytes)
            losses.append(loss.item())
    finally:
        counter.close()
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = _rss_bytes("VmHWM") - rss_before
    timed = times[cfg.warmup_steps:]
    step_s = statistics.median(timed)
    row = {"arm": arm, "strategy": strategy, "rank": rank, "ranks": world,
           "params": n_params,
           "state_bytes_per_rank": sum(state.values()), "state_breakdown": state, "peak_bytes": peak,
           "peak_kind": "cuda_max_allocated" if device.type == "cuda" else "rss_growth",
           "step_s": step_s, "tokens_per_s": cfg.batch_size * cfg.block_size * world / step_s,
           "comm_bytes_per_step": statistics.median(comm[cfg.warmup_steps:]), "comm_by_op": counter.by_op,
           "losses": losses}
    rows = [None] * world if rank == 0 else None
    if world > 1:
        dist.gather_object(row, rows, dst=0)
    else:
        rows = [row]
    if spec.probe:
        _save_probe(cfg, par, rank, Path(spec.out_dir) / f"{arm}.pt")
    return rows if rank == 0 else None


def _save_probe(cfg: ParallelExperimentConfig, par, rank: int, out: Path) -> None:
    """Testing: logits of a fixed batch through the (sharded) training model, and the gathered state dict."""
    x, _ = _batch(cfg, 10_000, 0, next(par.model.parameters()).device)
    par.model.eval()
    with torch.no_grad():  # every rank: under FSDP and ZeRO-3 the forward gathers the weights
        logits, _ = par.model(x)
    state = par.full_state_dict()
    if rank == 0:
        torch.save({"state": state, "x": x.cpu(), "logits": logits.float().cpu()}, out)


def run_arms(cfg: ParallelExperimentConfig, arms: list[str], work_dir: Path, probe: bool = False,
             **extra: Any) -> dict[str, list[dict[str, Any]]]:
    """Run ``arms`` one after the other in one Ray Train worker group; ``{arm: per-rank rows}``."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from shared.cluster import ensure_ray, fit
    ensure_ray()
    work_dir = Path(work_dir)
    for arm in arms:
        (work_dir / f"{arm}.json").unlink(missing_ok=True)
    spec = RunSpec(list(arms), cfg, str(work_dir), probe, dict(extra))
    trainer = TorchTrainer(
        _measure_worker, train_loop_config={"spec": spec},
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.use_gpu,
                                               resources_per_worker={"CPU": cfg.cpus_per_worker}),
        run_config=ray.train.RunConfig(name="parallelism", storage_path=str(work_dir / "ray"),
                                       failure_config=ray.train.FailureConfig(max_failures=0)))
    fit(trainer)
    return {arm: json.loads((work_dir / f"{arm}.json").read_text()) for arm in arms}


def activation_bytes_per_sample(cfg: ParallelExperimentConfig, checkpointing: bool = False) -> float:
    """Bytes autograd saves for backward per sequence of the micro-batch, measured (module docstring)."""
    torch.manual_seed(cfg.seed)
    model = GPT(GPTConfig(**cfg.model()))
    if checkpointing:
        from shared.training.parallel import _maybe_checkpoint_blocks
        _maybe_checkpoint_blocks(model, True)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def saved(batch: int) -> int:
        seen: set[int] = set()
        total = 0

        def pack(t: torch.Tensor):
            nonlocal total
            ptr = t.untyped_storage().data_ptr()
            if ptr not in params and ptr not in seen:  # weights are state, not activations
                seen.add(ptr)
                total += t.untyped_storage().nbytes()
            return t
        ids = torch.randint(0, cfg.vocab_size, (batch, cfg.block_size + 1))
        ctx = (torch.autocast("cpu", dtype=torch.bfloat16) if cfg.precision == "bf16" else contextlib.nullcontext())
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), ctx:
            _, loss = model(ids[:, :-1], ids[:, 1:])
        del loss
        return total
    return float(saved(2) - saved(1))


def _budget_bytes(cfg: ParallelExperimentConfig) -> tuple[float, str]:
    if cfg.memory_budget_mb is not None:
        return cfg.memory_budget_mb * 2 ** 20, f"{cfg.memory_budget_mb:g} MB per rank (parallel.memory_budget_mb)"
    if cfg.use_gpu and torch.cuda.is_available():
        total = torch.cuda.get_device_properties(0).total_memory
        return float(total), "the GPU's memory"
    return 256 * 2 ** 20, "256 MB per rank (default; set parallel.memory_budget_mb)"


def summarize(arm_rows: dict[str, list[dict[str, Any]]], cfg: ParallelExperimentConfig,
              theory: Optional[Theory]) -> list[dict[str, Any]]:
    """One table row per arm: the worst rank's memory and the mean timings, beside the theory."""
    per_sample = activation_bytes_per_sample(cfg)
    budget, _ = _budget_bytes(cfg)
    rows = []
    for arm, ranks in arm_rows.items():
        strategy, reshard = ARMS[arm]
        worst = max(ranks, key=lambda r: r["state_bytes_per_rank"])
        row = {"arm": arm, "strategy": strategy, "ranks": worst["ranks"], "params": worst["params"],
               "state_bytes_per_rank": worst["state_bytes_per_rank"],
               "peak_rss_bytes": max(r["peak_bytes"] for r in ranks), "peak_kind": worst["peak_kind"],
               "step_s": statistics.mean(r["step_s"] for r in ranks), "tokens_per_s": ranks[0]["tokens_per_s"],
               "comm_bytes_per_step": max(r["comm_bytes_per_step"] for r in ranks),
               "final_loss": statistics.mean(r["losses"][-1] for r in ranks),
               "activation_bytes_per_sample": per_sample,
               "max_batch_in_budget": max(0, int((budget - worst["state_bytes_per_rank"]) // per_sample)),
               "per_rank": ranks}
        for precision, key in ((cfg.precision, "planner_state_bytes"), ("bf16", "planner_bf16_state_bytes")):
            row[key] = (theory(strategy, reshard, cfg.model(), worst["ranks"], cfg.batch_size, cfg.block_size,
                               precision) if theory else None)
        row["planner_ratio"] = (row["state_bytes_per_rank"] / row["planner_state_bytes"]
                                if row["planner_state_bytes"] else None)
        rows.append(row)
    return rows


COLUMNS = ["arm", "ranks", "params", "state_bytes_per_rank", "planner_state_bytes", "planner_ratio",
           "planner_bf16_state_bytes", "peak_rss_bytes", "step_s", "tokens_per_s", "comm_bytes_per_step",
           "final_loss", "max_batch_in_budget"]


def _chart(rows: list[dict[str, Any]], cfg: ParallelExperimentConfig, budget_note: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    labels = [r["arm"] for r in rows]
    xs = range(len(rows))
    ax = axes[0]
    w = 0.27
    ax.bar([x - w for x in xs], [r["state_bytes_per_rank"] / 1e6 for r in rows], w, label="measured state")
    ax.bar(list(xs), [(r["planner_state_bytes"] or 0) / 1e6 for r in rows], w, label=f"planner ({cfg.precision})")
    ax.bar([x + w for x in xs], [(r["planner_bf16_state_bytes"] or 0) / 1e6 for r in rows], w,
           label="planner, bf16 mixed precision (ZeRO: 4Ψ+12Ψ/N, 2Ψ+14Ψ/N, 16Ψ/N)")
    ax.set(title=f"params + grads + optimizer per rank (N={cfg.workers})", ylabel="MB")
    ax.legend(fontsize=7)
    axes[1].bar(labels, [r["comm_bytes_per_step"] / 1e6 for r in rows], color="tab:orange")
    axes[1].set(title="bytes sent per rank per step (ring)", ylabel="MB")
    axes[2].bar(labels, [r["tokens_per_s"] for r in rows], color="tab:green")
    axes[2].set(title="tokens/s (all ranks)")
    for a in axes:
        a.set_xticks(list(xs), labels, rotation=30, fontsize=8)
        a.grid(alpha=0.3, axis="y")
    fig.suptitle(f"parallelism: {rows[0]['params']:,} params, batch {cfg.batch_size}×{cfg.block_size} per rank, "
                 f"{cfg.steps} steps; max batch under {budget_note}")
    fig.tight_layout()
    return fig


def parallelism_experiment(cfg, theory: Optional[Theory] = None):
    """Run every arm of ``cfg.parallel`` (an ``ExperimentConfig``) and register ``<run>/<stage>-parallelism``."""
    from shared.registry import Registry
    from shared.training.experiments import write_experiment
    pcfg: ParallelExperimentConfig = cfg.parallel
    pcfg.validate()
    registry = Registry(cfg.runs_dir)
    stage = f"{cfg.stage}-parallelism"
    with tempfile.TemporaryDirectory(prefix="parallelism-") as work:
        arm_rows = run_arms(pcfg, pcfg.arms, Path(work))
    rows = summarize(arm_rows, pcfg, theory)
    _, budget_note = _budget_bytes(pcfg)
    fig = _chart(rows, pcfg, budget_note)
    art = write_experiment(registry, cfg, stage, rows, COLUMNS, [], fig)
    note = (f"max_batch_in_budget: (budget - measured state) / measured activation bytes per sample "
            f"({rows[0]['activation_bytes_per_sample']:,.0f} B), budget {budget_note}. peak_rss_bytes: "
            f"{rows[0]['peak_kind']} (on CPU the arms share one process per rank, so the first arm also pays "
            "the allocator's first growth; state_bytes_per_rank is the exact figure). planner_*: "
            "shared.plan.memory.strategy_bytes(...).state at this run's precision and at bf16. comm_bytes_per_step: "
            "bytes one rank sends per step on a ring (CommCounter).\n")
    with open(art.dir / f"{stage}.md", "a", encoding="utf-8") as fh:
        fh.write("\n" + note)
    return art


__all__ = ["ARMS", "RunSpec", "COLUMNS", "CommCounter", "ParallelExperimentConfig", "activation_bytes_per_sample",
           "parallelism_experiment", "run_arms", "summarize"]
