"""Quantized variants on the scorecard: perplexity, suite and lm-eval through our engine, against the FP32 model."""
from __future__ import annotations

import pytest
import torch

from shared.eval.checkpoint import require_causal_lm
from shared.eval.engine_backend import engine_replies, is_quantized


@pytest.fixture(scope="module")
def fp32_and_int8(tmp_path_factory):
    """A small trained-ish GPT-2 with our tokenizer as an HF checkpoint, and its INT8 variant."""
    from shared.model.gpt import GPT, GPTConfig
    from shared.model.hf import save_hf_checkpoint
    from shared.quant.quantized_checkpoint import save_quantized
    from shared.tokenizer.train import train_tokenizer
    root = tmp_path_factory.mktemp("variants")
    text = "The capital of France is Paris. What is 2 + 2? The answer is 4. def add(a, b): return a + b\n"
    train_tokenizer([text] * 30, vocab_size=320, out_dir=root / "tok")
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=320, block_size=64, n_layer=2, n_head=2, n_embd=64)).eval()
    fp32 = save_hf_checkpoint(gpt, root / "fp32", tokenizer_dir=root / "tok")
    save_quantized(gpt, fp32, root / "int8", scheme="int8", group_size=32, include_lm_head=True)
    return fp32, root / "int8"


def test_a_quantized_variant_is_a_causal_lm_the_engine_serves(fp32_and_int8):
    _, int8 = fp32_and_int8
    assert is_quantized(int8) and require_causal_lm(int8) == int8


def test_int8_perplexity_through_the_engine_matches_fp32_closely(fp32_and_int8):
    from shared.eval.perplexity import heldout_perplexity
    fp32, int8 = fp32_and_int8
    sets = {"general": "builtin:python-docs"}
    ref = heldout_perplexity(fp32, sets, max_tokens=512)
    got = heldout_perplexity(int8, sets, max_tokens=512)
    assert got["general_loss"] == pytest.approx(ref["general_loss"], rel=0.01)  # INT8 with bf16 compute


def test_engine_replies_keep_the_special_tokens_the_checkers_read(fp32_and_int8):
    _, int8 = fp32_and_int8
    conversations = [[{"role": "user", "content": "What is 2 + 2?"}], [{"role": "user", "content": "Hi " * 80}]]
    replies = engine_replies(int8, max_new_tokens=8)(conversations)  # the second prompt is cut from the left
    assert len(replies) == 2
    for reply in replies:
        assert isinstance(reply, str) and reply


def test_lm_eval_multiple_choice_runs_through_the_engine(fp32_and_int8):
    from shared.eval.harness import run_lm_eval
    fp32, int8 = fp32_and_int8
    ref = run_lm_eval(fp32, ["journey_facts_mc"], limit=24, batch_size=8)["journey_facts_mc"]
    got = run_lm_eval(int8, ["journey_facts_mc"], limit=24, batch_size=8)["journey_facts_mc"]
    assert got["n"] == ref["n"] == 24
    assert abs(got["acc"] - ref["acc"]) <= 2 / 24  # the same choices, up to INT8 rounding on near ties


def test_a_gguf_variant_is_scored_through_llama_cpp(fp32_and_int8, tmp_path):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is installed by scripts/install_llama_cpp.sh")
    from shared.eval.perplexity import heldout_perplexity
    from shared.quant.gguf_export import export_gguf
    fp32, _ = fp32_and_int8
    export_gguf(fp32, tmp_path / "gguf" / "model-f32.gguf", dtype="f32")
    assert is_quantized(tmp_path / "gguf") and require_causal_lm(tmp_path / "gguf") == tmp_path / "gguf"
    sets = {"general": "builtin:python-docs"}
    ref = heldout_perplexity(fp32, sets, max_tokens=256)
    got = heldout_perplexity(tmp_path / "gguf", sets, max_tokens=256)
    assert got["general_loss"] == pytest.approx(ref["general_loss"], rel=1e-3)  # F32 GGUF: the same model
    replies = engine_replies(tmp_path / "gguf", max_new_tokens=4)([[{"role": "user", "content": "What is 2 + 2?"}]])
    assert len(replies) == 1 and isinstance(replies[0], str)
