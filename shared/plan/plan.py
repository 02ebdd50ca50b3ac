"""The plan of a journey: per stage its data, tokens, steps, memory per GPU and time, and the problems.

``make_plan(configs, ...)`` takes every stage's resolved config (``ray_jobs.plan`` resolves them the
way ``journey run`` does) and builds a ``Plan`` without running anything: no Ray, no model built.

- **Models.** A stage's model is what its ``init_from`` names: a stage earlier in this plan (its
  shape follows from that stage), an artifact of the registry, or an HF checkpoint directory
  (its ``config.json``). Pretraining from scratch builds ``model.preset`` with the tokenizer's
  vocabulary, as ``shared.training.runner`` does.
- **Memory** per GPU from the shape (``shared.plan.memory``; formulas there).
- **Time** from throughput (``shared.plan.throughput``): measured in this registry when an earlier
  artifact of the same stage, shape and device exists, else the llm.c reference for a GPU;
  stages that do not train are timed only from an earlier artifact (scaled by their work).
- **Problems**, each with its fix: a GPU stage with no GPU here, data that is missing, unreachable
  or has the wrong fields, a model whose vocabulary is smaller than, or not a padded copy of, the
  tokenizer's, a model or artifact nothing makes, memory above ``USABLE_FRACTION`` of the GPU's (the
  fix names the parallelism ``choose_strategy`` picks for a pretraining stage), and the presets
  missing (found by the caller and passed in).
- **Parallelism** of a GPU pretraining stage (``shared.plan.parallelism``): its model under every
  strategy on 1, 4 and 8 GPUs of 80 GB, this job's GPUs and this machine's, and the choice for each;
  the row's own memory is the strategy its config names (``parallelism`` and options).
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from shared.chat_format import SPECIAL_TOKENS
from shared.model.presets import PRESETS, model_config
from shared.plan import data_check
from shared.plan.data_check import DataCheck
from shared.plan.hardware import Gpu
from shared.plan.memory import (USABLE_FRACTION, MemoryEstimate, ModelShape, Strategy, inference_memory, round_up,
                                strategy_bytes, training_memory)
from shared.plan.parallelism import ParallelismPlan, plan_parallelism, settings_for
from shared.plan.throughput import (Throughput, measured_throughput, measured_wall, read_shape,
                                    reference_throughput)
from shared.registry import Artifact, ArtifactNotFound, Registry
from shared.training.posttrain_config import (DPOJobConfig, PostTrainConfig, PrefsJobConfig, RewardJobConfig,
                                              RLJobConfig)
from shared.training.pretrain_config import PretrainConfig

#: Padding multiples a trainer may round a vocabulary up to (llm.c pads 50257 to 50304 = 64·786).
VOCAB_PADDING = (64, 128)
#: GPUs without bf16 (pre-Ampere): "auto" precision means fp16 there.
NO_BF16 = ("T4", "V100")


@dataclass
class Problem:
    """Something that would stop (or break) a stage, and how to fix it."""

    stage: str
    message: str
    fix: str


@dataclass
class StageRow:
    """One stage of the plan; ``None`` where a number cannot be known before the run."""

    stage: str
    data: list[DataCheck] = field(default_factory=list)
    model: Optional[ModelShape] = None
    model_from: str = ""  # where the model comes from (a stage of this plan, an artifact, a preset)
    tokens: Optional[int] = None
    tokens_what: str = ""  # trained, generated, scored, corpus bytes
    steps: Optional[int] = None
    workers: int = 1
    device: str = "cpu"  # cpu | gpu
    precision: str = ""
    memory: Optional[MemoryEstimate] = None
    time_s: Optional[float] = None
    time_basis: str = ""
    notes: list[str] = field(default_factory=list)
    parallelism: Optional[ParallelismPlan] = None  # a GPU training stage: every strategy on 1/4/8 GPUs and here


@dataclass
class Plan:
    """Every stage's row, the problems found, the GPU memory was checked against, the total time."""

    preset: str
    run: str
    rows: list[StageRow]
    problems: list[Problem]
    gpu: Gpu
    gpus_visible: int
    notes: list[str] = field(default_factory=list)  # about the plan as a whole (e.g. stages left out)

    @property
    def total_s(self) -> float:
        return sum(r.time_s for r in self.rows if r.time_s is not None)

    @property
    def untimed(self) -> list[str]:
        return [r.stage for r in self.rows if r.time_s is None]


@dataclass
class _Context:
    """What the stage planners share while the plan is built."""

    run: str
    registry: Registry
    gpu: Gpu
    gpus_visible: int
    hub: dict[str, tuple[bool, str]]
    artifacts: list[Artifact]
    models: dict[str, ModelShape] = field(default_factory=dict)  # stage of this plan -> the model it makes
    vocabs: dict[str, int] = field(default_factory=dict)  # tokenizer stage of this plan -> its vocabulary
    made: set[str] = field(default_factory=set)  # stages of this plan already planned (they run first)
    problems: list[Problem] = field(default_factory=list)

    def problem(self, stage: str, message: str, fix: str) -> None:
        self.problems.append(Problem(stage, message, fix))

    def artifact(self, name: str) -> Optional[Artifact]:
        try:
            return self.registry.resolve(name, run=self.run)
        except ArtifactNotFound:
            return None


# ----------------------------------------------------------------------------- the plan


def make_plan(configs: dict[str, Any], *, preset: str, run: str, runs_dir: Optional[str], gpu: Gpu,
              gpus_visible: int, problems: Optional[list[Problem]] = None, check_hub: bool = True,
              hub_timeout: float = data_check.HUB_TIMEOUT_S) -> Plan:
    """The plan of ``configs`` (stage -> resolved config, in run order; None for a stage whose
    preset is missing); ``problems`` found earlier (those presets) come first in the plan's list.
    ``gpu`` is what memory is checked against;
    ``gpus_visible`` how many this machine has (0: every ``use_gpu`` stage is a problem)."""
    registry = Registry(runs_dir)
    names = _hub_names(configs) if check_hub else []
    hub = data_check.hub_status(names, hub_timeout) if names else {}
    if not check_hub:
        hub = {n: (False, "not checked (check_hub=false)") for n in _hub_names(configs)}
    ctx = _Context(run, registry, gpu, gpus_visible, hub, registry.artifacts(), problems=list(problems or []))
    rows = []
    for stage, cfg in configs.items():
        planner = _PLANNERS.get(stage) or _planner_for(cfg)
        row = StageRow(stage)
        if cfg is None:  # no preset (a problem the caller reported); later stages still count it as made
            row.time_basis = "not planned: no preset"
        else:
            planner(ctx, stage, cfg, row)
        rows.append(row)
        ctx.made.add(stage)
    return Plan(preset, run, rows, ctx.problems, gpu, gpus_visible)


def _hub_names(configs: dict[str, Any]) -> list[str]:
    """Every hub dataset any stage reads, so they are asked about at once."""
    sources: list[str] = []
    for cfg in configs.values():
        for attr in ("sources",):
            sources += list(getattr(cfg, attr, []) or [])
        data = getattr(cfg, "data", None)
        sources += [data.source] if hasattr(data, "source") else [data] if isinstance(data, str) else []
        sources += list((getattr(cfg, "eval_data", None) or {}).values())
    return [n for n in (data_check.hub_name(s) for s in sources if isinstance(s, str)) if n]


# ----------------------------------------------------------------------------- models and tokenizers


def _resolve_model(ctx: _Context, stage: str, ref: str, key: str) -> tuple[Optional[ModelShape], str]:
    """The shape of the model ``ref`` names and where it comes from; a problem when nothing makes it."""
    if ref in ctx.made:  # its shape is unknown only when that stage had no preset
        return ctx.models.get(ref), f"stage {ref} of this plan"
    art = ctx.artifact(ref)
    if art is not None:
        shape = read_shape(art.dir)
        if shape is None:
            ctx.problem(stage, f"{key}={ref} resolves to {art.id}, a {art.kind}, not a model checkpoint",
                        f"set {key} to a model artifact (hf-model) or an HF checkpoint directory")
        where = art.id if art.run == ctx.run else f"{art.id} (another run: no stage of this plan makes {ref!r})"
        return shape, where
    path = Path(ref)
    if path.is_dir():
        shape = read_shape(path)
        if shape is None:
            ctx.problem(stage, f"{key}={ref} is a directory without a readable config.json",
                        f"point {key} at an HF checkpoint directory, or import it: journey import {ref}")
        return shape, f"checkpoint {ref}"
    if "/" in ref and not path.exists() and len(ref.split("/")) == 2 and not (ctx.registry.root / ref).exists():
        return None, f"hub model {ref} (downloaded at run time; its shape is not known here)"
    ctx.problem(stage, f"{key}={ref}: no stage of this plan makes it and there is no such artifact or checkpoint",
                f"add the stage that makes it to stages=[...], import your checkpoint (journey import SRC) and "
                f"pass {key}=imported/import, or give an HF checkpoint directory")
    return None, f"{ref} (not found)"


def tokenizer_vocab(directory: Path) -> Optional[int]:
    """Vocabulary size of an HF ``tokenizer.json``: the model's vocab plus added tokens not in it."""
    try:
        data = json.loads((Path(directory) / "tokenizer.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    vocab = data.get("model", {}).get("vocab") or {}
    ids = set(vocab.values()) if isinstance(vocab, dict) else set(range(len(vocab)))
    ids |= {t["id"] for t in data.get("added_tokens", []) if "id" in t}
    return len(ids) or None


def _resolve_tokenizer(ctx: _Context, stage: str, ref: str, key: str) -> tuple[Optional[int], str]:
    """The vocabulary size of tokenizer ``ref`` and where it comes from; a problem when nothing makes it."""
    if ref in ctx.made:
        return ctx.vocabs.get(ref), f"stage {ref} of this plan"
    art = ctx.artifact(ref)
    if art is not None:
        vocab = art.metrics.get("vocab_size") if art.kind == "tokenizer" else None
        return (int(vocab) if isinstance(vocab, (int, float)) else tokenizer_vocab(art.dir)), art.id
    if Path(ref).is_dir() and tokenizer_vocab(Path(ref)):
        return tokenizer_vocab(Path(ref)), ref
    ctx.problem(stage, f"{key}={ref}: no stage of this plan makes it and there is no such tokenizer",
                f"add the tokenizer stage to stages=[...], or set {key} to a tokenizer artifact or HF tokenizer dir")
    return None, f"{ref} (not found)"


def vocab_mismatch(model_vocab: int, tokenizer_vocab_size: int) -> bool:
    """True unless the model's vocabulary is the tokenizer's, or the tokenizer's padded up to a
    multiple of ``VOCAB_PADDING`` (50257 -> 50304): a smaller one cannot embed every token id, a
    different larger one was trained with another tokenizer, so its ids mean other tokens."""
    if model_vocab == tokenizer_vocab_size:
        return False
    return not any(model_vocab == round_up(tokenizer_vocab_size, m) for m in VOCAB_PADDING)


# ----------------------------------------------------------------------------- shared pieces


def _precision(requested: str, use_gpu: bool, gpu: Gpu) -> str:
    """``auto`` as the trainers resolve it (``shared.training.hardware.resolve_precision``): bf16 on a
    GPU that has it (fp16 on pre-Ampere ones), on CPU bf16 only with native support."""
    if requested != "auto":
        return requested
    if use_gpu:
        return "fp16" if gpu.family in NO_BF16 else "bf16"
    from shared.training.hardware import cpu_has_bf16  # torch is loaded by the configs already
    return "bf16" if cpu_has_bf16() else "fp32"


def _gpu_checks(ctx: _Context, stage: str, row: StageRow, use_gpu: bool) -> None:
    """No GPU for a GPU stage; memory per GPU above the GPU's."""
    if use_gpu and ctx.gpus_visible == 0:
        ctx.problem(stage, "use_gpu=true but this machine has no CUDA GPU",
                    f"run the plan and the journey on a GPU machine, or set {stage}.use_gpu=false "
                    "(CPU: expect it to take far longer)")
    elif use_gpu and row.workers > ctx.gpus_visible > 0:
        ctx.problem(stage, f"num_workers={row.workers} GPUs asked, {ctx.gpus_visible} visible",
                    f"set {stage}.num_workers={ctx.gpus_visible} (raise train.grad_accum to keep the tokens per step)")
    if use_gpu and row.memory is not None and row.memory.total > USABLE_FRACTION * ctx.gpu.memory:
        job = next((sp.choice for sp in (row.parallelism.settings if row.parallelism else [])
                    if (sp.setting.n_gpus, sp.setting.memory) == (row.workers, ctx.gpu.memory)), None)
        pick = (f"; or set {strategy_overrides(stage, job.choice.strategy)} ({job.reason.rstrip('.')})"
                if job is not None and job.choice is not None else "")
        ctx.problem(stage, f"needs ~{row.memory.total / 1e9:.0f} GB per GPU, the {ctx.gpu.name} has "
                           f"{ctx.gpu.memory / 1e9:.0f} GB (a plan fills at most {USABLE_FRACTION:.0%})",
                    f"lower {stage}.train.batch_size and raise {stage}.train.grad_accum by the same factor, or "
                    "enable gradient checkpointing / a ZeRO stage where the stage has them" + pick)


def _add_data(ctx: _Context, stage: str, row: StageRow, check: DataCheck) -> None:
    row.data.append(check)
    if not check.ok:
        ctx.problem(stage, check.problem or "", check.fix or "")


def _time_training(ctx: _Context, stage: str, row: StageRow, use_gpu: bool, seq: int) -> None:
    """Training time from tokens and throughput (measured here, else the GPU reference)."""
    if row.model is None or row.tokens is None:
        row.time_basis = "no model shape, no estimate"
        return
    family = ctx.gpu.family if use_gpu else None
    tp: Optional[Throughput] = measured_throughput(ctx.artifacts, ctx.registry.root, stage, row.model, use_gpu, family)
    if tp is None and use_gpu:
        tp = reference_throughput(row.model, seq, family)
        if tp is not None and stage not in ("pretrain", "cpt"):
            tp = dataclasses.replace(tp, source=tp.source + "; the HF/TRL path is slower: a lower bound")
    if tp is None:
        row.time_basis = "no throughput measured for this shape and device"
        return
    row.time_s = row.tokens / (tp.tokens_per_s * row.workers)
    row.time_basis = f"{tp.tokens_per_s * row.workers:,.0f} tokens/s ({tp.source})"


def _time_from_wall(ctx: _Context, stage: str, row: StageRow, work: Callable[[dict[str, Any]], Optional[float]],
                    cfg: Any) -> None:
    """A stage that does not train: an earlier artifact's wall time, scaled by the work it did."""
    units = work(dataclasses.asdict(cfg))
    found = measured_wall(ctx.artifacts, ctx.registry.root, stage, row.model, work) if units else None
    if found is None:
        row.time_basis = "not measured here for this model" if row.model is not None else "not measured here"
        return
    seconds, old_units, art_id = found
    row.time_s = seconds * units / old_units
    row.time_basis = f"measured: {art_id} took {seconds:.0f} s" + (
        "" if units == old_units else f", scaled ×{units / old_units:.3g} by its work")


# ----------------------------------------------------------------------------- per stage


#: Hub tokenizers a preset adopts by name, with their vocabulary size, known without a download:
#: GPT-2's BPE (HF ``gpt2``, build-nanogpt, llm.c), 50,257 ids including ``<|endoftext|>``.
KNOWN_VOCABS = {"gpt2": ("<|endoftext|>", 50257)}


def adopted_vocab(spec: str) -> tuple[Optional[int], str, Optional[str]]:
    """``(vocabulary size after our special tokens are appended, what was read, problem)`` of
    ``TokenizerConfig.pretrained`` (``shared.tokenizer.adopt``): an HF tokenizer dir, a ``.gguf``
    vocabulary or a hub name. The tokens of ``SPECIAL_TOKENS`` it lacks are added after its ids."""
    path = Path(spec)
    tokens: Optional[set[str]] = None
    size: Optional[int] = None
    if path.suffix == ".gguf":
        if not path.is_file():
            return None, "gguf vocabulary", f"{spec} does not exist"
        from gguf import GGUFReader  # deferred: only a plan adopting a .gguf vocabulary reads one
        field = GGUFReader(str(path)).fields["tokenizer.ggml.tokens"]
        tokens = {bytes(field.parts[i]).decode("utf-8", "replace") for i in field.data}
        size = len(field.data)
    elif path.is_dir():
        try:
            data = json.loads((path / "tokenizer.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None, "tokenizer dir", f"{spec} has no readable tokenizer.json"
        tokens = set(data.get("model", {}).get("vocab") or {}) | {t["content"] for t in data.get("added_tokens", [])}
        size = tokenizer_vocab(path)
    elif spec in KNOWN_VOCABS:
        eot, size = KNOWN_VOCABS[spec]
        tokens = {eot}
    if size is None or tokens is None:
        return None, "hub tokenizer (size not known here)", None
    return size + sum(t not in tokens for t in SPECIAL_TOKENS), f"{size:,} ids + our special tokens", None


def _plan_tokenizer(ctx: _Context, stage: str, cfg: Any, row: StageRow) -> None:
    pretrained = getattr(cfg, "pretrained", None)
    if pretrained:
        _plan_adopted_tokenizer(ctx, stage, pretrained, row)
        return
    for source in cfg.sources:
        _add_data(ctx, stage, row, data_check.check_corpus(source, cfg.text_field, f"{stage}.sources", ctx.hub,
                                                           f"{stage}.text_field"))
    ctx.vocabs[stage] = cfg.vocab_size
    cap = cfg.max_bytes_per_source
    row.tokens = cap * len(cfg.sources) if cap else None
    row.tokens_what = "corpus bytes (at most)"
    row.notes.append(f"vocabulary {cfg.vocab_size:,}")

    def work(c: dict[str, Any]) -> Optional[float]:
        per = c.get("max_bytes_per_source")
        return float(per * len(c.get("sources") or [])) if per else None
    _time_from_wall(ctx, stage, row, work, cfg)


def _plan_adopted_tokenizer(ctx: _Context, stage: str, spec: str, row: StageRow) -> None:
    """A tokenizer stage that adopts a vocabulary: is it readable here, and how large is it."""
    key = f"{stage}.pretrained"
    fix = (f"set {key}=<an HF tokenizer dir or a .gguf vocabulary> (GPT-2's: ../shared/data/tokenizers/"
           "ggml-vocab-gpt-2.gguf), or run where the hub is reachable")
    local = Path(spec).suffix == ".gguf" or Path(spec).is_dir()
    if local:
        check = DataCheck(spec, "local vocabulary")
    else:
        ok, why = data_check.hub_tokenizer(spec)
        check = DataCheck(spec, f"hub tokenizer, {why}", problem=None if ok else f"tokenizer {spec} is {why}",
                          fix=None if ok else fix)
    vocab, what, problem = adopted_vocab(spec)
    if problem:
        check = DataCheck(spec, what, problem=problem, fix=fix)
    _add_data(ctx, stage, row, check)
    if vocab is not None:
        ctx.vocabs[stage] = vocab
        row.notes.append(f"adopts {spec}: vocabulary {vocab:,} ({what})")
    row.time_basis = "adopts a vocabulary: seconds"
    row.time_s = 0.0 if vocab is not None else None


def _plan_pretrain(ctx: _Context, stage: str, cfg: PretrainConfig, row: StageRow) -> None:
    _add_data(ctx, stage, row, data_check.check_corpus(cfg.data.source, cfg.data.text_field, f"{stage}.data.source",
                                                       ctx.hub, f"{stage}.data.text_field"))
    for name, source in cfg.eval_data.items():
        _add_data(ctx, stage, row, data_check.check_corpus(source, cfg.eval_text_field or cfg.data.text_field,
                                                           f"{stage}.eval_data.{name}", ctx.hub,
                                                           f"{stage}.eval_text_field"))
    vocab, tok_from = _resolve_tokenizer(ctx, stage, cfg.tokenizer, f"{stage}.tokenizer")
    if cfg.init_from:
        row.model, row.model_from = _resolve_model(ctx, stage, cfg.init_from, f"{stage}.init_from")
        if row.model is not None and vocab is not None and vocab_mismatch(row.model.vocab_size, vocab):
            ctx.problem(stage, f"vocabulary mismatch: the model ({cfg.init_from}) has {row.model.vocab_size:,} "
                               f"tokens, the tokenizer ({tok_from}) {vocab:,}",
                        f"continue with the tokenizer the model was trained with: {stage}.tokenizer=<its artifact or "
                        f"HF tokenizer dir> (an imported checkpoint carries it: {stage}.tokenizer={cfg.init_from})")
    elif vocab is not None and cfg.model.preset in PRESETS:
        m = cfg.model
        gc = model_config(m.preset, vocab_size=vocab, n_layer=m.n_layer, n_head=m.n_head, n_embd=m.n_embd,
                          block_size=m.block_size)
        row.model = ModelShape(gc.vocab_size, gc.block_size, gc.n_layer, gc.n_head, gc.n_embd)
        row.model_from = f"preset {m.preset}, vocabulary of {tok_from}"
    if row.model is not None:
        ctx.models[stage] = row.model
    t = cfg.train
    row.workers, row.device, row.steps = cfg.num_workers, "gpu" if cfg.use_gpu else "cpu", t.max_steps
    row.precision = _precision(cfg.precision, cfg.use_gpu, ctx.gpu)
    seq = row.model.block_size if row.model else None
    if seq:
        row.tokens = t.batch_size * seq * t.grad_accum * cfg.num_workers * t.max_steps
        row.tokens_what = f"trained ({t.batch_size * seq * t.grad_accum * cfg.num_workers:,}/step)"
        strategy = configured_strategy(cfg)
        sb = strategy_bytes(row.model, strategy, cfg.num_workers, t.batch_size, seq, row.precision)
        row.memory = MemoryEstimate(sb.weights, sb.gradients, sb.optimizer, sb.activations, sb.params,
                                    [f"parallelism {strategy.label} over {cfg.num_workers} worker(s)", *sb.notes],
                                    buffers=sb.buffers)
        if sb.host:
            row.notes.append(f"host memory: {sb.host / 1e9:,.1f} GB per worker (offloaded state)")
        if cfg.use_gpu:
            visible = [ctx.gpu] * ctx.gpus_visible if ctx.gpu.visible else None
            row.parallelism = plan_parallelism(row.model, t.batch_size, seq, row.precision,
                                               settings_for(cfg.num_workers, ctx.gpu, visible))
    if cfg.data.max_bytes:
        row.notes.append(f"corpus capped at {cfg.data.max_bytes / 1e6:,.0f} MB of text")
    _gpu_checks(ctx, stage, row, cfg.use_gpu)
    _time_training(ctx, stage, row, cfg.use_gpu, seq or 0)
    row.notes.append("time: the training loop only (tokenizing the corpus comes first)")


def configured_strategy(cfg: Any) -> Strategy:
    """The ``Strategy`` a pretraining config asks for: its ``parallelism`` and the fsdp / zero /
    activation-checkpointing keys beside it (``PretrainConfig``; absent keys mean ddp, no options)."""
    opt = lambda name, default: getattr(cfg, name, default)  # noqa: E731
    return Strategy(opt("parallelism", "ddp"), reshard_after_forward=bool(opt("fsdp_reshard_after_forward", True)),
                    offload=bool(opt("fsdp_cpu_offload", False) or opt("zero_offload_optimizer", False)),
                    activation_checkpointing=bool(opt("activation_checkpointing", False)),
                    offload_params=bool(opt("zero_offload_params", False)))


def strategy_overrides(stage: str, strategy: Strategy) -> str:
    """The ``<stage>.key=value`` overrides that make a pretraining config ask for ``strategy`` (the
    inverse of ``configured_strategy``)."""
    keys = [f"parallelism={strategy.name}"]
    if strategy.name == "fsdp" and not strategy.reshard_after_forward:
        keys.append("fsdp_reshard_after_forward=false")
    if strategy.activation_checkpointing:
        keys.append("activation_checkpointing=true")
    if strategy.offload:
        keys.append("fsdp_cpu_offload=true" if strategy.name == "fsdp" else "zero_offload_optimizer=true")
    if strategy.offload_params:
        keys.append("zero_offload_params=true")
    return " ".join(f"{stage}.{k}" for k in keys)


def _plan_posttrain(ctx: _Context, stage: str, cfg: PostTrainConfig, row: StageRow) -> None:
    paired = isinstance(cfg, (DPOJobConfig, RewardJobConfig))
    _plan_post_data(ctx, stage, cfg.data, "preference" if paired else "sft", row)
    row.model, row.model_from = _resolve_model(ctx, stage, cfg.init_from, f"{stage}.init_from")
    if row.model is not None:
        ctx.models[stage] = row.model
    t, m, par = cfg.train, cfg.method, cfg.parallel_options()
    # FSDP2 divides the state as ZeRO-3 does (ZeRO-2 when it keeps the gathered weights until backward).
    fsdp_stage = (3 if par.fsdp_reshard_after_forward else 2) if par.strategy == "fsdp" else 0
    row.workers, row.device, row.steps = cfg.num_workers, "gpu" if cfg.use_gpu else "cpu", t.max_steps
    row.precision = _precision(cfg.precision, cfg.use_gpu, ctx.gpu)
    per_step = t.batch_size * t.max_length * t.grad_accum * cfg.num_workers * (2 if paired else 1)
    row.tokens = per_step * t.max_steps
    row.tokens_what = f"trained, at most ({per_step:,}/step{', chosen + rejected' if paired else ''})"
    if row.model is not None:
        frozen = 0
        if isinstance(cfg, DPOJobConfig) and m.method == "full":
            frozen = 1  # TRL's reference model; with adapters the base with adapters off is the reference
        if isinstance(cfg, RLJobConfig):
            frozen = 1 + (1 if cfg.beta > 0 and m.method == "full" else 0)  # the reward model (+ the reference)
        row.memory = training_memory(
            row.model, batch=t.batch_size * (2 if paired else 1), seq=t.max_length, precision=row.precision,
            method=m.method, optimizer=t.optim, lora_r=m.lora_r, lora_targets_spec=m.target_modules,
            double_quant=m.double_quant, checkpointing=cfg.checkpointing, zero_stage=par.zero_stage or fsdp_stage,
            num_workers=cfg.num_workers, offload_optimizer=par.zero_offload_optimizer or par.fsdp_cpu_offload,
            offload_params=par.zero_offload_params or (par.fsdp_cpu_offload and fsdp_stage == 3),
            frozen_copies=frozen, outputs=1 if isinstance(cfg, RewardJobConfig) else None)
        if fsdp_stage:
            row.memory.notes.append(f"parallelism=fsdp counted as ZeRO-{fsdp_stage}")
        if frozen:
            row.memory.notes.append(f"{frozen} frozen model(s) of the same shape (reference / reward model)")
    if isinstance(cfg, RLJobConfig):
        row.notes.append("time: rollout generation not included")
    _gpu_checks(ctx, stage, row, cfg.use_gpu)
    _time_training(ctx, stage, row, cfg.use_gpu, t.max_length)


def _plan_post_data(ctx: _Context, stage: str, source: str, kind: str, row: StageRow) -> None:
    """Post-training data: a stage of this plan or an artifact by name (``prefs``), else a dataset form."""
    key = f"{stage}.data"
    if source in ctx.made:
        row.data.append(DataCheck(source, f"stage {source} of this plan"))
        return
    looks_like_data = source.startswith(("hf:", "builtin:", "file:")) or Path(source).exists() or \
        Path(source).suffix.lower() in (".jsonl", ".parquet", ".txt", ".md")
    if not looks_like_data:
        art = ctx.artifact(source)
        if art is not None:
            row.data.append(DataCheck(source, f"artifact {art.id}" + ("" if art.run == ctx.run else " (another run)")))
            return
        ctx.problem(stage, f"{key}={source}: no stage of this plan makes it and there is no such artifact",
                    f"add the stage that makes it to stages=[...] or set {key} to a dataset "
                    f"(builtin:instructions, hf:<dataset>, a .jsonl file)")
        row.data.append(DataCheck(source, "artifact (not found)", problem="not found"))
        return
    _add_data(ctx, stage, row, data_check.check_examples(source, kind, key, ctx.hub))


def _plan_prefs(ctx: _Context, stage: str, cfg: PrefsJobConfig, row: StageRow) -> None:
    _plan_post_data(ctx, stage, cfg.data, "sft", row)
    row.model, row.model_from = _resolve_model(ctx, stage, cfg.init_from, f"{stage}.init_from")
    prompts, replies = _prefs_prompts_and_replies(vars(cfg))
    row.tokens = prompts * replies * cfg.max_new_tokens
    row.tokens_what = f"generated, at most ({prompts:,} prompts × {replies} replies)"
    row.workers, row.device = cfg.num_workers, "gpu" if cfg.use_gpu else "cpu"
    if row.model is not None:
        row.memory = inference_memory(row.model, batch=cfg.batch_size, seq=row.model.block_size)
    _gpu_checks(ctx, stage, row, cfg.use_gpu)
    _time_from_wall(ctx, stage, row, lambda c: float(math.prod(_prefs_prompts_and_replies(c)) * c["max_new_tokens"])
                    if "num_prompts" in c else None, cfg)


def _prefs_prompts_and_replies(c: dict[str, Any]) -> tuple[int, int]:
    """(prompts sampled, replies per prompt) of a prefs config given as a dict: this plan's or a measured run's."""
    return c["num_prompts"] + c.get("hard_safety_prompts", 0), c["samples_per_prompt"] + bool(c.get("include_greedy"))


def _plan_quantize(ctx: _Context, stage: str, cfg: Any, row: StageRow) -> None:
    row.model, row.model_from = _resolve_model(ctx, stage, cfg.init_from, f"{stage}.init_from")
    row.data.append(DataCheck(f"held-out {cfg.quality_text} text", "builtin (shared.data.heldout)"))
    row.tokens = cfg.ppl_tokens * len(cfg.variants)
    row.tokens_what = f"scored ({len(cfg.variants)} variants × {cfg.ppl_tokens:,})"
    if row.model is not None:
        row.memory = inference_memory(row.model, batch=max(cfg.concurrency), seq=cfg.prompt_tokens + cfg.new_tokens)
    _time_from_wall(ctx, stage, row, lambda c: float(len(c.get("variants") or []) * c.get("ppl_tokens", 0)) or None,
                    cfg)


def _plan_index(ctx: _Context, stage: str, cfg: Any, row: StageRow) -> None:
    for source in cfg.sources:
        _add_data(ctx, stage, row, data_check.check_corpus(source, cfg.text_field, f"{stage}.sources", ctx.hub,
                                                           f"{stage}.text_field"))
    row.model_from = f"embedder {cfg.embedder}"
    same = {k: getattr(cfg, k) for k in ("sources", "builtin_split", "max_docs", "max_chunks_per_doc", "chunk_chars")}
    # The work of an index is its chunks, known only after chunking: only a run over the same corpus times it.
    _time_from_wall(ctx, stage, row, lambda c: 1.0 if all(c.get(k) == v for k, v in same.items()) else None, cfg)


def _plan_eval(ctx: _Context, stage: str, cfg: Any, row: StageRow) -> None:
    models = [s for s in ctx.models if s in ctx.made]
    row.model = ctx.models[models[-1]] if models else None
    row.model_from = f"{len(models)} model stage(s) of this plan" + (" and the run's other artifacts" if models else "")
    standard = _standard_tasks(cfg.tasks)
    if standard and cfg.source == "local":
        if not cfg.data_dir or not Path(cfg.data_dir).is_dir():
            ctx.problem(stage, f"tasks {standard} read local copies, and data_dir={cfg.data_dir} is not a directory",
                        f"set {stage}.data_dir=<dir with the datasets' files> (layout: shared/eval/harness.py), or "
                        f"{stage}.source=hub where the hub is reachable")
        row.data.append(DataCheck(f"{', '.join(standard)}", f"local copies under {cfg.data_dir}"))
    elif standard:
        reason = data_check.offline_reason()
        # No request of its own: the plan's other hub checks say whether the hub answers from here.
        if not reason and ctx.hub and not any(ok for ok, _ in ctx.hub.values()):
            reason = "no hub dataset of this plan was reachable from here"
        row.data.append(DataCheck(f"{', '.join(standard)}", "hub datasets (lm-eval downloads them)",
                                  problem=reason and "hub unreachable"))
        if reason:
            ctx.problem(stage, f"tasks {standard} download their datasets from the hub, which is off ({reason})",
                        f"set {stage}.source=local {stage}.data_dir=<local copies> (layout: shared/eval/harness.py)")
    ours = [t for t in cfg.tasks if t not in standard]
    if ours:
        row.data.append(DataCheck(", ".join(ours), "our suite (builtin)"))
    row.tokens = cfg.ppl_tokens
    row.tokens_what = "scored per perplexity set and model"
    _time_from_wall(ctx, stage, row, lambda c: float(len(c.get("tasks") or []) * (c.get("limit") or 1000)), cfg)


def _standard_tasks(tasks: list[str]) -> list[str]:
    """The lm-eval tasks among ``tasks`` (HellaSwag, ARC, TruthfulQA): they read hub or local datasets."""
    from shared.eval.eval_config import DEFAULT_TASKS
    if all(t in DEFAULT_TASKS for t in tasks):
        return []
    # deferred: the harness imports lm-eval's side of the package (seconds); only a plan naming other tasks pays
    from shared.eval.harness import STANDARD_TASKS
    return [t for t in tasks if t in STANDARD_TASKS]


def _plan_interpret(ctx: _Context, stage: str, cfg: Any, row: StageRow) -> None:
    shapes = []
    for name in cfg.models:
        if name in ctx.made:
            if name in ctx.models:
                shapes.append(ctx.models[name])
            continue
        art = ctx.artifact(name)
        if art is None:
            ctx.problem(stage, f"models: {name!r} is made by no stage of this plan and is no artifact",
                        f"set {stage}.models=[{', '.join(m for m in cfg.models if m != name)}] or add {name} to stages")
        elif art.run != ctx.run:
            row.notes.append(f"{name}: from {art.id} (another run)")
    row.model = shapes[-1] if shapes else None
    row.model_from = f"{len(cfg.models)} models: {', '.join(cfg.models)}"
    _time_from_wall(ctx, stage, row, lambda c: float(len(c.get("models") or [])) or None, cfg)


def _plan_generic(ctx: _Context, stage: str, cfg: Any, row: StageRow) -> None:
    row.time_basis = "no planner for this stage"


def _planner_for(cfg: Any) -> Callable[[_Context, str, Any, StageRow], None]:
    """The planner of a config class (stages are matched by name first; this covers renamed ones)."""
    if isinstance(cfg, PretrainConfig):
        return _plan_pretrain
    if isinstance(cfg, PostTrainConfig):
        return _plan_posttrain
    if isinstance(cfg, PrefsJobConfig):
        return _plan_prefs
    return _plan_generic


_PLANNERS: dict[str, Callable[[_Context, str, Any, StageRow], None]] = {
    "tokenizer": _plan_tokenizer, "pretrain": _plan_pretrain, "cpt": _plan_pretrain, "sft": _plan_posttrain,
    "prefs": _plan_prefs, "dpo": _plan_posttrain, "reward": _plan_posttrain, "rl": _plan_posttrain,
    "quantize": _plan_quantize, "index": _plan_index, "eval": _plan_eval, "interpret": _plan_interpret,
}

__all__ = ["Plan", "Problem", "StageRow", "configured_strategy", "make_plan", "strategy_overrides", "tokenizer_vocab",
           "vocab_mismatch"]
