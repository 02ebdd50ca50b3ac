"""Memory per GPU of a training or inference job, estimated from the model's shape (no torch, no model built).

Everything here is a pure function of numbers; each docstring states its formula. Bytes, not GiB.

Training state per parameter (weights / gradients / optimizer state), for AdamW (two fp32 moments,
8 bytes per trained parameter):

- ``fp32``: 4 / 4 / 8 = 16 bytes.
- ``bf16``/``fp16`` under torch autocast, which is how our pretraining loop and the HF Trainer
  (``bf16=True``) train: the parameters stay fp32 and autocast keeps a 16-bit copy of each weight
  for the backward pass, gradients are fp32: 4+2 / 4 / 8 = 18 bytes.
- DeepSpeed ZeRO in 16-bit (``deepspeed.zero_stage`` > 0): 16-bit weights and gradients, the fp32
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
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

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

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations


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


__all__ = ["GIB", "MemoryEstimate", "ModelShape", "ParamCount", "StateBytes", "activation_bytes", "gib",
           "inference_memory", "lora_param_count", "lora_targets", "param_count", "round_up", "state_bytes",
           "training_memory"]
