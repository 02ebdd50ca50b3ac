"""Train the journey's byte-level BPE tokenizer (with the chat/tool special tokens) and compare it.

    python -m ray_jobs.tokenizer --config tiny run=myrun
    python -m ray_jobs.tokenizer --config tiny compare_with=[../shared/data/tokenizers/ggml-vocab-gpt-2.gguf]

Writes ``<runs>/<run>/tokenizer``: an HF tokenizer directory (``tokenizer.json`` + ``chat_template``)
plus ``comparison.{md,json,png}`` (ours and ``compare_with``, per text kind).
"""
from __future__ import annotations

import sys
import time

from ray_jobs._args import parse_job_args, run_main
from shared.config import to_dict
from shared.tokenizer.tokenizer_config import TokenizerConfig


def run(cfg: TokenizerConfig):
    from shared.data import iter_documents
    from shared.registry import Registry
    from shared.tokenizer import compare_tokenizers, train_tokenizer, write_comparison

    registry = Registry(cfg.runs_dir)
    out = registry.stage_dir(cfg.run, cfg.stage, overwrite=cfg.overwrite)
    t0 = time.perf_counter()

    def texts():
        for source in cfg.sources:
            for doc in iter_documents(source, max_bytes=cfg.max_bytes_per_source, text_field=cfg.text_field):
                yield doc.text

    stats = train_tokenizer(texts(), cfg.vocab_size, method=cfg.method, out_dir=out)
    t_train = time.perf_counter() - t0
    rows = compare_tokenizers([str(out)] + list(cfg.compare_with))
    write_comparison(rows, out)
    ours = [r for r in rows if r.get("tokenizer") == str(out) or r.get("name") == "ours"]
    metrics = {"vocab_size": cfg.vocab_size, **{k: v for k, v in stats.items() if isinstance(v, (int, float))}}
    for row in ours:
        if "kind" in row and "chars_per_token" in row:
            metrics[f"chars_per_token_{row['kind']}"] = row["chars_per_token"]
    return registry.register(cfg.run, cfg.stage, "tokenizer", config=to_dict(cfg), metrics=metrics,
                             timings={"train_s": t_train, "total_s": time.perf_counter() - t0})


def main(argv: list[str] | None = None) -> int:
    def job():
        art = run(parse_job_args(TokenizerConfig, "tokenizer", argv, __doc__.splitlines()[0]))
        return {"artifact": art.id, "path": art.path, "metrics": art.metrics}
    return run_main(job)


if __name__ == "__main__":
    sys.exit(main())
