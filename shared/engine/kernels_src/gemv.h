// Batch-1 (and few-row) matrix-vector kernels for the engine's decode: fp32 weights, and int8 / int4
// weights dequantized in registers, fp32 accumulation (int4 also with int8 activations). See
// shared/engine/kernels.py for the contract and why these exist (torch's fused kernels vectorize
// only bf16 activations and reach ~12-20 GB/s on batch-1 decode). Included once, by kernels.cpp.
//
// Parallel over output rows with at::parallel_for (torch's OpenMP pool and thread count).
// Each output row is reduced by one thread in a fixed order, so results do not depend on the
// thread count. Vector paths: AVX-512F (+BW for the byte loads), AVX2+FMA, scalar fallback.
#pragma once
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>
#include <type_traits>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

namespace {

constexpr int kMaxRows = 4;  // x rows handled in one pass over the weights (kept in sync with kernels.py)

// Software prefetch distance in bytes ahead of each weight stream. Why: a GEMV reads many short
// rows (768 B for GPT-2 int8), each a new stream the hardware prefetcher barely ramps up on;
// without it one core pulls ~7 GB/s where a plain sum reaches ~23 GB/s (measured, EPYC Zen 4).
constexpr int64_t g_prefetch = 4096;  // int4: tuned on gpt2-124m shapes (T0, into L1)
// int8 prefetches further ahead and into L2 (T1). Measured on the 2-core EPYC as the sum of each
// linear's median time over passes through all of a decode step's linears in order (124 MB, so each
// matrix comes cold from DRAM; the "linears" column of benchmarks/decode_breakdown.py times the same
// pass): T0 at 4 KiB 6.3 ms, T1 at 4 KiB 5.5, T1 at 16 KiB 3.7, T1 at 32 KiB 4.1. An L1 prefetch occupies one of the few L1
// miss buffers for a whole DRAM round trip, which caps a core near 10 GB/s; L2 tracks many more
// misses. (Repeating one matrix hides this: it stays in the 32 MB L3.) int4 was best at T0 4 KiB.
constexpr int64_t g_prefetch_int8 = 16384;
// fp32 reads 4x the bytes per weight. 64 KiB ahead (T1) against 32 KiB: 93-96% of the copy bandwidth
// against 89-91% for a pass over the 49 GPT-2 124M matrices when the VM's bandwidth was high (~50
// GB/s), 97-99% against 95-97% when it was ~35 GB/s; 8 KiB and 128 KiB were slower, T0/T2/NTA no better
// (interleaved in one process, bandwidth read beside each pass).
constexpr int64_t g_prefetch_f32 = 65536;

inline void prefetch(const void* p) {
#if defined(__AVX2__) || defined(__AVX512F__)
  _mm_prefetch((const char*)p, _MM_HINT_T0);
#else
  __builtin_prefetch(p);
#endif
}

inline void prefetch_l2(const void* p) {
#if defined(__AVX2__) || defined(__AVX512F__)
  _mm_prefetch((const char*)p, _MM_HINT_T1);
#else
  __builtin_prefetch(p, 0, 2);
#endif
}

#if defined(__AVX2__) || defined(__AVX512F__)
// Pins a loaded vector in a register: without it GCC folds the load into every instruction that
// uses the value (4x the loads), and Zen 4 issues only one 512-bit load per cycle.
template <typename V>
inline void in_register(V& v) { asm("" : "+v"(v)); }
#endif

#if defined(__AVX2__)
// The sum of a vector's 8 floats (the AVX2 paths' epilogue).
inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}
#endif

#if defined(__AVX512F__)
// v's 32-bit lanes shifted left by SHIFT bits, or right by -SHIFT (the byte / nibble to float tricks).
template <int SHIFT>
inline __m512i shift_lanes(__m512i v) {
  if constexpr (SHIFT >= 0) return _mm512_slli_epi32(v, SHIFT);
  else return _mm512_srli_epi32(v, -SHIFT);
}
#endif

// Every GEMV below walks the output rows the same way: blocks of OB rows spread over torch's
// threads, the last partial block one row at a time, then an epilogue per output. `dot(ob, o, part)`
// fills part[b][r] for OB rows from row o, where ob is std::integral_constant<int, OB> or <int, 1>
// (so the block kernel is instantiated for both); `store(o, r, value)` writes y[r, o].
template <int R, int OB, typename Dot, typename Store>
inline void for_each_row_block(int64_t out_f, int64_t grain, const Dot& dot, const Store& store) {
  const int64_t blocks = (out_f + OB - 1) / OB;
  at::parallel_for(0, blocks, grain, [&](int64_t b0, int64_t b1) {
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t o0 = blk * OB;
      float part[OB][R];
      if (o0 + OB <= out_f) {
        dot(std::integral_constant<int, OB>{}, o0, part);
      } else {
        for (int64_t o = o0; o < out_f; ++o) {
          float one[1][R];
          dot(std::integral_constant<int, 1>{}, o, one);
          for (int r = 0; r < R; ++r) part[o - o0][r] = one[0][r];
        }
      }
      for (int64_t o = o0; o < std::min(o0 + OB, out_f); ++o)
        for (int r = 0; r < R; ++r) store(o, r, part[o - o0][r]);
    }
  });
}

// ------------------------------------------------------------------ fp32: y = w[o] . x + b[o]
// The engine's fp32 decode path (linear_backend="gemv"): weights (out, in) row-major, streamed once
// per call, prefetched into L2 like int8 (same reason: DRAM-cold weights, few L1 miss buffers).

template <int R, int OB>
inline void f32_block(const float* x, int64_t in, const float* w, float out[OB][R]) {
  int64_t i = 0;
  for (int b = 0; b < OB; ++b)
    for (int r = 0; r < R; ++r) out[b][r] = 0.f;
#if defined(__AVX512F__)
  __m512 acc[OB][R];
  for (int b = 0; b < OB; ++b)
    for (int r = 0; r < R; ++r) acc[b][r] = _mm512_setzero_ps();
  constexpr int64_t pf = g_prefetch_f32 / 4;  // in floats
  for (; i + 16 <= in; i += 16) {
    __m512 xv[R];
    for (int r = 0; r < R; ++r) xv[r] = _mm512_loadu_ps(x + r * in + i);
    for (int b = 0; b < OB; ++b) {
      prefetch_l2(w + b * in + i + pf);
      const __m512 wv = _mm512_loadu_ps(w + b * in + i);
      for (int r = 0; r < R; ++r) acc[b][r] = _mm512_fmadd_ps(wv, xv[r], acc[b][r]);
    }
  }
  for (int b = 0; b < OB; ++b)
    for (int r = 0; r < R; ++r) out[b][r] = _mm512_reduce_add_ps(acc[b][r]);
#elif defined(__AVX2__) && defined(__FMA__)
  __m256 acc[OB][R];
  for (int b = 0; b < OB; ++b)
    for (int r = 0; r < R; ++r) acc[b][r] = _mm256_setzero_ps();
  constexpr int64_t pf = g_prefetch_f32 / 4;
  for (; i + 8 <= in; i += 8) {
    __m256 xv[R];
    for (int r = 0; r < R; ++r) xv[r] = _mm256_loadu_ps(x + r * in + i);
    for (int b = 0; b < OB; ++b) {
      if ((i & 15) == 0) prefetch_l2(w + b * in + i + pf);  // one prefetch per 64-byte line
      const __m256 wv = _mm256_loadu_ps(w + b * in + i);
      for (int r = 0; r < R; ++r) acc[b][r] = _mm256_fmadd_ps(wv, xv[r], acc[b][r]);
    }
  }
  for (int b = 0; b < OB; ++b)
    for (int r = 0; r < R; ++r) out[b][r] = hsum256(acc[b][r]);
#endif
  for (; i < in; ++i)  // tail (and the whole row on the scalar path)
    for (int b = 0; b < OB; ++b)
      for (int r = 0; r < R; ++r) out[b][r] += w[b * in + i] * x[r * in + i];
}

template <int R>
void f32_gemv_rows(const float* x, int64_t in, int64_t out_f, const float* w, const float* bias, float* y) {
  // 8 rows at once for 1-2 x rows: measured ~5% over 4 on cold gpt2-124m passes (as fast as torch.sum of the
  // same weights); more x rows keep 2 (register pressure)
  constexpr int OB = R <= 2 ? 8 : 2;
  for_each_row_block<R, OB>(out_f, 16,
      [&](auto ob, int64_t o, float (*part)[R]) { f32_block<R, decltype(ob)::value>(x, in, w + o * in, part); },
      [&](int64_t o, int r, float v) { y[r * out_f + o] = v + (bias ? bias[o] : 0.f); });
}

// ------------------------------------------------------------------ int8: y = scale[o] * (q[o] . x) + b[o]

// OB output rows at once share each x load; R x rows share each weight load.
template <int R, int OB>
inline void int8_block(const float* x, int64_t in, const int8_t* w, float out[OB][R]) {
  int64_t i = 0;
#if defined(__AVX512F__)
  __m512 acc[OB][R];
  for (int b = 0; b < OB; ++b)
    for (int r = 0; r < R; ++r) acc[b][r] = _mm512_setzero_ps();
  const int64_t pf = g_prefetch_int8;
  for (; i + 64 <= in; i += 64) {
    for (int b = 0; b < OB; ++b) prefetch_l2(w + b * in + i + pf);
    for (int u = 0; u < 64; u += 16) {
      __m512 xv[R];
      for (int r = 0; r < R; ++r) {
        xv[r] = _mm512_loadu_ps(x + r * in + i + u);
        in_register(xv[r]);
      }
      for (int b = 0; b < OB; ++b) {
        __m512 wv = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(w + b * in + i + u))));
        for (int r = 0; r < R; ++r) acc[b][r] = _mm512_fmadd_ps(wv, xv[r], acc[b][r]);
      }
    }
  }
  for (; i + 16 <= in; i += 16) {
    __m512 xv[R];
    for (int r = 0; r < R; ++r) xv[r] = _mm512_loadu_ps(x + r * in + i);
    for (int b = 0; b < OB; ++b) {
      __m512 wv = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(w + b * in + i))));
      for (int r = 0; r < R; ++r) acc[b][r] = _mm512_fmadd_ps(wv, xv[r], acc[b][r]);
    }
  }
  for (int b = 0; b < OB; ++b)
    for (int r = 0; r < R; ++r) out[b][r] = _mm512_reduce_add_ps(acc[b][r]);
#elif defined(__AVX2__) && defined(__FMA__)
  __m256 acc[OB][R];
  for (int b = 0; b < OB; ++b)
    for (int r = 0; r < R; ++r) acc[b][r] = _mm256_setzero_ps();
  const int64_t pf = g_prefetch_int8;
  for (; i + 8 <= in; i += 8) {
    if ((i & 63) == 0)
      for (int b = 0; b < OB; ++b) prefetch_l2(w + b * in + i + pf);
    __m256 xv[R];
    for (int r = 0; r < R; ++r) xv[r] = _mm256_loadu_ps(x + r * in + i);
    for (int b = 0; b < OB; ++b) {
      __m256 wv = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(w + b * in + i))));
      for (int r = 0; r < R; ++r) acc[b][r] = _mm256_fmadd_ps(wv, xv[r], acc[b][r]);
    }
  }
  for (int b = 0; b < OB; ++b)
    for (int r = 0; r < R; ++r) out[b][r] = hsum256(acc[b][r]);
#else
  for (int b = 0; b < OB; ++b)
    for (int r = 0; r < R; ++r) out[b][r] = 0.f;
#endif
  for (; i < in; ++i)  // tail (and the whole row on the scalar path)
    for (int b = 0; b < OB; ++b)
      for (int r = 0; r < R; ++r) out[b][r] += float(w[b * in + i]) * x[r * in + i];
}

#if defined(__AVX512F__)
// Rows with in % 64 == 0 on AVX-512: no byte-widening shuffle (the limit at ~13 G weights/s/core).
// A 64-byte load of a row holds 16 dwords; byte k of dword j is input 4 j + k, so byte k of every
// lane is one vector of 16 weights against x permuted once per call (xp[64 c + 16 k + j] =
// x[64 c + 4 j + k]). A byte becomes a float in the mantissa of 1.0: with u = q + 128 (q's sign bit
// flipped), bits 0x3F800000 | u << 15 are f = 1 + u / 256 exactly, so q = 256 f - 384 and
// y = scale * (256 * (f . x) - 384 * sum(x)). Shift, then one ternary-logic op does mask, flip, or.
template <int K>
inline __m512 byte_as_float(__m512i v) {
  const __m512i sh = shift_lanes<15 - 8 * K>(v);
  // (sh & 0x007F8000) ^ 0x3FC00000: keeps the byte, flips its top bit (+128), ORs in 1.0 (disjoint bits)
  return _mm512_castsi512_ps(_mm512_ternarylogic_epi32(sh, _mm512_set1_epi32(0x007F8000), _mm512_set1_epi32(0x3FC00000), 0x6A));
}

template <int R, int OB>
inline void int8_super_block(const float* xp, int64_t in, const int8_t* w, float out[OB][R]) {
  const int64_t pf = g_prefetch_int8;
  __m512 acc[OB][R][2];
  for (int b = 0; b < OB; ++b)
    for (int r = 0; r < R; ++r) acc[b][r][0] = acc[b][r][1] = _mm512_setzero_ps();
  for (int64_t c = 0; c < in; c += 64) {
    __m512i v[OB];
    for (int b = 0; b < OB; ++b) {
      prefetch_l2(w + b * in + c + pf);
      v[b] = _mm512_loadu_si512((const void*)(w + b * in + c));
      in_register(v[b]);
    }
#define BYTE_K(K)                                                                               \
    {                                                                                           \
      __m512 xv[R];                                                                             \
      for (int r = 0; r < R; ++r) {                                                             \
        xv[r] = _mm512_loadu_ps(xp + r * in + c + 16 * K);                                      \
        in_register(xv[r]);                                                                     \
      }                                                                                         \
      for (int b = 0; b < OB; ++b) {                                                            \
        const __m512 f = byte_as_float<K>(v[b]);                                                \
        for (int r = 0; r < R; ++r) acc[b][r][K & 1] = _mm512_fmadd_ps(f, xv[r], acc[b][r][K & 1]); \
      }                                                                                         \
    }
    BYTE_K(0) BYTE_K(1) BYTE_K(2) BYTE_K(3)
#undef BYTE_K
  }
  for (int b = 0; b < OB; ++b)
    for (int r = 0; r < R; ++r) out[b][r] = _mm512_reduce_add_ps(_mm512_add_ps(acc[b][r][0], acc[b][r][1]));
}

template <int R>
void int8_super_rows(const float* x, int64_t in, int64_t out_f, const int8_t* w, const float* scale,
                     const float* bias, float* y) {
  constexpr int OB = R <= 2 ? 4 : 2;
  std::vector<float> xp(R * in);
  float xsum[R];
  for (int r = 0; r < R; ++r) {
    xsum[r] = 0.f;
    for (int64_t c = 0; c < in; c += 64)
      for (int j = 0; j < 16; ++j)
        for (int k = 0; k < 4; ++k) xp[r * in + c + 16 * k + j] = x[r * in + c + 4 * j + k];
    for (int64_t i = 0; i < in; ++i) xsum[r] += x[r * in + i];
  }
  for_each_row_block<R, OB>(out_f, 16,
      [&](auto ob, int64_t o, float (*part)[R]) { int8_super_block<R, decltype(ob)::value>(xp.data(), in, w + o * in, part); },
      [&](int64_t o, int r, float v) { y[r * out_f + o] = scale[o] * (256.f * v - 384.f * xsum[r]) + (bias ? bias[o] : 0.f); });
}
#endif

template <int R>
void int8_gemv_rows(const float* x, int64_t in, int64_t out_f, const int8_t* w, const float* scale,
                    const float* bias, float* y) {
#if defined(__AVX512F__)
  if (in % 64 == 0) return int8_super_rows<R>(x, in, out_f, w, scale, bias, y);
#endif
  constexpr int OB = R <= 2 ? 4 : 2;
  for_each_row_block<R, OB>(out_f, 16,
      [&](auto ob, int64_t o, float (*part)[R]) { int8_block<R, decltype(ob)::value>(x, in, w + o * in, part); },
      [&](int64_t o, int r, float v) { y[r * out_f + o] = v * scale[o] + (bias ? bias[o] : 0.f); });
}

// ------------------------------------------------------------------ int4 (blocks of 32 inputs)
// Layout (built by kernels.repack_int4): per output row, per 32-input block, 16 bytes; byte j holds
// q[j] in its low nibble and q[j + 16] in its high nibble, so the low nibbles of a 16-byte load are
// inputs 0..15 and the high nibbles 16..31: no interleave when widening.
// W_hat[o, i] = q * s[o, g] + zz[o, g] with zz = zero - 8 * scale, g = i / group, so
// y[o] = sum_g s[o, g] * (q_g . x_g) + zz[o, g] * sum(x_g) + b[o]; sum(x_g) is computed once per call.

template <int R>
inline void int4_row(const float* x, int64_t in, const uint8_t* w, const float* s, const float* zz,
                     const float* xsum, int64_t groups, int64_t blocks_per_group, float out[R]) {
  const int64_t pf = g_prefetch;
  float zterm[R];
  for (int r = 0; r < R; ++r) zterm[r] = 0.f;
  for (int64_t g = 0; g < groups; ++g)
    for (int r = 0; r < R; ++r) zterm[r] += zz[g] * xsum[r * groups + g];
#if defined(__AVX2__) && defined(__FMA__)
  __m256 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  const __m128i low = _mm_set1_epi8(15);
  for (int64_t g = 0; g < groups; ++g) {
    const __m256 sv = _mm256_set1_ps(s[g]);
    __m256 dot[R];
    for (int r = 0; r < R; ++r) dot[r] = _mm256_setzero_ps();
    for (int64_t k = 0; k < blocks_per_group; ++k) {
      const int64_t i = (g * blocks_per_group + k) * 32;
      prefetch(w + i / 2 + pf);
      const __m128i b = _mm_loadu_si128((const __m128i*)(w + i / 2));
      const __m128i lo = _mm_and_si128(b, low), hi = _mm_and_si128(_mm_srli_epi16(b, 4), low);
      const __m256 q[4] = {_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo)),
                           _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8))),
                           _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi)),
                           _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8)))};
      for (int r = 0; r < R; ++r)
        for (int j = 0; j < 4; ++j) dot[r] = _mm256_fmadd_ps(q[j], _mm256_loadu_ps(x + r * in + i + 8 * j), dot[r]);
    }
    for (int r = 0; r < R; ++r) acc[r] = _mm256_fmadd_ps(dot[r], sv, acc[r]);
  }
  for (int r = 0; r < R; ++r) out[r] = hsum256(acc[r]) + zterm[r];
#else
  for (int r = 0; r < R; ++r) out[r] = zterm[r];
  for (int64_t g = 0; g < groups; ++g) {
    float dot[R] = {};
    for (int64_t k = 0; k < blocks_per_group; ++k) {
      const int64_t i = (g * blocks_per_group + k) * 32;
      for (int j = 0; j < 16; ++j) {
        const uint8_t byte = w[i / 2 + j];
        for (int r = 0; r < R; ++r)
          dot[r] += float(byte & 15) * x[r * in + i + j] + float(byte >> 4) * x[r * in + i + 16 + j];
      }
    }
    for (int r = 0; r < R; ++r) out[r] += dot[r] * s[g];
  }
#endif
}

#if defined(__AVX512F__)
// OB output rows at once (sharing each x load), two accumulators per (row, x row) so the FMA
// chains are long enough to hide FMA latency (one chain per row was latency-bound at ~14 G weights/s/core).
// Per group a 16-entry table of the dequantized values q * s + zz; vpermps picks each weight's
// entry by the low 4 bits of its lane, so widening a nibble is one permute (no mask, no int->float
// convert, no per-group scale or zero term).
template <int R, int OB>
inline void int4_block(const float* x, int64_t in, const uint8_t* w, const float* s, const float* zz,
                       int64_t groups, int64_t blocks_per_group, float out[OB][R]) {
  const int64_t pf = g_prefetch, row_bytes = in / 2;
  const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  __m512 acc[OB][R][2];
  for (int b = 0; b < OB; ++b)
    for (int r = 0; r < R; ++r) acc[b][r][0] = acc[b][r][1] = _mm512_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    __m512 table[OB];
    for (int b = 0; b < OB; ++b)
      table[b] = _mm512_fmadd_ps(iota, _mm512_set1_ps(s[b * groups + g]), _mm512_set1_ps(zz[b * groups + g]));
    for (int64_t k = 0; k < blocks_per_group; ++k) {
      const int64_t i = (g * blocks_per_group + k) * 32;
      __m512 xv[R][2];
      for (int r = 0; r < R; ++r) {
        xv[r][0] = _mm512_loadu_ps(x + r * in + i);
        xv[r][1] = _mm512_loadu_ps(x + r * in + i + 16);
      }
      for (int b = 0; b < OB; ++b) {
        const uint8_t* wb = w + b * row_bytes + i / 2;
        prefetch(wb + pf);
        const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)wb));
        const __m512 lo = _mm512_permutexvar_ps(v, table[b]);
        const __m512 hi = _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), table[b]);
        for (int r = 0; r < R; ++r) {
          acc[b][r][0] = _mm512_fmadd_ps(lo, xv[r][0], acc[b][r][0]);
          acc[b][r][1] = _mm512_fmadd_ps(hi, xv[r][1], acc[b][r][1]);
        }
      }
    }
  }
  for (int b = 0; b < OB; ++b)
    for (int r = 0; r < R; ++r) out[b][r] = _mm512_reduce_add_ps(_mm512_add_ps(acc[b][r][0], acc[b][r][1]));
}
#else
// Without AVX-512: one output row at a time (int4_row), the same interface.
template <int R, int OB>
inline void int4_block(const float* x, int64_t in, const uint8_t* w, const float* s, const float* zz,
                       const float* xsum, int64_t groups, int64_t blocks_per_group, float out[OB][R]) {
  for (int b = 0; b < OB; ++b)
    int4_row<R>(x, in, w + b * (in / 2), s + b * groups, zz + b * groups, xsum, groups, blocks_per_group, out[b]);
}
#endif

#if defined(__AVX512F__)
// Superblock layout (rows with in % 128 == 0): per 128 inputs 64 bytes = 16 dwords; nibble k of
// dword j is q[j + 16 k]. One plain 64-byte load feeds 8 vectors of 16 weights with no shuffle:
// on Zen 4 the byte-widening and permute shuffles of the block-32 path are the bottleneck
// (~17 G weights/s/core). A nibble becomes a float by placing it in the mantissa of 1.0:
// bits 0x3F800000 | q << 19 is f = 1 + q / 16 exactly (one shift, one ternary logic op), and
// W_hat = q * s + zz = f * (16 s) + (zz - 16 s): the dot of f with x per group is scaled by 16 s,
// the constant part is (zz - 16 s) * sum(x over the group), added per row in scalar.
template <int K>
inline __m512 nibble_as_float(__m512i v) {
  const __m512i sh = shift_lanes<19 - 4 * K>(v);
  // (sh & 0x00780000) | 0x3F800000 in one instruction (truth table 0xEA = (A & B) | C)
  return _mm512_castsi512_ps(_mm512_ternarylogic_epi32(sh, _mm512_set1_epi32(0x00780000), _mm512_set1_epi32(0x3F800000), 0xEA));
}

template <int R, int OB, int GP>  // GP = group / 16 nibble positions per group (2, 4, 8, 16)
inline void int4_super_block(const float* x, int64_t in, const uint8_t* w, const float* s, const float* zz,
                             const float* xsum, int64_t groups, float out[OB][R]) {
  const int64_t pf = g_prefetch, row_bytes = in / 2;
  __m512 acc[OB][R], dot[OB][R];
  for (int b = 0; b < OB; ++b)
    for (int r = 0; r < R; ++r) acc[b][r] = dot[b][r] = _mm512_setzero_ps();
  for (int64_t sb = 0; sb < in / 128; ++sb) {
    __m512i v[OB];
    for (int b = 0; b < OB; ++b) {
      prefetch(w + b * row_bytes + sb * 64 + pf);
      v[b] = _mm512_loadu_si512((const void*)(w + b * row_bytes + sb * 64));
      in_register(v[b]);
    }
#define NIB(K)                                                                                  \
    {                                                                                           \
      const int64_t pos = sb * 8 + K;                                                            \
      __m512 xv[R];                                                                              \
      for (int r = 0; r < R; ++r) {                                                              \
        xv[r] = _mm512_loadu_ps(x + r * in + pos * 16);                                          \
        in_register(xv[r]);                                                                      \
      }                                                                                          \
      for (int b = 0; b < OB; ++b) {                                                             \
        const __m512 f = nibble_as_float<K>(v[b]);                                                \
        for (int r = 0; r < R; ++r) dot[b][r] = _mm512_fmadd_ps(f, xv[r], dot[b][r]);            \
      }                                                                                          \
      if ((pos + 1) % GP == 0) {                                                                 \
        const int64_t g = pos / GP;                                                              \
        for (int b = 0; b < OB; ++b) {                                                           \
          const __m512 s16 = _mm512_set1_ps(16.f * s[b * groups + g]);                           \
          for (int r = 0; r < R; ++r) {                                                          \
            acc[b][r] = _mm512_fmadd_ps(dot[b][r], s16, acc[b][r]);                              \
            dot[b][r] = _mm512_setzero_ps();                                                     \
          }                                                                                      \
        }                                                                                        \
      }                                                                                          \
    }
    NIB(0) NIB(1) NIB(2) NIB(3) NIB(4) NIB(5) NIB(6) NIB(7)
#undef NIB
  }
  for (int b = 0; b < OB; ++b)
    for (int r = 0; r < R; ++r) {
      // zero term sum_g (zz - 16 s) * xsum, vectorized over groups (a scalar loop cost ~30% at group 32)
      __m512 zt = _mm512_setzero_ps();
      for (int64_t g = 0; g < groups; g += 16) {
        const __mmask16 m = groups - g >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (groups - g)) - 1);
        const __m512 c = _mm512_fnmadd_ps(_mm512_set1_ps(16.f), _mm512_maskz_loadu_ps(m, s + b * groups + g),
                                          _mm512_maskz_loadu_ps(m, zz + b * groups + g));
        zt = _mm512_fmadd_ps(c, _mm512_maskz_loadu_ps(m, xsum + r * groups + g), zt);
      }
      out[b][r] = _mm512_reduce_add_ps(_mm512_add_ps(acc[b][r], zt));
    }
}
#endif

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define GPT_JOURNEY_INT4_Q8 1
// int4 x int8 activations (compute_dtype "bfloat16" on CPUs with AVX512-VNNI). The fp32 paths above
// spend ~3 vector ops per 16 weights turning nibbles into floats and stay compute-bound near
// 19-25 GB/s on Zen 4. Here x is rounded once per call to int8 per 32 inputs (scale max|x| / 127, as
// llama.cpp's Q8_0 does for its Q4_0 dot) and vpdpbusd multiplies 64 unsigned nibbles by 64 signed
// bytes per instruction into 16 int32 sums. Scales and zeros are read as bfloat16 pairs (exact: the
// quantizer rounds them to bf16), 4 bytes per group instead of 8: at group 32 that is 20 bytes per
// 32 weights, against 24 with fp32 scale and zero terms.
//
// Layout (block-32): 64 bytes of a row = 4 blocks of 32 inputs ("span" of 128); the low nibbles of
// bytes 16c..16c+15 are inputs 32c..32c+15, the high nibbles 32c+16..32c+31, so int32 lane l = 4c + m
// sums inputs 32c+4m..+3 and 32c+16+4m..+3, all in block c. Per span and x row, `X8` holds the 64
// int8 values matching the low nibbles then the 64 matching the high ones, and three 16-float lane
// vectors: the x scale of lane l's block, the fp32 sum of lane l's 8 inputs, and 8 times that sum.
// With W_hat = (q - 8) * s + z: y = sum_l s_l * (xs_l * (q . xq)_l - 8 * xsum_l) + z_l * xsum_l.
struct X8 {
  int64_t spans;
  std::vector<int8_t> q;    // [rows][spans][128]
  std::vector<float> lane;  // [rows][spans][3][16]: scale, sum, 8 * sum
};

X8 quantize_x_q8(const float* x, int rows, int64_t in) {
  X8 p{(in + 127) / 128, {}, {}};
  p.q.assign(rows * p.spans * 128, 0);
  p.lane.assign(rows * p.spans * 48, 0.f);
  for (int r = 0; r < rows; ++r)
    for (int64_t blk = 0; blk < in / 32; ++blk) {
      const float* xb = x + r * in + blk * 32;
      float amax = 0.f;
      for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(xb[j]));
      const float inv = amax > 0.f ? 127.f / amax : 0.f;
      const int64_t sp = blk / 4, c = blk % 4;
      int8_t* q = p.q.data() + (r * p.spans + sp) * 128 + 16 * c;
      float* lane = p.lane.data() + (r * p.spans + sp) * 48 + 4 * c;
      for (int j = 0; j < 16; ++j) {
        q[j] = int8_t(std::nearbyint(xb[j] * inv));            // matches the low nibbles: inputs 32c + j
        q[64 + j] = int8_t(std::nearbyint(xb[16 + j] * inv));  // the high nibbles: inputs 32c + 16 + j
      }
      for (int m = 0; m < 4; ++m) {
        float sum = 0.f;
        for (int k = 0; k < 4; ++k) sum += xb[4 * m + k] + xb[16 + 4 * m + k];
        lane[m] = amax / 127.f;
        lane[16 + m] = sum;
        lane[32 + m] = 8.f * sum;
      }
    }
  return p;
}

template <int R, int OB>
inline void int4_q8_block(const X8& xp, int64_t in, const uint8_t* w, const uint16_t* sz, int64_t group,
                          int64_t groups, float out[OB][R]) {
  const int64_t row_bytes = in / 2, spans = xp.spans;
  const __m512i low = _mm512_set1_epi8(0x0F);
  alignas(64) int32_t is[16], iz[16];  // lane l -> its block's scale / zero among the span's (s, z) pairs
  for (int l = 0; l < 16; ++l) {
    is[l] = int32_t(2 * ((32 * (l / 4)) / group));
    iz[l] = is[l] + 1;
  }
  const __m512i idx_s = _mm512_load_si512((const void*)is), idx_z = _mm512_load_si512((const void*)iz);
  const int64_t groups_per_span = group >= 128 ? 1 : 128 / group;
  __m512 acc[OB][R];
  for (int b = 0; b < OB; ++b)
    for (int r = 0; r < R; ++r) acc[b][r] = _mm512_setzero_ps();
  for (int64_t sp = 0; sp < spans; ++sp) {
    const int64_t tail_bytes = row_bytes - sp * 64;  // < 64 only in the last span when in % 128 != 0
    const __mmask64 wmask = tail_bytes >= 64 ? ~__mmask64(0) : ((__mmask64(1) << tail_bytes) - 1);
    const int64_t g0 = (sp * 128) / group, ng = std::min<int64_t>(groups_per_span, groups - g0);
    const __mmask8 smask = __mmask8((1u << (2 * ng)) - 1);
    __m512i xlo[R], xhi[R];
    __m512 xs[R], xsum[R], xsum8[R];
    for (int r = 0; r < R; ++r) {
      xlo[r] = _mm512_loadu_si512((const void*)(xp.q.data() + (r * spans + sp) * 128));
      xhi[r] = _mm512_loadu_si512((const void*)(xp.q.data() + (r * spans + sp) * 128 + 64));
      const float* lane = xp.lane.data() + (r * spans + sp) * 48;
      xs[r] = _mm512_loadu_ps(lane);
      xsum[r] = _mm512_loadu_ps(lane + 16);
      xsum8[r] = _mm512_loadu_ps(lane + 32);
    }
    for (int b = 0; b < OB; ++b) {
      const uint8_t* wb = w + b * row_bytes + sp * 64;
      prefetch_l2(wb + g_prefetch_int8);
      // The (scale, zero) pairs are a second stream, a fifth of the bytes; left to the hardware
      // prefetcher it made this loop latency-bound on DRAM-cold weights (EPYC Zen 5, the INT4 linears
      // of benchmarks/decode_breakdown.py: 23.1 -> 39.8 GB/s at ~45 GB/s copy bandwidth). At group 32 a
      // row's pairs for 4 spans are 64 bytes: one prefetch per 4 spans, as far ahead as the weights'.
      if ((sp & 3) == 0) prefetch_l2((const char*)(sz + 2 * (b * groups + g0)) + g_prefetch_int8 / 4);
      const __m512i v = _mm512_maskz_loadu_epi8(wmask, wb);
      const __m512i lo = _mm512_and_si512(v, low), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
      // bf16 -> fp32 is a 16-bit shift; then spread each block's pair over its 4 lanes
      const __m512 pairs = _mm512_castps256_ps512(_mm256_castsi256_ps(_mm256_slli_epi32(
          _mm256_cvtepu16_epi32(_mm_maskz_loadu_epi16(smask, sz + 2 * (b * groups + g0))), 16)));
      const __m512 sv = _mm512_permutexvar_ps(idx_s, pairs), zv = _mm512_permutexvar_ps(idx_z, pairs);
      for (int r = 0; r < R; ++r) {
        const __m512i d = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, xlo[r]), hi, xhi[r]);
        const __m512 t = _mm512_fmsub_ps(_mm512_cvtepi32_ps(d), xs[r], xsum8[r]);
        acc[b][r] = _mm512_fmadd_ps(sv, t, _mm512_fmadd_ps(zv, xsum[r], acc[b][r]));
      }
    }
  }
  for (int b = 0; b < OB; ++b)
    for (int r = 0; r < R; ++r) out[b][r] = _mm512_reduce_add_ps(acc[b][r]);
}

template <int R>
void int4_q8_rows(const float* x, int64_t in, int64_t out_f, const uint8_t* w, const uint16_t* sz, int64_t group,
                  const float* bias, float* y) {
  constexpr int OB = 4;  // 4 rows measured best (2: ~10% slower; 8: within noise of 4)
  const int64_t groups = in / group;
  const X8 xp = quantize_x_q8(x, R, in);
  for_each_row_block<R, OB>(out_f, 8,
      [&](auto ob, int64_t o, float (*part)[R]) {
        int4_q8_block<R, decltype(ob)::value>(xp, in, w + o * (in / 2), sz + 2 * o * groups, group, groups, part);
      },
      [&](int64_t o, int r, float v) { y[r * out_f + o] = v + (bias ? bias[o] : 0.f); });
}
#endif

// The int8-activation path (q8) always reads block-32: each byte's two nibbles must be in one block.
int64_t int4_layout(int64_t in, bool q8) {
#if defined(__AVX512F__)
  if (!q8 && in % 128 == 0) return 128;
#endif
  (void)q8;
  return 32;
}

bool has_q8_activations() {
#if defined(GPT_JOURNEY_INT4_Q8)
  return true;
#else
  return false;
#endif
}

// One block of OB output rows (or fewer, one at a time, at the end) with the layout int4_layout picks.
template <int R, int OB>
inline void int4_rows_block(const float* x, int64_t in, const uint8_t* w, const float* s, const float* zz,
                            const float* xsum, int64_t group, float out[OB][R]) {
  const int64_t groups = in / group;
#if defined(__AVX512F__)
  if (int4_layout(in, false) == 128) {
    switch (group / 16) {
      case 2: return int4_super_block<R, OB, 2>(x, in, w, s, zz, xsum, groups, out);
      case 4: return int4_super_block<R, OB, 4>(x, in, w, s, zz, xsum, groups, out);
      case 8: return int4_super_block<R, OB, 8>(x, in, w, s, zz, xsum, groups, out);
      default: return int4_super_block<R, OB, 16>(x, in, w, s, zz, xsum, groups, out);
    }
  }
  int4_block<R, OB>(x, in, w, s, zz, groups, group / 32, out);
#else
  int4_block<R, OB>(x, in, w, s, zz, xsum, groups, group / 32, out);
#endif
}

template <int R>
void int4_gemv_rows(const float* x, int64_t in, int64_t out_f, const uint8_t* w, const float* s,
                    const float* zz, int64_t group, const float* bias, float* y) {
  constexpr int OB = 2;  // 2 rows measured best at gpt2-124m decode (4 or 8: more streams, slower)
  const int64_t groups = in / group;
  std::vector<float> xsum(R * groups);  // per-group sums of x, for the zero terms
  for (int r = 0; r < R; ++r)
    for (int64_t g = 0; g < groups; ++g) {
      float t = 0.f;
      for (int64_t i = g * group; i < (g + 1) * group; ++i) t += x[r * in + i];
      xsum[r * groups + g] = t;
    }
  for_each_row_block<R, OB>(out_f, 8,
      [&](auto ob, int64_t o, float (*part)[R]) {
        int4_rows_block<R, decltype(ob)::value>(x, in, w + o * (in / 2), s + o * groups, zz + o * groups,
                                                xsum.data(), group, part);
      },
      [&](int64_t o, int r, float v) { y[r * out_f + o] = v + (bias ? bias[o] : 0.f); });
}

// ------------------------------------------------------------------ entry points

// ------------------------------------------------------------------ one layer, checked once

// An engine linear layer as these kernels run it: the weights and scales of one of four kinds,
// checked when built, then `run` on raw rows (the fused decode step calls it ~50 times a step).
struct LinearOp {
  enum Kind { kF32, kInt8, kInt4, kInt4Q8 };
  Kind kind = kF32;
  at::Tensor w, s, z;  // f32: w; int8: w, s = scale; int4: w = blocks, s = scales, z = zz; int4-q8: w, s = (scale, zero) bf16
  c10::optional<at::Tensor> bias;
  int64_t group = 0, in_f = 0, out_f = 0;

  template <int R>
  void run_rows(const float* x, float* y) const {
    const float* b = bias.has_value() ? bias->data_ptr<float>() : nullptr;
    switch (kind) {
      case kF32: f32_gemv_rows<R>(x, in_f, out_f, w.data_ptr<float>(), b, y); break;
      case kInt8: int8_gemv_rows<R>(x, in_f, out_f, w.data_ptr<int8_t>(), s.data_ptr<float>(), b, y); break;
      case kInt4:
        int4_gemv_rows<R>(x, in_f, out_f, w.data_ptr<uint8_t>(), s.data_ptr<float>(), z.data_ptr<float>(), group, b, y);
        break;
      case kInt4Q8:
#if defined(GPT_JOURNEY_INT4_Q8)
        int4_q8_rows<R>(x, in_f, out_f, w.data_ptr<uint8_t>(),
                        reinterpret_cast<const uint16_t*>(s.data_ptr<at::BFloat16>()), group, b, y);
#endif
        break;
    }
  }

  // y[rows, out_f] = x[rows, in_f] @ W_hat.T + b, 1 <= rows <= kMaxRows
  void run(const float* x, int64_t rows, float* y) const {
    switch (rows) {
      case 1: run_rows<1>(x, y); break;
      case 2: run_rows<2>(x, y); break;
      case 3: run_rows<3>(x, y); break;
      default: run_rows<4>(x, y); break;
    }
  }

  at::Tensor apply(const at::Tensor& x) const {
    TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous() && x.device().is_cpu(),
                "x must be a contiguous 2-D float32 CPU tensor");
    TORCH_CHECK(x.size(0) >= 1 && x.size(0) <= kMaxRows, "x must have 1..", kMaxRows, " rows, got ", x.size(0));
    TORCH_CHECK(x.size(1) == in_f, "x has ", x.size(1), " columns, the weight ", in_f);
    auto y = at::empty({x.size(0), out_f}, x.options());
    run(x.data_ptr<float>(), x.size(0), y.data_ptr<float>());
    return y;
  }
};

void check_f32(const at::Tensor& t, int64_t numel, const char* what) {
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.is_contiguous() && t.numel() == numel, what);
}

// kind: "f32" (w float32 (out, in)), "int8" (w int8 (out, in), s scale (out,)), "int4" (w = repack_int4
// blocks uint8 (out, in/2), s scales and z = zero - 8 * scale, float32 (out, in/group)), "int4-q8" (the
// same blocks in the 32 layout, s = (scale, zero) bfloat16 (out, in/group, 2)).
LinearOp make_linear_op(const std::string& kind, const at::Tensor& w, const c10::optional<at::Tensor>& s,
                        const c10::optional<at::Tensor>& z, int64_t group, const c10::optional<at::Tensor>& bias) {
  LinearOp op;
  TORCH_CHECK(w.dim() == 2 && w.is_contiguous() && w.device().is_cpu(), "w must be a contiguous 2-D CPU tensor");
  op.w = w;
  op.out_f = w.size(0);
  op.in_f = w.size(1);
  if (kind == "f32") {
    op.kind = LinearOp::kF32;
    TORCH_CHECK(w.scalar_type() == at::kFloat, "w must be contiguous float32 (out, in)");
  } else if (kind == "int8") {
    op.kind = LinearOp::kInt8;
    TORCH_CHECK(w.scalar_type() == at::kChar, "w must be contiguous int8 (out, in)");
    TORCH_CHECK(s.has_value(), "int8 needs scale");
    check_f32(*s, op.out_f, "scale must be contiguous float32 (out,)");
    op.s = *s;
  } else if (kind == "int4" || kind == "int4-q8") {
    op.kind = kind == "int4" ? LinearOp::kInt4 : LinearOp::kInt4Q8;
#if !defined(GPT_JOURNEY_INT4_Q8)
    TORCH_CHECK(kind == "int4", "int4-q8 needs a build with AVX512-VNNI (see has_q8_activations)");
#endif
    TORCH_CHECK(w.scalar_type() == at::kByte, "w must be contiguous uint8 (out, in/2) in the kernel's nibble layout");
    TORCH_CHECK(group >= 32 && group % 32 == 0, "group size must be a multiple of 32, got ", group);
    op.in_f = w.size(1) * 2;
    op.group = group;
    TORCH_CHECK(op.in_f % group == 0, "in_features ", op.in_f, " not divisible by group size ", group);
    const int64_t groups = op.out_f * (op.in_f / group);
    TORCH_CHECK(s.has_value(), kind, " needs scales");
    if (op.kind == LinearOp::kInt4) {
      TORCH_CHECK(z.has_value(), "int4 needs zz");
      check_f32(*s, groups, "scales and zz must be contiguous float32 (out, in/group)");
      check_f32(*z, groups, "scales and zz must be contiguous float32 (out, in/group)");
      op.z = *z;
    } else {
      TORCH_CHECK(s->scalar_type() == at::kBFloat16 && s->is_contiguous() && s->numel() == 2 * groups,
                  "scale_zero must be contiguous bfloat16 (out, in/group, 2)");
    }
    op.s = *s;
  } else {
    TORCH_CHECK(false, "unknown linear kind '", kind, "' (f32, int8, int4, int4-q8)");
  }
  if (bias.has_value()) check_f32(*bias, op.out_f, "bias must be a contiguous float32 tensor of out_features values");
  op.bias = bias;
  return op;
}

at::Tensor f32_gemv(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& bias) {
  return make_linear_op("f32", w, c10::nullopt, c10::nullopt, 0, bias).apply(x);
}

at::Tensor int8_gemv(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scale,
                     const c10::optional<at::Tensor>& bias) {
  return make_linear_op("int8", w, scale, c10::nullopt, 0, bias).apply(x);
}

at::Tensor int4_gemv(const at::Tensor& x, const at::Tensor& w, const at::Tensor& s, const at::Tensor& zz,
                     int64_t group, const c10::optional<at::Tensor>& bias) {
  return make_linear_op("int4", w, s, zz, group, bias).apply(x);
}

at::Tensor int4_q8_gemv(const at::Tensor& x, const at::Tensor& w, const at::Tensor& sz, int64_t group,
                        const c10::optional<at::Tensor>& bias) {
  return make_linear_op("int4-q8", w, sz, c10::nullopt, group, bias).apply(x);
}

std::string isa() {
#if defined(__AVX512F__)
  return "avx512";
#elif defined(__AVX2__) && defined(__FMA__)
  return "avx2";
#else
  return "scalar";
#endif
}

}  // namespace
