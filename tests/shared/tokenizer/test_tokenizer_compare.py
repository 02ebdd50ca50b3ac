"""compare_tokenizers / write_comparison on our tokenizer, the GGUF vocabs present, and specs that fail."""
from __future__ import annotations

import json
import re

import pytest

from shared.tokenizer import (SAMPLES, compare, compare_tokenizers, load_any_tokenizer, load_tokenizer, token_pieces,
                             write_comparison)


@pytest.fixture(scope="module")
def rows(trained_dir, present_gguf_files):
    mp = pytest.MonkeyPatch()
    mp.setattr(compare, "_hub_reachable", lambda timeout=3.0: False)  # offline, and fast, on any machine
    try:
        return compare_tokenizers([trained_dir, *present_gguf_files, "some-org/not-cached-model", "./no/such/dir"])
    finally:
        mp.undo()


def test_one_row_per_tokenizer_and_kind(rows):
    ok = [r for r in rows if r["status"] == "ok"]
    names = list(dict.fromkeys(r["tokenizer"] for r in ok))
    assert names[0] == "ours"
    assert len(ok) == len(names) * len(SAMPLES)
    for r in ok:
        assert r["tokens"] > 0 and r["bytes"] == len(SAMPLES[r["kind"]].encode()) and r["chars"] == len(SAMPLES[r["kind"]])
        assert r["chars_per_token"] == round(r["chars"] / r["tokens"], 3)
        assert r["tokens_per_byte"] == round(r["tokens"] / r["bytes"], 4)
        assert r["example"] in SAMPLES[r["kind"]] and r["example_tokens"]
        if r["kind"] in ("english", "python"):  # ASCII: pieces are whole characters and join back
            assert "".join(r["example_tokens"]) in (r["example"], " " + r["example"])  # SentencePiece: + "▁"


def test_known_vocab_sizes(rows):
    sizes = {r["tokenizer"]: r["vocab_size"] for r in rows if r["status"] == "ok"}
    assert sizes["ours"] == 600
    expected = {"gpt-2": 50257, "llama-bpe": 128256, "llama-spm": 32000, "qwen2": 151936}
    for name in expected.keys() & sizes.keys():
        assert sizes[name] == expected[name]


def test_failed_specs_are_skipped_with_reason(rows):
    skipped = {r["tokenizer"]: r["reason"] for r in rows if r["status"] == "skipped"}
    assert "unreachable" in skipped["some-org/not-cached-model"] and "hf download" in skipped["some-org/not-cached-model"]
    assert "check the path" in skipped["./no/such/dir"]


def test_write_comparison(rows, tmp_path):
    paths = write_comparison(rows, tmp_path / "report")
    md = paths["md"].read_text(encoding="utf-8")
    assert "| ours | 600 |" in md and "## Skipped" in md and "some-org/not-cached-model" in md
    assert json.loads(paths["json"].read_text(encoding="utf-8")) == rows
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_custom_texts_default_examples(trained_dir):
    rows = compare_tokenizers([trained_dir], texts={"tiny": "first line here\nsecond line"})
    assert len(rows) == 1 and rows[0]["kind"] == "tiny" and rows[0]["example"] == "first line here"


def test_token_pieces_show_partial_bytes(trained_dir, present_gguf_files):
    ours, text = load_tokenizer(trained_dir), "東 the 😀"
    pieces = token_pieces(ours, ours.encode(text))
    assert any(p.startswith("<0x") for p in pieces)  # rare characters split into bytes
    unescaped = [re.sub(r"<0x([0-9A-F]{2})>", lambda m: chr(0xDC00 + int(m[1], 16)), p) for p in pieces]
    assert "".join(unescaped).encode("utf-8", errors="surrogateescape") == text.encode("utf-8")
    spm = [p for p in present_gguf_files if p.name.endswith("llama-spm.gguf")]
    if spm:
        tok = load_any_tokenizer(spm[0])
        assert token_pieces(tok, tok.encode("Hi 😀", add_special_tokens=False)) == [
            " Hi", " ", "<0xF0>", "<0x9F>", "<0x98>", "<0x80>"]
