"""Fixtures for the model tests: a tiny GPT with every weight random, token batches, a tiny tokenizer."""
from __future__ import annotations

import pytest
import torch

from shared.model.gpt import GPT, GPTConfig

TINY = dict(vocab_size=100, block_size=32, n_layer=2, n_head=2, n_embd=32)


@pytest.fixture
def tiny_cfg() -> GPTConfig:
    return GPTConfig(**TINY)


@pytest.fixture
def make_model():
    """A factory of tiny GPTs in eval mode whose weights are all random.

    GPT-2's init leaves biases at zero and LayerNorm at identity, which would hide a bias or
    LayerNorm mapped to the wrong place; random values make every weight count in the logits.
    """
    def make(seed: int = 0, **overrides) -> GPT:
        torch.manual_seed(seed)
        model = GPT(GPTConfig(**{**TINY, **overrides}))
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0.0, 0.2)
        return model.eval()
    return make


@pytest.fixture
def tokens() -> torch.Tensor:
    return torch.randint(0, TINY["vocab_size"], (2, TINY["block_size"]), generator=torch.Generator().manual_seed(1))


@pytest.fixture
def hf_logits():
    """Logits of the checkpoint directory as plain transformers sees it."""
    def logits(ckpt_dir, idx: torch.Tensor) -> torch.Tensor:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(ckpt_dir).eval()
        with torch.no_grad():
            return model(idx).logits
    return logits


@pytest.fixture
def gpt_logits():
    def logits(model: GPT, idx: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(idx)[0]
    return logits


@pytest.fixture
def make_tokenizer_dir(tmp_path):
    """A factory of tiny word-level HF tokenizer directories with ``n_tokens`` tokens (ids 0..n-1)."""
    def make(n_tokens: int = 20):
        from tokenizers import Tokenizer, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast

        vocab = {"<|endoftext|>": 0, "<|pad|>": 1, **{f"w{i}": i for i in range(2, n_tokens)}}
        backend = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
        backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>",
                                      bos_token="<|endoftext|>", pad_token="<|pad|>")
        out = tmp_path / f"tokenizer-{n_tokens}"
        tok.save_pretrained(out)
        return out
    return make
