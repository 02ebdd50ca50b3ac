"""Train the journey's byte-level BPE tokenizer (with the chat/tool special tokens) and compare it.

    python -m ray_jobs.tokenizer --config tiny run=myrun
    python -m ray_jobs.tokenizer --config tiny compare_with=[../shared/data/tokenizers/ggml-vocab-gpt-2.gguf]

Writes ``<runs>/<run>/tokenizer``: an HF tokenizer directory (``tokenizer.json`` + ``chat_template``)
plus ``comparison.{md,json,png}`` (ours and ``compare_with``, per text kind).
"""
from __future__ import annotations

import sys

from ray_jobs._args import parse_job_args, run_main
from shared.tokenizer.tokenizer_config import TokenizerConfig


def main(argv: list[str] | None = None) -> int:
    def job():
        from shared.tokenizer.artifact import train_tokenizer_artifact
        cfg = parse_job_args(TokenizerConfig, "tokenizer", argv, __doc__.splitlines()[0])
        art = train_tokenizer_artifact(cfg)
        return {"artifact": art.id, "path": art.path, "metrics": art.metrics}
    return run_main(job)


if __name__ == "__main__":
    sys.exit(main())
