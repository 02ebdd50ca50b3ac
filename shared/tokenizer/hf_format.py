"""Our canonical BPE as a Hugging Face tokenizer: build it, save it as a full HF dir, load it back.

``build_hf_tokenizer(merges)`` makes a ``tokenizers.Tokenizer`` (what ``tokenizer.json`` holds):
byte-level BPE with GPT-2's split, ids in the canonical layout (bytes, merged tokens, then the
special tokens as HF "added tokens" marked special, so ``<|user|>`` encodes to one id and
``skip_special_tokens`` drops it). ``save_hf_tokenizer`` writes ``tokenizer.json`` and a
``tokenizer_config.json`` carrying ``CHAT_TEMPLATE``, ``<|endoftext|>`` as bos/eos/pad, and
``clean_up_tokenization_spaces=False`` (HF's clean-up would turn " ." into "." and break the
decode(encode(x)) == x round trip). ``AutoTokenizer.from_pretrained(dir)`` loads the result.

This module neither trains (``bpe.py``, ``fast.py``, ``train.py``) nor reads foreign formats
(``gguf_vocab.py``); ``load_tokenizer`` loads any HF tokenizer dir, ours or not.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from shared.tokenizer.bpe import Pair, build_vocab
from shared.tokenizer.byte_level import token_str
from shared.chat_format import CHAT_TEMPLATE, EOT, SPECIAL_TOKENS

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"


def build_hf_tokenizer(merges: Sequence[Pair], special_tokens: Sequence[str] = SPECIAL_TOKENS) -> Tokenizer:
    """A ``tokenizers.Tokenizer`` for canonical ``merges`` with ``special_tokens`` at the end."""
    vocab_bytes, _ = build_vocab(merges)
    vocab = {token_str(tok): i for i, tok in enumerate(vocab_bytes)}
    string_merges = [(token_str(vocab_bytes[a]), token_str(vocab_bytes[b])) for a, b in merges]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=string_merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special_tokens])
    got = [tokenizer.token_to_id(t) for t in special_tokens]
    want = list(range(len(vocab_bytes), len(vocab_bytes) + len(special_tokens)))
    if got != want:  # a special token whose text is also a merged token would take that token's id
        raise ValueError(f"special tokens got ids {got}, expected {want}; special tokens must be distinct "
                         "and must not equal the text of an ordinary token")
    return tokenizer


def to_transformers(tokenizer: Tokenizer, special_tokens: Sequence[str] = SPECIAL_TOKENS) -> PreTrainedTokenizerFast:
    """Wrap a ``tokenizers.Tokenizer`` of ours as a transformers tokenizer with our chat template."""
    eot = EOT if EOT in special_tokens else None
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=eot, eos_token=eot, pad_token=eot,
        extra_special_tokens=[t for t in special_tokens if t != eot],
        chat_template=CHAT_TEMPLATE, clean_up_tokenization_spaces=False)


def save_hf_tokenizer(merges: Sequence[Pair], out_dir: str | Path,
                      special_tokens: Sequence[str] = SPECIAL_TOKENS) -> Path:
    """Write a full HF tokenizer dir (tokenizer.json + tokenizer_config.json) and return its path."""
    return save_transformers(to_transformers(build_hf_tokenizer(merges, special_tokens), special_tokens), out_dir)


def save_transformers(hf: PreTrainedTokenizerFast, out_dir: str | Path) -> Path:
    """Write ``hf`` (from ``to_transformers``) as a full HF tokenizer dir and return its path."""
    out_dir = Path(out_dir)
    # save_jinja_files=False keeps the template inside tokenizer_config.json, where every HF
    # version (and llama.cpp's converter) looks for it.
    hf.save_pretrained(out_dir, save_jinja_files=False)
    config_path = out_dir / CONFIG_FILE
    config = json.loads(config_path.read_text(encoding="utf-8"))
    # transformers 5 writes its internal class name; the generic name also loads in 4.x tools.
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return out_dir


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """The HF fast tokenizer saved in directory ``path`` (ours or any other HF tokenizer dir)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer dir {path} does not exist; train one with "
                                "shared.tokenizer.train_tokenizer(texts, vocab_size, out_dir=...) or pass the "
                                "path of an artifact that holds tokenizer.json")
    if not (path / TOKENIZER_FILE).is_file():
        raise FileNotFoundError(f"{path} holds no {TOKENIZER_FILE}, so it is not a (fast) HF tokenizer dir; "
                                "pass the dir written by save_hf_tokenizer/train_tokenizer, or re-save a slow "
                                "tokenizer with AutoTokenizer.from_pretrained(...).save_pretrained(dir)")
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if not tokenizer.is_fast:
        raise TypeError(f"{path} loaded as a slow tokenizer ({type(tokenizer).__name__}); "
                        "save it from a fast tokenizer so tokenizer.json is used")
    return tokenizer
