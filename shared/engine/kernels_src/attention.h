// Attention for the decode tokens of one engine step, fused with the KV-cache write, and the other
// small per-token ops of a decode step (LayerNorm, tanh-GELU). See shared/engine/native.py for the
// contract. Why our own code: at batch-1 decode a layer's attention is ~12 tiny dot-product/softmax
// problems, and torch's path (two indexed cache writes, view/unbind, scaled_dot_product_attention)
// costs ~45 us of dispatch and setup per layer on the 2-core dev machine, ~0.5 ms of a ~4.5 ms int4
// decode step of GPT-2 124M. Included once, by kernels.cpp.
#pragma once
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

// e^x for x in [-87, 88]: 2^(x log2 e) split into 2^k (exponent bits, k the nearest integer) times
// the degree-6 Taylor polynomial of 2^f, |f| <= 1/2 (truncation error (ln 2 / 2)^7 / 7! ~ 1.2e-7);
// relative error ~2e-7 + 6e-8 |x| from rounding x log2 e (softmax and GELU use |x| <= 18 where it
// matters). Plain arithmetic, so loops over it vectorize (std::exp is a libm call
// per element unless built with -ffast-math).
inline float fast_exp(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float t = x * 1.44269504088896341f;
  const float k = std::floor(t + 0.5f);
  const float f = t - k;
  float p = 1.540353039e-04f;
  p = p * f + 1.333355815e-03f;
  p = p * f + 9.618129108e-03f;
  p = p * f + 5.550410866e-02f;
  p = p * f + 2.402265070e-01f;
  p = p * f + 6.931471806e-01f;
  p = p * f + 1.0f;
  const int32_t bits = (int32_t(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// For decode tokens r = 0..n-1 (slot r of the cache): write token r's K and V (from row r of `qkv`,
// [n, 3 * H * D]: q, k, v of every head in turn) at positions[r] of kc / vc ([slots, H, L, D]), and
// write to out[r] ([n, H * D]) softmax(q . K[0..pos] * scale) . V[0..pos] per head.
void decode_attention_rows(const float* qkv, float* kc, float* vc, int64_t H, int64_t L, int64_t D,
                           const int64_t* positions, int64_t n, float scale, float* out) {
  int64_t longest = 0;
  for (int64_t r = 0; r < n; ++r) longest = std::max(longest, positions[r] + 1);
  // Threads only pay off once there is real work: ~32k multiply-adds per task.
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, longest * D));
  at::parallel_for(0, n * H, grain, [&](int64_t t0, int64_t t1) {
    std::vector<float> score(longest);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t r = t / H, h = t % H, pos = positions[r];
      const float* q = qkv + r * 3 * H * D + h * D;
      float* kh = kc + ((r * H + h) * L) * D;
      float* vh = vc + ((r * H + h) * L) * D;
      std::memcpy(kh + pos * D, q + H * D, D * sizeof(float));  // this token's K/V into the cache
      std::memcpy(vh + pos * D, q + 2 * H * D, D * sizeof(float));
      float mx = -3.0e38f;
      for (int64_t j = 0; j <= pos; ++j) {
        float s = 0.f;
#pragma omp simd reduction(+ : s)
        for (int64_t d = 0; d < D; ++d) s += q[d] * kh[j * D + d];
        score[j] = s * scale;
        mx = std::max(mx, score[j]);
      }
      float total = 0.f;
#pragma omp simd reduction(+ : total)
      for (int64_t j = 0; j <= pos; ++j) {
        score[j] = fast_exp(score[j] - mx);
        total += score[j];
      }
      float* o = out + r * H * D + h * D;
      std::fill(o, o + D, 0.f);
      for (int64_t j = 0; j <= pos; ++j) {
        const float p = score[j];
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) o[d] += p * vh[j * D + d];
      }
      const float inv = 1.f / total;
      for (int64_t d = 0; d < D; ++d) o[d] *= inv;
    }
  });
}

at::Tensor decode_attention(const at::Tensor& qkv, at::Tensor& kc, at::Tensor& vc,
                            const std::vector<int64_t>& positions, double scale) {
  TORCH_CHECK(qkv.dim() == 2 && qkv.scalar_type() == at::kFloat && qkv.is_contiguous() && qkv.device().is_cpu(),
              "qkv must be a contiguous 2-D float32 CPU tensor");
  TORCH_CHECK(kc.dim() == 4 && kc.sizes() == vc.sizes() && kc.scalar_type() == at::kFloat &&
              vc.scalar_type() == at::kFloat && kc.is_contiguous() && vc.is_contiguous(),
              "kc and vc must be contiguous float32 [slots, heads, max_len, head_dim] of one shape");
  const int64_t n = int64_t(positions.size()), H = kc.size(1), L = kc.size(2), D = kc.size(3);
  TORCH_CHECK(n >= 1 && n <= kc.size(0) && n <= qkv.size(0), "need 1..slots decode tokens, got ", n);
  TORCH_CHECK(qkv.size(1) == 3 * H * D, "qkv has ", qkv.size(1), " columns, expected 3 * ", H, " * ", D);
  for (int64_t p : positions) TORCH_CHECK(p >= 0 && p < L, "decode position ", p, " outside the cache's 0..", L - 1);
  auto y = at::empty({n, H * D}, qkv.options());
  decode_attention_rows(qkv.data_ptr<float>(), kc.data_ptr<float>(), vc.data_ptr<float>(), H, L, D,
                        positions.data(), n, float(scale), y.data_ptr<float>());
  return y;
}

// y = LayerNorm(x) over C values (biased variance, as torch), for `rows` rows.
inline void layer_norm_rows(const float* x, int64_t rows, int64_t C, const float* w, const float* b, float eps,
                            float* y) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * C;
    float mean = 0.f, var = 0.f;
#pragma omp simd reduction(+ : mean)
    for (int64_t i = 0; i < C; ++i) mean += xr[i];
    mean /= float(C);
#pragma omp simd reduction(+ : var)
    for (int64_t i = 0; i < C; ++i) var += (xr[i] - mean) * (xr[i] - mean);
    const float inv = 1.f / std::sqrt(var / float(C) + eps);
#pragma omp simd
    for (int64_t i = 0; i < C; ++i) y[r * C + i] = (xr[i] - mean) * inv * w[i] + b[i];
  }
}

// GPT-2's GELU, tanh form, in place: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), with
// tanh(u) = 1 - 2 / (e^(2u) + 1) through fast_exp (|u| clamped at 9, where tanh is 1 within 3e-8).
inline void gelu_tanh(float* x, int64_t count) {
#pragma omp simd
  for (int64_t i = 0; i < count; ++i) {
    const float v = x[i];
    const float u = std::min(std::max(0.7978845608028654f * (v + 0.044715f * v * v * v), -9.f), 9.f);
    const float th = 1.f - 2.f / (fast_exp(2.f * u) + 1.f);
    x[i] = 0.5f * v * (1.f + th);
  }
}

}  // namespace
