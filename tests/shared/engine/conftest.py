"""Fixtures for the engine tests: tiny random GPTs, their HF twins, a byte-level tokenizer, a scripted model.

The tiny models have every weight random (N(0, 0.2)), as in tests/shared/model: GPT-2's init leaves
biases at zero and LayerNorms at identity, which would hide a mis-wired bias or LayerNorm.
"""
from __future__ import annotations

import pytest
import torch

from shared.engine import Engine, EngineConfig, EngineModel
from shared.model.gpt import GPT, GPTConfig
from shared.tokenizer.hf_format import build_hf_tokenizer, to_transformers

TINY = dict(vocab_size=263, block_size=64, n_layer=2, n_head=2, n_embd=32)  # 263: bytes + our 7 special tokens


def random_gpt(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**{**TINY, **overrides}))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model.eval()


def _random_prompts(lengths, vocab: int = 256, seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]


@pytest.fixture(scope="session")
def random_prompts():
    """``random_prompts([3, 17])``: one random prompt (byte ids) per length, the same in every test."""
    return _random_prompts


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and a busy shared CPU cannot stall a thread barrier."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_gpt() -> GPT:
    return random_gpt()


@pytest.fixture(scope="session")
def tiny_hf(tiny_gpt):
    from shared.model.hf import gpt_to_hf

    return gpt_to_hf(tiny_gpt)


@pytest.fixture(scope="session")
def byte_tokenizer():
    """Our tokenizer format with no merges: 256 byte tokens, then the 7 special tokens (ids 256..262)."""
    return to_transformers(build_hf_tokenizer([]))


@pytest.fixture(scope="session")
def hf_greedy(tiny_hf):
    """``hf_greedy(prompt, n, **generate_kwargs)``: HF ``generate()``'s greedy tokens for the tiny model."""
    def generate(prompt: list[int], n: int, **kwargs) -> list[int]:
        ids = torch.tensor([prompt])
        out = tiny_hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                               pad_token_id=0, eos_token_id=None, **kwargs)
        return out[0, len(prompt):].tolist()
    return generate


class ScriptedModel(EngineModel):
    """An ``EngineModel`` whose next token is ``script[position + 1]``, whatever the prompt says.

    A prompt of length L therefore gets the reply ``script[L:]``: tests choose exactly what the "model"
    says (text, stop tokens, tool calls) and still go through the engine's scheduler and cache.
    """

    def set_script(self, script: list[int]) -> ScriptedModel:
        self.script = torch.tensor(script + [ord("~")] * (self.config.block_size + 1 - len(script)))
        return self

    def forward(self, batch, cache):
        positions = batch.positions[batch.logit_rows]
        logits = torch.full((len(positions), self.config.vocab_size), -10.0)
        logits[torch.arange(len(positions)), self.script[positions + 1]] = 10.0
        return logits


@pytest.fixture
def scripted(byte_tokenizer):
    """``scripted(reply, prompt="P: ", **config)`` -> (engine, prompt): the engine answers ``prompt`` with ``reply``."""
    def make(reply: str, prompt: str = "P: ", **config) -> tuple[Engine, str]:
        gpt = random_gpt(n_layer=1, n_head=1, n_embd=8)
        prompt_ids = byte_tokenizer.encode(prompt, add_special_tokens=False)
        reply_ids = byte_tokenizer.encode(reply, add_special_tokens=False)
        model = ScriptedModel.from_gpt(gpt, backend="dense").set_script(prompt_ids + reply_ids)
        return Engine(model, byte_tokenizer, EngineConfig(max_batch_size=4, **config)), prompt
    return make


@pytest.fixture(params=["dense", "onednn", "gemv"])
def backend(request) -> str:
    from shared.engine import kernels
    from shared.engine.linear import onednn_available

    if request.param == "onednn" and not onednn_available():
        pytest.skip("this PyTorch build has no oneDNN")
    if request.param == "gemv" and not kernels.available():
        pytest.skip("the GEMV kernels did not build (no compiler)")
    return request.param
