"""GPT-2 model: our training class, presets, HF conversion and checkpoint importers."""
from shared.model.gpt import GPT, GPTConfig
from shared.model.presets import PRESETS, model_config

__all__ = ["GPT", "GPTConfig", "PRESETS", "model_config"]
