"""The tokenizer stage as a function: train on the configured corpora, compare, register.

``ray_jobs.tokenizer`` (the entry point) and the experiments call this; it owns no CLI parsing.
"""
from __future__ import annotations

import time

from shared.data import iter_corpus
from shared.registry import Artifact, Registry
from shared.tokenizer.adopt import adopt_tokenizer
from shared.tokenizer.compare import compare_tokenizers, write_comparison
from shared.tokenizer.tokenizer_config import TokenizerConfig
from shared.tokenizer.train import train_tokenizer


def train_tokenizer_artifact(cfg: TokenizerConfig) -> Artifact:
    """Train ``cfg``'s tokenizer (or adopt ``cfg.pretrained``'s vocabulary) into ``<runs>/<run>/<stage>``,
    write the comparison, register it."""
    registry = Registry(cfg.runs_dir)
    out = registry.stage_dir(cfg.run, cfg.stage, overwrite=cfg.overwrite)
    t0 = time.perf_counter()

    def texts():
        for source in cfg.sources:
            for doc in iter_corpus(source, max_bytes=cfg.max_bytes_per_source, text_field=cfg.text_field):
                yield doc.text

    if cfg.pretrained:
        stats = adopt_tokenizer(cfg.pretrained, out)
    else:
        stats = train_tokenizer(texts(), cfg.vocab_size, method=cfg.method, out_dir=out)
    t_train = time.perf_counter() - t0
    rows = compare_tokenizers([str(out)] + list(cfg.compare_with))
    write_comparison(rows, out)
    metrics = {"vocab_size": stats.get("vocab_size", cfg.vocab_size), **{k: v for k, v in stats.items() if isinstance(v, (int, float))}}
    for row in rows:
        if row.get("spec") == str(out) and "kind" in row and "chars_per_token" in row:
            metrics[f"chars_per_token_{row['kind']}"] = row["chars_per_token"]
    return registry.register(cfg.run, cfg.stage, "tokenizer", config=cfg, metrics=metrics,
                             timings={"train_s": t_train, "total_s": time.perf_counter() - t0})
