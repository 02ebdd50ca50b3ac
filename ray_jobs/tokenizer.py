"""Train the journey's byte-level BPE tokenizer (with the chat/tool special tokens) and compare it.

    python -m ray_jobs.tokenizer --config tiny run=myrun
    python -m ray_jobs.tokenizer --config tiny compare_with=[../shared/data/tokenizers/ggml-vocab-gpt-2.gguf]
    journey tokenizer compare runs/myrun/tokenizer ../shared/data/tokenizers/ggml-vocab-gpt-2.gguf gpt2 [out=DIR]

Writes ``<runs>/<run>/tokenizer``: an HF tokenizer directory (``tokenizer.json`` + ``chat_template``)
plus ``comparison.{md,json,png}`` (ours and ``compare_with``, per text kind). ``compare`` puts any
tokenizers (HF dirs, ``.gguf`` vocab files, hub names) side by side on the same texts, into ``out``
(default ``runs/tokenizer-compare``).
"""
from __future__ import annotations

import sys
from pathlib import Path

from ray_jobs._args import run_main, stage_main


def compare(argv: list[str]) -> int:
    """``compare SPEC... [out=DIR]``: the comparison table of the named tokenizers."""
    def job():
        # transformers, tokenizers and matplotlib: seconds, paid only by this command
        from shared.tokenizer import compare_tokenizers, write_comparison
        specs = [a for a in argv if not a.startswith("out=")]
        out = next((a.split("=", 1)[1] for a in argv if a.startswith("out=")), "runs/tokenizer-compare")
        if not specs:
            raise ValueError("name at least one tokenizer: an HF dir, a .gguf vocab file, or a hub name")
        Path(out).mkdir(parents=True, exist_ok=True)
        rows = compare_tokenizers(specs)
        paths = write_comparison(rows, out)
        print((Path(out) / "comparison.md").read_text())
        return {"written": {name: str(path) for name, path in paths.items()}}
    return run_main(job)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "compare":
        return compare(argv[1:])
    return stage_main("tokenizer", argv[1:] if argv and argv[0] == "train" else argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
