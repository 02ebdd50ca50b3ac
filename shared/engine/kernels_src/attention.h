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
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

// e^x for x in [-87, 88]: 2^(x log2 e) split into 2^k (exponent bits, k the nearest integer) times
// the degree-6 Taylor polynomial of 2^f, |f| <= 1/2 (truncation error (ln 2 / 2)^7 / 7! ~ 1.2e-7);
// relative error ~2e-7 + 6e-8 |x| from rounding x log2 e (softmax and GELU use |x| <= 18 where it
// matters). std::exp is a libm call per element unless built with -ffast-math. GCC does not
// vectorize loops over this scalar form (floor and the bit cast), so AVX-512 builds use fast_exp16
// below, the same steps on 16 lanes; the scalar one serves tails and other builds.
constexpr float kExpLo = -87.0f, kExpHi = 88.0f, kLog2e = 1.44269504088896341f;
constexpr float kExp2Poly[7] = {1.540353039e-04f, 1.333355815e-03f, 9.618129108e-03f, 5.550410866e-02f,
                                2.402265070e-01f, 6.931471806e-01f, 1.0f};  // 2^f, highest power first

inline float fast_exp(float x) {
  x = std::min(std::max(x, kExpLo), kExpHi);
  const float t = x * kLog2e;
  const float k = std::floor(t + 0.5f);
  const float f = t - k;
  float p = kExp2Poly[0];
  for (int i = 1; i < 7; ++i) p = p * f + kExp2Poly[i];
  const int32_t bits = (int32_t(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

#if defined(__AVX512F__)
// fast_exp on 16 lanes (the same results, up to FMA contraction).
inline __m512 fast_exp16(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(kExpLo)), _mm512_set1_ps(kExpHi));
  const __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(kLog2e));
  const __m512 k = _mm512_roundscale_ps(_mm512_add_ps(t, _mm512_set1_ps(0.5f)), _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(t, k);
  __m512 p = _mm512_set1_ps(kExp2Poly[0]);
  for (int i = 1; i < 7; ++i) p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kExp2Poly[i]));
  const __m512i bits = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(k), _mm512_set1_epi32(127)), 23);
  return _mm512_mul_ps(p, _mm512_castsi512_ps(bits));
}
#endif

// out[0..D) = softmax(q . K[0..pos] * scale) . V[0..pos] for one head: K, V rows of D floats.
inline void attend_one_head(const float* q, const float* kh, const float* vh, int64_t pos, int64_t D, float scale,
                            float* score, float* o) {
  int64_t j = 0;
  float mx = -3.0e38f, total = 0.f;
#if defined(__AVX512F__)
  constexpr int64_t kMaxChunks = 8;  // D <= 128 in 16-float registers
  if (D % 16 == 0 && D / 16 <= kMaxChunks) {
    const int64_t chunks = D / 16;
    __m512 qv[kMaxChunks], acc[kMaxChunks];
    for (int64_t c = 0; c < chunks; ++c) qv[c] = _mm512_loadu_ps(q + 16 * c);
    for (; j <= pos; ++j) {
      __m512 dot = _mm512_mul_ps(qv[0], _mm512_loadu_ps(kh + j * D));
      for (int64_t c = 1; c < chunks; ++c) dot = _mm512_fmadd_ps(qv[c], _mm512_loadu_ps(kh + j * D + 16 * c), dot);
      score[j] = _mm512_reduce_add_ps(dot) * scale;
      mx = std::max(mx, score[j]);
    }
    __m512 sum = _mm512_setzero_ps();
    const __m512 mxv = _mm512_set1_ps(mx);
    for (j = 0; j + 16 <= pos + 1; j += 16) {
      const __m512 e = fast_exp16(_mm512_sub_ps(_mm512_loadu_ps(score + j), mxv));
      _mm512_storeu_ps(score + j, e);
      sum = _mm512_add_ps(sum, e);
    }
    total = _mm512_reduce_add_ps(sum);
    for (; j <= pos; ++j) {
      score[j] = fast_exp(score[j] - mx);
      total += score[j];
    }
    for (int64_t c = 0; c < chunks; ++c) acc[c] = _mm512_setzero_ps();
    for (j = 0; j <= pos; ++j) {
      const __m512 p = _mm512_set1_ps(score[j]);
      for (int64_t c = 0; c < chunks; ++c) acc[c] = _mm512_fmadd_ps(p, _mm512_loadu_ps(vh + j * D + 16 * c), acc[c]);
    }
    const __m512 inv = _mm512_set1_ps(1.f / total);
    for (int64_t c = 0; c < chunks; ++c) _mm512_storeu_ps(o + 16 * c, _mm512_mul_ps(acc[c], inv));
    return;
  }
#endif
  for (j = 0; j <= pos; ++j) {
    float s = 0.f;
#pragma omp simd reduction(+ : s)
    for (int64_t d = 0; d < D; ++d) s += q[d] * kh[j * D + d];
    score[j] = s * scale;
    mx = std::max(mx, score[j]);
  }
  for (j = 0; j <= pos; ++j) {
    score[j] = fast_exp(score[j] - mx);
    total += score[j];
  }
  std::fill(o, o + D, 0.f);
  for (j = 0; j <= pos; ++j) {
    const float p = score[j];
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) o[d] += p * vh[j * D + d];
  }
  const float inv = 1.f / total;
  for (int64_t d = 0; d < D; ++d) o[d] *= inv;
}

// For decode tokens r = 0..n-1 (slot r of the cache): write token r's K and V (from row r of `qkv`,
// [n, 3 * H * D]: q, k, v of every head in turn) at positions[r] of kc / vc ([slots, H, L, D]), and
// write to out[r] ([n, H * D]) softmax(q . K[0..pos] * scale) . V[0..pos] per head.
void decode_attention_rows(const float* qkv, float* kc, float* vc, int64_t H, int64_t L, int64_t D,
                           const int64_t* positions, int64_t n, float scale, float* out) {
  int64_t longest = 0;
  for (int64_t r = 0; r < n; ++r) longest = std::max(longest, positions[r] + 1);
  // ~4k multiply-adds per task at least: a decode step's K/V are cold (the whole model's weights have
  // streamed through the caches since this layer last ran), and two threads fetch them faster than one.
  // ~32k per task had kept one thread up to 43 positions; at 21 and 33 positions a layer now takes
  // 14-15 and 17-21 us instead of 19-22 and 26-27 (12 heads of 64, each layer's cache read between 12 MB
  // of GEMV weights, 2-core dev machine).
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, longest * D));
  at::parallel_for(0, n * H, grain, [&](int64_t t0, int64_t t1) {
    std::vector<float> score(longest);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t r = t / H, h = t % H, pos = positions[r];
      const float* q = qkv + r * 3 * H * D + h * D;
      float* kh = kc + ((r * H + h) * L) * D;
      float* vh = vc + ((r * H + h) * L) * D;
      std::memcpy(kh + pos * D, q + H * D, D * sizeof(float));  // this token's K/V into the cache
      std::memcpy(vh + pos * D, q + 2 * H * D, D * sizeof(float));
      attend_one_head(q, kh, vh, pos, D, scale, score.data(), out + r * H * D + h * D);
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
constexpr float kGeluC = 0.7978845608028654f, kGeluA = 0.044715f, kGeluClamp = 9.f;  // sqrt(2/pi), cubic term

inline float gelu_tanh_one(float v) {
  const float u = std::min(std::max(kGeluC * (v + kGeluA * v * v * v), -kGeluClamp), kGeluClamp);
  return 0.5f * v * (2.f - 2.f / (fast_exp(2.f * u) + 1.f));
}

inline void gelu_tanh(float* x, int64_t count) {
  int64_t i = 0;
#if defined(__AVX512F__)
  const __m512 c = _mm512_set1_ps(kGeluC), a = _mm512_set1_ps(kGeluA);
  const __m512 one = _mm512_set1_ps(1.f), two = _mm512_set1_ps(2.f), half = _mm512_set1_ps(0.5f);
  for (; i + 16 <= count; i += 16) {
    const __m512 v = _mm512_loadu_ps(x + i);
    __m512 u = _mm512_mul_ps(c, _mm512_fmadd_ps(_mm512_mul_ps(a, v), _mm512_mul_ps(v, v), v));
    u = _mm512_min_ps(_mm512_max_ps(u, _mm512_set1_ps(-kGeluClamp)), _mm512_set1_ps(kGeluClamp));
    const __m512 e = fast_exp16(_mm512_mul_ps(two, u));
    const __m512 th2 = _mm512_sub_ps(two, _mm512_div_ps(two, _mm512_add_ps(e, one)));  // 1 + tanh(u)
    _mm512_storeu_ps(x + i, _mm512_mul_ps(_mm512_mul_ps(half, v), th2));
  }
#endif
  for (; i < count; ++i) x[i] = gelu_tanh_one(x[i]);
}

}  // namespace
