"""Tokenizers: our byte-level BPE (readable and fast trainers), the chat format, HF and GGUF I/O, comparison.

- the chat format (SPECIAL_TOKENS, render_chat and the identical Jinja CHAT_TEMPLATE) is ``shared.chat_format``,
  re-exported here: every tokenizer we train carries its special tokens and template.
- ``bpe``: the readable reference BPE (train/encode/decode/save/load); ``fast``: HF-trained merges.
  Both give the same merges in the canonical id layout (bytes, merges, specials).
- ``hf_format`` / ``train``: build, save and load HF tokenizer dirs; ``train_tokenizer`` in one call.
- ``gguf_vocab``: llama.cpp GGUF vocabs (GPT-2, Llama-3, Qwen2 BPE; Llama-2 SentencePiece) as HF tokenizers.
- ``compare``: token counts and splits across tokenizers, written as md/json/png.
"""
from shared.tokenizer.bpe import BPETokenizer, build_vocab, learn_merges
from shared.chat_format import CHAT_TEMPLATE, ROLES, SPECIAL_TOKENS, render_chat, render_message
from shared.tokenizer.compare import (TokenizerUnavailable, compare_tokenizers, load_any_tokenizer, token_pieces,
                                      write_comparison)
from shared.tokenizer.fast import canonical_merges, train_fast_merges
from shared.tokenizer.gguf_vocab import (GGUFError, GGUFVocab, hf_tokenizer_from_gguf, read_gguf_metadata,
                                         read_gguf_vocab)
from shared.tokenizer.hf_format import build_hf_tokenizer, load_tokenizer, save_hf_tokenizer, to_transformers
from shared.tokenizer.samples import EXAMPLES, SAMPLES
from shared.tokenizer.train import min_vocab_size, train_tokenizer

__all__ = [
    "BPETokenizer", "build_vocab", "learn_merges",
    "CHAT_TEMPLATE", "ROLES", "SPECIAL_TOKENS", "render_chat", "render_message",
    "TokenizerUnavailable", "compare_tokenizers", "load_any_tokenizer", "token_pieces", "write_comparison",
    "canonical_merges", "train_fast_merges",
    "GGUFError", "GGUFVocab", "hf_tokenizer_from_gguf", "read_gguf_metadata", "read_gguf_vocab",
    "build_hf_tokenizer", "load_tokenizer", "save_hf_tokenizer", "to_transformers",
    "EXAMPLES", "SAMPLES",
    "min_vocab_size", "train_tokenizer",
]
