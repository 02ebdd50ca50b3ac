"""Read token shards for training and evaluation: ``TokenDataset(out_dir, split)``.

A memory-mapped view of ``<split>.bin`` (written by ``shards.build_shards``): nothing is loaded
up front, so a many-GB split costs no RAM. Training draws random windows with a caller-owned
``torch.Generator`` (deterministic, resumable by saving the generator state); evaluation walks
fixed, non-overlapping windows spread evenly over the split, so every eval sees the same tokens.
Windows may span document boundaries (the EOS token marks them), as in GPT-2/nanoGPT.
Batches are int64 CPU tensors; moving them to a device is the training loop's job.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from shared.data.documents import DataError
from shared.data.shards import bin_path, read_meta
from shared.data.split import SPLITS


class TokenDataset:
    """Tokens of one split of a shard directory."""

    def __init__(self, out_dir: str | Path, split: str):
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; use one of {list(SPLITS)}")
        self.out_dir = Path(out_dir)
        self.split = split
        self.meta = read_meta(out_dir)
        self.n_tokens = int(self.meta["n_tokens"][split])
        # np.memmap refuses empty files; an empty split still needs a clear error later, not here.
        dtype = np.dtype(self.meta["dtype"])
        self.tokens = (
            np.memmap(bin_path(out_dir, split), dtype=dtype, mode="r") if self.n_tokens else np.zeros(0, dtype)
        )
        if len(self.tokens) != self.n_tokens:
            raise DataError(
                f"{bin_path(out_dir, split)} holds {len(self.tokens)} tokens but meta.json says {self.n_tokens}; "
                "the directory is corrupt: delete it and rebuild the shards"
            )

    def __len__(self) -> int:
        return self.n_tokens

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    @property
    def bytes_per_token(self) -> float:
        """UTF-8 text bytes per token (EOS tokens included in the count)."""
        return self.meta["n_bytes"][self.split] / self.n_tokens

    def bits_per_byte(self, mean_loss_nats: float) -> float:
        """Convert a mean per-token cross-entropy (nats) on this split to bits per UTF-8 byte."""
        return mean_loss_nats / math.log(2) / self.bytes_per_token

    def get_batch(self, batch_size: int, block_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``batch_size`` random windows: ``x = tokens[i:i+T]``, ``y = tokens[i+1:i+T+1]``."""
        self._check_block_size(block_size)
        starts = torch.randint(self.n_tokens - block_size, (batch_size,), generator=generator)
        return self._windows(starts.numpy(), block_size)

    def iter_eval_batches(
        self, batch_size: int, block_size: int, max_batches: int | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Non-overlapping windows, the same on every call; the last batch may be smaller.

        With ``max_batches`` the windows are spread evenly over the whole split rather than taken
        from its start, so a capped eval still samples every part of the validation data.
        """
        self._check_block_size(block_size)
        n_windows = (self.n_tokens - 1) // block_size
        wanted = n_windows if max_batches is None else min(n_windows, max_batches * batch_size)
        # Distinct window numbers k -> starts k*T: windows never overlap.
        picks = np.arange(wanted, dtype=np.int64) * n_windows // max(wanted, 1)
        for begin in range(0, wanted, batch_size):
            yield self._windows(picks[begin : begin + batch_size] * block_size, block_size)

    def _windows(self, starts: np.ndarray, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        offsets = starts[:, None] + np.arange(block_size + 1, dtype=np.int64)
        chunk = torch.from_numpy(self.tokens[offsets].astype(np.int64))
        return chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()

    def _check_block_size(self, block_size: int) -> None:
        if self.n_tokens < block_size + 1:
            raise DataError(
                f"{self.split} split has {self.n_tokens} tokens, fewer than block_size+1={block_size + 1}; "
                "lower block_size or add data"
            )
