"""The import stage: a GPT-2 pretrained elsewhere registered as a journey artifact (``journey import``).

``run_import(ImportConfig)`` converts the checkpoint with ``shared.model.importers.import_checkpoint``
into ``<runs>/<run>/<stage>`` (an HF checkpoint with the tokenizer), so every later stage can
start from it (``journey run init_from=<run>/import``, or ``init_from=<run>/import
tokenizer=<run>/import`` for one stage).

The journey's chat special tokens (``<|user|>``, ``<|assistant|>``, ``<|end|>``, ...) are appended
to the imported tokenizer (``chat_tokens=true``, the default): SFT, DPO, RL and serving speak the
chat format, and a GPT-2 tokenizer without them would spell ``<|end|>`` as seven ordinary tokens that
nothing stops on. They take the ids after GPT-2's 50,257, rows that build-nanogpt's and llm.c's
padded 50,304-row embeddings already have; a model without spare rows (HF ``gpt2``) gets them,
initialised to the mean embedding (``shared.model.gpt.grow_vocabulary``).
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from shared.config import ConfigError, JobConfig, help_field
from shared.model.gpt import grow_vocabulary
from shared.model.hf import TOKENIZER_FILES, load_gpt, save_hf_checkpoint
from shared.model.importers import import_checkpoint
from shared.tokenizer.adopt import adopt_tokenizer
from shared.registry import Artifact, Registry


@dataclass
class ImportConfig(JobConfig):
    run: str = help_field("imported", "run name of the artifact")
    stage: str = help_field("import", "stage name of the artifact")
    src: str = help_field("", "checkpoint file or HF directory to import")
    format: Literal["auto", "nanogpt", "build-nanogpt", "llmc", "hf"] = help_field("auto", "source format")
    chat_tokens: bool = help_field(True, "append the journey's chat special tokens to the tokenizer (and embedding "
                                         "rows for them when the model has none spare), as SFT and serving need")
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
    if cfg.chat_tokens:
        info.update(_add_chat_tokens(out))
    metrics = {k: v for k, v in info.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return registry.register(cfg.run, cfg.stage, "hf-model", config=cfg, metrics=metrics,
                             data_fingerprint=info.get("sha256"), extra={"import": info})


def _add_chat_tokens(out: Path) -> dict:
    """Append the chat special tokens to the checkpoint's tokenizer in ``out`` and make room for them in the
    model (see the module docstring); what changed, for the artifact's record."""
    if not any((out / name).is_file() for name in TOKENIZER_FILES):
        raise ConfigError("chat_tokens=true needs the checkpoint's tokenizer: pass tokenizer=<HF dir, .gguf "
                          "vocabulary or hub name>, or chat_tokens=false")
    with tempfile.TemporaryDirectory() as tmp:
        stats = adopt_tokenizer(str(out), tmp)
        model = load_gpt(out)
        rows = model.config.vocab_size
        if stats["n_added_tokens"] or stats["vocab_size"] > rows:
            save_hf_checkpoint(grow_vocabulary(model, max(rows, stats["vocab_size"])), out, tokenizer_dir=tmp)
    return {"chat_tokens_added": stats["n_added_tokens"], "tokenizer_vocab_size": stats["vocab_size"],
            "embedding_rows_added": max(0, stats["vocab_size"] - rows)}


__all__ = ["ImportConfig", "run_import"]
