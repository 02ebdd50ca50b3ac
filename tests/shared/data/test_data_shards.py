"""build_shards: round trip, meta, fingerprint cache, local vs Ray, dtype and errors."""
from __future__ import annotations

import filecmp
import json

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from shared.data import DataError, Document, build_shards, iter_documents, read_meta
from shared.data import encode, spool
from shared.data.split import SplitPlanner

EOS = "<|endoftext|>"


def corpus(n: int = 60) -> list[Document]:
    docs = [
        Document(f"doc-{i}", f"Document {i}: the quick brown fox, é ✓.\n" * (1 + i % 4), "test:corpus")
        for i in range(n)
    ]
    docs.append(Document("special", f"a literal {EOS} inside text stays text", "test:corpus"))
    return docs


def expected_splits(docs: list[Document], val_fraction: float, seed: int) -> list[str]:
    planner = SplitPlanner(val_fraction, seed)
    splits = [planner.add(i, d.id, len(d.text.encode())) for i, d in enumerate(docs)]
    for index, split in planner.finish().items():
        splits[index] = split
    return splits


def decode_split(out_dir, split: str, tokenizer: Tokenizer) -> list[str]:
    meta = read_meta(out_dir)
    ids = np.fromfile(out_dir / f"{split}.bin", dtype=meta["dtype"])
    assert ids[-1] == meta["eos_id"], "every document ends with EOS"
    ends = np.flatnonzero(ids == meta["eos_id"])
    starts = np.concatenate([[0], ends[:-1] + 1])
    return [tokenizer.decode(ids[s:e].tolist(), skip_special_tokens=False) for s, e in zip(starts, ends)]


def test_shards_decode_back_to_the_documents(tmp_path, tokenizer_dir, tokenizer):
    docs = corpus()
    info = build_shards(docs, tokenizer_dir, tmp_path, val_fraction=0.2, seed=3, progress=False)
    splits = expected_splits(docs, 0.2, 3)
    for split in ("train", "val"):
        want = [d.text for d, s in zip(docs, splits) if s == split]
        assert decode_split(tmp_path, split, tokenizer) == want
        assert info.n_docs[split] == len(want) > 0
        assert info.n_bytes[split] == sum(len(t.encode()) for t in want)
        assert info.n_tokens[split] == (tmp_path / f"{split}.bin").stat().st_size // 2
    meta = read_meta(tmp_path)
    assert meta["dtype"] == info.dtype == "uint16" and meta["vocab_size"] == 400
    assert meta["eos_id"] == tokenizer.token_to_id(EOS) and meta["sources"] == ["test:corpus"]
    assert len(meta["tokenizer_sha256"]) == 64 and not info.reused
    assert not (tmp_path / ".spool").exists()
    # The literal EOS string inside a document was encoded as text, not as the EOS id.
    assert sum(t.count(EOS) for t in decode_split(tmp_path, splits[-1], tokenizer)) == 1


def test_fingerprint_is_deterministic_and_cache_is_reused(tmp_path, tokenizer_dir):
    first = build_shards(corpus(), tokenizer_dir, tmp_path / "a", progress=False)
    second = build_shards(iter(corpus()), tokenizer_dir, tmp_path / "b", progress=False)
    assert first.fingerprint == second.fingerprint and not second.reused
    assert filecmp.cmp(tmp_path / "a" / "train.bin", tmp_path / "b" / "train.bin", shallow=False)
    again = build_shards(corpus(), tokenizer_dir, tmp_path / "a", progress=False)
    assert again.reused and again.fingerprint == first.fingerprint and again.n_tokens == first.n_tokens
    for changed in (
        build_shards(corpus(), tokenizer_dir, tmp_path / "a", seed=1, progress=False),
        build_shards(corpus()[:-1], tokenizer_dir, tmp_path / "a", progress=False),
        build_shards(corpus(), tokenizer_dir, tmp_path / "a", val_fraction=0.1, progress=False),
    ):
        assert changed.fingerprint != first.fingerprint and not changed.reused


def test_damaged_cache_is_rebuilt(tmp_path, tokenizer_dir):
    info = build_shards(corpus(), tokenizer_dir, tmp_path, progress=False)
    with open(tmp_path / "train.bin", "ab") as f:
        f.write(b"\0\0")
    rebuilt = build_shards(corpus(), tokenizer_dir, tmp_path, progress=False)
    assert not rebuilt.reused and rebuilt.n_tokens == info.n_tokens
    assert (tmp_path / "train.bin").stat().st_size == info.n_tokens["train"] * 2


def test_ray_engine_writes_identical_files(tmp_path, tokenizer_dir, ray_local, monkeypatch):
    # Small batches and spool files so that order across batches and files is really exercised.
    monkeypatch.setattr(encode, "BATCH_DOCS", 16)
    monkeypatch.setattr(spool, "GROUP_BYTES", 1_000)
    monkeypatch.setattr(spool, "PART_BYTES", 4_000)
    docs = corpus(200)
    local = build_shards(docs, tokenizer_dir, tmp_path / "local", val_fraction=0.1, progress=False)
    assert len(list((tmp_path / "local").iterdir())) == 3
    remote = build_shards(docs, tokenizer_dir, tmp_path / "ray", val_fraction=0.1, engine="ray")
    assert remote.fingerprint == local.fingerprint and remote.n_tokens == local.n_tokens
    for name in ("train.bin", "val.bin", "meta.json"):
        assert filecmp.cmp(tmp_path / "local" / name, tmp_path / "ray" / name, shallow=False), name


def test_large_vocab_uses_uint32(tmp_path):
    vocab = {EOS: 0, "[UNK]": 1, **{f"w{i}": i for i in range(2, 70_000)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens([EOS])
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    docs = [Document("a", "w5 w69999", "t"), Document("b", "w65536 nope", "t")]
    info = build_shards(docs, tmp_path / "tokenizer.json", tmp_path / "out", val_fraction=0.5, progress=False)
    assert info.dtype == "uint32" and info.vocab_size == 70_000
    train = np.fromfile(tmp_path / "out" / "train.bin", dtype=np.uint32).tolist()
    val = np.fromfile(tmp_path / "out" / "val.bin", dtype=np.uint32).tolist()
    assert sorted([train, val]) == sorted([[5, 69999, 0], [65536, 1, 0]])


def test_errors(tmp_path, tokenizer_dir):
    with pytest.raises(DataError, match=r"no tokenizer at .*tokenizer.json; pass a directory holding tokenizer.json"):
        build_shards(corpus(), tmp_path, tmp_path / "out")
    with pytest.raises(DataError, match=r"tokenizer has no token '<\|im_end\|>'; .*eos_token="):
        build_shards(corpus(), tokenizer_dir, tmp_path / "out", eos_token="<|im_end|>")
    with pytest.raises(DataError, match=r"no documents to shard"):
        build_shards([], tokenizer_dir, tmp_path / "out")
    with pytest.raises(ValueError, match=r"engine must be 'local' or 'ray'"):
        build_shards(corpus(), tokenizer_dir, tmp_path / "out", engine="spark")
    assert not (tmp_path / "out" / "meta.json").exists()


def test_builtin_corpus_end_to_end(tmp_path, tokenizer_dir):
    docs = iter_documents("builtin:python-code", max_bytes=100_000)
    info = build_shards(docs, tokenizer_dir, tmp_path, progress=False)
    assert sum(info.n_bytes.values()) == 100_000 and info.n_docs["val"] >= 1
    assert json.loads((tmp_path / "meta.json").read_text())["sources"] == ["builtin:python-code"]
