"""GGUF vocabs as HF tokenizers: known ids from the real llama.cpp vocab files, and clear errors.

Known ids: GPT-2 "Hello world" = [15496, 995]; Llama-3 = [9906, 1917]; Qwen2 = [9707, 1879];
Llama-2 (SentencePiece, BOS added) = [1, 15043, 3186]. The Llama-2 tokenizer is also checked
against a direct implementation of SentencePiece's BPE rule on several scripts.
"""
from __future__ import annotations

from functools import cache

import gguf
import pytest

from shared.tokenizer import GGUFError, SAMPLES, hf_tokenizer_from_gguf, read_gguf_metadata, read_gguf_vocab

ROUNDTRIP = ["Hello world", "  two  spaces\tand tab\nnewline", "東京の天気 😀 e\u0301", "Привет, мир!",
             "مرحبا", "नमस्ते", "x = {'a': [1, 2, 3]}  # code", "\x00\x01 control"]


@cache
def _hf(path):
    return hf_tokenizer_from_gguf(path)


def tokenizer(gguf_file, name):
    return _hf(gguf_file(name))


@pytest.mark.parametrize("name, ids", [("gpt-2", [15496, 995]), ("llama-bpe", [9906, 1917]), ("qwen2", [9707, 1879])])
def test_bpe_known_ids_and_roundtrip(gguf_file, name, ids):
    tok = tokenizer(gguf_file, name)
    assert tok.encode("Hello world", add_special_tokens=False) == ids
    for text in ROUNDTRIP + list(SAMPLES.values()):
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_pre_tokenizer_regexes_differ_on_digits(gguf_file):
    pieces = {name: tokenizer(gguf_file, name).tokenize("12345") for name in ("gpt-2", "llama-bpe", "qwen2")}
    assert pieces["llama-bpe"] == ["123", "45"]  # \p{N}{1,3}
    assert pieces["qwen2"] == ["1", "2", "3", "4", "5"]  # one digit per piece
    assert "".join(pieces["gpt-2"]) == "12345"


def test_control_tokens_are_single_ids(gguf_file):
    gpt2 = tokenizer(gguf_file, "gpt-2")
    assert gpt2.encode("a<|endoftext|>", add_special_tokens=False)[-1] == 50256
    assert gpt2.eos_token == "<|endoftext|>"
    llama3 = tokenizer(gguf_file, "llama-bpe")
    assert llama3.encode("<|begin_of_text|>hi", add_special_tokens=False)[0] == 128000
    assert llama3.bos_token_id == 128000 and llama3.eos_token_id == 128001
    assert llama3("Hello world")["input_ids"] == [128000, 9906, 1917]  # BOS added, as llama.cpp does
    assert gpt2("Hello world")["input_ids"] == [15496, 995]  # GPT-2 adds none


def _spm_oracle(text, vocab):
    """SentencePiece BPE: merge the adjacent pair whose result scores highest (leftmost on ties)."""
    ids = {t: i for i, t in enumerate(vocab.tokens) if vocab.token_types[i] in (1, 4)}
    symbols = list("\u2581" + text.replace(" ", "\u2581"))
    while True:
        best = None
        for i in range(len(symbols) - 1):
            j = ids.get(symbols[i] + symbols[i + 1])
            if j is not None and (best is None or vocab.scores[j] > best[0]):
                best = (vocab.scores[j], i)
        if best is None:
            break
        i = best[1]
        symbols[i:i + 2] = [symbols[i] + symbols[i + 1]]
    byte_ids = [i for i, t in enumerate(vocab.token_types) if t == 6]  # <0x00>..<0xFF>, in byte order
    assert [vocab.tokens[i] for i in byte_ids[:2]] == ["<0x00>", "<0x01>"]
    out = []
    for s in symbols:
        out += [ids[s]] if s in ids else [byte_ids[b] for b in s.encode("utf-8")]  # byte fallback
    return out


def test_sentencepiece_llama2(gguf_file):
    path = gguf_file("llama-spm")
    tok, vocab = tokenizer(gguf_file, "llama-spm"), read_gguf_vocab(path)
    assert tok("Hello world")["input_ids"] == [1, 15043, 3186]
    assert tok.encode("\n", add_special_tokens=False) == [29871, 13]  # "▁" then the <0x0A> byte token
    sentences = [line for text in SAMPLES.values() for line in text.splitlines() if line.strip()][::3] + ROUNDTRIP
    for text in sentences:
        ids = tok.encode(text, add_special_tokens=False)
        assert ids == _spm_oracle(text, vocab), text
        assert tok.decode(ids) == text


def test_own_reader_matches_gguf_reader(gguf_file):
    path = gguf_file("llama-spm")
    ours = read_gguf_metadata(path)
    reader = gguf.GGUFReader(path)
    theirs = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert ours == theirs


def _write_gguf(path, **tokenizer_kv):
    writer = gguf.GGUFWriter(str(path), arch="llama")
    for key, value in tokenizer_kv.items():
        getattr(writer, f"add_{key}")(value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_errors_are_clear(tmp_path, gguf_file):
    (tmp_path / "text.gguf").write_text("this is not a gguf file at all, just text")
    with pytest.raises(GGUFError, match="not a GGUF file"):
        hf_tokenizer_from_gguf(tmp_path / "text.gguf")
    (tmp_path / "truncated.gguf").write_bytes(gguf_file("gpt-2").read_bytes()[:5000])
    with pytest.raises(GGUFError, match="truncated"):
        read_gguf_vocab(tmp_path / "truncated.gguf")
    with pytest.raises(FileNotFoundError, match="not found"):
        read_gguf_vocab(tmp_path / "missing.gguf")
    with pytest.raises(GGUFError, match="holds no tokenizer"):
        read_gguf_vocab(_write_gguf(tmp_path / "no-vocab.gguf", name="x"))
    falcon = _write_gguf(tmp_path / "falcon.gguf", tokenizer_model="gpt2", tokenizer_pre="falcon",
                         token_list=["a", "b", "ab"], token_merges=["a b"], token_types=[1, 1, 1])
    with pytest.raises(GGUFError, match="'falcon' is not supported; supported: gpt-2"):
        hf_tokenizer_from_gguf(falcon)
    repeated = _write_gguf(tmp_path / "repeated.gguf", tokenizer_model="gpt2", tokenizer_pre="gpt-2",
                           token_list=["a", "b", "a"], token_merges=["a b"], token_types=[1, 1, 1])
    with pytest.raises(GGUFError, match="repeats 1 token"):
        hf_tokenizer_from_gguf(repeated)
    rwkv = _write_gguf(tmp_path / "rwkv.gguf", tokenizer_model="rwkv", token_list=["a"])
    with pytest.raises(GGUFError, match="'rwkv' is not supported"):
        hf_tokenizer_from_gguf(rwkv)
