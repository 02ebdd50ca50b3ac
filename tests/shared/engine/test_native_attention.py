"""The C++ decode-attention kernel (shared.engine.native) against torch's SDPA, and the engine's use of it."""
import pytest
import torch
import torch.nn.functional as F

from shared.engine import native
from shared.engine.cache import KVCache, StepBatch
from shared.engine.model import EngineModel
from shared.model.gpt import GPT, GPTConfig

pytestmark = pytest.mark.skipif(not native.decode_attention_available(), reason="kernel did not build (no compiler)")


# head_dim 16 and 64 take the AVX-512 path where there is one (positions 16, 31 and 47: whole 16-score
# softmax blocks and a tail), 24 the scalar one
@pytest.mark.parametrize("positions,head_dim", [([0], 64), ([5], 64), ([3, 9, 0], 16), ([40, 40], 24),
                                                ([47, 16, 31], 64)])
def test_decode_attention_matches_sdpa_and_writes_the_cache(positions, head_dim):
    torch.manual_seed(len(positions) * 100 + head_dim)
    n, heads, max_len, slots = len(positions), 4, 48, 4
    kc, vc = torch.randn(slots, heads, max_len, head_dim), torch.randn(slots, heads, max_len, head_dim)
    qkv = torch.randn(n + 2, 3 * heads * head_dim)  # two extra rows (prompt tokens of a mixed step) are ignored
    k_before, v_before = kc.clone(), vc.clone()
    y = native.decode_attention(qkv, kc, vc, positions, head_dim ** -0.5)
    q, k, v = qkv[:n].view(n, 3, heads, head_dim).unbind(1)
    for r, pos in enumerate(positions):
        assert torch.equal(kc[r, :, pos], k[r]) and torch.equal(vc[r, :, pos], v[r])
        keys, values = k_before[r].clone(), v_before[r].clone()
        keys[:, pos], values[:, pos] = k[r], v[r]
        ref = F.scaled_dot_product_attention(q[r][:, None], keys[:, :pos + 1], values[:, :pos + 1])
        torch.testing.assert_close(y[r].view(heads, head_dim), ref[:, 0], rtol=1e-5, atol=1e-5)
    untouched = torch.ones(slots, max_len, dtype=torch.bool)
    for r, pos in enumerate(positions):
        untouched[r, pos] = False
    assert torch.equal(kc.transpose(1, 2)[untouched], k_before.transpose(1, 2)[untouched])  # nothing else written


def test_decode_attention_refuses_bad_input():
    kc = vc = torch.zeros(2, 2, 8, 4)
    with pytest.raises(RuntimeError, match="outside the cache"):
        native.decode_attention(torch.zeros(1, 24), kc, vc, [8], 0.5)
    with pytest.raises(RuntimeError, match="columns"):
        native.decode_attention(torch.zeros(1, 23), kc, vc, [0], 0.5)
    with pytest.raises(RuntimeError, match="decode tokens"):
        native.decode_attention(torch.zeros(3, 24), kc, vc, [0, 1, 2], 0.5)


def test_engine_decode_steps_agree_with_the_torch_path(monkeypatch):
    """Three requests of different lengths decoding together: same logits and same cache either way."""
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=97, block_size=64, n_layer=2, n_head=4, n_embd=32, dropout=0.0)
    model = EngineModel.from_gpt(GPT(cfg).eval(), backend="dense")
    results = []
    for use_native in (True, False):
        monkeypatch.setattr(native, "decode_attention_available", lambda use=use_native: use)
        cache = KVCache(cfg.n_layer, 3, cfg.n_head, 64, 8)
        with torch.inference_mode():
            for slot, prompt in enumerate(([1, 2, 3], [4, 5, 6, 7, 8, 9], [10])):
                model(StepBatch.build([], [(slot, 0, prompt)], []), cache)
            logits = [model(StepBatch.build([(11, 3), (12, 6), (13, 1)], [], [0, 1, 2]), cache),
                      model(StepBatch.build([(14, 4), (15, 7), (16, 2)], [], [0, 1, 2]), cache)]
        results.append((torch.cat(logits), cache.k.clone(), cache.v.clone()))
    (a, ka, va), (b, kb, vb) = results
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ka, kb, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(va, vb, rtol=1e-6, atol=1e-6)


def _decode_steps(model, cfg, fused: bool):
    """Prefill three prompts, then two decode steps of all three: (logits of the decode steps, K, V)."""
    saved = model._fused
    model._fused = saved if fused else None
    cache = KVCache(cfg.n_layer, 3, cfg.n_head, 64, cfg.n_embd // cfg.n_head)
    try:
        with torch.inference_mode():
            for slot, prompt in enumerate(([1, 2, 3], [4, 5, 6, 7, 8, 9], [10])):
                model(StepBatch.build([], [(slot, 0, prompt)], []), cache)
            logits = [model(StepBatch.build([(11, 3), (12, 6), (13, 1)], [], [0, 1, 2]), cache),
                      model(StepBatch.build([(14, 4)], [], [0]), cache)]
    finally:
        model._fused = saved
    return logits, cache.k, cache.v


@pytest.mark.parametrize("scheme", ["fp32", "int8", "int4", "int4-fp32-activations"])
def test_fused_decode_step_matches_the_python_forward(scheme):
    """The one-call C++ decode step (shared.engine.native.decode_model) gives the Python forward's logits
    and cache for each kind of layer it runs."""
    from shared.quant.engine_quant import QuantSpec, build_quantized_engine_model
    torch.manual_seed(1)
    cfg = GPTConfig(vocab_size=97, block_size=64, n_layer=2, n_head=4, n_embd=64, dropout=0.0)
    gpt = GPT(cfg).eval()
    if scheme == "fp32":
        model = EngineModel.from_gpt(gpt, backend="gemv")
    else:
        dtype = "float32" if scheme.endswith("fp32-activations") else "bfloat16"
        model, _ = build_quantized_engine_model(gpt, QuantSpec(scheme=scheme[:4], compute_dtype=dtype))
    assert model._fused is not None
    (fused, kf, vf), (plain, kp, vp) = _decode_steps(model, cfg, True), _decode_steps(model, cfg, False)
    for a, b in zip(fused, plain):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(kf, kp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(vf, vp, rtol=1e-5, atol=1e-5)


def test_fused_decode_step_only_for_layers_it_can_run():
    cfg = GPTConfig(vocab_size=97, block_size=64, n_layer=1, n_head=2, n_embd=32, dropout=0.0)
    gpt = GPT(cfg).eval()
    assert EngineModel.from_gpt(gpt, backend="dense")._fused is None  # torch layers: the Python forward
    assert EngineModel.from_gpt(gpt, backend="gemv", dtype=torch.bfloat16)._fused is None
    model = EngineModel.from_gpt(gpt, backend="gemv")
    cache = KVCache(cfg.n_layer, 1, cfg.n_head, 8, 16)
    with pytest.raises(RuntimeError, match="outside the vocabulary"):
        model._fused.step([97], [0], cache.k, cache.v)
    with pytest.raises(RuntimeError, match="outside the cache"):
        model._fused.step([1], [8], cache.k, cache.v)


def test_fused_step_greedy_tokens_follow_torch_argmax_on_ties_and_nan():
    """The argmax the fused step takes in C++ (EngineModel.greedy_tokens) is torch.argmax's: the first of
    tied maxima, the first NaN if any; only for the logits that step returned; and the engine's greedy
    tokens are the same whether it is used or not."""
    torch.manual_seed(2)
    cfg = GPTConfig(vocab_size=197, block_size=64, n_layer=1, n_head=2, n_embd=32, dropout=0.0)
    gpt = GPT(cfg).eval()
    with torch.no_grad():  # the final LayerNorm's bias points every hidden state along u, and the tied
        u = torch.randn(cfg.n_embd)  # lm_head's rows 140 and 170 are both 3u: equal logits, far above the rest
        u /= u.norm()
        gpt.transformer.ln_f.bias.copy_(20 * u)
        gpt.transformer.wte.weight[140] = gpt.transformer.wte.weight[170] = 3 * u
    model = EngineModel.from_gpt(gpt, backend="gemv")
    cache = KVCache(cfg.n_layer, 2, cfg.n_head, 64, 16)
    with torch.inference_mode():
        model(StepBatch.build([], [(0, 0, [1, 2]), (1, 0, [3])], []), cache)
        logits = model(StepBatch.build([(5, 2), (6, 1)], [], [0, 1]), cache)
        assert logits[0, 140] == logits[0, 170] == logits[0].max()
        assert model.greedy_tokens(logits) == logits.argmax(dim=-1).tolist() == [140, 140]
        assert model.greedy_tokens(logits.clone()) is None  # not the step's own tensor
        nan_model = EngineModel.from_gpt(gpt, backend="gemv")
        nan_model.lm_head.weight[150] = float("nan")  # NaN logits at 150 (after the tied maxima at 140)
        nan_logits = nan_model(StepBatch.build([(5, 2)], [], [0]), cache)
        assert torch.isnan(nan_logits[0, 150]) and nan_model.greedy_tokens(nan_logits) == [150]
        assert nan_logits.argmax(dim=-1).tolist() == [150]

    from shared.engine import Engine, EngineConfig, SamplingParams
    gpt = GPT(cfg).eval()  # plain random weights: greedy tokens that vary
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    outs = []
    for hint in (True, False):
        engine = Engine(gpt, None, EngineConfig(max_batch_size=2, max_seq_len=64, linear_backend="gemv"))
        if not hint:
            engine.model.greedy_tokens = lambda logits: None  # sample() takes the argmax itself
        outs.append([o.token_ids for o in engine.generate([[7, 8, 9], [10]], params)])
    assert outs[0] == outs[1]
