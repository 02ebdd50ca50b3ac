"""Named model sizes. ``vocab_size`` comes from the tokenizer unless a preset pins it."""
from __future__ import annotations

from dataclasses import replace

from shared.model.gpt import GPTConfig

PRESETS: dict[str, GPTConfig] = {
    # Fits the CPU journey: a few minutes of pretraining on 2 cores still shows the loss fall.
    "tiny": GPTConfig(vocab_size=4096, block_size=128, n_layer=4, n_head=4, n_embd=128),
    # Seconds per stage, for the e2e smoke test.
    "smoke": GPTConfig(vocab_size=512, block_size=64, n_layer=2, n_head=2, n_embd=32),
    # The shape of the throughput benchmark in the foundation issue.
    "bench": GPTConfig(vocab_size=8192, block_size=256, n_layer=6, n_head=6, n_embd=384),
    "gpt2-124m": GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768),
    "gpt2-350m": GPTConfig(vocab_size=50257, block_size=1024, n_layer=24, n_head=16, n_embd=1024),
}


def model_config(preset: str, **overrides) -> GPTConfig:
    """The preset's config with ``overrides`` (e.g. ``vocab_size`` from the tokenizer) applied."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose one of {sorted(PRESETS)}")
    cfg = replace(PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})
    cfg.validate()
    return cfg
