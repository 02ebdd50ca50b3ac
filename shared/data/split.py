"""Deterministic train/val split by document id.

Each document gets a score in [0, 1) from sha256(seed, id) (never Python's ``hash()``, which is
salted per process); it goes to val when the score is below ``val_fraction``. The split of one
document therefore never depends on which other documents are in the corpus, on their order, or
on the machine: growing the corpus never moves a document from val to train.

Small corpora can hash every document to one side. :class:`SplitPlanner` repairs that once the
whole corpus has been seen: with >= 2 documents and ``val_fraction > 0``, if val is empty the
train document with the smallest score moves to val (it is the one that would join val first as
``val_fraction`` grows), and if train is empty the val document with the largest score moves to
train. A single document always goes to train.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Literal

Split = Literal["train", "val"]
SPLITS: tuple[Split, Split] = ("train", "val")


def split_score(doc_id: str, seed: int) -> float:
    """A stable pseudo-random number in [0, 1) for ``doc_id`` under ``seed``."""
    digest = hashlib.sha256(f"{seed}\x00{doc_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def check_val_fraction(val_fraction: float) -> None:
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}; 0.05 keeps 5% of documents for validation")


def split_of(doc_id: str, val_fraction: float, seed: int) -> Split:
    """``"val"`` for about ``val_fraction`` of ids, ``"train"`` for the rest; stable everywhere.

    This is the per-document rule only; the empty-split repair needs the whole corpus and is
    done by :class:`SplitPlanner` (``build_shards`` uses it).
    """
    check_val_fraction(val_fraction)
    return "val" if split_score(doc_id, seed) < val_fraction else "train"


@dataclass
class _Candidate:
    score: float
    index: int
    n_bytes: int


@dataclass
class SplitPlanner:
    """Assigns documents as they stream past, then repairs an empty side (see module docstring).

    Call :meth:`add` for every document in order (it returns the per-document split), then
    :meth:`finish`, which returns ``{doc index: new split}`` for the at most one document that
    moves. Counts in ``n_docs``/``n_bytes`` are final after :meth:`finish`.
    """

    val_fraction: float
    seed: int
    n_docs: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    n_bytes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    _first_val: _Candidate | None = None  # smallest-score train doc: the first to join val
    _last_train: _Candidate | None = None  # largest-score val doc: the first to join train

    def __post_init__(self) -> None:
        check_val_fraction(self.val_fraction)

    def add(self, index: int, doc_id: str, n_bytes: int) -> Split:
        score = split_score(doc_id, self.seed)
        split: Split = "val" if score < self.val_fraction else "train"
        candidate = _Candidate(score, index, n_bytes)
        if split == "train" and (self._first_val is None or score < self._first_val.score):
            self._first_val = candidate
        if split == "val" and (self._last_train is None or score > self._last_train.score):
            self._last_train = candidate
        self.n_docs[split] += 1
        self.n_bytes[split] += n_bytes
        return split

    def finish(self) -> dict[int, Split]:
        if self.n_docs["train"] == 0 and self.n_docs["val"] > 0:
            return self._move(self._last_train, "val", "train")
        if self.n_docs["val"] == 0 and self.n_docs["train"] >= 2 and self.val_fraction > 0:
            return self._move(self._first_val, "train", "val")
        return {}

    def _move(self, doc: _Candidate | None, old: Split, new: Split) -> dict[int, Split]:
        assert doc is not None  # the side we take from is non-empty, so it has a candidate
        self.n_docs[old] -= 1
        self.n_docs[new] += 1
        self.n_bytes[old] -= doc.n_bytes
        self.n_bytes[new] += doc.n_bytes
        return {doc.index: new}
