"""The import stage: a GPT-2 pretrained elsewhere registered as a journey artifact (``journey import``).

``run_import(ImportConfig)`` converts the checkpoint with ``shared.model.importers.import_checkpoint``
into ``<runs>/<run>/<stage>`` (an HF checkpoint with the tokenizer), so every later stage can
start from it (``init_from=<run>/import tokenizer=<run>/import``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from shared.config import ConfigError, JobConfig, help_field
from shared.model.importers import import_checkpoint
from shared.registry import Artifact, Registry


@dataclass
class ImportConfig(JobConfig):
    run: str = help_field("imported", "run name of the artifact")
    stage: str = help_field("import", "stage name of the artifact")
    src: str = help_field("", "checkpoint file or HF directory to import")
    format: Literal["auto", "nanogpt", "build-nanogpt", "llmc", "hf"] = help_field("auto", "source format")
    tokenizer: Optional[str] = help_field(
        "gpt2", "tokenizer it was trained with: an HF tokenizer dir, a llama.cpp .gguf vocab, or a hub name "
                "(gpt2 = the GPT-2 tokenizer from the hub; offline pass the .gguf file)")

    def validate(self) -> None:
        super().validate()
        if not self.src:
            raise ConfigError("src is required: journey import <checkpoint file or HF dir>")


def run_import(cfg: ImportConfig) -> Artifact:
    """Convert ``cfg.src`` and register it (kind ``hf-model``; the import details in ``extra["import"]``)."""
    if not Path(cfg.src).exists():
        raise FileNotFoundError(f"checkpoint {cfg.src} not found; pass the path of your ckpt.pt, .bin or HF dir")
    registry = Registry(cfg.runs_dir)
    out = registry.stage_dir(cfg.run, cfg.stage, overwrite=cfg.overwrite)
    info = import_checkpoint(cfg.src, out, format=cfg.format, tokenizer=cfg.tokenizer)
    metrics = {k: v for k, v in info.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return registry.register(cfg.run, cfg.stage, "hf-model", config=cfg, metrics=metrics,
                             data_fingerprint=info.get("sha256"), extra={"import": info})


__all__ = ["ImportConfig", "run_import"]
