"""The reference byte-level BPE: id layout, round trips, special tokens, save/load, speed."""
from __future__ import annotations

import json
import random
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.tokenizer import SPECIAL_TOKENS, BPETokenizer, build_vocab


@pytest.fixture(scope="module")
def bpe(mixed_corpus) -> BPETokenizer:
    return BPETokenizer.train(mixed_corpus, vocab_size=500)


def test_canonical_id_layout(bpe):
    assert bpe.vocab[:256] == [bytes([b]) for b in range(256)]
    assert bpe.vocab_size == 500
    assert len(bpe.vocab) == 256 + len(bpe.merges)  # every merge made a new token here
    first_special = len(bpe.vocab)
    assert bpe.special_ids == {tok: first_special + i for i, tok in enumerate(SPECIAL_TOKENS)}
    for i, (a, b) in enumerate(bpe.merges):  # merge i makes id 256 + i out of earlier ids
        assert a < 256 + i and b < 256 + i
        assert bpe.vocab[256 + i] == bpe.vocab[a] + bpe.vocab[b]


def test_roundtrip_and_compression(bpe, mixed_corpus):
    for text in mixed_corpus:
        ids = bpe.encode(text)
        assert bpe.decode(ids) == text
        assert len(ids) < len(text.encode("utf-8"))


def test_special_tokens_are_single_ids(bpe):
    text = "<|system|>be brief<|end|><|user|>hi<|end|><|assistant|>"
    ids = bpe.encode(text)
    assert [i for i in ids if i in bpe.special_ids.values()] == [
        bpe.special_ids[t] for t in ("<|system|>", "<|end|>", "<|user|>", "<|end|>", "<|assistant|>")]
    assert bpe.decode(ids) == text
    plain = bpe.encode(text, allow_special=False)
    assert not set(plain) & set(bpe.special_ids.values())
    assert bpe.decode(plain) == text


@settings(max_examples=200, deadline=None, database=None)
@given(data=st.binary(max_size=200))
def test_encode_bytes_roundtrips_arbitrary_bytes(bpe, data):
    assert bpe.decode_bytes(bpe.encode_bytes(data)) == data


@settings(max_examples=200, deadline=None, database=None)
@given(text=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=100))
def test_encode_bytes_agrees_with_encode_on_text(bpe, text):
    ids = bpe.encode(text, allow_special=False)
    assert ids == bpe.encode_bytes(text.encode("utf-8"))
    assert bpe.decode(ids) == text


def test_save_load_roundtrip(bpe, tmp_path):
    path = bpe.save(tmp_path / "bpe.json")
    loaded = BPETokenizer.load(path)
    assert loaded.merges == bpe.merges and loaded.special_tokens == bpe.special_tokens
    sample = "Round trip: naïve café, 東京, 😀 <|end|>"
    assert loaded.encode(sample) == bpe.encode(sample)


def test_load_rejects_other_files(tmp_path):
    (tmp_path / "other.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="BPETokenizer.save"):
        BPETokenizer.load(tmp_path / "other.json")
    with pytest.raises(ValueError, match="cannot read"):
        BPETokenizer.load(tmp_path / "missing.json")


def test_errors_name_the_fix(bpe):
    with pytest.raises(ValueError, match="raise vocab_size"):
        BPETokenizer.train("abc", vocab_size=100)
    with pytest.raises(ValueError, match="encode_bytes"):
        bpe.encode("lone \ud800 surrogate")
    with pytest.raises(ValueError, match="outside"):
        bpe.decode([bpe.vocab_size])
    with pytest.raises(ValueError, match="order they were learned"):
        build_vocab([(300, 1)])


def test_trains_100kb_in_seconds():
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(3000)]
    text = " ".join(rng.choice(words) for _ in range(17000))[:100_000]
    start = time.perf_counter()
    tokenizer = BPETokenizer.train(text, vocab_size=2048)
    assert time.perf_counter() - start < 10
    assert tokenizer.vocab_size == 2048
