"""TokenDataset: random training windows, fixed eval windows, bits-per-byte, clear errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from shared.data import DataError, Document, TokenDataset, build_shards


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory, tokenizer_dir):
    out = tmp_path_factory.mktemp("shards")
    docs = [Document(f"d{i}", f"Sentence number {i} is about trees and rivers.\n" * 5, "t") for i in range(80)]
    build_shards(docs, tokenizer_dir, out, val_fraction=0.2, progress=False)
    return out


def test_get_batch_windows_are_shifted_slices_and_deterministic(shard_dir):
    ds = TokenDataset(shard_dir, "train")
    tokens = np.fromfile(shard_dir / "train.bin", dtype=np.uint16).astype(np.int64)
    x, y = ds.get_batch(6, 32, torch.Generator().manual_seed(7))
    assert x.shape == y.shape == (6, 32) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    for row in x.numpy():
        starts = [i for i in range(len(tokens) - 32) if np.array_equal(tokens[i : i + 32], row)]
        assert starts, "every row is a window of the split"
    x2, y2 = ds.get_batch(6, 32, torch.Generator().manual_seed(7))
    assert torch.equal(x, x2) and torch.equal(y, y2)
    x3, _ = ds.get_batch(6, 32, torch.Generator().manual_seed(8))
    assert not torch.equal(x, x3)


def test_eval_batches_are_fixed_and_do_not_overlap(shard_dir):
    ds = TokenDataset(shard_dir, "val")
    tokens = torch.from_numpy(np.fromfile(shard_dir / "val.bin", dtype=np.uint16).astype(np.int64))
    T = 16
    batches = list(ds.iter_eval_batches(4, T))
    n_windows = (len(ds) - 1) // T
    assert sum(len(x) for x, _ in batches) == n_windows
    xs = torch.cat([x for x, _ in batches])
    assert torch.equal(xs, tokens[: n_windows * T].view(n_windows, T)), "all windows, in order, no overlap"
    capped = list(ds.iter_eval_batches(4, T, max_batches=2))
    assert len(capped) == 2 and all(len(x) == 4 for x, _ in capped)
    picked = [k * n_windows // 8 for k in range(8)]  # evenly spread window numbers
    assert picked[-1] > n_windows // 2
    windows = tokens[: n_windows * T].view(n_windows, T)
    assert torch.equal(torch.cat([x for x, _ in capped]), windows[picked]), "spread over the whole split"
    again = list(ds.iter_eval_batches(4, T, max_batches=2))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(capped, again))


def test_bytes_per_token_and_bits_per_byte(shard_dir):
    ds = TokenDataset(shard_dir, "val")
    assert ds.bytes_per_token == ds.meta["n_bytes"]["val"] / ds.meta["n_tokens"]["val"] > 1
    assert ds.bits_per_byte(math.log(2) * ds.bytes_per_token) == pytest.approx(1.0)
    assert ds.vocab_size == 400


def test_errors(tmp_path, shard_dir):
    ds = TokenDataset(shard_dir, "val")
    too_big = len(ds)
    with pytest.raises(DataError, match=rf"val split has {too_big} tokens, fewer than block_size\+1={too_big + 1}; lower block_size or add data"):
        ds.get_batch(2, too_big, torch.Generator())
    with pytest.raises(DataError, match="lower block_size"):
        next(ds.iter_eval_batches(2, too_big))
    with pytest.raises(DataError, match=r"no meta.json in .*build it with shared.data.build_shards"):
        TokenDataset(tmp_path, "train")
    with pytest.raises(DataError, match=r"unknown split 'test'"):
        TokenDataset(shard_dir, "test")


def test_tiny_val_split_from_a_one_document_corpus(tmp_path, tokenizer_dir):
    build_shards([Document("only", "just one short document", "t")], tokenizer_dir, tmp_path, progress=False)
    with pytest.raises(DataError, match=r"val split has 0 tokens, fewer than block_size\+1=9"):
        TokenDataset(tmp_path, "val").get_batch(1, 8, torch.Generator())
