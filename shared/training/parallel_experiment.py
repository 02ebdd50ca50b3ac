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

The driver adds what the theory says (``theory`` and ``planner_batch``, the memory planner, which the stage
table hands in: training may not import ``shared.plan``, see docs/architecture.md).

The largest micro-batch that fits (``parallel.batch_search``; the try-it method of the HF accelerate FSDP
posts and ``find_executable_batch_size``): after an arm is measured, the same workers build a fresh model
under the same strategy, take one step at micro-batch 1 (so the optimizer state exists), then train real
steps (forward, backward, optimizer step) at growing micro-batches: doubling until one fails, then
bisecting between the last fit and the first failure (``search_largest_batch``: at most
``2·ceil(log2(max_micro_batch)) + 1`` trials). A trial fails on a rank when

- on CUDA: it raises ``torch.cuda.OutOfMemoryError`` (the model is then rebuilt, since a step that died
  half-way leaves the strategy's buffers in an unknown state), or ``max_memory_allocated`` since the
  trial's start exceeds ``memory_budget_gb`` when one is set. The ranks hold the same and run the same
  shapes, so they run out at the same point; one that ran out where the others did not would leave them
  waiting in a collective (NCCL's timeout then ends the run);
- on CPU, where nothing runs out of memory: the bytes the rank holds through torch's CPU allocator at
  the step's peak exceed ``memory_budget_gb`` (required there). Held bytes come from the profiler's
  allocation events (``profile_memory=True``, ``HeldBytes``), summed in order from before the model was
  built, so they count what ``max_memory_allocated`` counts on a GPU: parameters, gradients, optimizer
  state, DDP's buckets, DeepSpeed's flat buffers and reduce bucket (allocated whole, even where the OS
  never backs its untouched pages), activations and the backward's temporaries. Byte-exact and the same
  on every run under DDP; under FSDP2 and ZeRO-3 a free on one of gloo's threads can go unreported, which
  the search keeps to about one transformer block's weights of noise (0.8 MB on the test's model: FSDP's
  answer there is 19 to 22 from run to run, DDP's always 14). RSS would blur all of it.

and all ranks agree (an all-reduce of the verdict, MIN): every rank takes the same path through the
search. Reported per arm beside ``planner_batch``'s answer for the same budget
(``shared.plan.memory.largest_micro_batch``, what ``journey plan`` uses too). The result is an
``experiment`` artifact: table (md + json) and a chart.
"""
from __future__ import annotations

import contextlib
import gc
import json
import math
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Optional

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

#: ``planner_batch(strategy, reshard_after_forward, model, ranks, seq_len, precision, budget_bytes, on_gpu)`` ->
#: the largest micro-batch the memory planner says fits ``budget_bytes`` per rank
#: (``shared.plan.memory.largest_micro_batch``); 0 when not even one does.
PlannerBatch = Callable[[str, bool, dict, int, int, str, float, bool], int]

#: Decimal gigabyte, as GPUs are sold (``shared.plan.hardware.GB``).
GB = 1000 ** 3

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
class BatchSearchConfig:
    """``parallel.batch_search``: find the largest micro-batch that fits, per strategy, by trying (module docstring)."""

    enabled: bool = help_field(True, "search the largest micro-batch per strategy with real training steps")
    memory_budget_gb: Optional[float] = help_field(
        0.02, "per-rank budget in GB (1e9 bytes): a trial whose peak exceeds it fails. Required on CPU, where "
        "nothing runs out of memory; on CUDA optional (null: only an out-of-memory error fails)")
    max_micro_batch: int = help_field(64, "largest micro-batch tried (the search stops there: 'capped')")

    def validate(self, use_gpu: Optional[bool] = None) -> None:
        """Field checks; with ``use_gpu`` known (``ParallelExperimentConfig.validate``) also the CPU budget."""
        if not self.enabled:
            return
        if self.memory_budget_gb is None and use_gpu is False:
            raise ConfigError("parallel.batch_search.memory_budget_gb is required on CPU (nothing runs out of memory "
                              "there, so the budget is what a trial fails against): set e.g. "
                              "parallel.batch_search.memory_budget_gb=0.02, or parallel.batch_search.enabled=false")
        if self.memory_budget_gb is not None and self.memory_budget_gb <= 0:
            raise ConfigError(f"parallel.batch_search.memory_budget_gb must be > 0, got {self.memory_budget_gb}")
        if self.max_micro_batch < 1:
            raise ConfigError(f"parallel.batch_search.max_micro_batch must be >= 1, got {self.max_micro_batch}")

    @property
    def budget_bytes(self) -> Optional[float]:
        return None if self.memory_budget_gb is None else self.memory_budget_gb * GB


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
    batch_search: BatchSearchConfig = field(default_factory=BatchSearchConfig, metadata={
        "help": "largest micro-batch per strategy, found by training: enabled, memory_budget_gb, max_micro_batch"})
    cpus_per_worker: int = help_field(1, "CPU threads per worker")
    seed: int = help_field(1337, "seed of the model and the batches")

    RENAMED: ClassVar[dict[str, str]] = {"memory_budget_mb": "parallel.batch_search.memory_budget_gb"}

    def validate(self) -> None:
        bad = [a for a in self.arms if a not in ARMS]
        if bad or not self.arms:
            raise ConfigError(f"parallel.arms: unknown arm {bad[0] if bad else '(none)'!r}; choose from {list(ARMS)}")
        if self.workers < 1 or self.steps <= self.warmup_steps or self.warmup_steps < 0:
            raise ConfigError("parallel.workers must be >= 1 and parallel.steps > parallel.warmup_steps >= 0 "
                              f"(got workers={self.workers}, steps={self.steps}, warmup_steps={self.warmup_steps})")
        if self.precision not in ("fp32", "bf16"):
            raise ConfigError(f"parallel.precision must be fp32 or bf16, got {self.precision!r}")
        self.batch_search.validate(self.use_gpu)

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
    search: bool = False  # after each arm, search its largest micro-batch (cfg.batch_search)


def _batch(cfg: ParallelExperimentConfig, step: int, rank: int, device,
           batch: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(cfg.seed + 1_000_003 * step + 10_007 * rank)
    ids = torch.randint(0, cfg.vocab_size, (batch or cfg.batch_size, cfg.block_size + 1), generator=g)
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
    import ray.train
    spec: RunSpec = config["spec"]
    torch.set_num_threads(spec.cfg.cpus_per_worker)
    for arm in spec.arms:
        rows = _measure_arm(spec, arm)
        _free_memory()
        if spec.search:
            found = _search_arm(spec, arm)
            _free_memory()
            if rows is not None:
                for row, one in zip(rows, found):
                    row["search"] = one
        if rows is not None:
            Path(spec.out_dir, f"{arm}.json").write_text(json.dumps(rows))
    ray.train.report({"arms": len(spec.arms)})


def _measure_arm(spec: RunSpec, arm: str) -> list[dict[str, Any]] | None:
    """Train a fresh model ``cfg.steps`` steps under ``arm`` and measure; rank 0 gets every rank's row."""
    cfg = spec.cfg
    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    device = _device(cfg)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
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


# ----------------------------------------------------------------------------- largest micro-batch that fits


@dataclass
class SearchResult:
    """What ``search_largest_batch`` found: ``largest`` fits (0: not even 1), ``trials`` in the order tried as
    ``(micro_batch, fits)``; ``capped`` when ``largest`` is the search's ``max_batch`` (the limit may lie above)."""

    largest: int
    trials: list[tuple[int, bool]]
    capped: bool


def max_trials(max_batch: int) -> int:
    """The most trials ``search_largest_batch`` takes: ``ceil(log2 max)`` + 1 doublings, then a bisection of an
    interval of at most ``max/2``."""
    return 2 * math.ceil(math.log2(max_batch)) + 1 if max_batch > 1 else 1


def search_largest_batch(fits: Callable[[int], bool], max_batch: int) -> SearchResult:
    """The largest micro-batch in ``1..max_batch`` for which ``fits`` holds, assuming it is monotone (what fits
    at b fits below b): 1, 2, 4, ... (the last step clipped to ``max_batch``) until a failure, then bisection
    between the last fit and the first failure. At most ``max_trials(max_batch)`` calls of ``fits``.

    Deterministic given the answers, so ranks that all see the same (agreed) answers take the same path.
    """
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    trials: list[tuple[int, bool]] = []

    def trial(b: int) -> bool:
        ok = bool(fits(b))
        trials.append((b, ok))
        return ok
    fit, b = 0, 1  # fit: the largest known to fit
    while trial(b):
        fit = b
        if b == max_batch:
            return SearchResult(fit, trials, capped=True)
        b = min(2 * b, max_batch)
    fail = b  # the smallest known to fail
    while fail - fit > 1:
        mid = (fit + fail) // 2
        if trial(mid):
            fit = mid
        else:
            fail = mid
    return SearchResult(fit, trials, capped=False)


def _all_reduce_min(value: int, device: torch.device) -> int:
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def agreed(ok: bool, device: torch.device) -> bool:
    """``ok`` on every rank (an all-reduce MIN of the flag): one rank out of memory fails the trial for all."""
    return bool(_all_reduce_min(int(ok), device))


class HeldBytes:
    """Bytes this process holds through torch's CPU allocator, from the profiler's allocation events
    (``profile_memory=True``: one signed event per allocation and free, in time order, every thread).

    ``level`` is the running sum over every ``window`` so far (what is held after the last one), ``rise``
    how far above its starting level the last window went. Not every free is reported: the profiler only
    hears of frees on threads it watches, and under FSDP2 / ZeRO-3 a gloo thread sometimes drops the last
    reference to a gathered block (which thread does varies run to run), so a window can read one or two
    blocks high and the level creeps up. Hence the search's peak is ``base + rise``: ``base`` the level
    once the model is built (the smallest over the ranks, which hold the same), ``rise`` the smaller of
    two steps at the trial's size, each in its own window, so the creep neither piles up from trial to
    trial nor decides one.
    """

    def __init__(self) -> None:
        self.level = self.rise = 0

    @contextlib.contextmanager
    def window(self):
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            yield self
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
        level = peak = self.level
        for e in sorted(events, key=lambda e: e.start_ns()):
            level += e.nbytes()
            peak = max(peak, level)
        self.level, self.rise = level, peak - self.level


def _free_memory() -> None:
    """Drop what the last arm or trial left (DeepSpeed's engine holds reference cycles) and CUDA's cache."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _device(cfg: ParallelExperimentConfig) -> torch.device:
    if cfg.use_gpu and torch.cuda.is_available():
        import ray.train.torch
        return ray.train.torch.get_device()
    return torch.device("cpu")


def _train_step(par, cfg: ParallelExperimentConfig, step: int, rank: int, device, batch: int) -> float:
    """One optimizer step at micro-batch ``batch``: forward, backward, step (under bf16 autocast if asked)."""
    x, y = _batch(cfg, step, rank, device, batch)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if cfg.precision == "bf16"
                else contextlib.nullcontext())
    with par.micro_batch(last=True):
        with autocast:
            _, loss = par.forward_model(x, y)
        par.backward(loss)
    par.step()
    return loss.item()


def _search_arm(spec: RunSpec, arm: str) -> list[dict[str, Any]] | None:
    """Every rank: the largest micro-batch that fits ``cfg.batch_search`` under ``arm`` (module docstring);
    rank 0 gets every rank's ``{largest, capped, trials, peaks}``."""
    cfg, search = spec.cfg, spec.cfg.batch_search
    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    device = _device(cfg)
    cuda = device.type == "cuda"
    strategy, reshard = ARMS[arm]
    budget = search.budget_bytes
    held = HeldBytes()
    built: dict[str, Any] = {}

    def build() -> None:
        built.clear()
        _free_memory()
        with held.window() if not cuda else contextlib.nullcontext():
            torch.manual_seed(cfg.seed)
            model = GPT(GPTConfig(**cfg.model())).to(device)
            options = ParallelOptions(strategy, fsdp_reshard_after_forward=reshard, **spec.extra)
            built["par"] = wrap(model, options, device, world, cfg.precision, lr=1e-3, weight_decay=0.1,
                                betas=(0.9, 0.95), grad_clip=1.0, grad_accum=1, micro_batch=1)
            _train_step(built["par"], cfg, 0, rank, device, 1)  # the optimizer state exists from here on
            gc.collect()  # what the step left in reference cycles
        if not cuda:  # what a rank holds between steps (HeldBytes: the smallest over the ranks)
            built["base"] = _all_reduce_min(held.level, device)

    peaks: dict[int, Optional[int]] = {}

    def fits(b: int) -> bool:
        ok, peak, oom = True, None, False
        try:
            if cuda:
                _free_memory()
                torch.cuda.reset_peak_memory_stats(device)
                _train_step(built["par"], cfg, 1, rank, device, b)
                torch.cuda.synchronize(device)
                peak = torch.cuda.max_memory_allocated(device)
            else:
                with held.window():  # frees of what earlier steps left in reference cycles count here
                    gc.collect()
                rises = []
                gc.disable()  # no collection inside the step: its peak does not depend on when gc runs
                try:
                    for _ in range(2):  # the smaller of two steps (HeldBytes: unreported frees)
                        with held.window():
                            _train_step(built["par"], cfg, 1, rank, device, b)
                        rises.append(held.rise)
                finally:
                    gc.enable()
                peak = built["base"] + min(rises)
            ok = budget is None or peak <= budget
        except torch.OutOfMemoryError:
            ok, oom = False, True
        peaks[b] = peak
        ok = agreed(ok, device)
        if not agreed(not oom, device):  # out of memory half-way through a step somewhere: every rank starts
            build()  # from a fresh model (building is collective: all ranks or none)
        return ok

    build()
    found = search_largest_batch(fits, search.max_micro_batch)
    built.clear()
    mine = {"largest": found.largest, "capped": found.capped, "trials": found.trials,
            "peak_bytes": peaks.get(found.largest), "peaks": {str(b): p for b, p in peaks.items()},
            "peak_kind": "cuda_max_allocated" if cuda else "cpu_allocator_held"}
    rows = [None] * world if rank == 0 else None
    if world > 1:
        dist.gather_object(mine, rows, dst=0)
    else:
        rows = [mine]
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
             search: bool = False, **extra: Any) -> dict[str, list[dict[str, Any]]]:
    """Run ``arms`` one after the other in one Ray Train worker group; ``{arm: per-rank rows}``. With ``search``,
    each arm's largest micro-batch under ``cfg.batch_search`` too (each rank's row gets ``search``)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from shared.cluster import ensure_ray, fit
    ensure_ray()
    work_dir = Path(work_dir)
    for arm in arms:
        (work_dir / f"{arm}.json").unlink(missing_ok=True)
    spec = RunSpec(list(arms), cfg, str(work_dir), probe, dict(extra), search)
    trainer = TorchTrainer(
        _measure_worker, train_loop_config={"spec": spec},
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.use_gpu,
                                               resources_per_worker={"CPU": cfg.cpus_per_worker}),
        run_config=ray.train.RunConfig(name="parallelism", storage_path=str(work_dir / "ray"),
                                       failure_config=ray.train.FailureConfig(max_failures=0)))
    fit(trainer)
    return {arm: json.loads((work_dir / f"{arm}.json").read_text()) for arm in arms}


def _budget_note(cfg: ParallelExperimentConfig) -> str:
    gb = cfg.batch_search.memory_budget_gb
    where = "CUDA out of memory" if cfg.use_gpu else "CPU allocator peak"
    return (f"{gb:g} GB per rank ({where})" if gb is not None else "the GPU's memory (out of memory)")


def summarize(arm_rows: dict[str, list[dict[str, Any]]], cfg: ParallelExperimentConfig,
              theory: Optional[Theory], planner_batch: Optional[PlannerBatch] = None) -> list[dict[str, Any]]:
    """One table row per arm: the worst rank's memory and the mean timings, beside the theory; with a batch
    search in the rows, the largest micro-batch found, the worst rank's peak at it and the planner's answer."""
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
               "per_rank": ranks}
        for precision, key in ((cfg.precision, "planner_state_bytes"), ("bf16", "planner_bf16_state_bytes")):
            row[key] = (theory(strategy, reshard, cfg.model(), worst["ranks"], cfg.batch_size, cfg.block_size,
                               precision) if theory else None)
        row["planner_ratio"] = (row["state_bytes_per_rank"] / row["planner_state_bytes"]
                                if row["planner_state_bytes"] else None)
        row.update(_search_columns(ranks, cfg, strategy, reshard, worst["ranks"], planner_batch))
        rows.append(row)
    return rows


def _search_columns(ranks: list[dict[str, Any]], cfg: ParallelExperimentConfig, strategy: str, reshard: bool,
                    world: int, planner_batch: Optional[PlannerBatch]) -> dict[str, Any]:
    """``max_batch_measured`` (agreed by every rank), the worst rank's peak at it and ``max_batch_planned``."""
    found = [r["search"] for r in ranks if "search" in r]
    if not found:
        return {"max_batch_measured": None, "peak_at_max_batch": None, "max_batch_planned": None}
    assert len({f["largest"] for f in found}) == 1, "ranks disagree on the largest batch"  # agreed() makes them
    budget = cfg.batch_search.budget_bytes
    peaks = [f["peak_bytes"] for f in found if f["peak_bytes"] is not None]
    planned = (planner_batch(strategy, reshard, cfg.model(), world, cfg.block_size, cfg.precision, budget, cfg.use_gpu)
               if planner_batch and budget is not None else None)
    if planned is not None:
        planned = min(planned, cfg.batch_search.max_micro_batch)  # the search looks no further
    return {"max_batch_measured": found[0]["largest"], "max_batch_capped": found[0]["capped"],
            "peak_at_max_batch": max(peaks) if peaks else None, "max_batch_planned": planned,
            "search_trials": found[0]["trials"], "search_peak_kind": found[0]["peak_kind"]}


COLUMNS = ["arm", "ranks", "params", "state_bytes_per_rank", "planner_state_bytes", "planner_ratio",
           "planner_bf16_state_bytes", "peak_rss_bytes", "step_s", "tokens_per_s", "comm_bytes_per_step",
           "final_loss"]
#: The batch search's columns, added when it ran.
SEARCH_COLUMNS = ["max_batch_measured", "peak_at_max_batch", "max_batch_planned"]


def _chart(rows: list[dict[str, Any]], cfg: ParallelExperimentConfig):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    searched = rows[0].get("max_batch_measured") is not None
    fig, axes = plt.subplots(1, 4 if searched else 3, figsize=(20 if searched else 15, 4.2))
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
    if searched:
        w = 0.4
        for dx, key, label in ((-w / 2, "max_batch_measured", "measured (trained)"), (w / 2, "max_batch_planned",
                                                                                     "planner")):
            bars = axes[3].bar([x + dx for x in xs], [r[key] or 0 for r in rows], w, label=label)
            axes[3].bar_label(bars, fontsize=7)  # a 0 (nothing fits) shows as a number, not as a missing bar
        axes[3].set(title=f"largest micro-batch per rank\nunder {_budget_note(cfg)}", ylabel="sequences")
        axes[3].legend(fontsize=7)
    for a in axes:
        a.set_xticks(list(xs), labels, rotation=30, fontsize=8)
        a.grid(alpha=0.3, axis="y")
    fig.suptitle(f"parallelism: {rows[0]['params']:,} params, batch {cfg.batch_size}×{cfg.block_size} per rank, "
                 f"{cfg.steps} steps")
    fig.tight_layout()
    return fig


def parallelism_experiment(cfg, theory: Optional[Theory] = None, planner_batch: Optional[PlannerBatch] = None):
    """Run every arm of ``cfg.parallel`` (an ``ExperimentConfig``) and register ``<run>/<stage>-parallelism``."""
    from shared.registry import Registry
    from shared.training.experiments import write_experiment
    pcfg: ParallelExperimentConfig = cfg.parallel
    pcfg.validate()
    registry = Registry(cfg.runs_dir)
    stage = f"{cfg.stage}-parallelism"
    search = pcfg.batch_search.enabled
    with tempfile.TemporaryDirectory(prefix="parallelism-") as work:
        arm_rows = run_arms(pcfg, pcfg.arms, Path(work), search=search)
    rows = summarize(arm_rows, pcfg, theory, planner_batch)
    fig = _chart(rows, pcfg)
    art = write_experiment(registry, cfg, stage, rows, COLUMNS + (SEARCH_COLUMNS if search else []), [], fig)
    note = (f"peak_rss_bytes: {rows[0]['peak_kind']} (on CPU the arms share one process per rank, so the first arm "
            "also pays the allocator's first growth; state_bytes_per_rank is the exact figure). planner_*: "
            "shared.plan.memory.strategy_bytes(...).state at this run's precision and at bf16. comm_bytes_per_step: "
            "bytes one rank sends per step on a ring (CommCounter).\n")
    if search:
        note += _search_note(rows, pcfg)
    with open(art.dir / f"{stage}.md", "a", encoding="utf-8") as fh:
        fh.write("\n" + note)
    return art


def _search_note(rows: list[dict[str, Any]], cfg: ParallelExperimentConfig) -> str:
    bs = cfg.batch_search
    capped = [r["arm"] for r in rows if r.get("max_batch_capped")]
    kind = rows[0]["search_peak_kind"]
    trials = ", ".join(f"{r['arm']} " + " ".join(f"{b}{'✓' if ok else '✗'}" for b, ok in r["search_trials"])
                       for r in rows)
    return (f"\nmax_batch_measured: the largest micro-batch per rank that trained (forward, backward, optimizer step "
            f"on {cfg.workers} ranks at sequence length {cfg.block_size}) under {_budget_note(cfg)}, found by "
            f"doubling then bisecting up to {bs.max_micro_batch} (at most {max_trials(bs.max_micro_batch)} trials), "
            "every rank agreeing. peak_at_max_batch: the worst rank's peak there ("
            + ("CUDA max_memory_allocated" if kind == "cuda_max_allocated" else
               "bytes held through torch's CPU allocator, from the profiler's allocation events, counted from before "
               "the model was built")
            + "). max_batch_planned: shared.plan.memory.largest_micro_batch for the same budget (what `journey plan` "
            "uses). The planner adds the gradients to every stored activation, while backward frees a layer's "
            "activations as its gradients appear, and it leaves out the backward's temporaries (the logits' "
            "gradient): it errs either way by up to about a third on these small models. ZeRO-1/2/3 allocate "
            "DeepSpeed's gradient reduce bucket whole; our loop caps it at the model's size (DeepSpeed's default "
            "of 5e8 elements, 2 GB in fp32, would leave no batch room on a budget of megabytes), and the planner "
            "counts the same bucket."
            + (f" Capped at max_micro_batch: {', '.join(capped)} (raise parallel.batch_search.max_micro_batch)."
               if capped else "")
            + f"\n\nTrials (micro-batch, ✓ fits / ✗ fails): {trials}.\n")


__all__ = ["ARMS", "BatchSearchConfig", "RunSpec", "COLUMNS", "SEARCH_COLUMNS", "CommCounter", "HeldBytes",
           "ParallelExperimentConfig", "SearchResult", "agreed", "max_trials", "parallelism_experiment", "run_arms",
           "search_largest_batch", "summarize"]
