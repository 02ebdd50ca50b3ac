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

    ``decode_span`` is the longest decoding sequence after this step's write; ``decode_mask``
    (additive, ``[n_decode, 1, 1, decode_span]``) hides each shorter sequence's tail, None when all
    have the same length. ``logit_rows`` are the rows whose next-token logits are needed (every
    decode token, and the last token of a prompt that completes this step).
    """

    tokens: torch.Tensor
    positions: torch.Tensor
    n_decode: int
    decode_slots: torch.Tensor
    decode_positions: list[int]
    decode_span: int
    decode_mask: torch.Tensor | None
    chunks: list[Chunk]
    logit_rows: torch.Tensor

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.shape[0])

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
        span = max(decode_positions) + 1 if n_decode else 0
        mask = None
        if n_decode and min(decode_positions) + 1 != span:
            lengths = torch.tensor(decode_positions, device=device) + 1
            hidden = torch.arange(span, device=device)[None, :] >= lengths[:, None]
            mask = torch.zeros(n_decode, 1, 1, span, dtype=dtype, device=device).masked_fill_(
                hidden[:, None, None, :], float("-inf"))
        return cls(tokens=torch.tensor(tokens, dtype=torch.long, device=device),
                   positions=torch.tensor(positions, dtype=torch.long, device=device),
                   n_decode=n_decode, decode_slots=torch.arange(n_decode, device=device),
                   decode_positions=decode_positions, decode_span=span, decode_mask=mask,
                   chunks=built, logit_rows=torch.tensor(list(logit_rows), dtype=torch.long, device=device))
