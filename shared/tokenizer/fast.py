"""The fast trainer: HF ``tokenizers`` learns the merges, we rebuild them in the canonical layout.

The HF model is a plain byte-level BPE (ByteLevel pre-tokenizer with GPT-2's split regex and no
prefix space, ByteLevel decoder, all 256 bytes in the initial alphabet), the same kind of
tokenizer ``bpe.py`` trains. HF numbers tokens its own way (bytes by code point of their mapped
char, special tokens first when given to the trainer), so we read its merges back as byte strings
and renumber them: bytes 0..255 in byte order, merged tokens from 256 in creation order; the
special tokens are not given to the trainer and are appended by whoever builds the tokenizer.
The merges equal the reference trainer's (see ``bpe.py`` for the tie-break rule and the one rare
case where they may part). This module only trains; ``hf_format.py`` builds and saves tokenizers.
"""
from __future__ import annotations

import json
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from shared.tokenizer.bpe import Pair, TokenTable
from shared.tokenizer.byte_level import token_bytes


def canonical_merges(string_merges: Iterable[tuple[str, str]]) -> list[Pair]:
    """Byte-level string merges (``("Ġ", "t")``) as id pairs in the canonical layout.

    A merge whose result already exists keeps that id (``bpe.TokenTable``).
    """
    table = TokenTable()
    merges: list[Pair] = []
    for rank, (left, right) in enumerate(string_merges):
        a, b = table.id_of.get(token_bytes(left)), table.id_of.get(token_bytes(right))
        if a is None or b is None:
            raise ValueError(f"merge #{rank} {left!r} {right!r} uses a token not made by an earlier merge; "
                             "the merges must come in the order they were learned")
        table.add_merge(a, b)
        merges.append((a, b))
    return merges


def train_fast_merges(texts: Iterable[str], n_new_tokens: int, show_progress: bool = False) -> list[Pair]:
    """Train HF byte-level BPE adding ``n_new_tokens`` merged tokens; merges in canonical ids."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=256 + n_new_tokens, show_progress=show_progress,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tokenizer.train_from_iterator(texts, trainer=trainer)
    # The JSON form is the stable public view of the learned merges (lists of two strings).
    string_merges = json.loads(tokenizer.to_str())["model"]["merges"]
    return canonical_merges((left, right) for left, right in string_merges)
