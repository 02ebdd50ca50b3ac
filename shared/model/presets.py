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
    # 1.3B with GPT-2's vocabulary and context: the 24 layers x 2048 wide of GPT-3 XL (Brown et al. 2020,
    # Table 2.1, 1.3B) and Pythia-1.4B (Biderman et al. 2023, 16 heads of 128), within the issue's
    # 24-36 x 1536-2048. 1,313,638,400 parameters with the 50,263 ids of our GPT-2 tokenizer.
    "gpt2-1b": GPTConfig(vocab_size=50257, block_size=1024, n_layer=24, n_head=16, n_embd=2048),
}


def model_config(preset: str, **overrides) -> GPTConfig:
    """The preset's config with ``overrides`` (e.g. ``vocab_size`` from the tokenizer) applied."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose one of {sorted(PRESETS)}")
    cfg = replace(PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})
    cfg.validate()
    return cfg
