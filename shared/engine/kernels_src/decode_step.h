// A whole batch-1..4 decode step of GPT-2 in C++: embeddings, every block (LayerNorm, fused qkv,
// attention with the KV-cache write, output projection, MLP with tanh-GELU, residuals), the final
// LayerNorm and the tied lm_head, with our GEMV kernels for every linear layer. Why: at batch 1 the
// Python between torch ops costs ~30-40 us per block (LayerNorm, GELU and residual dispatch, the
// layer wrappers), ~0.5-0.8 ms per GPT-2 124M token and most of a small model's step; one call per
// step removes it. Same math as shared/engine/model.py's forward (tested against it). Included once,
// by kernels.cpp.
#pragma once
#include "attention.h"
#include "gemv.h"
#include <tuple>

namespace {

// Index of v[0..n)'s largest value with torch.argmax's rules: the first NaN if there is one, else
// the first maximum. Why here: run right after the lm_head GEMV, the logits are still in cache; the
// same argmax from Python after the step reads them (and numpy's code) cold, ~25-70 us a step.
inline int64_t argmax_row(const float* v, int64_t n) {
  int64_t i = 0;
  float best = -INFINITY;
  bool nan = false;
#if defined(__AVX512F__)
  __m512 m = _mm512_set1_ps(-INFINITY);
  __mmask16 unordered = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 x = _mm512_loadu_ps(v + i);
    unordered |= _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
    m = _mm512_max_ps(m, x);
  }
  nan = unordered != 0;
  best = _mm512_reduce_max_ps(m);
#endif
  for (; i < n; ++i) {
    nan = nan || std::isnan(v[i]);
    best = v[i] > best ? v[i] : best;
  }
  for (int64_t j = 0; j < n; ++j)
    if (nan ? std::isnan(v[j]) : v[j] == best) return j;
  return 0;  // unreachable: n >= 1 and some value equals the max (or is NaN)
}

struct DecodeBlock {
  at::Tensor ln1_w, ln1_b, ln2_w, ln2_b;
  LinearOp qkv, attn_out, fc, fc_out;
};

class DecodeModel {
 public:
  DecodeModel(at::Tensor wte, at::Tensor wpe, std::vector<DecodeBlock> blocks, at::Tensor lnf_w, at::Tensor lnf_b,
              LinearOp lm_head, int64_t n_head, double eps)
      : wte_(std::move(wte)), wpe_(std::move(wpe)), blocks_(std::move(blocks)), lnf_w_(std::move(lnf_w)),
        lnf_b_(std::move(lnf_b)), lm_head_(std::move(lm_head)), n_head_(n_head), eps_(float(eps)) {
    C_ = wte_.size(1);
    TORCH_CHECK(C_ % n_head_ == 0, "n_embd ", C_, " not divisible by n_head ", n_head_);
    for (const auto& b : blocks_) {
      TORCH_CHECK(b.qkv.in_f == C_ && b.qkv.out_f == 3 * C_ && b.attn_out.in_f == C_ && b.attn_out.out_f == C_ &&
                  b.fc.in_f == C_ && b.fc_out.out_f == C_ && b.fc_out.in_f == b.fc.out_f,
                  "block linear shapes do not fit n_embd ", C_);
    }
    TORCH_CHECK(lm_head_.in_f == C_, "lm_head takes ", lm_head_.in_f, " features, n_embd is ", C_);
  }

  // tokens[r] at positions[r] for decode slots r = 0..n-1; k/v caches [n_layer, slots, H, L, D].
  // Returns the logits [n, vocab] and writes each token's K/V into the caches.
  at::Tensor step(const std::vector<int64_t>& tokens, const std::vector<int64_t>& positions, at::Tensor& k_cache,
                  at::Tensor& v_cache) const {
    const int64_t n = int64_t(tokens.size()), C = C_, H = n_head_, D = C_ / n_head_;
    TORCH_CHECK(n >= 1 && n <= kMaxRows && int64_t(positions.size()) == n, "need 1..", kMaxRows,
                " tokens with one position each");
    TORCH_CHECK(k_cache.dim() == 5 && k_cache.sizes() == v_cache.sizes() && k_cache.is_contiguous() &&
                v_cache.is_contiguous() && k_cache.scalar_type() == at::kFloat && v_cache.scalar_type() == at::kFloat &&
                k_cache.size(0) == int64_t(blocks_.size()) && k_cache.size(1) >= n && k_cache.size(2) == H &&
                k_cache.size(4) == D, "caches must be contiguous float32 [n_layer, slots >= n, n_head, max_len, head_dim]");
    const int64_t L = k_cache.size(3);
    for (int64_t r = 0; r < n; ++r) {
      TORCH_CHECK(tokens[r] >= 0 && tokens[r] < wte_.size(0), "token ", tokens[r], " outside the vocabulary");
      TORCH_CHECK(positions[r] >= 0 && positions[r] < std::min<int64_t>(L, wpe_.size(0)), "position ", positions[r],
                  " outside the cache / context");
    }
    std::vector<float> x(n * C), h(n * C), att(n * C), tmp(n * C), qkv(n * 3 * C);
    std::vector<float> mlp;
    const float *wte = wte_.data_ptr<float>(), *wpe = wpe_.data_ptr<float>();
    for (int64_t r = 0; r < n; ++r)
      for (int64_t i = 0; i < C; ++i) x[r * C + i] = wte[tokens[r] * C + i] + wpe[positions[r] * C + i];
    const int64_t layer_stride = k_cache.stride(0);
    float *kp = k_cache.data_ptr<float>(), *vp = v_cache.data_ptr<float>();
    const float scale = 1.f / std::sqrt(float(D));
    for (size_t l = 0; l < blocks_.size(); ++l) {
      const DecodeBlock& b = blocks_[l];
      layer_norm_rows(x.data(), n, C, b.ln1_w.data_ptr<float>(), b.ln1_b.data_ptr<float>(), eps_, h.data());
      b.qkv.run(h.data(), n, qkv.data());
      decode_attention_rows(qkv.data(), kp + l * layer_stride, vp + l * layer_stride, H, L, D, positions.data(), n,
                            scale, att.data());
      b.attn_out.run(att.data(), n, tmp.data());
      for (int64_t i = 0; i < n * C; ++i) x[i] += tmp[i];
      layer_norm_rows(x.data(), n, C, b.ln2_w.data_ptr<float>(), b.ln2_b.data_ptr<float>(), eps_, h.data());
      mlp.resize(n * b.fc.out_f);
      b.fc.run(h.data(), n, mlp.data());
      gelu_tanh(mlp.data(), n * b.fc.out_f);
      b.fc_out.run(mlp.data(), n, tmp.data());
      for (int64_t i = 0; i < n * C; ++i) x[i] += tmp[i];
    }
    layer_norm_rows(x.data(), n, C, lnf_w_.data_ptr<float>(), lnf_b_.data_ptr<float>(), eps_, h.data());
    auto logits = at::empty({n, lm_head_.out_f}, wte_.options());
    lm_head_.run(h.data(), n, logits.data_ptr<float>());
    return logits;
  }

  // step, and each row's argmax (argmax_row) while the logits are still in cache: the greedy tokens.
  std::tuple<at::Tensor, std::vector<int64_t>> step_argmax(const std::vector<int64_t>& tokens,
                                                           const std::vector<int64_t>& positions, at::Tensor& k_cache,
                                                           at::Tensor& v_cache) const {
    at::Tensor logits = step(tokens, positions, k_cache, v_cache);
    const int64_t vocab = logits.size(1);
    std::vector<int64_t> best(logits.size(0));
    for (int64_t r = 0; r < logits.size(0); ++r) best[r] = argmax_row(logits.data_ptr<float>() + r * vocab, vocab);
    return {logits, best};
  }

 private:
  at::Tensor wte_, wpe_;
  std::vector<DecodeBlock> blocks_;
  at::Tensor lnf_w_, lnf_b_;
  LinearOp lm_head_;
  int64_t n_head_, C_ = 0;
  float eps_;
};

}  // namespace
