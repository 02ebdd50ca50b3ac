"""Bring your own checkpoint: import a GPT-2 you pretrained elsewhere as a journey artifact.

    journey import out/ckpt.pt tokenizer=../shared/data/tokenizers/ggml-vocab-gpt-2.gguf run=mine
    python -m ray_jobs.import_ckpt src=gpt2_124M.bin tokenizer=gpt2 run=mine

Formats: nanoGPT ``ckpt.pt``, build-nanogpt ``model_*.pt``, llm.c ``gpt2_124M.bin`` (fp32 or bf16),
or an HF GPT-2 directory. Writes ``<runs>/<run>/<stage>``: an HF checkpoint with the tokenizer, so
every later stage can start from it (``init_from=<run>/import tokenizer=<run>/import``).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from ray_jobs._args import run_main
from shared.config import ConfigError, help_field, load_config, parse_overrides, to_dict


@dataclass
class ImportConfig:
    src: str = help_field("", "checkpoint file or HF directory to import")
    format: Literal["auto", "nanogpt", "build-nanogpt", "llmc", "hf"] = help_field("auto", "source format")
    tokenizer: Optional[str] = help_field(
        "gpt2", "tokenizer it was trained with: an HF tokenizer dir, a llama.cpp .gguf vocab, or a hub name "
                "(gpt2 = the GPT-2 tokenizer from the hub; offline pass the .gguf file)")
    run: str = help_field("imported", "run name of the artifact")
    stage: str = help_field("import", "stage name of the artifact")
    runs_dir: Optional[str] = help_field(None, "artifact root (default $JOURNEY_RUNS or ./runs)")
    overwrite: bool = help_field(False, "replace an existing artifact of the same run/stage")

    def validate(self) -> None:
        if not self.src:
            raise ConfigError("src is required: journey import <checkpoint file or HF dir>")


def run(cfg: ImportConfig):
    from shared.model.importers import import_checkpoint
    from shared.registry import Registry
    if not Path(cfg.src).exists():
        raise FileNotFoundError(f"checkpoint {cfg.src} not found; pass the path of your ckpt.pt, .bin or HF dir")
    registry = Registry(cfg.runs_dir)
    out = registry.stage_dir(cfg.run, cfg.stage, overwrite=cfg.overwrite)
    info = import_checkpoint(cfg.src, out, format=cfg.format, tokenizer=cfg.tokenizer)
    metrics = {k: v for k, v in info.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return registry.register(cfg.run, cfg.stage, "hf-model", config=to_dict(cfg), metrics=metrics,
                             data_fingerprint=info.get("sha256"), extra={"import": info})


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if argv and "=" not in argv[0]:
        argv[0] = f"src={argv[0]}"  # `journey import PATH` as well as src=PATH

    def job():
        art = run(load_config(ImportConfig, "import", None, base=parse_overrides(argv)))
        return {"artifact": art.id, "path": art.path, "import": art.extra.get("import")}
    return run_main(job)


if __name__ == "__main__":
    sys.exit(main())
