"""The model side of fine-tuning: full, LoRA and QLoRA on any Hugging Face causal LM.

Given a ``MethodConfig`` (``shared.training.finetune_config``) this module decides which weights
train and how the base is held in memory; the training loop (TRL's SFT/DPO trainers or ours) does
not change between methods. Contract:

- ``target_modules_for(model, spec)`` resolves a named set ("attention", "attention+mlp",
  "all-linear") by inspecting the model's own modules: the linear layers (``nn.Linear``,
  ``transformers``' ``Conv1D``, bitsandbytes' 4-bit linears) are classified as attention or MLP by
  their path (``attn``/``attention`` vs ``mlp``/``feed_forward``/``ffn`` containers, else by leaf
  names such as ``q_proj``/``gate_proj``). It returns, for each chosen layer, the shortest dotted
  suffix that hits no layer left out, in PEFT's list form (a name matches a module whose path equals
  it or ends in ``.name``). So on GPT-2, where ``c_proj`` exists in both attention and MLP,
  "attention" gives ``["attn.c_proj", "c_attn"]``; on Llama it gives ``q_proj, k_proj, v_proj,
  o_proj``. "all-linear" leaves out the LM head (the output embeddings).
- ``prepare_model`` / ``load_for_finetuning`` give: full = the model with every weight trainable;
  lora = a ``PeftModel`` with adapters on the targets, the base frozen; qlora = the same over a base
  loaded in 4 bits by bitsandbytes. QLoRA is never emulated: without CUDA and bitsandbytes it raises
  ``ConfigError`` saying what to install or to use method=lora.
- ``merge_and_save`` writes the adapter and a merged, plain HF checkpoint (no PEFT needed to load).
- ``MemoryTracker`` measures the peak memory of a span of code (GPU allocations, or the process'
  resident memory on CPU), so the methods can be compared in one process.

Llama 3.1 8B QLoRA (``LLAMA31_8B_QLORA``, defined in ``finetune_config``): NF4 weights with double
quantization, bf16 compute, LoRA r=16 (alpha 32, dropout 0.05) on all linear layers but the head,
gradient checkpointing, and the paged 8-bit AdamW optimizer (``optim="paged_adamw_8bit"``). The
weights take about 5.7 GB (4-bit linear layers, bf16 embeddings and head): it trains on one 24 GB GPU.

Not here: data, chat formatting, the optimizer and trainer loop (the jobs and TRL), and post-training
quantization for serving (``shared.quant``).
"""
from __future__ import annotations

import copy
import importlib.util
import re
import sys
from pathlib import Path
from typing import Union

import torch
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from torch import nn
from transformers.pytorch_utils import Conv1D

from shared.config import ConfigError
from shared.training.finetune_config import LLAMA31_8B_QLORA, NAMED_TARGET_SETS, MethodConfig

COMPUTE_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# Recent bitsandbytes imports on CPU and has a partial, slow CPU path; QLoRA exists to save GPU memory, so
# a CPU "QLoRA" would only produce timings and memory numbers that mean nothing. Refuse instead.
QLORA_NEEDS_CUDA = ("QLoRA needs a CUDA GPU with bitsandbytes: 4-bit NF4 kernels do not run on CPU; "
                    "use method=lora here, or run on a GPU")
# Containers and leaf names that mark a linear layer as attention or MLP across architectures
# (GPT-2 attn/mlp, Llama self_attn/mlp, BERT attention/intermediate, NeoX attention/mlp, Falcon ...).
_ATTENTION_PARENT = re.compile(r"attn|attention", re.IGNORECASE)
_MLP_PARENT = re.compile(r"mlp|feed_?forward|ffn|intermediate", re.IGNORECASE)
_ATTENTION_LEAF = re.compile(r"^((q|k|v|o|qkv|out)_proj|query|key|value|query_key_value|wqkv|wo)$")
_MLP_LEAF = re.compile(r"^((gate|up|down)_proj|c_fc|fc\d*|w[123]|dense_h_to_4h|dense_4h_to_h)$")


# ----------------------------------------------------------------------------- target modules

def _is_linear(module: nn.Module) -> bool:
    # bitsandbytes' Linear4bit/Linear8bitLt subclass nn.Linear, so quantized bases are covered too.
    return isinstance(module, (nn.Linear, Conv1D))


def _head_names(model: nn.Module) -> set[str]:
    """Names of the output head (the LM head): adapting it is rarely wanted and it may be tied."""
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    return {name for name, module in model.named_modules() if head is not None and module is head}


def _kind(name: str) -> str | None:
    """"attention", "mlp" or None for the linear layer at ``name``, judged by its nearest container, then its leaf."""
    *parents, leaf = name.split(".")
    for parent in reversed(parents):
        if _ATTENTION_PARENT.search(parent):
            return "attention"
        if _MLP_PARENT.search(parent):
            return "mlp"
    if _ATTENTION_LEAF.match(leaf):
        return "attention"
    if _MLP_LEAF.match(leaf):
        return "mlp"
    return None


def _matches(module_name: str, target: str) -> bool:
    """PEFT's rule for a list of target names: the module's path equals the name or ends in ``.name``."""
    return module_name == target or module_name.endswith("." + target)


def _shortest_suffixes(chosen: list[str], all_names: list[str]) -> list[str]:
    """For each chosen module, the shortest dotted suffix of its path that matches no module left out."""
    chosen_set = set(chosen)
    left_out = [n for n in all_names if n not in chosen_set]
    suffixes = set()
    for name in chosen:
        parts = name.split(".")
        for k in range(1, len(parts) + 1):
            suffix = ".".join(parts[-k:])
            if not any(_matches(other, suffix) for other in left_out):
                break
        suffixes.add(suffix)
    return sorted(suffixes)


def _linear_names_for_humans(model: nn.Module) -> list[str]:
    """The model's linear layers as ``parent.leaf`` names (layer indices dropped): valid target names."""
    return sorted({".".join(n.split(".")[-2:]) for n, m in model.named_modules() if n and _is_linear(m)})


def target_modules_for(model: nn.Module, spec: Union[str, list[str]]) -> list[str]:
    """PEFT ``target_modules`` (a list of names/suffixes) for ``spec`` on ``model``.

    ``spec``: a named set ("attention", "attention+mlp", "all-linear") or explicit module names.
    Explicit names are checked: one that matches no module, or matches something that is not a
    linear layer, raises ``ConfigError`` listing the linear layers the model has.
    """
    all_names = [n for n, _ in model.named_modules() if n]
    if isinstance(spec, str) and spec not in NAMED_TARGET_SETS:
        spec = [spec]
    if not isinstance(spec, str):
        return _check_explicit(model, list(dict.fromkeys(spec)), all_names)
    head = _head_names(model)
    linears = [n for n, m in model.named_modules() if n and _is_linear(m) and n not in head]
    wanted = {"attention": {"attention"}, "attention+mlp": {"attention", "mlp"}}.get(spec)
    chosen = linears if wanted is None else [n for n in linears if _kind(n) in wanted]
    missing_kinds = sorted((wanted or set()) - {_kind(n) for n in chosen})
    if not chosen or missing_kinds:
        raise ConfigError(
            f"target_modules={spec!r}: found no {' or '.join(missing_kinds) or 'linear'} layers in "
            f"{type(model).__name__} (its linear layers: {_linear_names_for_humans(model)}); "
            "list the modules explicitly, e.g. target_modules=[q_proj,v_proj]")
    return _shortest_suffixes(chosen, all_names)


def _check_explicit(model: nn.Module, names: list[str], all_names: list[str]) -> list[str]:
    modules = dict(model.named_modules())
    for target in names:
        hits = [n for n in all_names if _matches(n, target)]
        if not hits:
            raise ConfigError(
                f"target module {target!r} matches no module of {type(model).__name__}; its linear layers are "
                f"{_linear_names_for_humans(model)}; use those names, or a named set {list(NAMED_TARGET_SETS)}")
        not_linear = [n for n in hits if not _is_linear(modules[n])]
        if not_linear:
            raise ConfigError(
                f"target module {target!r} matches {not_linear[0]} ({type(modules[not_linear[0]]).__name__}), "
                f"which is not a linear layer; name linear layers such as {_linear_names_for_humans(model)}")
    return names


# ----------------------------------------------------------------------------- preparing a model

def lora_config(model: nn.Module, cfg: MethodConfig) -> LoraConfig:
    """The PEFT ``LoraConfig`` for ``cfg`` on ``model`` (targets resolved, Conv1D layout handled)."""
    targets = target_modules_for(model, cfg.target_spec())
    # GPT-2's Conv1D stores weights as (in, out); PEFT must transpose the update for those layers.
    conv1d = any(isinstance(m, Conv1D) and any(_matches(n, t) for t in targets) for n, m in model.named_modules())
    return LoraConfig(task_type="CAUSAL_LM", r=cfg.lora_r, lora_alpha=cfg.alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, fan_in_fan_out=conv1d, bias="none")


def bnb_config(cfg: MethodConfig):
    """The ``BitsAndBytesConfig`` a QLoRA base is loaded with (building it needs no bitsandbytes)."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=cfg.quant_type,
                              bnb_4bit_use_double_quant=cfg.double_quant,
                              bnb_4bit_compute_dtype=COMPUTE_DTYPES[cfg.compute_dtype])


def _bnb_available() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


def require_qlora_runtime(device: Union[str, torch.device]) -> None:
    """Raise ``ConfigError`` unless QLoRA can really run on ``device`` (CUDA present, bitsandbytes installed)."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        raise ConfigError(f"{QLORA_NEEDS_CUDA} (device={device}, CUDA available: {torch.cuda.is_available()})")
    if not _bnb_available():
        raise ConfigError("QLoRA needs the bitsandbytes package for its 4-bit kernels, and it is not installed: "
                          "pip install bitsandbytes (or use method=lora)")


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Recompute activations in the backward pass (non-reentrant, so frozen inputs need no grad hack)."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ConfigError(f"{type(model).__name__} does not support gradient checkpointing; "
                          "set gradient_checkpointing=false")
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # the name since transformers 5.x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.config.use_cache = False  # a KV cache is useless in training and conflicts with recomputation


def prepare_model(model: nn.Module, cfg: MethodConfig, device: Union[str, torch.device] = "cpu") -> nn.Module:
    """Make ``model`` ready to train with ``cfg.method``; returns the model (a ``PeftModel`` for lora/qlora).

    full: moved to ``device``, every parameter trainable. lora: adapters on the targets, base frozen.
    qlora: ``model`` must already be 4-bit (use ``load_for_finetuning``); norms are upcast to fp32
    and the base frozen by ``peft.prepare_model_for_kbit_training``, then adapters are added.
    """
    cfg.validate()
    device = torch.device(device)
    if cfg.method == "qlora":
        require_qlora_runtime(device)
        if not getattr(model, "is_loaded_in_4bit", False):
            raise ConfigError("method=qlora needs a base loaded in 4 bits; load it with "
                              "load_for_finetuning(path, cfg, device), which quantizes while loading")
        # Checkpointing is switched on below, by the same helper as for the other methods.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    else:
        model = model.to(device)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if cfg.method == "full":
        return model.requires_grad_(True)
    return get_peft_model(model, lora_config(model, cfg))


def load_for_finetuning(path_or_name: Union[str, Path], cfg: MethodConfig,
                        device: Union[str, torch.device] = "cpu"):
    """Load an HF causal LM and its tokenizer and ``prepare_model`` it; returns ``(model, tokenizer)``.

    For qlora the weights are quantized to 4 bits while loading (``bnb_config``) and placed on
    ``device``; the other methods load the weights in the checkpoint's own dtype (transformers 5's
    default: fp32 for our GPT-2 checkpoints, bf16 for most hub models); mixed precision is the
    trainer's business.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg.validate()
    device = torch.device(device)
    kwargs = {}
    if cfg.method == "qlora":
        require_qlora_runtime(device)  # before a multi-GB download that could not be used
        index = device.index if device.index is not None else torch.cuda.current_device()
        kwargs = dict(quantization_config=bnb_config(cfg), dtype=COMPUTE_DTYPES[cfg.compute_dtype],
                      device_map={"": index})
    model = AutoModelForCausalLM.from_pretrained(str(path_or_name), **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(str(path_or_name))
    return prepare_model(model, cfg, device), tokenizer


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts; tied weights count once, 4-bit weights at their true count."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        if type(p).__name__ == "Params4bit":
            # bitsandbytes packs two 4-bit values per byte of its storage dtype, so numel() undercounts.
            n *= 2 * getattr(getattr(p, "quant_storage", None), "itemsize", 1)
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total


# ----------------------------------------------------------------------------- saving

def merge_and_save(peft_model, out_dir: Union[str, Path], tokenizer,
                   adapter_dir: Union[str, Path, None] = None) -> Path:
    """Save the adapter and a merged, standard HF checkpoint; return ``out_dir``.

    The adapter (``adapter_config.json`` + weights + tokenizer) goes to ``adapter_dir`` (default
    ``out_dir/adapter``) and reloads with ``PeftModel.from_pretrained``. ``out_dir`` gets the base
    with the LoRA update folded into its weights: ``AutoModelForCausalLM.from_pretrained(out_dir)``
    loads it without PEFT. ``peft_model`` itself stays a usable PeftModel: an unquantized model is
    merged in a copy (one extra model's worth of memory). A QLoRA model is not merged into its
    4-bit weights (requantizing base + update would lose the update's precision): the base is
    re-read from ``base_model_name_or_path`` in the compute dtype (bf16 by default) on CPU, the saved
    adapter applied and merged there. That checkpoint is the dequantized-precision base plus the
    adapter, as is usual for QLoRA; quantize it again for serving (``shared.quant``).
    """
    if not isinstance(peft_model, PeftModel):
        raise ConfigError(f"merge_and_save merges LoRA adapters, but got a {type(peft_model).__name__} without any "
                          "(method=full?); save it with model.save_pretrained(out_dir) and "
                          "tokenizer.save_pretrained(out_dir)")
    if tokenizer is None:
        raise ConfigError("merge_and_save needs the tokenizer: every checkpoint carries its tokenizer files")
    out = Path(out_dir)
    adapter = Path(adapter_dir) if adapter_dir is not None else out / "adapter"
    peft_model.save_pretrained(adapter)
    tokenizer.save_pretrained(adapter)
    merged = _merged_model(peft_model, adapter)
    merged.config.use_cache = True  # training may have turned it off; generation wants the cache
    merged.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _merged_model(peft_model, adapter: Path) -> nn.Module:
    base = peft_model.get_base_model()
    if not (getattr(base, "is_loaded_in_4bit", False) or getattr(base, "is_loaded_in_8bit", False)):
        return copy.deepcopy(peft_model).merge_and_unload()
    from transformers import AutoModelForCausalLM

    source = peft_model.peft_config[peft_model.active_adapter].base_model_name_or_path
    if not source:
        raise ConfigError("cannot merge a quantized model whose base checkpoint is unknown "
                          "(base_model_name_or_path is empty); load it with load_for_finetuning(path, ...)")
    quant = getattr(getattr(base, "hf_quantizer", None), "quantization_config", None)
    dtype = getattr(quant, "bnb_4bit_compute_dtype", None) or torch.bfloat16
    fresh = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    return PeftModel.from_pretrained(fresh, str(adapter)).merge_and_unload()


# ----------------------------------------------------------------------------- memory

def _cpu_rss() -> tuple[int, int]:
    """(current, peak) resident set size of this process in bytes."""
    try:
        status = Path("/proc/self/status").read_text()
        fields = dict(re.findall(r"^(VmRSS|VmHWM):\s+(\d+)\s+kB", status, re.MULTILINE))
        return int(fields["VmRSS"]) * 1024, int(fields["VmHWM"]) * 1024
    except (OSError, KeyError):
        import resource  # no /proc (macOS): only the lifetime peak is known, which stands in for both

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
        return peak, peak


def _reset_cpu_peak() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_memory(device: Union[str, torch.device] = "cpu") -> dict:
    """The raw peak: ``torch.cuda.max_memory_allocated`` since its last reset on CUDA, else the process'
    peak RSS since start (or since a ``MemoryTracker`` reset it). ``{"kind": ..., "bytes": int}``."""
    device = torch.device(device)
    if device.type == "cuda":
        return {"kind": "cuda_max_allocated", "bytes": int(torch.cuda.max_memory_allocated(device))}
    return {"kind": "cpu_peak_rss", "bytes": _cpu_rss()[1]}


class MemoryTracker:
    """Peak memory of a span of code, as the increase over what was in use when it started.

    ``with MemoryTracker(device) as mem: ...`` then ``mem.result`` is ``{"kind", "bytes"}``:
    - CUDA (``cuda_max_allocated``): the peak stats are reset at the start; bytes = peak of
      ``torch.cuda.max_memory_allocated`` minus what was allocated at the start (caching-allocator
      slack is not counted).
    - CPU (``cpu_peak_rss``): the process' peak resident set size minus the RSS at the start. The
      peak RSS is monotonic over a process' life, so the tracker first resets the kernel's mark
      (``/proc/self/clear_refs``); consecutive experiments in one process are then comparable.
      Where that reset is impossible (no /proc) the baseline is the lifetime peak at the start, and
      a span that stays under an earlier peak reads as 0: run such comparisons in fresh processes.
    Start the tracker before loading the model to count the weights too.
    """

    def __init__(self, device: Union[str, torch.device] = "cpu"):
        self.device = torch.device(device)
        self.result: dict | None = None
        self._baseline = 0

    def start(self) -> "MemoryTracker":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._baseline = torch.cuda.memory_allocated(self.device)
        else:
            reset = _reset_cpu_peak()
            current, peak = _cpu_rss()
            self._baseline = current if reset else peak
        return self

    def stop(self) -> dict:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        peak = peak_memory(self.device)
        self.result = {"kind": peak["kind"], "bytes": max(0, peak["bytes"] - self._baseline)}
        return self.result

    def __enter__(self) -> "MemoryTracker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


__all__ = ["MethodConfig", "LLAMA31_8B_QLORA", "COMPUTE_DTYPES", "target_modules_for", "lora_config", "bnb_config",
           "require_qlora_runtime", "enable_gradient_checkpointing", "prepare_model", "load_for_finetuning",
           "trainable_parameters", "merge_and_save", "peak_memory", "MemoryTracker"]
