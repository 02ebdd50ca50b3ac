"""Adopt an existing vocabulary (GPT-2's, for the 124M journey) instead of training one.

``adopt_tokenizer(spec, out_dir)`` loads ``spec`` (an HF tokenizer dir, a llama.cpp ``.gguf``
vocabulary or a Hub name, read by ``compare.load_any_tokenizer``), appends our chat special
tokens (``shared.chat_format.SPECIAL_TOKENS``) that it lacks after its last id, and saves it as an
HF tokenizer dir carrying our chat template, with ``<|endoftext|>`` as bos/eos/pad: the same kind
of directory ``train_tokenizer`` writes.

Why append and not retrain: a model pretrained elsewhere (build-nanogpt, llm.c, HF ``gpt2``)
knows GPT-2's ids 0..50256, so the journey must keep them; GPT-2's own ``<|endoftext|>`` (id
50256) is ours too, and the six chat tokens take ids 50257..50262, rows that build-nanogpt's and
llm.c's padded 50304-row embeddings already have (so ``cpt`` can start from such a checkpoint
with this tokenizer). A vocabulary in which one of our special tokens is an ordinary token is
refused: its id would mean two things.

GPT-2's split, read from a ``.gguf`` vocabulary, arrives as ``Split(<GPT-2 regex>)`` then
``ByteLevel(use_regex=False)``; it is saved as HF's own ``ByteLevel(use_regex=True)``, whose built-in
regex is that same pattern (the same ids for every text, and the form HF's ``gpt2`` tokenizer.json and
our GGUF export recognise as GPT-2 style).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, pre_tokenizers

from shared.chat_format import SPECIAL_TOKENS
from shared.tokenizer.compare import load_any_tokenizer
from shared.tokenizer.gguf_vocab import GPT2_SPLIT_PATTERN
from shared.tokenizer.hf_format import save_transformers, to_transformers


def adopt_tokenizer(spec: str, out_dir: str | Path) -> dict[str, Any]:
    """Save ``spec``'s vocabulary plus our special tokens into ``out_dir``; return its stats.

    Stats: ``vocab_size`` (tokens in the saved tokenizer), ``base_vocab_size`` (in ``spec``),
    ``n_special_tokens`` (ours, counting those ``spec`` already had) and ``n_added_tokens``.
    """
    source = load_any_tokenizer(spec)
    backend = source.backend_tokenizer
    base = backend.get_vocab_size(with_added_tokens=True)
    ordinary = backend.get_vocab(with_added_tokens=False)
    clashes = [t for t in SPECIAL_TOKENS if t in ordinary and not _is_special(backend, t)]
    if clashes:
        raise ValueError(f"{spec}: {clashes} are ordinary tokens of this vocabulary, so they cannot be our chat "
                         "special tokens; adopt a vocabulary without them or train one (unset pretrained)")
    _canonical_gpt2_split(backend)
    missing = [t for t in SPECIAL_TOKENS if backend.token_to_id(t) is None]
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])
    out = save_transformers(to_transformers(backend), out_dir)
    return {"vocab_size": backend.get_vocab_size(with_added_tokens=True), "base_vocab_size": base,
            "n_special_tokens": len(SPECIAL_TOKENS), "n_added_tokens": len(missing), "out_dir": str(out)}


def _canonical_gpt2_split(backend) -> None:
    """Replace Split(GPT-2 regex) + ByteLevel(no regex) by the equivalent ByteLevel(use_regex=True), in place."""
    pre = json.loads(backend.to_str()).get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers") or []
    if (pre.get("type") == "Sequence" and len(steps) == 2 and steps[0].get("type") == "Split"
            and steps[0].get("pattern") == {"Regex": GPT2_SPLIT_PATTERN} and steps[0].get("behavior") == "Isolated"
            and not steps[0].get("invert") and steps[1].get("type") == "ByteLevel"
            and not steps[1].get("use_regex") and not steps[1].get("add_prefix_space")):
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def _is_special(backend, token: str) -> bool:
    """Whether ``token`` is one of ``backend``'s added special tokens (GPT-2's ``<|endoftext|>`` is)."""
    return any(added.content == token and added.special for added in backend.get_added_tokens_decoder().values())


__all__ = ["adopt_tokenizer"]
