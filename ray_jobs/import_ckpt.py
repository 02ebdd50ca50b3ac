"""Bring your own checkpoint: import a GPT-2 you pretrained elsewhere as a journey artifact.

    journey import out/ckpt.pt tokenizer=../shared/data/tokenizers/ggml-vocab-gpt-2.gguf run=mine
    python -m ray_jobs.import_ckpt src=gpt2_124M.bin tokenizer=gpt2 run=mine

Formats: nanoGPT ``ckpt.pt``, build-nanogpt ``model_*.pt``, llm.c ``gpt2_124M.bin`` (fp32 or bf16),
or an HF GPT-2 directory. Writes ``<runs>/<run>/<stage>``: an HF checkpoint with the tokenizer, so
every later stage can start from it (``init_from=<run>/import tokenizer=<run>/import``).
"""
from __future__ import annotations

import sys

from ray_jobs._args import stage_main


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and "=" not in argv[0] and not argv[0].startswith("-"):
        argv[0] = f"src={argv[0]}"  # `journey import PATH` as well as src=PATH
    return stage_main("import", argv, __doc__,
                      result=lambda art: {"artifact": art.id, "path": art.path, "import": art.extra.get("import")})


if __name__ == "__main__":
    sys.exit(main())
