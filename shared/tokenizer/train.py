"""One call to train a tokenizer of ours and (optionally) save it as an HF tokenizer dir.

``train_tokenizer(texts, vocab_size, method="fast" | "reference", out_dir=...)`` picks the trainer
(HF ``tokenizers`` or our readable ``bpe.py``; both give the same merges and the same id layout),
streams ``texts`` once, and returns plain stats for ``journey.json``. It does not read corpora from
disk or register artifacts: the tokenizer job does that.
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from shared.tokenizer.bpe import BPETokenizer, build_vocab
from shared.chat_format import SPECIAL_TOKENS
from shared.tokenizer.fast import train_fast_merges
from shared.tokenizer.hf_format import save_hf_tokenizer

METHODS = ("fast", "reference")


class _Tally:
    """Passes texts through once while counting them, so a generator corpus is read only once."""

    def __init__(self, texts: Iterable[str]):
        self.texts, self.n_texts, self.chars, self.bytes = texts, 0, 0, 0

    def __iter__(self) -> Iterator[str]:
        for text in [self.texts] if isinstance(self.texts, str) else self.texts:
            if not isinstance(text, str):
                raise TypeError(f"corpus items must be str, got {type(text).__name__}; decode bytes first")
            self.n_texts += 1
            self.chars += len(text)
            self.bytes += len(text.encode("utf-8"))
            yield text


def min_vocab_size(special_tokens: Sequence[str] = SPECIAL_TOKENS) -> int:
    """Smallest useful vocab: the 256 bytes, the special tokens and at least one merge."""
    return 256 + len(special_tokens) + 1


def train_tokenizer(texts: Iterable[str], vocab_size: int, method: Literal["fast", "reference"] = "fast",
                    out_dir: str | Path | None = None, special_tokens: Sequence[str] = SPECIAL_TOKENS,
                    show_progress: bool = False) -> dict[str, Any]:
    """Train byte-level BPE on ``texts``; save an HF tokenizer dir to ``out_dir`` if given; return stats.

    ``vocab_size`` counts bytes, merged tokens and special tokens; a corpus too small to fill it
    yields a smaller vocabulary (the stats say how big).
    """
    if method not in METHODS:
        raise ValueError(f"unknown tokenizer training method {method!r}; choose one of {', '.join(METHODS)}")
    minimum = min_vocab_size(special_tokens)
    if vocab_size < minimum:
        raise ValueError(f"vocab_size {vocab_size} is too small: the minimum is {minimum} "
                         f"(256 bytes + {len(special_tokens)} special tokens + 1 merge)")
    n_new = vocab_size - 256 - len(special_tokens)
    tally = _Tally(texts)
    start = time.perf_counter()
    if method == "fast":
        merges = train_fast_merges(tally, n_new, show_progress=show_progress)
    else:
        merges = BPETokenizer.train(tally, vocab_size, special_tokens).merges
    seconds = time.perf_counter() - start
    if tally.bytes == 0:
        raise ValueError("corpus is empty; pass at least one non-empty text (check the data path and filters)")
    stats: dict[str, Any] = {
        "method": method, "requested_vocab_size": vocab_size,
        "vocab_size": len(build_vocab(merges)[0]) + len(special_tokens),
        "n_merges": len(merges), "n_special_tokens": len(special_tokens),
        "corpus_texts": tally.n_texts, "corpus_chars": tally.chars, "corpus_bytes": tally.bytes,
        "train_seconds": round(seconds, 3), "out_dir": None,
    }
    if out_dir is not None:
        stats["out_dir"] = str(save_hf_tokenizer(merges, out_dir, special_tokens))
    return stats
