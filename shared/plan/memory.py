"""Memory per GPU of a training or inference job, estimated from the model's shape (no torch, no model built).

Everything here is a pure function of numbers; each docstring states its formula. Bytes, not GiB.

Training state per parameter (weights / gradients / optimizer state), for AdamW (two fp32 moments,
8 bytes per trained parameter):

- ``fp32``: 4 / 4 / 8 = 16 bytes.
- ``bf16``/``fp16`` under torch autocast, which is how our pretraining loop and the HF Trainer
  (``bf16=True``) train: the parameters stay fp32 and autocast keeps a 16-bit copy of each weight
  for the backward pass, gradients are fp32: 4+2 / 4 / 8 = 18 bytes.
- DeepSpeed ZeRO in 16-bit (``parallelism=zero1|zero2|zero3``): 16-bit weights and gradients, the fp32
  master copy counted with the optimizer state: 2 / 2 / 4+8 = 16 bytes, the "2Ψ + 2Ψ + KΨ, K = 12"
  of the ZeRO paper (Rajbhandari et al. 2020, §3.1). Stage 1 divides the optimizer state across
  the data-parallel workers, stage 2 also the gradients, stage 3 also the weights; offloading moves
  the optimizer state (or, in stage 3, the weights) to host memory.
- 8-bit optimizers (``adamw_8bit``, ``paged_adamw_8bit``: bitsandbytes): 2 bytes of state per parameter.
- LoRA: the base is frozen (its weights only, in the checkpoint's dtype: 4 bytes for our fp32 GPT-2
  checkpoints, no gradients, no optimizer state); the adapters train with the rule above.
- QLoRA: the base's linear weights in 4 bits (0.5 byte) plus their quantization constants
  (fp32 per 64-weight block: 0.5 bit/param; with double quantization 8-bit constants per block
  plus one fp32 per 256 blocks: 0.127 bit/param, QLoRA paper §3), the rest of the base (embeddings,
  norms, biases) in the compute dtype (2 bytes).

Activations (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer
Models", §4.1, no tensor/sequence parallelism): ``s·b·h·(34 + 5·a·s/h)`` bytes per layer for 16-bit
activations, where s = sequence length, b = micro-batch, h = hidden size, a = heads. The
``5·a·s²·b`` term is the attention scores, softmax and its dropout mask, which flash / memory-
efficient attention (``scaled_dot_product_attention``, used by our GPT and by HF GPT-2 with SDPA)
never stores, so it is dropped: ``34·s·b·h`` per layer. fp32 activations double it. With gradient
checkpointing (full recomputation, §4.3 of the paper) a layer keeps only its input (``2·s·b·h``)
and one layer at a time is recomputed (``34·s·b·h``). The output layer adds ``4·s·b·V`` (fp32
logits for the cross-entropy loss, §4.1); a sequence classifier's head has one output instead of V.

Parallelism strategies (``strategy_bytes``; pretraining's ``parallelism`` key), bytes per GPU with Ψ
parameters on N GPUs, ``choose_strategy`` picking the simplest that fits:

- ``ddp`` (torch DistributedDataParallel, autocast as above): every rank holds all the state, plus
  DDP's gradient buckets, a second copy of the gradients (the default ``gradient_as_bucket_view=False``)
  when N > 1.
- ``zero1`` / ``zero2`` / ``zero3`` (DeepSpeed): the ZeRO paper's 16-bit accounting, Table 1 of arXiv
  1910.02054: ``16Ψ``, ``4Ψ + 12Ψ/N``, ``2Ψ + 14Ψ/N``, ``16Ψ/N`` (stage 0 = the paper's DDP). In fp32
  DeepSpeed still clones an fp32 master partition: 4 / 4 / (4 + 8), divided the same way (measured by
  ``journey experiment parallelism`` for every stage). ZeRO-1's full gradients live only until the
  end of backward, when DeepSpeed reduces them into each rank's partition (``stage_1_and_2.py``
  ``ipg_epilogue``): they count in the peak (``state``, the paper's 2Ψ), and what a rank still holds
  between backward and step is ``state_after_backward`` (gradients /N, as in ZeRO-2). Stages 1-2 keep
  a gradient reduce bucket (``reduce_bucket_size``: DeepSpeed's 5e8 elements, capped at the model's size
  by ``shared.training.deepspeed_config.zero_bucket_elements``; two with ``overlap_comm``; allocated whole,
  ``setup_buckets``) beside the state; stage 3 one such
  bucket in the parameters' dtype (``stage3.py``, with ``contiguous_gradients``), found by the batch
  search of ``journey experiment parallelism``. Offload moves the optimizer state (and, in stage 3, the
  weights) to host memory.
- ``fsdp`` (PyTorch FSDP2 ``fully_shard``, one unit per block plus the root): parameters, gradients and
  AdamW state sharded in the parameters' dtype (fp32; ``MixedPrecisionPolicy`` only casts what is
  gathered), 16Ψ/N. Full shard (``reshard_after_forward=True``, ZeRO-3-like) gathers the root
  (embeddings) and about two blocks at a time (the one computing, the one prefetched) in the compute
  dtype, plus one block's unsharded gradients; ``reshard_after_forward=False`` (ZeRO-2-like) keeps
  every gathered weight from the forward through the backward: Ψ in the compute dtype. CPU offload
  (``CPUOffloadPolicy``) keeps the sharded state in host memory.

Activations are the same per micro-batch under every strategy (none divides them); activation
checkpointing is the rule above. A GPU "fits" a configuration when its total is at most
``USABLE_FRACTION`` of its memory: the rest is the CUDA context, cuBLAS/NCCL workspaces and the
caching allocator's fragmentation, which no formula here counts.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Optional

from shared.training.deepspeed_config import zero_bucket_elements
from shared.training.parallel_config import STRATEGIES

GIB = 1024 ** 3

#: Bytes of one fp32 AdamW moment pair per trained parameter.
ADAMW_STATE_BYTES = 8.0
#: 8-bit AdamW (bitsandbytes, paged or not): two 1-byte moments per trained parameter.
ADAMW_8BIT_STATE_BYTES = 2.0
#: QLoRA: 4-bit weights, plus the quantization constants (bits per parameter, QLoRA paper §3).
NF4_BITS = 4.0
QUANT_CONST_BITS = 32 / 64  # one fp32 absmax per block of 64 weights
DOUBLE_QUANT_CONST_BITS = 8 / 64 + 32 / (64 * 256)  # 8-bit absmax per block + one fp32 per 256 blocks
#: Korthikanti et al. 2022: bytes per (token, hidden unit) of one layer's stored activations, 16-bit.
ACTIVATION_BYTES_PER_LAYER = 34
#: Full recomputation: a layer keeps only its 16-bit input.
CHECKPOINTED_BYTES_PER_LAYER = 2


@dataclass(frozen=True)
class ModelShape:
    """The numbers memory and FLOPs depend on. GPT-2 style by default (tied embeddings, learned
    positions, MLP 4·d); ``ffn`` and ``kv_heads`` / ``tied`` cover Llama-style HF configs."""

    vocab_size: int
    block_size: int
    n_layer: int
    n_head: int
    n_embd: int
    ffn: Optional[int] = None  # MLP hidden size; None: 4·n_embd with a GELU MLP (GPT-2)
    kv_heads: Optional[int] = None  # grouped-query attention; None: n_head
    tied: bool = True  # input and output embeddings share one matrix
    gated: bool = False  # SwiGLU MLP (three matrices) instead of GPT-2's two

    @property
    def label(self) -> str:
        return f"L{self.n_layer} d{self.n_embd} h{self.n_head} V{self.vocab_size} T{self.block_size}"

    @classmethod
    def from_hf_config(cls, config: Mapping[str, Any]) -> "ModelShape":
        """The shape in an HF ``config.json`` (GPT-2 keys, or Llama-style ``hidden_size`` / ``num_hidden_layers``).

        KeyError when the file names neither family's keys.
        """
        if "n_embd" in config:  # GPT-2 (our checkpoints, imported nanoGPT / llm.c / HF gpt2)
            return cls(vocab_size=int(config["vocab_size"]), block_size=int(config.get("n_positions", 1024)),
                       n_layer=int(config["n_layer"]), n_head=int(config["n_head"]), n_embd=int(config["n_embd"]),
                       ffn=config.get("n_inner"), tied=bool(config.get("tie_word_embeddings", True)))
        return cls(vocab_size=int(config["vocab_size"]),
                   block_size=int(config.get("max_position_embeddings", 2048)),
                   n_layer=int(config["num_hidden_layers"]), n_head=int(config["num_attention_heads"]),
                   n_embd=int(config["hidden_size"]), ffn=config.get("intermediate_size"),
                   kv_heads=config.get("num_key_value_heads"),
                   tied=bool(config.get("tie_word_embeddings", False)),
                   gated=config.get("hidden_act", "gelu") in ("silu", "swiglu"))


@dataclass(frozen=True)
class ParamCount:
    """Parameters by where they sit: ``linear`` are the matrices of the blocks (what LoRA adapts and
    QLoRA quantizes), ``other`` the embeddings, norms and biases."""

    linear: int
    other: int

    @property
    def total(self) -> int:
        return self.linear + self.other


def param_count(shape: ModelShape, positions: bool = True) -> ParamCount:
    """Parameters of ``shape``, tied embeddings counted once.

    GPT-2: per layer ``12·d² + 13·d`` (attention qkv ``d·3d + 3d``, projection ``d² + d``, MLP
    ``d·4d + 4d`` and ``4d·d + d``, two LayerNorms ``4d``); plus ``V·d`` token and ``T·d`` position
    embeddings and the final LayerNorm ``2d``. GPT-2 124M: 124,439,808. Llama-style: attention
    ``2·d² + 2·d·d_kv``, a gated MLP ``3·d·ffn``, RMSNorms ``2d``, no biases, no position table,
    and an untied head adds another ``V·d``.
    """
    d, L, V = shape.n_embd, shape.n_layer, shape.vocab_size
    ffn = shape.ffn or 4 * d
    if shape.gated:
        d_kv = d * (shape.kv_heads or shape.n_head) // shape.n_head
        linear = L * (2 * d * d + 2 * d * d_kv + 3 * d * ffn)
        other = V * d * (1 if shape.tied else 2) + L * 2 * d + d
        return ParamCount(linear, other)
    linear = L * (d * 3 * d + d * d + 2 * d * ffn)
    biases_norms = L * (3 * d + d + ffn + d + 4 * d) + 2 * d
    other = V * d * (1 if shape.tied else 2) + (shape.block_size * d if positions else 0) + biases_norms
    return ParamCount(linear, other)


#: The block matrices of GPT-2, with (in, out) in multiples of d (4 = the MLP's 4·d).
GPT2_LINEAR = {"attn.c_attn": (1, 3), "attn.c_proj": (1, 1), "mlp.c_fc": (1, 4), "mlp.c_proj": (4, 1)}
#: The named sets of ``MethodConfig.target_modules`` as GPT-2 module names.
NAMED_TARGETS = {"attention": ("attn.c_attn", "attn.c_proj"),
                 "attention+mlp": tuple(GPT2_LINEAR), "all-linear": tuple(GPT2_LINEAR)}


def lora_targets(spec: Any) -> tuple[str, ...]:
    """GPT-2 block matrices a ``target_modules`` spec adapts: a named set, or names/suffixes matched
    against ``GPT2_LINEAR`` (``c_proj`` matches both projections). Unmatched names add nothing."""
    if isinstance(spec, str) and spec in NAMED_TARGETS:
        return NAMED_TARGETS[spec]
    names = [n.strip() for n in (spec.split(",") if isinstance(spec, str) else spec) if n.strip()]
    return tuple(m for m in GPT2_LINEAR if any(m == n or m.endswith("." + n) or m.endswith(n) for n in names))


def lora_param_count(shape: ModelShape, r: int, targets: Any = "all-linear") -> int:
    """Adapter parameters: ``r·(in + out)`` per adapted matrix per layer (A is r×in, B is out×r).

    All four GPT-2 matrices: ``r·(4d + 2d + 5d + 5d) = 16·r·d`` per layer.
    """
    d = shape.n_embd
    return shape.n_layer * sum(r * (i + o) * d for m, (i, o) in GPT2_LINEAR.items() if m in lora_targets(targets))


@dataclass
class MemoryEstimate:
    """Bytes per GPU by kind; ``notes`` say what was assumed."""

    weights: float
    gradients: float
    optimizer: float
    activations: float
    trainable: int = 0  # parameters that get gradients
    notes: list[str] = field(default_factory=list)
    buffers: float = 0.0  # communication buckets and gathered weights (see ``strategy_bytes``)

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations + self.buffers


@dataclass(frozen=True)
class StateBytes:
    """Bytes per trained parameter: weights, gradients, optimizer state (AdamW moments, fp32 master)."""

    weights: float
    gradients: float
    optimizer: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer


def state_bytes(precision: str, optimizer: str = "adamw", zero: bool = False) -> StateBytes:
    """Bytes per trained parameter for ``precision`` (fp32, bf16, fp16) and ``optimizer``.

    fp32: (4, 4, 8). 16-bit under torch autocast: (4 + 2, 4, 8), fp32 parameters plus the 16-bit
    copy autocast keeps for backward. 16-bit under DeepSpeed ZeRO (``zero=True``): (2, 2, 4 + 8),
    the ZeRO paper's 16 bytes. An 8-bit optimizer (name containing ``8bit``) keeps 2 bytes of
    moments instead of 8.
    """
    moments = ADAMW_8BIT_STATE_BYTES if "8bit" in optimizer else ADAMW_STATE_BYTES
    if precision == "fp32":
        return StateBytes(4, 4, moments)
    if zero:
        return StateBytes(2, 2, 4 + moments)
    return StateBytes(4 + 2, 4, moments)


def activation_bytes(shape: ModelShape, batch: int, seq: int, precision: str, checkpointing: bool = False,
                     outputs: Optional[int] = None) -> float:
    """Stored activations of one micro-batch (Korthikanti et al. 2022 with flash attention).

    ``L·34·s·b·h`` (16-bit; ×2 in fp32), or with checkpointing ``L·2·s·b·h + 34·s·b·h``; plus the
    output layer's ``4·s·b·outputs`` (fp32 logits; ``outputs`` defaults to the vocabulary).
    """
    scale = 2 if precision == "fp32" else 1
    per_layer_token = shape.n_embd * seq * batch
    if checkpointing:
        blocks = (shape.n_layer * CHECKPOINTED_BYTES_PER_LAYER + ACTIVATION_BYTES_PER_LAYER) * per_layer_token
    else:
        blocks = shape.n_layer * ACTIVATION_BYTES_PER_LAYER * per_layer_token
    return blocks * scale + 4 * seq * batch * (shape.vocab_size if outputs is None else outputs)


def training_memory(shape: ModelShape, *, batch: int, seq: int, precision: str = "bf16", method: str = "full",
                    optimizer: str = "adamw", lora_r: int = 16, lora_targets_spec: Any = "all-linear",
                    double_quant: bool = True, checkpointing: bool = False, zero_stage: int = 0,
                    num_workers: int = 1, offload_optimizer: bool = False, offload_params: bool = False,
                    frozen_copies: int = 0, frozen_bytes_per_param: float = 4.0,
                    outputs: Optional[int] = None) -> MemoryEstimate:
    """Memory per GPU of one training worker (see the module docstring for every rule).

    ``batch`` sequences of ``seq`` tokens per micro-batch; ``method`` full / lora / qlora;
    ``zero_stage`` 0-3 divides state across ``num_workers``; ``frozen_copies`` extra frozen models
    of the same shape held for the step (DPO's reference, RL's reference), at
    ``frozen_bytes_per_param`` each; ``outputs`` the width of the output layer (1 for a reward model).
    """
    params = param_count(shape)
    zero = zero_stage > 0 and precision != "fp32"
    per = state_bytes(precision, optimizer, zero)
    notes: list[str] = []
    if method == "full":
        trainable = params.total
        base = 0.0
    else:
        trainable = lora_param_count(shape, lora_r, lora_targets_spec)
        if method == "qlora":
            bits = NF4_BITS + (DOUBLE_QUANT_CONST_BITS if double_quant else QUANT_CONST_BITS)
            base = params.linear * bits / 8 + params.other * 2
            notes.append(f"QLoRA base: {bits:.3f} bits/weight on the block matrices, 16-bit elsewhere")
        else:
            base = params.total * frozen_bytes_per_param
        notes.append(f"{method}: {trainable:,} adapter parameters train (r={lora_r})")
    weights = base + trainable * per.weights
    gradients = trainable * per.gradients
    optim = trainable * per.optimizer
    if zero_stage >= 1:
        optim = 0.0 if offload_optimizer else optim / num_workers
    if zero_stage >= 2:
        gradients /= num_workers
    if zero_stage >= 3:
        weights = 0.0 if offload_params else weights / num_workers
    if zero_stage:
        notes.append(f"ZeRO-{zero_stage} over {num_workers} workers" + (", optimizer offloaded" if offload_optimizer
                                                                       else ""))
    if frozen_copies:
        weights += frozen_copies * params.total * frozen_bytes_per_param
    acts = activation_bytes(shape, batch, seq, precision, checkpointing, outputs)
    return MemoryEstimate(weights, gradients, optim, acts, trainable, notes)


def inference_memory(shape: ModelShape, *, batch: int, seq: int, bytes_per_param: float = 4.0,
                     kv_bytes: float = 4.0) -> MemoryEstimate:
    """Weights plus a full KV cache: ``N·bytes`` + ``2·L·b·s·d_kv·kv_bytes`` (keys and values per layer)."""
    params = param_count(shape)
    d_kv = shape.n_embd * (shape.kv_heads or shape.n_head) // shape.n_head
    kv = 2 * shape.n_layer * batch * seq * d_kv * kv_bytes
    return MemoryEstimate(params.total * bytes_per_param, 0.0, 0.0, kv, 0, [f"KV cache for {batch}×{seq} tokens"])


def gib(n: float) -> str:
    """``n`` bytes as GiB with one decimal (two below 1 GiB, so small models do not read 0.0)."""
    value = n / GIB
    return f"{value:.1f}" if value >= 1 or value == 0 else f"{value:.2f}" if value >= 0.01 else f"{value:.3f}"


def round_up(n: int, multiple: int) -> int:
    return int(math.ceil(n / multiple) * multiple)


# ----------------------------------------------------------------------------- parallelism strategies

#: Share of a GPU's memory a plan may fill (see the module docstring: context, workspaces, fragmentation).
USABLE_FRACTION = 0.9
#: How many ZeRO-1/2 gradient reduce buckets (``zero_bucket_elements`` each): two with ``overlap_comm``, which
#: ``shared.training.deepspeed_config`` turns on for GPUs.
DS_REDUCE_BUFFERS = 2


@dataclass(frozen=True)
class Strategy:
    """One way to lay the training state out over the GPUs: a ``STRATEGIES`` name and its options."""

    name: str
    reshard_after_forward: bool = True  # fsdp only: False keeps gathered weights until backward (ZeRO-2-like)
    offload: bool = False  # state in host memory: the optimizer's (zero1/2/3), every shard (fsdp)
    activation_checkpointing: bool = False
    offload_params: bool = False  # zero3 only: the weights' partitions in host memory too

    def __post_init__(self) -> None:
        if self.name not in STRATEGIES:
            raise ValueError(f"unknown parallelism strategy {self.name!r}; choose one of {list(STRATEGIES)}")
        if self.offload and self.name == "ddp":
            raise ValueError("ddp keeps every tensor on each GPU and cannot offload; use zero1, zero2, zero3 or "
                             "fsdp with offload")
        if self.offload_params and self.name != "zero3":
            raise ValueError(f"offload_params needs zero3 (only ZeRO-3 partitions the weights), not {self.name}")

    @property
    def label(self) -> str:
        name = self.name + (" (no reshard)" if self.name == "fsdp" and not self.reshard_after_forward else "")
        extras = [x for x, on in (("offload", self.offload or self.offload_params),
                                  ("ckpt", self.activation_checkpointing)) if on]
        return name + (" + " + " + ".join(extras) if extras else "")


#: The table's rows, and the order ``choose_strategy`` tries them: least communication and fewest
#: moving parts first (DDP, then sharding the optimizer, the gradients, the weights).
STRATEGY_ROWS = (Strategy("ddp"), Strategy("zero1"), Strategy("zero2"), Strategy("fsdp", reshard_after_forward=False),
                 Strategy("fsdp"), Strategy("zero3"))


@dataclass
class StrategyBytes:
    """Bytes per GPU of one strategy on ``n_gpus``: persistent state (weights, gradients, optimizer),
    ``buffers`` (DDP buckets, ZeRO reduce buckets, weights gathered by FSDP / ZeRO-3), activations;
    ``host`` the bytes per rank kept in host memory instead (offload)."""

    strategy: Strategy
    n_gpus: int
    params: int
    weights: float
    gradients: float
    optimizer: float
    buffers: float = 0.0
    activations: float = 0.0
    host: float = 0.0
    notes: list[str] = field(default_factory=list)
    gradients_after_backward: Optional[float] = None  # ZeRO-1: its partition once reduced; None: ``gradients``

    @property
    def state(self) -> float:
        """Weights + gradients + optimizer state of one rank at its peak (the ZeRO paper's accounting)."""
        return self.weights + self.gradients + self.optimizer

    @property
    def state_after_backward(self) -> float:
        """``state`` between backward and the optimizer step, when ZeRO-1 has reduced its gradients into
        its partition: what ``journey experiment parallelism`` measures (``state_bytes_per_rank``)."""
        grads = self.gradients if self.gradients_after_backward is None else self.gradients_after_backward
        return self.weights + grads + self.optimizer

    @property
    def total(self) -> float:
        return self.state + self.buffers + self.activations


def compute_bytes(precision: str) -> int:
    """Bytes of one element in the compute dtype: 4 in fp32, 2 in bf16/fp16."""
    return 4 if precision == "fp32" else 2


def state_per_gpu(params: int, strategy: Strategy, n_gpus: int, precision: str = "bf16") -> StrategyBytes:
    """Weights, gradients and optimizer state per GPU of ``params`` trained parameters (AdamW).

    ddp: ``state_bytes(precision)`` on every rank. zero1/2/3: the 16-bit ZeRO accounting
    (2 / 2 / 12), divided by N for the optimizer (stage ≥ 1), gradients (≥ 2), weights (3); in fp32
    4 / 4 / (4 + 8), the fp32 master partition cloned all the same. fsdp: 4 / 4 / 8, all /N.
    ``offload`` moves the divided optimizer state (zero1/2/3) or every shard (fsdp) to ``host``,
    ``offload_params`` zero3's weight partitions. No buffers or activations (``strategy_bytes`` adds them).
    """
    if n_gpus < 1:
        raise ValueError(f"n_gpus must be >= 1, got {n_gpus}")
    s, n = strategy, n_gpus
    notes: list[str] = []
    host = 0.0
    if s.name == "ddp":
        per = state_bytes(precision)
        return StrategyBytes(s, n, params, params * per.weights, params * per.gradients, params * per.optimizer)
    if s.name == "fsdp":
        per = state_bytes("fp32")
        weights, grads, optim = (params * b / n for b in (per.weights, per.gradients, per.optimizer))
        if s.offload:
            host, weights, grads, optim = weights + grads + optim, 0.0, 0.0, 0.0
            notes.append("sharded weights, gradients and AdamW state in host memory (CPUOffloadPolicy)")
        return StrategyBytes(s, n, params, weights, grads, optim, host=host, notes=notes)
    stage = int(s.name[-1])
    per = state_bytes(precision, zero=True)
    optim_per = per.optimizer + (4 if precision == "fp32" else 0)  # fp32 master partition, cloned in fp32 too
    weights, grads, optim = params * per.weights, params * per.gradients, params * optim_per / n
    if stage >= 2:
        grads /= n
    if stage >= 3:
        weights /= n
    if s.offload:
        host, optim = optim, 0.0
    if s.offload_params:
        host, weights = host + weights, 0.0
    if s.offload or s.offload_params:
        notes.append(" and ".join(w for w, on in (("optimizer state", s.offload), ("weights", s.offload_params))
                                  if on) + " offloaded to host memory")
    return StrategyBytes(s, n, params, weights, grads, optim, host=host, notes=notes,
                         gradients_after_backward=grads / n if stage == 1 else None)


def strategy_bytes(shape: ModelShape, strategy: Strategy | str, n_gpus: int, micro_batch: int, seq_len: int,
                   precision: str = "bf16", offload: bool = False, activation_checkpointing: bool = False,
                   reshard_after_forward: bool = True, on_gpu: bool = True) -> StrategyBytes:
    """Bytes per GPU of training ``shape`` under ``strategy`` on ``n_gpus``, ``micro_batch`` sequences of
    ``seq_len`` tokens per step per GPU: ``state_per_gpu`` plus buffers and activations (module docstring).

    ``strategy`` is a ``Strategy`` or a name (the keyword options then build it). ValueError for an
    unknown name or ddp with offload. ``on_gpu=False`` (the CPU experiment): ZeRO-1/2 keep one reduce bucket,
    not two (``shared.training.deepspeed_config`` turns ``overlap_comm`` on for GPUs only).
    """
    if isinstance(strategy, str):
        strategy = Strategy(strategy, reshard_after_forward, offload, activation_checkpointing)
    s = strategy
    params = param_count(shape).total
    out = state_per_gpu(params, s, n_gpus, precision)
    c = compute_bytes(precision)
    root = param_count(replace(shape, n_layer=0)).total  # embeddings and the final norm
    block = param_count(replace(shape, n_layer=1)).total - root
    if s.name == "ddp" and n_gpus > 1:
        out.buffers = params * state_bytes(precision).gradients
        out.notes.append("DDP gradient buckets: a second copy of the gradients")
    elif s.name in ("zero1", "zero2"):
        bucket = zero_bucket_elements(params)
        buffers = DS_REDUCE_BUFFERS if on_gpu else 1
        out.buffers = buffers * bucket * state_bytes(precision, zero=True).gradients
        out.notes.append(f"ZeRO reduce buckets: {buffers} x {bucket:.2g} gradient elements")
    elif s.name == "zero3" or s.name == "fsdp":
        gathered = (root + 2 * block) if s.reshard_after_forward else params
        out.buffers = gathered * c + block * c  # + one block's unsharded gradients before reduce-scatter
        out.notes.append(f"gathered weights: {'root + 2 blocks' if s.reshard_after_forward else 'all'} "
                         f"in {'fp32' if c == 4 else '16-bit'}")
    if s.name == "zero3":
        out.buffers += zero_bucket_elements(params) * c
        out.notes.append(f"ZeRO-3 reduce bucket: {zero_bucket_elements(params):.2g} gradient elements")
    out.activations = activation_bytes(shape, micro_batch, seq_len, precision, s.activation_checkpointing)
    return out


@dataclass
class StrategyChoice:
    """What ``choose_strategy`` picked for ``n_gpus`` GPUs of ``gpu_memory`` bytes, and why.
    ``choice`` is None when nothing fits; ``tried`` holds every configuration it computed, in order."""

    n_gpus: int
    gpu_memory: float
    choice: Optional[StrategyBytes]
    reason: str
    tried: list[StrategyBytes] = field(default_factory=list)


def candidates() -> list[Strategy]:
    """The configurations ``choose_strategy`` tries, simplest first: ``STRATEGY_ROWS``, then each with
    activation checkpointing, then the sharded ones with checkpointing and offload."""
    plain = list(STRATEGY_ROWS)
    ckpt = [replace(s, activation_checkpointing=True) for s in plain]
    off = [replace(s, activation_checkpointing=True, offload=True, offload_params=s.name == "zero3")
           for s in plain if s.name != "ddp"]
    return plain + ckpt + off


def largest_micro_batch(shape: ModelShape, strategy: Strategy | str, n_gpus: int, seq_len: int, precision: str,
                        budget: float, on_gpu: bool = True) -> int:
    """The largest micro-batch whose ``strategy_bytes(...).total`` per GPU is at most ``budget`` bytes (0: not
    even one): activations grow linearly with the micro-batch, everything else does not. ``journey plan``
    (through ``max_micro_batch``) and ``journey experiment parallelism`` (its planned column, beside the
    batch it finds by training) both ask here."""
    one = strategy_bytes(shape, strategy, n_gpus, 1, seq_len, precision, on_gpu=on_gpu)
    room = budget - (one.total - one.activations)
    return max(0, int(room // one.activations))


def max_micro_batch(shape: ModelShape, strategy: Strategy, n_gpus: int, seq_len: int, precision: str,
                    gpu_memory: float) -> int:
    """The largest micro-batch whose total fits ``USABLE_FRACTION`` of ``gpu_memory`` (0: not even one)."""
    return largest_micro_batch(shape, strategy, n_gpus, seq_len, precision, USABLE_FRACTION * gpu_memory)


def choose_strategy(shape: ModelShape, n_gpus: int, gpu_memory: float, micro_batch: int, seq_len: int,
                    precision: str = "bf16") -> StrategyChoice:
    """The simplest configuration of ``candidates`` whose total per GPU fits ``USABLE_FRACTION`` of
    ``gpu_memory``, with the reason as a sentence (what it needs, what the simpler ones needed)."""
    usable = USABLE_FRACTION * gpu_memory
    tried: list[StrategyBytes] = []
    where = f"{n_gpus} x {gpu_memory / 1e9:.0f} GB"
    for s in candidates():
        b = strategy_bytes(shape, s, n_gpus, micro_batch, seq_len, precision)
        tried.append(b)
        if b.total <= usable:
            simpler = tried[:-1]
            why = (f"{s.label} is the simplest that fits {where}: {gib(b.total)} GiB per GPU of the "
                   f"{gib(usable)} GiB usable ({USABLE_FRACTION:.0%} of {gib(gpu_memory)} GiB)")
            if simpler:
                least = min(simpler, key=lambda t: t.total)
                why += f"; each simpler one needs more (the least, {least.strategy.label}, {gib(least.total)} GiB)"
            if b.host:
                why += f"; it keeps {gib(b.host)} GiB per rank in host memory"
            return StrategyChoice(n_gpus, gpu_memory, b, why + ".", tried)
    least = min(tried, key=lambda t: t.total)
    return StrategyChoice(n_gpus, gpu_memory, None,
                          f"nothing fits {where} at micro-batch {micro_batch} x {seq_len}: the least, "
                          f"{least.strategy.label}, needs {gib(least.total)} GiB per GPU of the {gib(usable)} GiB "
                          f"usable; lower the micro-batch or add GPUs.", tried)


__all__ = ["GIB", "STRATEGIES", "STRATEGY_ROWS", "USABLE_FRACTION", "MemoryEstimate", "ModelShape", "ParamCount",
           "StateBytes", "Strategy", "StrategyBytes", "StrategyChoice", "activation_bytes", "candidates",
           "choose_strategy", "gib", "inference_memory", "largest_micro_batch", "lora_param_count", "lora_targets",
           "max_micro_batch", "param_count", "round_up", "state_bytes", "state_per_gpu", "strategy_bytes",
           "training_memory"]
