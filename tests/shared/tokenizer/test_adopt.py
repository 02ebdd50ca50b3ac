"""Adopting GPT-2's vocabulary (the gpt2-124m tokenizer preset) instead of training one."""
from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from shared.chat_format import END, EOT, SPECIAL_TOKENS, render_chat
from shared.config import ConfigError
from shared.tokenizer.adopt import adopt_tokenizer
from shared.tokenizer.tokenizer_config import TokenizerConfig


def test_gpt2_ids_are_kept_and_the_chat_tokens_follow_them(gguf_file, tmp_path):
    stats = adopt_tokenizer(str(gguf_file("gpt-2")), tmp_path)
    assert stats == {"vocab_size": 50263, "base_vocab_size": 50257, "n_special_tokens": len(SPECIAL_TOKENS),
                     "n_added_tokens": 6, "out_dir": str(tmp_path)}
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert tok("Hello world").input_ids == [15496, 995]  # GPT-2's own ids
    assert tok.eos_token == EOT and tok.eos_token_id == 50256  # GPT-2's <|endoftext|> is ours
    assert tok.convert_tokens_to_ids(list(SPECIAL_TOKENS[1:])) == list(range(50257, 50263))
    chat = render_chat([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}])
    ids = tok(chat, add_special_tokens=False).input_ids
    assert ids[0] == 50257 and ids.count(tok.convert_tokens_to_ids(END)) == 2 and tok.decode(ids) == chat
    assert tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                   add_generation_prompt=True) == render_chat(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True)


def test_the_split_is_saved_as_hf_byte_level_with_the_same_ids(gguf_file, tmp_path):
    """The form HF's gpt2 and our GGUF export know, and not one id different from the .gguf's own split."""
    from shared.quant.gguf_export import _merges
    from shared.tokenizer import SAMPLES, hf_tokenizer_from_gguf
    adopt_tokenizer(str(gguf_file("gpt-2")), tmp_path)
    tok, gguf = AutoTokenizer.from_pretrained(tmp_path), hf_tokenizer_from_gguf(gguf_file("gpt-2"))
    pre = json.loads(tok.backend_tokenizer.to_str())["pre_tokenizer"]
    assert pre["type"] == "ByteLevel" and pre["use_regex"] and not pre["add_prefix_space"]
    texts = [*SAMPLES.values(), "It's 3.14159 -- don't   stop\n\n\tdef f(x):  return x'll ", "naïve café 日本語 🙂"]
    for text in texts:
        assert tok(text).input_ids == gguf(text).input_ids, text
    assert len(_merges(tok, tmp_path)) == 50000  # GPT-2's merges, accepted by the GGUF export's check


def test_adopting_twice_adds_nothing_more(gguf_file, tmp_path):
    adopt_tokenizer(str(gguf_file("gpt-2")), tmp_path / "a")
    again = adopt_tokenizer(str(tmp_path / "a"), tmp_path / "b")
    assert again["vocab_size"] == again["base_vocab_size"] == 50263 and again["n_added_tokens"] == 0


def test_config_needs_no_corpus_with_pretrained_and_refuses_an_empty_name():
    TokenizerConfig(pretrained="gpt2", sources=[]).validate()
    with pytest.raises(ConfigError, match="pretrained is empty"):
        TokenizerConfig(pretrained="").validate()
