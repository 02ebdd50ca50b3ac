"""Batched chat generation with a Hugging Face causal LM, for evaluation and preference sampling.

``generate_replies(model, tokenizer, conversations, ...)`` renders each conversation with the one
chat format plus the generation prompt (``<|assistant|>``), left-pads a batch, and samples (or
decodes greedily with ``temperature=0``) until ``<|end|>`` / ``<|endoftext|>`` or the token budget.
Each reply is returned as decoded text up to and including its stop token, special tokens kept,
so the checkers can see whether the model terminated properly and whether it called a tool.

Prompts longer than the context allows are cut from the left (the latest turns matter most); a long
prompt keeps its tokens and gets a shorter reply budget first (``fit_prompt``). A reply depends on its
own prompt only: prompts are batched with others of the same reply budget.
This is HF ``generate()``, fine for small evaluation sets; the serving engine is ``shared.engine``.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from shared.config import ConfigError
from shared.chat_format import END, EOT, render_chat


def load_chat_model(path: str, device: str = "cpu"):
    """``(model, tokenizer)`` from an HF checkpoint directory, in eval mode, ready for left-padded batches."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(path).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer


def context_length(model) -> int:
    cfg = model.config
    return int(getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", 2048))


def stop_token_ids(tokenizer, required: bool = False) -> list[int]:
    """Ids of ``<|end|>`` (end of an assistant turn) and ``<|endoftext|>`` that the tokenizer has.

    ``required``: raise ``ConfigError`` unless it has both (RL rollouts must stop at a turn's end);
    otherwise a tokenizer without them (a hub base model) simply generates to the budget.
    """
    ids = [tokenizer.convert_tokens_to_ids(t) for t in (END, EOT)]
    known = [i for i in ids if isinstance(i, int) and i != tokenizer.unk_token_id]
    if required and len(known) < len(ids):
        raise ConfigError(f"the tokenizer has no {END} / {EOT} token, so rollouts could not stop at the end of a "
                          "turn; RL needs a model trained with our tokenizer (shared.tokenizer) and chat format")
    return known


def _decode_reply(tokenizer, ids: list[int], stops: set[int]) -> str:
    """Text up to and including the first stop token (padding after it dropped)."""
    for n, token in enumerate(ids):
        if token in stops:
            ids = ids[: n + 1]
            break
    return tokenizer.decode(ids, skip_special_tokens=False)


#: Tokens of reply a prompt always leaves room for: a prompt is cut from the left only beyond
#: ``context - min(max_new_tokens, MIN_REPLY)``. Cutting every prompt to ``context - max_new_tokens``
#: removed the instruction and the first passage of the tiny model's passage prompts (80 of 128
#: tokens left for the prompt at 48 new tokens), though their answers are a word or two.
MIN_REPLY = 16


def fit_prompt(ids: list[int], limit: int, max_new_tokens: int) -> tuple[list[int], int]:
    """``ids`` cut from the left to fit a context of ``limit`` with room for a reply, and the reply budget
    that fits after it: ``max_new_tokens`` when the prompt is short enough, less (at least
    ``min(max_new_tokens, MIN_REPLY)``) for a long one."""
    keep = limit - min(max_new_tokens, MIN_REPLY)
    ids = ids[-keep:]
    return ids, min(max_new_tokens, limit - len(ids))


@torch.no_grad()
def generate_replies(model, tokenizer, conversations: Sequence[Sequence[dict[str, Any]]], *, n: int = 1,
                     temperature: float = 0.0, top_p: float = 1.0, max_new_tokens: int = 48,
                     batch_size: int = 32, seed: int = 0) -> list[list[str]]:
    """``n`` replies per conversation (a list of ``n`` strings each); ``temperature=0`` is greedy."""
    if temperature == 0 and n > 1:
        raise ValueError("greedy decoding (temperature=0) gives the same reply n times; set temperature > 0")
    limit = context_length(model)
    if max_new_tokens >= limit:
        raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for the prompt in a context of {limit}")
    stops = stop_token_ids(tokenizer)
    stop_set = set(stops)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[-1]
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    fitted = [fit_prompt(tokenizer(render_chat(c, add_generation_prompt=True), add_special_tokens=False).input_ids,
                         limit, max_new_tokens) for c in conversations]
    # generate() takes one budget per call, so only prompts of equal budget share a batch: batched with a
    # long prompt, a short one used to get the long one's shorter budget, and its reply depended on its
    # batchmates (11% of the tiny SFT model's tool calls were cut off in the scorecard, none alone).
    by_budget: dict[int, list[int]] = {}
    for i, (_, budget) in enumerate(fitted):
        by_budget.setdefault(budget, []).append(i)
    out: list[list[str]] = [[] for _ in conversations]
    sampling = dict(do_sample=True, temperature=temperature, top_p=top_p) if temperature > 0 else dict(do_sample=False)
    for budget, members in sorted(by_budget.items(), reverse=True):
        for start in range(0, len(members), batch_size):
            batch = members[start:start + batch_size]
            prompts = [fitted[i][0] for i in batch]
            width = max(len(p) for p in prompts)
            input_ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
            generated = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=budget,
                                       num_return_sequences=n, eos_token_id=stops, pad_token_id=pad_id, **sampling)
            new = generated[:, width:].tolist()
            for k, i in enumerate(batch):
                out[i] = [_decode_reply(tokenizer, new[k * n + j], stop_set) for j in range(n)]
    return out
