"""Fixtures shared by the eval tests."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """An HF checkpoint of a 1-layer random GPT (context 64) with our tokenizer and chat tokens."""
    from shared.model.gpt import GPT, GPTConfig
    from shared.model.hf import save_hf_checkpoint
    from shared.tokenizer.train import train_tokenizer
    tok_dir = tmp_path_factory.mktemp("tok")
    train_tokenizer(["What is 2 + 2? The answer is four. Use the calculator."] * 20, vocab_size=300,
                    out_dir=tok_dir)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=300, block_size=64, n_layer=1, n_head=2, n_embd=16))
    return save_hf_checkpoint(model, tmp_path_factory.mktemp("model"), tokenizer_dir=tok_dir)
