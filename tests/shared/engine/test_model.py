"""EngineModel and KVCache: cached logits equal full recomputation; the quantization seam; slot moves."""
from __future__ import annotations

import pytest
import torch

from shared.engine import DenseLinear, EngineError, EngineModel, KVCache, StepBatch

# FP32 logits of a cached step vs a full forward over the whole prefix: the sums run in a different
# order (chunks, one-token attention, another matmul kernel), so they agree to rounding, not bits.
ATOL = 1e-4


def _cache(model: EngineModel, slots: int = 3) -> KVCache:
    cfg = model.config
    return KVCache(cfg.n_layer, slots, cfg.n_head, cfg.block_size, cfg.n_embd // cfg.n_head)


@torch.inference_mode()
def test_cached_logits_match_full_recompute(tiny_gpt, backend, random_prompts):
    model = EngineModel.from_gpt(tiny_gpt, backend=backend)
    cache = _cache(model)
    a, b = random_prompts([40, 25])
    full_a, full_b = (tiny_gpt(torch.tensor([p]))[0][0] for p in (a, b))
    # a: prefill in chunks of 16 + 9 (the second attends to the cached first); b: one chunk in slot 2
    logits = model(StepBatch.build([], [(0, 0, a[:16]), (2, 0, b[:20])], [15, 16 + 19]), cache)
    torch.testing.assert_close(logits, torch.stack([full_a[15], full_b[19]]), atol=ATOL, rtol=0)
    logits = model(StepBatch.build([], [(0, 16, a[16:25])], range(9)), cache)
    torch.testing.assert_close(logits, full_a[16:25], atol=ATOL, rtol=0)
    # move b into slot 1 so both decode as a prefix of slots (the scheduler's invariant), different lengths
    cache.move(2, 1, 20)
    for step in range(5):
        batch = StepBatch.build([(a[25 + step], 25 + step), (b[20 + step], 20 + step)], [], [0, 1])
        assert batch.decode_mask is not None
        torch.testing.assert_close(model(batch, cache), torch.stack([full_a[25 + step], full_b[20 + step]]),
                                   atol=ATOL, rtol=0)
    # decode and a new prompt chunk in the same forward pass
    batch = StepBatch.build([(a[30], 30)], [(2, 0, b[:7])], [0, 7])
    torch.testing.assert_close(model(batch, cache), torch.stack([full_a[30], full_b[6]]), atol=ATOL, rtol=0)


@torch.inference_mode()
def test_backends_agree(tiny_gpt, random_prompts):
    from shared.engine.linear import onednn_available

    if not onednn_available():
        pytest.skip("this PyTorch build has no oneDNN")
    prompt = random_prompts([12])[0]
    outs = []
    for backend in ("dense", "onednn"):
        model = EngineModel.from_gpt(tiny_gpt, backend=backend)
        outs.append(model(StepBatch.build([], [(0, 0, prompt)], range(12)), _cache(model)))
    torch.testing.assert_close(outs[0], outs[1], atol=ATOL, rtol=0)


class CountingLinear(torch.nn.Module):
    """A stand-in for a quantized layer: same math, counts its calls."""

    def __init__(self, weight, bias):
        super().__init__()
        self.inner = DenseLinear(weight, bias)
        self.in_features, self.out_features = self.inner.in_features, self.inner.out_features
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


@torch.inference_mode()
def test_linear_layers_can_be_swapped(tiny_gpt, random_prompts):
    names = []

    def factory(name, weight, bias):
        names.append(name)
        return CountingLinear(weight, bias)
    model = EngineModel.from_gpt(tiny_gpt, make_linear=factory)
    assert names == [f"h.{i}.{n}" for i in range(2) for n in ("qkv", "attn_out", "fc", "fc_out")] + ["lm_head"]
    assert [n for n, _ in model.linears()] == names
    prompt = random_prompts([6])[0]
    reference = EngineModel.from_gpt(tiny_gpt, backend="dense")
    batch = StepBatch.build([], [(0, 0, prompt)], [5])
    torch.testing.assert_close(model(batch, _cache(model)), reference(batch, _cache(reference)), atol=ATOL, rtol=0)
    assert all(m.calls == 1 for _, m in model.linears())
    # replace one layer after the fact
    qkv = tiny_gpt.transformer.h[1].attn.c_attn
    model.replace_linear("h.1.qkv", DenseLinear(qkv.weight * 0, qkv.bias))
    assert isinstance(dict(model.linears())["h.1.qkv"], DenseLinear)
    assert not torch.allclose(model(batch, _cache(model)), reference(batch, _cache(reference)))
    with pytest.raises(EngineError, match="maps 32 -> 32 features but the layer maps 32 -> 96"):
        model.replace_linear("h.0.qkv", DenseLinear(torch.zeros(32, 32), None))
    with pytest.raises(EngineError, match="no linear layer named 'h.9.fc'"):
        model.replace_linear("h.9.fc", DenseLinear(torch.zeros(128, 32), None))


def test_decode_bytes_per_token(tiny_gpt):
    model = EngineModel.from_gpt(tiny_gpt, backend="dense")
    cfg = tiny_gpt.config
    linear = sum(p.numel() for n, p in tiny_gpt.named_parameters() if ".c_" in n) + cfg.vocab_size * cfg.n_embd
    layer_norms = (2 * cfg.n_layer + 1) * 2 * cfg.n_embd
    assert model.decode_bytes_per_token() == 4 * (linear + layer_norms + 2 * cfg.n_embd)


def test_cache_move_and_swap():
    cache = KVCache(n_layer=2, slots=3, n_head=1, max_len=4, head_dim=1)
    for slot in range(3):
        cache.k[:, slot] = slot + 1
        cache.v[:, slot] = -(slot + 1)
    cache.swap(0, 2, len_a=2, len_b=3)
    assert cache.k[0, 0, 0, :, 0].tolist() == [3, 3, 3, 1] and cache.k[1, 2, 0, :, 0].tolist() == [1, 1, 3, 3]
    cache.move(1, 0, length=1)
    assert cache.v[1, 0, 0, :, 0].tolist() == [-2, -3, -3, -1]
    assert cache.nbytes == 2 * 2 * 3 * 4 * 4
