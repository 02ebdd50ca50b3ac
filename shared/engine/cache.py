"""The KV cache: one preallocated tensor pair for all layers and slots, and the step batch that indexes it.

Layout: ``k`` and ``v`` are ``[n_layer, slots, n_head, max_len, head_dim]``, allocated (and zeroed)
once. A slot holds one resident request; its first ``length`` positions are valid, the rest hold
stale but finite values that the attention masks out (zeros at first: ``empty`` memory could hold
NaN, and masked scores still multiply V, so NaN would leak into the output).

Why this layout: decode reads, per layer, the K and V of every decoding slot. The scheduler keeps
the decoding requests in slots ``0..n-1`` (``move``/``swap`` below, a copy per join or finish, not
per token), so that read is a plain view ``k[layer, :n, :, :span]`` and nothing is gathered or
concatenated per step; each head's keys are one contiguous ``[span, head_dim]`` block. Writing a
step's new K/V is a scatter of one ``[n_head, head_dim]`` vector per token.

``StepBatch`` is what one forward pass computes: the decode tokens (rows ``0..n_decode-1``, one per
decoding slot) followed by prompt chunks (``Chunk``), flattened into one token axis so every
linear layer reads its weights once per step for all of them; only attention is per group.

This module does not decide who runs (``shared.engine.scheduler``) and does not run the model.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import torch


class KVCache:
    """Preallocated keys and values for ``slots`` sequences of up to ``max_len`` tokens."""

    def __init__(self, n_layer: int, slots: int, n_head: int, max_len: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        shape = (n_layer, slots, n_head, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.slots, self.max_len = slots, max_len
        self.layers = [(self.k[i], self.v[i]) for i in range(n_layer)]  # per-layer views, made once

    @property
    def nbytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy the first ``length`` positions of slot ``src`` into slot ``dst``."""
        if src != dst and length:
            self.k[:, dst, :, :length] = self.k[:, src, :, :length]
            self.v[:, dst, :, :length] = self.v[:, src, :, :length]

    def swap(self, a: int, b: int, len_a: int, len_b: int) -> None:
        """Exchange the valid contents of slots ``a`` and ``b``."""
        if a == b:
            return
        for t in (self.k, self.v):
            saved = t[:, a, :, :len_a].clone()
            t[:, a, :, :len_b] = t[:, b, :, :len_b]
            t[:, b, :, :len_a] = saved


@dataclass
class Chunk:
    """``length`` prompt tokens of the request in ``slot``, at positions ``start..start+length-1``,
    rows ``offset..offset+length-1`` of the step. ``mask`` (bool ``[length, start+length]``) lets each
    token see the cached prefix and itself causally; None when ``start == 0`` (plain causal)."""

    slot: int
    start: int
    length: int
    offset: int
    mask: torch.Tensor | None


@dataclass
class StepBatch:
    """One forward pass: ``n_decode`` decode tokens (slots ``0..n_decode-1``) then ``chunks``.

    ``token_ids``/``position_ids`` list every row's token and position; ``logit_row_ids`` are the rows
    whose next-token logits are needed (every decode token, and the last token of a prompt that
    completes this step). ``decode_span`` is the longest decoding sequence after this step's write.
    The tensor views (``tokens``, ``positions``, ``decode_slots``, ``logit_rows``, and ``decode_mask``:
    additive, ``[n_decode, 1, 1, decode_span]``, hiding each shorter sequence's tail, None when all
    have the same length) are built on first use. Why lazily: the fused decode step reads only the
    lists, and each tensor made per step costs ~10-20 us once a 500 MB step has evicted torch's code
    from the caches (~0.1 ms of a GPT-2 124M FP32 step, measured in the engine's step).
    """

    token_ids: list[int]
    position_ids: list[int]
    n_decode: int
    decode_positions: list[int]
    decode_span: int
    chunks: list[Chunk]
    logit_row_ids: list[int]
    dtype: torch.dtype = torch.float32
    device: torch.device | str = "cpu"

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @cached_property
    def tokens(self) -> torch.Tensor:
        return torch.tensor(self.token_ids, dtype=torch.long, device=self.device)

    @cached_property
    def positions(self) -> torch.Tensor:
        return torch.tensor(self.position_ids, dtype=torch.long, device=self.device)

    @cached_property
    def decode_slots(self) -> torch.Tensor:
        return torch.arange(self.n_decode, device=self.device)

    @cached_property
    def logit_rows(self) -> torch.Tensor:
        return torch.tensor(self.logit_row_ids, dtype=torch.long, device=self.device)

    @cached_property
    def decode_mask(self) -> torch.Tensor | None:
        span, n = self.decode_span, self.n_decode
        if not n or min(self.decode_positions) + 1 == span:
            return None
        lengths = torch.tensor(self.decode_positions, device=self.device) + 1
        hidden = torch.arange(span, device=self.device)[None, :] >= lengths[:, None]
        return torch.zeros(n, 1, 1, span, dtype=self.dtype, device=self.device).masked_fill_(
            hidden[:, None, None, :], float("-inf"))

    @classmethod
    def build(cls, decode: Sequence[tuple[int, int]], chunks: Sequence[tuple[int, int, Sequence[int]]],
              logit_rows: Sequence[int], dtype: torch.dtype = torch.float32,
              device: torch.device | str = "cpu") -> StepBatch:
        """``decode``: (token, position) for slots 0, 1, ...; ``chunks``: (slot, start, tokens)."""
        tokens = [t for t, _ in decode]
        positions = [p for _, p in decode]
        built = []
        for slot, start, chunk_tokens in chunks:
            n = len(chunk_tokens)
            mask = None
            if start:
                mask = (torch.arange(start + n, device=device)[None, :]
                        <= torch.arange(start, start + n, device=device)[:, None])
            built.append(Chunk(slot, start, n, len(tokens), mask))
            tokens.extend(chunk_tokens)
            positions.extend(range(start, start + n))
        n_decode = len(decode)
        decode_positions = positions[:n_decode]
        return cls(token_ids=tokens, position_ids=positions, n_decode=n_decode, decode_positions=decode_positions,
                   decode_span=max(decode_positions) + 1 if n_decode else 0, chunks=built,
                   logit_row_ids=list(logit_rows), dtype=dtype, device=device)
