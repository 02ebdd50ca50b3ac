"""Train the journey's byte-level BPE tokenizer (with the chat/tool special tokens) and compare it.

    python -m ray_jobs.tokenizer --config tiny run=myrun
    python -m ray_jobs.tokenizer --config tiny compare_with=[../shared/data/tokenizers/ggml-vocab-gpt-2.gguf]

Writes ``<runs>/<run>/tokenizer``: an HF tokenizer directory (``tokenizer.json`` + ``chat_template``)
plus ``comparison.{md,json,png}`` (ours and ``compare_with``, per text kind).
"""
from __future__ import annotations

import sys

from ray_jobs._args import stage_main
from shared.tokenizer.tokenizer_config import TokenizerConfig


def main(argv: list[str] | None = None) -> int:
    return stage_main(TokenizerConfig, "tokenizer", argv, __doc__, "shared.tokenizer.artifact:train_tokenizer_artifact")


if __name__ == "__main__":
    sys.exit(main())
