"""Pretraining text replayed during chat SFT, so that fine-tuning does not erase the language model.

Five epochs of short chat replies taught the tiny model to answer, and raised its prose bits/byte
from 1.99 to 4.20 (issue 20): every gradient step pulled it toward the chat distribution and none
toward the text it was pretrained on. Replay mixes windows of that text (train documents only,
``is_heldout_doc``) into the SFT data with loss on every token, a disclosed share of the training
tokens (``replay_fraction``).

Driver side, ``replay_documents`` picks enough train documents of the replay corpora; worker side,
``mixed_rows`` tokenizes the chat rows (assistant-token masks from the chat template) and the text
(cut into ``max_length`` windows, every token a target) and keeps just enough text windows for the
share. The rows it returns are already tokenized (``input_ids`` + ``assistant_masks``), which TRL's
``SFTTrainer`` takes as they are: its own tokenizer path needs every row in one form, chat or text.
"""
from __future__ import annotations

import random
from typing import Any

from shared.data import is_heldout_doc, iter_corpus

#: Text characters fetched per character of chat text needed, over the exact share: the worker
#: trims by tokens, and a corpus' characters per token differ from the chat's.
MARGIN = 2.0


def chat_chars(rows: list[dict[str, Any]]) -> int:
    """Characters of message content in chat ``rows`` (``{"messages": [...]}``)."""
    return sum(len(m.get("content") or "") for r in rows for m in r["messages"])


def replay_documents(sources: list[str], chars_needed: int, seed: int) -> list[str]:
    """Train documents of ``sources`` (held-out ones never), shuffled by ``seed``, taking about
    ``chars_needed * MARGIN`` characters in equal shares from each source."""
    per_source = int(chars_needed * MARGIN / max(1, len(sources))) + 1
    texts: list[str] = []
    for source in sources:
        docs = [d.text for d in iter_corpus(source) if not is_heldout_doc(d.id) and d.text.strip()]
        random.Random(f"{seed}:{source}").shuffle(docs)
        taken = 0
        for text in docs:
            if taken >= per_source:
                break
            texts.append(text)
            taken += len(text)
    return texts


def replay_chars_needed(rows: list[dict[str, Any]], fraction: float) -> int:
    """Characters of replay text for ``fraction`` of the tokens, judged by the chat rows' characters."""
    return int(chat_chars(rows) * fraction / (1 - fraction)) if fraction > 0 else 0


def text_windows(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """``texts`` tokenized, each followed by EOS, concatenated and cut into windows of ``max_length``."""
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for text in texts:
        stream += tokenizer(text, add_special_tokens=False)["input_ids"] + ([eos] if eos is not None else [])
    return [stream[i:i + max_length] for i in range(0, len(stream) - max_length + 1, max_length)]


def mixed_rows(tokenizer, chat_rows: list[dict[str, Any]], texts: list[str], fraction: float, max_length: int,
               chat_template: str, seed: int, assistant_only: bool = True) -> list[dict[str, list[int]]]:
    """Tokenized rows: every chat row (``assistant_masks`` from the template's generation blocks, or all
    ones when not ``assistant_only``) plus
    text windows (all ones) making up ``fraction`` of the tokens, or all windows when there are too few;
    shuffled by ``seed``."""
    rows = []
    chat_tokens = 0
    for row in chat_rows:
        out = tokenizer.apply_chat_template(row["messages"], chat_template=chat_template, tokenize=True,
                                            return_dict=True, return_assistant_tokens_mask=True)
        ids, mask = list(out["input_ids"])[:max_length], list(out["assistant_masks"])[:max_length]
        if 1 not in mask:
            continue  # the reply was cut off by max_length: nothing to learn (TRL would refuse the row)
        if not assistant_only:
            mask = [1] * len(ids)
        rows.append({"input_ids": ids, "assistant_masks": mask})
        chat_tokens += len(ids)
    wanted = int(chat_tokens * fraction / (1 - fraction))
    windows = text_windows(tokenizer, texts, max_length)
    random.Random(seed).shuffle(windows)
    rows += [{"input_ids": w, "assistant_masks": [1] * len(w)} for w in windows[:max(0, wanted // max_length)]]
    random.Random(seed + 1).shuffle(rows)
    return rows


__all__ = ["MARGIN", "chat_chars", "mixed_rows", "replay_chars_needed", "replay_documents", "text_windows"]
