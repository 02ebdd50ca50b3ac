"""HF tokenizer dirs of ours: saved, loaded by AutoTokenizer, same ids as the reference, lossless."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from shared.tokenizer import (CHAT_TEMPLATE, SPECIAL_TOKENS, BPETokenizer, build_hf_tokenizer, load_tokenizer,
                              min_vocab_size, save_hf_tokenizer, train_tokenizer)

HARD_TEXTS = [
    "emoji 😀👍🏽🇯🇵 and ZWJ 👩‍💻", "CJK 東京都の天気は晴れです。中文测试", "Arabic مرحبا بالعالم",
    "combining e\u0301 a\u0308 n\u0303 \u0915\u094d\u0937", "control \x00\x01\x07\x1b[0m\x7f\x85",
    "mixed whitespace \t\n\r\x0b\x0c \u00a0\u2003\u3000  end ", "  leading and trailing  ", "",
    "specials inline: <|user|>hi<|end|><|assistant|>", "numbers 3.14159 1,000,000 2024-06-01",
]


@pytest.fixture(scope="module")
def hf(trained_dir):
    return AutoTokenizer.from_pretrained(str(trained_dir))


def test_dir_has_config_with_template_and_specials(trained_dir):
    config = json.loads((trained_dir / "tokenizer_config.json").read_text())
    assert (trained_dir / "tokenizer.json").is_file()
    assert config["chat_template"] == CHAT_TEMPLATE
    assert config["eos_token"] == config["bos_token"] == config["pad_token"] == "<|endoftext|>"
    assert config["clean_up_tokenization_spaces"] is False


def test_autotokenizer_loads_canonical_layout(hf):
    assert hf.is_fast and len(hf) == 600
    assert [hf.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == list(range(600 - len(SPECIAL_TOKENS), 600))
    assert hf.encode("<|user|>", add_special_tokens=False) == [600 - 6]
    assert set(SPECIAL_TOKENS) <= set(hf.all_special_tokens)
    assert hf.eos_token_id == hf.bos_token_id == hf.pad_token_id == 600 - len(SPECIAL_TOKENS)
    assert hf.decode(hf.encode("<|user|>hi<|end|>"), skip_special_tokens=True) == "hi"


def test_chat_template_tokenizes(hf):
    ids = hf.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)["input_ids"]
    assert hf.decode(ids) == "<|user|>hi<|end|><|assistant|>"
    assert ids[0] == hf.convert_tokens_to_ids("<|user|>") and ids[-1] == hf.convert_tokens_to_ids("<|assistant|>")


@pytest.fixture(scope="module")
def reference(mixed_corpus):
    return BPETokenizer.train(mixed_corpus, 600)  # same corpus and size as trained_dir


def test_same_ids_as_reference(mixed_corpus, hf, reference):
    for text in mixed_corpus + HARD_TEXTS:
        assert hf.encode(text, add_special_tokens=False) == reference.encode(text)


@settings(max_examples=200, deadline=None, database=None)
@given(text=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=80))
def test_same_ids_as_reference_on_arbitrary_text(hf, reference, text):
    # Oniguruma (HF) and the regex module (ours) must split alike for the ids to agree.
    assert hf.encode(text, add_special_tokens=False) == reference.encode(text)


@pytest.mark.parametrize("text", HARD_TEXTS)
def test_roundtrip_hard_cases(hf, text):
    assert hf.decode(hf.encode(text)) == text


@settings(max_examples=300, deadline=None, database=None)
@given(text=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=120))
def test_roundtrip_arbitrary_unicode(hf, text):
    assert hf.decode(hf.encode(text)) == text


def test_build_rejects_colliding_special_token():
    merges = [(ord("h"), ord("i"))]
    with pytest.raises(ValueError, match="must not equal the text of an ordinary token"):
        build_hf_tokenizer(merges, special_tokens=["hi"])


def test_save_without_merges_still_loads(tmp_path):
    hf = load_tokenizer(save_hf_tokenizer([], tmp_path / "bytes-only"))
    assert len(hf) == 256 + len(SPECIAL_TOKENS)
    assert hf.decode(hf.encode("x\x00y")) == "x\x00y"


def test_load_tokenizer_errors_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_tokenizer"):
        load_tokenizer(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no tokenizer.json"):
        load_tokenizer(tmp_path / "empty")


def test_train_tokenizer_methods_agree(mixed_corpus, tmp_path):
    stats = {m: train_tokenizer(iter(mixed_corpus), 400, method=m, out_dir=tmp_path / m) for m in ("fast", "reference")}
    assert stats["fast"]["vocab_size"] == stats["reference"]["vocab_size"] == 400
    assert stats["fast"]["corpus_texts"] == len(mixed_corpus)
    assert stats["fast"]["corpus_bytes"] == sum(len(t.encode()) for t in mixed_corpus)
    models = [json.loads((tmp_path / m / "tokenizer.json").read_text())["model"] for m in ("fast", "reference")]
    assert models[0]["vocab"] == models[1]["vocab"] and models[0]["merges"] == models[1]["merges"]


def test_train_tokenizer_errors():
    minimum = min_vocab_size()
    assert minimum == 256 + len(SPECIAL_TOKENS) + 1
    with pytest.raises(ValueError, match=f"minimum is {minimum}"):
        train_tokenizer(["some text"], vocab_size=minimum - 1)
    for method in ("fast", "reference"):
        with pytest.raises(ValueError, match="corpus is empty; "):
            train_tokenizer([], vocab_size=minimum, method=method)
        with pytest.raises(ValueError, match="corpus is empty; "):
            train_tokenizer(["", ""], vocab_size=minimum, method=method)
    with pytest.raises(ValueError, match="fast, reference"):
        train_tokenizer(["x"], vocab_size=minimum, method="sentencepiece")
