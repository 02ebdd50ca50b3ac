"""split_of and the empty-split repair."""
from __future__ import annotations

import pytest

from shared.data import split_of
from shared.data.split import SplitPlanner, split_score


def test_split_is_stable_and_close_to_the_fraction():
    ids = [f"doc-{i}" for i in range(10_000)]
    first = [split_of(i, 0.1, seed=0) for i in ids]
    assert first == [split_of(i, 0.1, seed=0) for i in ids]
    assert 0.08 < first.count("val") / len(ids) < 0.12
    other_seed = [split_of(i, 0.1, seed=1) for i in ids]
    assert other_seed != first and 0.08 < other_seed.count("val") / len(ids) < 0.12
    # Growing val_fraction only adds documents to val: nothing leaves it.
    larger = [split_of(i, 0.2, seed=0) for i in ids]
    assert all(b == "val" for a, b in zip(first, larger) if a == "val")
    # sha256-based, so the value is the same in every process and on every machine.
    assert split_score("doc-0", 0) == pytest.approx(split_score("doc-0", 0)) and split_of("doc-0", 0.5, 0) in ("train", "val")


def test_bad_fraction():
    with pytest.raises(ValueError, match=r"val_fraction must be in \[0, 1\)"):
        split_of("x", 1.0, 0)


def plan(ids: list[str], val_fraction: float) -> tuple[dict[int, str], SplitPlanner, list[str]]:
    planner = SplitPlanner(val_fraction, seed=0)
    splits = [planner.add(i, doc_id, 10) for i, doc_id in enumerate(ids)]
    return planner.finish(), planner, splits


def test_empty_val_gets_the_smallest_score_document():
    ids = [f"d{i}" for i in range(5)]
    moves, planner, splits = plan(ids, 1e-9)
    assert splits == ["train"] * 5
    smallest = min(range(5), key=lambda i: split_score(ids[i], 0))
    assert moves == {smallest: "val"}
    assert planner.n_docs == {"train": 4, "val": 1} and planner.n_bytes == {"train": 40, "val": 10}


def test_empty_train_gets_the_largest_score_document_and_single_doc_trains():
    ids = [f"d{i}" for i in range(3)]
    moves, planner, _ = plan(ids, 0.999999)
    largest = max(range(3), key=lambda i: split_score(ids[i], 0))
    assert moves == {largest: "train"} and planner.n_docs == {"train": 1, "val": 2}
    assert plan(["only"], 0.05)[1].n_docs == {"train": 1, "val": 0}
    assert plan(["a", "b"], 0.0)[0] == {}, "val_fraction=0 means no validation split, on purpose"


def test_balanced_corpus_is_left_alone():
    moves, planner, splits = plan([f"d{i}" for i in range(2_000)], 0.05)
    assert moves == {} and planner.n_docs["val"] == splits.count("val") > 0


def test_val_is_topped_up_to_half_its_byte_share():
    # 40 docs; a few huge ones dominate the bytes. Whatever the hash does, val ends with at least
    # val_fraction/2 of the bytes, taking train docs in score order, and train keeps documents.
    ids = [f"m{i}" for i in range(40)]
    sizes = [100_000 if i % 10 == 0 else 100 for i in range(40)]
    planner = SplitPlanner(0.1, seed=0)
    splits = [planner.add(i, doc_id, n) for i, (doc_id, n) in enumerate(zip(ids, sizes))]
    moves = planner.finish()
    final = [moves.get(i, s) for i, s in enumerate(splits)]
    val_bytes = sum(n for n, s in zip(sizes, final) if s == "val")
    assert val_bytes >= 0.05 * sum(sizes)
    assert all(splits[i] == "train" and v == "val" for i, v in moves.items())
    moved_scores = sorted(split_score(ids[i], 0) for i in moves)
    staying = [split_score(ids[i], 0) for i, s in enumerate(final) if s == "train"]
    assert not moves or max(moved_scores) <= min(staying)  # the lowest scores joined val first
    assert planner.n_bytes["val"] == val_bytes and final.count("train") >= 1
