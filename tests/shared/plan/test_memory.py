"""The memory estimator against hand arithmetic and published numbers."""
from __future__ import annotations

import pytest

from shared.plan.memory import (ModelShape, activation_bytes, inference_memory, lora_param_count, param_count,
                                state_bytes, training_memory)

GPT2 = ModelShape(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)


def test_gpt2_124m_parameters_by_hand():
    d, L, V, T = 768, 12, 50257, 1024
    per_layer = (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d) + 4 * d
    assert per_layer == 12 * d * d + 13 * d
    assert param_count(GPT2).total == V * d + T * d + L * per_layer + 2 * d == 124_439_808


def test_fp32_adamw_is_16_bytes_per_parameter():
    m = training_memory(GPT2, batch=1, seq=1, precision="fp32")
    n = 124_439_808
    assert (m.weights, m.gradients, m.optimizer) == (4 * n, 4 * n, 8 * n)


def test_autocast_keeps_fp32_weights_plus_a_16_bit_copy():
    assert state_bytes("bf16").total == 18 and state_bytes("bf16").weights == 6


@pytest.mark.parametrize("stage,expected_gb", [(0, 120.0), (1, 31.4), (2, 16.6), (3, 1.9)])
def test_zero_paper_figure_1_for_a_7_5b_model_on_64_gpus(stage, expected_gb):
    """ZeRO (Rajbhandari et al. 2020) Figure 1: Ψ = 7.5B, K = 12, N_d = 64: 120 / 31.4 / 16.6 / 1.9 GB."""
    per = state_bytes("bf16", zero=True)
    assert per.total == 16  # 2 + 2 + K, K = 12
    psi, n = 7.5e9, 64
    weights, grads, optim = psi * per.weights, psi * per.gradients, psi * per.optimizer
    if stage >= 1:
        optim /= n
    if stage >= 2:
        grads /= n
    if stage >= 3:
        weights /= n
    assert (weights + grads + optim) / 1e9 == pytest.approx(expected_gb, abs=0.05)


def test_zero_stages_divide_state_across_workers():
    full = training_memory(GPT2, batch=1, seq=64, precision="bf16", zero_stage=0, num_workers=8)
    z3 = training_memory(GPT2, batch=1, seq=64, precision="bf16", zero_stage=3, num_workers=8)
    n = param_count(GPT2).total
    assert z3.weights == pytest.approx(2 * n / 8) and z3.gradients == pytest.approx(2 * n / 8)
    assert z3.optimizer == pytest.approx(12 * n / 8)
    assert full.activations == z3.activations


def test_activations_follow_korthikanti_with_flash_attention():
    b, s, h, L, V = 64, 1024, 768, 12, 50257
    assert activation_bytes(GPT2, b, s, "bf16") == L * 34 * s * b * h + 4 * s * b * V
    assert activation_bytes(GPT2, b, s, "fp32") == 2 * L * 34 * s * b * h + 4 * s * b * V
    assert activation_bytes(GPT2, b, s, "bf16", checkpointing=True) == (L * 2 + 34) * s * b * h + 4 * s * b * V


def test_lora_trains_only_adapters_and_qlora_stores_the_base_in_4_bits():
    r = 16
    assert lora_param_count(GPT2, r, "all-linear") == 12 * 16 * r * 768
    assert lora_param_count(GPT2, r, "attention") == 12 * 6 * r * 768
    assert lora_param_count(GPT2, r, ["c_attn"]) == 12 * 4 * r * 768
    lora = training_memory(GPT2, batch=1, seq=64, precision="bf16", method="lora", lora_r=r)
    qlora = training_memory(GPT2, batch=1, seq=64, precision="bf16", method="qlora", lora_r=r,
                            optimizer="paged_adamw_8bit")
    adapters = lora_param_count(GPT2, r)
    assert lora.trainable == adapters and lora.gradients == 4 * adapters and lora.optimizer == 8 * adapters
    assert qlora.optimizer == 2 * adapters  # 8-bit paged AdamW
    params = param_count(GPT2)
    assert qlora.weights == pytest.approx(params.linear * (4 + 8 / 64 + 32 / (64 * 256)) / 8 + params.other * 2
                                          + adapters * 6)


def test_inference_is_weights_plus_a_kv_cache():
    m = inference_memory(GPT2, batch=2, seq=100)
    assert m.weights == 4 * 124_439_808 and m.activations == 2 * 12 * 2 * 100 * 768 * 4
    assert m.gradients == m.optimizer == 0


def test_hf_config_shapes():
    gpt2 = ModelShape.from_hf_config({"vocab_size": 50304, "n_positions": 1024, "n_layer": 12, "n_head": 12,
                                      "n_embd": 768})
    assert gpt2.vocab_size == 50304 and gpt2.n_layer == 12
    llama = ModelShape.from_hf_config({"vocab_size": 128256, "max_position_embeddings": 131072, "hidden_size": 4096,
                                       "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                                       "intermediate_size": 14336, "hidden_act": "silu"})
    # Llama 3.1 8B: 8,030,261,248 parameters
    assert param_count(llama).total == 8_030_261_248
