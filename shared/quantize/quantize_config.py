"""Configuration of the quantize stage (``journey quantize``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from shared.config import ConfigError, JobConfig, help_field, require_positive

# Engine variants run by shared.engine (fp32/bf16 are the parent's weights; int8/int4 are saved artifacts);
# GGUF variants run by llama.cpp.
ENGINE_VARIANTS = ("fp32", "bf16", "int8", "int8-dynamic", "int4")
GGUF_VARIANTS = ("gguf-f32", "gguf-f16", "gguf-q8_0", "gguf-q4_0", "gguf-q4_k")
VARIANTS = ENGINE_VARIANTS + GGUF_VARIANTS


@dataclass
class QuantizeConfig(JobConfig):
    """Quantize a model artifact into each variant, register them, and measure speed and quality side by side."""

    stage: str = help_field("quantize", "stage name of the comparison report; variants are <stage>-<variant>")
    init_from: str = help_field("dpo", "the model artifact to quantize (an HF GPT-2 or MoE checkpoint; MoE: gguf and fp32/bf16 variants)")
    variants: list[str] = help_field(["fp32", "bf16", "int8", "int4", "gguf-f16", "gguf-q8_0", "gguf-q4_0"],
                                     f"variants to build and measure, out of {list(VARIANTS)}")
    group_size: int = help_field(32, "INT4 group size (input features per scale)")
    include_lm_head: bool = help_field(True, "quantize the tied output projection too (the largest matrix)")
    hf_baseline: bool = help_field(True, "also time HF generate() on the FP32 parent (the peer every ratio is against)")
    prompt_tokens: int = help_field(32, "prompt length for the speed measurements")
    new_tokens: int = help_field(64, "tokens generated per request for the speed measurements")
    concurrency: list[int] = help_field([1, 4, 16], "concurrent requests for the engine's aggregate throughput")
    threads: int = help_field(2, "torch / llama.cpp threads")
    repeats: int = help_field(2, "timing runs per measurement (the best is kept)")
    ppl_tokens: int = help_field(8192, "held-out tokens for each variant's perplexity and agreement with FP32")
    decode_quality_tokens: int = help_field(
        256, "of those, tokens also read one decode step at a time (the kernels serving uses) for the engine "
        "variants' decode-path top-1 agreement with FP32; 0 skips it")
    quality_text: Literal["chat", "general", "domain"] = help_field(
        "chat", "held-out text for quality: chat conversations (an assistant's job), Python docs or stdlib code")
    seed: int = help_field(0, "seed of the benchmark prompts")

    def validate(self) -> None:
        super().validate()
        require_positive(self, ("group_size", "prompt_tokens", "new_tokens", "threads", "repeats", "ppl_tokens"))
        if self.decode_quality_tokens < 0:
            raise ConfigError(f"decode_quality_tokens must be >= 0 (0 skips the decode-path check), "
                              f"got {self.decode_quality_tokens}")
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown:
            raise ConfigError(f"unknown precision/variant {unknown[0]!r}; variants are {list(VARIANTS)}")
        if not self.variants:
            raise ConfigError("variants is empty; name at least one, e.g. variants=[int8,gguf-q8_0]")
        if not self.concurrency or any(c <= 0 for c in self.concurrency):
            raise ConfigError(f"concurrency must be positive request counts, got {self.concurrency}")
