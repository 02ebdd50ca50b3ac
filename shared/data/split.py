"""Deterministic train/val split by document id.

Each document gets a score in [0, 1) from sha256(seed, id) (never Python's ``hash()``, which is
salted per process); it goes to val when the score is below ``val_fraction``. The split of one
document therefore never depends on which other documents are in the corpus, on their order, or
on the machine: growing the corpus never moves a document from val to train.

Small corpora of large documents can hash (almost) every byte to one side. :class:`SplitPlanner`
repairs that once the whole corpus has been seen: if train is empty the val document with the
largest score moves to train; then, with >= 2 documents and ``val_fraction > 0``, while val holds
less than half of its share of the bytes (``val_fraction / 2``), the train document with the
smallest score moves to val (the one that would join val first as ``val_fraction`` grew), as long
as train keeps at least one document. An empty val is the extreme case of this. A single document
always goes to train.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Literal

Split = Literal["train", "val"]
SPLITS: tuple[Split, Split] = ("train", "val")

#: The documents' held-out split, the one place it is defined: the pretraining configs' defaults
#: (``data.val_fraction``, ``data.seed``), SFT on a text corpus, held-out perplexity, the lm-eval docs
#: cloze task and the retrieval index all call a document held out by this rule, so nothing any
#: stage trained on is scored or retrieved as "unseen".
DOC_VAL_FRACTION = 0.05
DOC_SPLIT_SEED = 0


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


def is_heldout_doc(doc_id: str) -> bool:
    """Whether a document is in the journey's held-out split (``DOC_VAL_FRACTION``, ``DOC_SPLIT_SEED``)."""
    return split_of(doc_id, DOC_VAL_FRACTION, DOC_SPLIT_SEED) == "val"


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
    _train: list[_Candidate] = field(default_factory=list)  # candidates to top val up, by score later
    _last_train: _Candidate | None = None  # largest-score val doc: the first to join train

    def __post_init__(self) -> None:
        check_val_fraction(self.val_fraction)

    def add(self, index: int, doc_id: str, n_bytes: int) -> Split:
        score = split_score(doc_id, self.seed)
        split: Split = "val" if score < self.val_fraction else "train"
        candidate = _Candidate(score, index, n_bytes)
        if split == "train":
            self._train.append(candidate)
        if split == "val" and (self._last_train is None or score > self._last_train.score):
            self._last_train = candidate
        self.n_docs[split] += 1
        self.n_bytes[split] += n_bytes
        return split

    def finish(self) -> dict[int, Split]:
        moves: dict[int, Split] = {}
        if self.n_docs["train"] == 0 and self.n_docs["val"] > 0:
            assert self._last_train is not None  # val is non-empty, so it has a candidate
            self._move(self._last_train, "val", "train", moves)
            return moves
        if self.val_fraction <= 0:
            return moves
        floor = self.val_fraction / 2 * (self.n_bytes["train"] + self.n_bytes["val"])
        for doc in sorted(self._train, key=lambda c: c.score):
            if self.n_docs["train"] < 2 or (self.n_docs["val"] > 0 and self.n_bytes["val"] >= floor):
                break
            self._move(doc, "train", "val", moves)
        return moves

    def _move(self, doc: _Candidate, old: Split, new: Split, moves: dict[int, Split]) -> None:
        self.n_docs[old] -= 1
        self.n_docs[new] += 1
        self.n_bytes[old] -= doc.n_bytes
        self.n_bytes[new] += doc.n_bytes
        moves[doc.index] = new
