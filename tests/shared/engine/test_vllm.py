"""vLLM as the GPU generator: the same greedy tokens as our engine on the same checkpoint."""
from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu


def test_vllm_greedy_equals_our_engine(tmp_path):
    pytest.importorskip("vllm", reason="vLLM is an optional GPU extra: pip install 'gpt-journey[vllm]'")
    from shared.engine import Engine, EngineConfig, SamplingParams
    from shared.engine.vllm_backend import VLLMGenerator
    from shared.model.gpt import GPT, GPTConfig
    from shared.model.hf import save_hf_checkpoint
    from shared.tokenizer.train import train_tokenizer
    train_tokenizer(["The quick brown fox jumps over the lazy dog. " * 4] * 20, vocab_size=300, out_dir=tmp_path / "tok")
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=320, block_size=128, n_layer=2, n_head=2, n_embd=64)).eval()
    path = save_hf_checkpoint(gpt, tmp_path / "model", tokenizer_dir=tmp_path / "tok")
    prompts = [[1, 2, 3, 4], [10, 20, 30], [5] * 9]
    params = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)
    ours = [o.token_ids for o in Engine(gpt, None, EngineConfig(max_batch_size=4)).generate(prompts, params)]
    theirs = [o.token_ids for o in VLLMGenerator(path, dtype="float32").generate(prompts, params)]
    assert theirs == ours
