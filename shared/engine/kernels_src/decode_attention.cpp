// Attention for the decode tokens of one engine step, fused with the KV-cache write (see
// shared/engine/native.py for the contract). Why our own code: at batch-1 decode a layer's
// attention is ~12 tiny dot-product/softmax problems, and torch's path (two indexed cache writes,
// view/unbind, scaled_dot_product_attention) costs ~45 us of dispatch and setup per layer on the
// 2-core dev machine, ~0.5 ms of a ~4.5 ms int4 decode step of GPT-2 124M. This is one call.
//
// Built with -ffast-math so the exp loop vectorizes through glibc's libmvec; nothing here relies on
// infinities or NaN (the softmax subtracts the running max and only valid positions are visited).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cmath>
#include <vector>

namespace {

// qkv: [n_tokens, 3 * H * D] fp32 (rows 0..n-1 are the decode tokens: q, k, v of every head in
// turn); kc, vc: [slots, H, L, D]; positions[r] = where token r's K/V go in slot r.
// Returns [n, H * D]: for each token and head, softmax(q . K[0..pos] * scale) . V[0..pos].
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
  int64_t longest = 0;
  for (int64_t p : positions) {
    TORCH_CHECK(p >= 0 && p < L, "decode position ", p, " outside the cache's 0..", L - 1);
    longest = std::max(longest, p + 1);
  }
  auto y = at::empty({n, H * D}, qkv.options());
  const float* in = qkv.data_ptr<float>();
  float *kp = kc.data_ptr<float>(), *vp = vc.data_ptr<float>(), *out = y.data_ptr<float>();
  const float sc = float(scale);
  // Threads only pay off once there is real work: ~32k multiply-adds per task.
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, longest * D));
  at::parallel_for(0, n * H, grain, [&](int64_t t0, int64_t t1) {
    std::vector<float> score(longest);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t r = t / H, h = t % H, pos = positions[r];
      const float* q = in + r * 3 * H * D + h * D;
      float* kh = kp + ((r * H + h) * L) * D;
      float* vh = vp + ((r * H + h) * L) * D;
      for (int64_t d = 0; d < D; ++d) {  // this token's K/V into the cache
        kh[pos * D + d] = q[H * D + d];
        vh[pos * D + d] = q[2 * H * D + d];
      }
      float mx = -3.0e38f;
      for (int64_t j = 0; j <= pos; ++j) {
        float s = 0.f;
#pragma omp simd reduction(+ : s)
        for (int64_t d = 0; d < D; ++d) s += q[d] * kh[j * D + d];
        score[j] = s * sc;
        mx = std::max(mx, score[j]);
      }
      float total = 0.f;
#pragma omp simd reduction(+ : total)
      for (int64_t j = 0; j <= pos; ++j) {
        score[j] = std::exp(score[j] - mx);
        total += score[j];
      }
      float* o = out + r * H * D + h * D;
      for (int64_t d = 0; d < D; ++d) o[d] = 0.f;
      for (int64_t j = 0; j <= pos; ++j) {
        const float p = score[j];
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) o[d] += p * vh[j * D + d];
      }
      const float inv = 1.f / total;
      for (int64_t d = 0; d < D; ++d) o[d] *= inv;
    }
  });
  return y;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("decode_attention", &decode_attention, "decode tokens' attention over the KV cache, writing their K/V");
}
