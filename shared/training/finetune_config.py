"""Config of the fine-tuning *method*: full fine-tuning, LoRA or QLoRA (``MethodConfig``).

This is the model-side half of a fine-tuning job's config: which weights train, where adapters go,
how the base is quantized. The data, optimizer and schedule belong to the job's own config, which
embeds a ``MethodConfig`` as a section. ``shared.training.finetune_methods`` applies it to a model.

``LLAMA31_8B_QLORA`` holds the settings of the curriculum's Llama 3.1 8B QLoRA run (see the
docstring of ``finetune_methods``), so the job preset and the code share one source.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Literal, Optional, Union

from shared.config import ConfigError, help_field

#: Named sets of adapter targets; ``finetune_methods.target_modules_for`` resolves them per model.
NAMED_TARGET_SETS = ("attention", "attention+mlp", "all-linear")


@dataclass
class MethodConfig:
    """How a causal LM is fine-tuned: every weight (full), low-rank adapters (lora), or lora on a 4-bit base (qlora)."""

    method: Literal["full", "lora", "qlora"] = help_field(
        "lora", "full = train every weight; lora = train low-rank adapters on a frozen base; "
        "qlora = lora on a base quantized to 4 bits (needs a CUDA GPU and bitsandbytes)")
    lora_r: int = help_field(16, "LoRA rank r (adapter matrices are r x in and out x r); the curriculum "
                             "compares r = 8 / 16 / 32")
    lora_alpha: Optional[int] = help_field(None, "LoRA scaling numerator (updates are scaled by alpha / r); "
                                           "None = 2 * lora_r")
    lora_dropout: float = help_field(0.05, "dropout on the adapter's input during training")
    target_modules: Union[str, list[str]] = help_field(
        "all-linear", f"where adapters go: a named set {list(NAMED_TARGET_SETS)} resolved from the model's own "
        "modules (all-linear leaves out the LM head), or a list of module names / dotted suffixes such as "
        "[q_proj, v_proj] or [attn.c_attn] (a comma-separated string works too)")
    gradient_checkpointing: bool = help_field(False, "recompute activations in the backward pass: less memory, "
                                              "about a third more compute")
    quant_type: Literal["nf4", "fp4"] = help_field("nf4", "qlora only: 4-bit data type (nf4 = NormalFloat, "
                                                   "the QLoRA paper's choice for normally distributed weights)")
    double_quant: bool = help_field(True, "qlora only: quantize the quantization constants too (~0.4 bit/param saved)")
    compute_dtype: Literal["bf16", "fp16", "fp32"] = help_field(
        "bf16", "qlora only: dtype the 4-bit weights are dequantized to for each matmul (bf16 on Ampere and newer)")

    @property
    def alpha(self) -> int:
        """The LoRA alpha in force: ``lora_alpha`` or, when unset, twice the rank."""
        return self.lora_alpha if self.lora_alpha is not None else 2 * self.lora_r

    def target_spec(self) -> Union[str, list[str]]:
        """``target_modules`` normalized: a named set as is, anything else as a list of module names."""
        spec = self.target_modules
        if isinstance(spec, str):
            if spec in NAMED_TARGET_SETS:
                return spec
            spec = spec.split(",")
        return [name.strip() for name in spec if name.strip()]

    def validate(self) -> None:
        if self.lora_r < 1:
            raise ConfigError(f"lora_r must be >= 1, got {self.lora_r}; the curriculum uses 8, 16 or 32")
        if self.lora_alpha is not None and self.lora_alpha < 1:
            raise ConfigError(f"lora_alpha must be >= 1 (or unset for 2 * lora_r), got {self.lora_alpha}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        spec = self.target_spec()
        if isinstance(spec, list):
            if not spec:
                raise ConfigError(f"target_modules is empty; give a named set {list(NAMED_TARGET_SETS)} "
                                  "or module names such as [q_proj, v_proj]")
            # A single misspelt named set would otherwise be taken for a module name and fail later, less clearly.
            if len(spec) == 1:
                close = difflib.get_close_matches(spec[0], NAMED_TARGET_SETS, n=1, cutoff=0.8)
                if close:
                    raise ConfigError(f"target_modules: {spec[0]!r} is not a named set; did you mean {close[0]!r}?")


#: Llama 3.1 8B QLoRA, as in the QLoRA paper's recipe: NF4 with double quantization, bf16 compute,
#: LoRA r=16 on every linear layer but the head, gradient checkpointing, paged 8-bit AdamW.
#: ``method`` is a ``MethodConfig`` mapping; ``optim`` is the ``transformers``/TRL optimizer name.
LLAMA31_8B_QLORA = {
    "model": "meta-llama/Llama-3.1-8B",
    "method": {
        "method": "qlora", "quant_type": "nf4", "double_quant": True, "compute_dtype": "bf16",
        "target_modules": "all-linear", "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05,
        "gradient_checkpointing": True,
    },
    "optim": "paged_adamw_8bit",
}

__all__ = ["MethodConfig", "NAMED_TARGET_SETS", "LLAMA31_8B_QLORA"]
