// group_norm's CPU kernels: per-row and per-chunk moments, then the affine (+SiLU)
// pass, with coefficients per channel (FiLM) or per element (spatial scale/shift). See kernel_common.h for how the instruction-set builds include this.
#pragma once

#include "cpu/kernel_common.h"

namespace lddm {
namespace cpu {
namespace LDDM_ISA_NAMESPACE {

// Corrected two-pass moments: pass 1 finds a shift close to the mean, pass 2 sums
// deviations from it (and corrects the mean by their average). Safe for inputs with
// a large mean (x = 1000 + noise), where a one-pass sum of squares cancels. The
// `omp simd` reductions keep one partial sum per vector lane.
template <typename T>
Moments row_moments(const T* __restrict__ x, int64_t n) {
  const float x0 = load(x[0]);
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += load(x[i]) - x0;
  const float shift = x0 + s / float(n);
  float s1 = 0.0f, s2 = 0.0f;
#pragma omp simd reduction(+ : s1, s2)
  for (int64_t i = 0; i < n; ++i) {
    const float d = load(x[i]) - shift;
    s1 += d;
    s2 += d * d;
  }
  Moments m;
  m.count = double(n);
  m.mean = double(shift) + double(s1) / m.count;
  m.m2 = double(s2) - double(s1) * double(s1) / m.count;
  if (m.m2 < 0.0) m.m2 = 0.0;
  return m;
}

#if LDDM_SIMD
// chunk_moments for the channels [0, CV), CV a multiple of V::W. Pass 1 streams the chunk
// row by row (sequential reads, the first touch of the chunk in memory) into per-channel
// sums kept in s1; pass 2 re-reads it from cache in blocks of 4 vectors of channels whose
// accumulators stay in registers for all positions.
template <typename V, typename T>
static void chunk_moments_vec(const T* __restrict__ x, int64_t positions, int64_t C, int64_t CV,
                              float* __restrict__ shift, float* __restrict__ s1,
                              float* __restrict__ s2) {
  using R = typename V::reg;
  constexpr int W = V::W;
  for (int64_t c = 0; c < CV; c += W) V::store(s1 + c, V::zero());
  for (int64_t p = 1; p < positions; ++p)
    for (int64_t c = 0; c < CV; c += W)
      V::store(s1 + c, V::add(V::load(s1 + c), V::sub(V::load(x + p * C + c), V::load(x + c))));
  const R inv_n = V::set1(1.0f / float(positions));
  for (int64_t c = 0; c < CV; c += W)
    V::store(shift + c, V::fmadd(V::load(s1 + c), inv_n, V::load(x + c)));
  const auto block = [&](auto nv, int64_t c0) {
    constexpr int NV = decltype(nv)::value;
    R sh[NV], a1[NV], a2[NV];
    for (int v = 0; v < NV; ++v) {
      sh[v] = V::load(shift + c0 + W * v);
      a1[v] = a2[v] = V::zero();
    }
    for (int64_t p = 0; p < positions; ++p)
      for (int v = 0; v < NV; ++v) {
        const R d = V::sub(V::load(x + p * C + c0 + W * v), sh[v]);
        a1[v] = V::add(a1[v], d);
        a2[v] = V::fmadd(d, d, a2[v]);
      }
    for (int v = 0; v < NV; ++v) {
      V::store(s1 + c0 + W * v, a1[v]);
      V::store(s2 + c0 + W * v, a2[v]);
    }
  };
  int64_t c0 = 0;
  for (; c0 + 4 * W <= CV; c0 += 4 * W) block(std::integral_constant<int, 4>{}, c0);
  for (; c0 < CV; c0 += W) block(std::integral_constant<int, 1>{}, c0);
}
#endif

// Channels [c0, C) of chunk_moments, one channel per lane of the compiler's vectors.
template <typename T>
static void chunk_moments_tail(const T* __restrict__ x, int64_t positions, int64_t C, int64_t c0,
                               float* __restrict__ shift, float* __restrict__ s1,
                               float* __restrict__ s2) {
  for (int64_t c = c0; c < C; ++c) {
    shift[c] = load(x[c]);
    s1[c] = 0.0f;
  }
  for (int64_t p = 0; p < positions; ++p) {
    const T* row = x + p * C;
    for (int64_t c = c0; c < C; ++c) s1[c] += load(row[c]) - shift[c];
  }
  for (int64_t c = c0; c < C; ++c) {
    shift[c] += s1[c] / float(positions);
    s1[c] = 0.0f;
    s2[c] = 0.0f;
  }
  for (int64_t p = 0; p < positions; ++p) {
    const T* row = x + p * C;
    for (int64_t c = c0; c < C; ++c) {
      const float d = load(row[c]) - shift[c];
      s1[c] += d;
      s2[c] += d * d;
    }
  }
}

template <typename T>
void chunk_moments(const T* __restrict__ x, int64_t positions, int64_t C, float* shift, float* s1,
                   float* s2) {
  int64_t c0 = 0;
#if LDDM_SIMD
  // Whole vectors of the build's width, then (AVX-512) one of 8 channels, then the tail.
  c0 = C / Vec::W * Vec::W;
  if (c0 > 0) chunk_moments_vec<Vec>(x, positions, C, c0, shift, s1, s2);
  if (Vec::W > 8 && C - c0 >= 8) {
    chunk_moments_vec<V8>(x + c0, positions, C, 8, shift + c0, s1 + c0, s2 + c0);
    c0 += 8;
  }
#endif
  chunk_moments_tail(x, positions, C, c0, shift, s1, s2);
}

#if LDDM_SIMD
// out[j - i] = f(V{}, j) (+ SiLU) for j from i on, in blocks of 4 vectors of V and then
// one: f gives the V::W values before the activation at j. Returns the first j not
// written (fewer than V::W are left).
template <typename V, bool Silu, typename U, typename F>
static inline int64_t affine_vectors(U* out, int64_t i, int64_t n, const F& f) {
  using R = typename V::reg;
  const int64_t i0 = i;
  for (; i + 4 * V::W <= n; i += 4 * V::W) {
    R v[4];
    for (int u = 0; u < 4; ++u) v[u] = f(V{}, i + V::W * u);
    if (Silu) silu<V, 4>(v);
    for (int u = 0; u < 4; ++u) V::store(out + (i - i0) + V::W * u, v[u]);
  }
  for (; i + V::W <= n; i += V::W) {
    R v = f(V{}, i);
    if (Silu) silu<V, 1>(&v);
    V::store(out + (i - i0), v);
  }
  return i;
}

// Floats per chunk of a bf16 row in the AVX2 build: 4 KB, in L1 between the two loops.
inline constexpr int64_t kAffineChunk = 1024;

// affine_vectors in the build's widest vectors, then (AVX-512) in one of 8 floats. bf16
// outputs in the AVX2 build go through a float chunk, rounded after the activation in a
// loop of their own (store_bf16_vectors).
template <bool Silu, typename U, typename F>
static inline int64_t affine_simd(U* y, int64_t n, const F& f) {
#if !LDDM_AVX512
  if constexpr (std::is_same_v<U, bf16_t>) {
    alignas(32) float chunk[kAffineChunk];
    int64_t i = 0;
    while (i + V8::W <= n) {
      const int64_t end = affine_vectors<V8, Silu>(chunk, i, std::min(n, i + kAffineChunk), f);
      store_bf16_vectors(y + i, end - i, [&](int64_t j) { return V8::load(chunk + j); });
      i = end;
    }
    return i;
  }
#endif
  int64_t i = affine_vectors<Vec, Silu>(y, 0, n, f);
  if constexpr (Vec::W > 8) i = affine_vectors<V8, Silu>(y + i, i, n, f);
  return i;
}
#endif

template <typename T, bool Silu>
static void affine_row_impl(const T* __restrict__ x, T* __restrict__ y, int64_t n, float a, float m,
                            float b) {
  int64_t i = 0;
#if LDDM_SIMD
  i = affine_simd<Silu>(y, n, [&](auto vec, int64_t j) {
    using V = decltype(vec);
    return V::fmadd(V::set1(a), V::sub(V::load(x + j), V::set1(m)), V::set1(b));
  });
#endif
#pragma omp simd
  for (int64_t j = i; j < n; ++j) {
    const float v = a * (load(x[j]) - m) + b;
    store(y + j, Silu ? silu(v) : v);
  }
}

template <typename T>
void affine_row(const T* x, T* y, int64_t n, float a, float m, float b, bool act) {
  if (act)
    affine_row_impl<T, true>(x, y, n, a, m, b);
  else
    affine_row_impl<T, false>(x, y, n, a, m, b);
}

// The spatial form of affine_row: a and b per element (a spatial scale/shift folded in).
template <typename T, bool Silu>
static void affine_row_varying_impl(const T* __restrict__ x, T* __restrict__ y, int64_t n,
                                    const float* __restrict__ a, float m,
                                    const float* __restrict__ b) {
  int64_t i = 0;
#if LDDM_SIMD
  i = affine_simd<Silu>(y, n, [&](auto vec, int64_t j) {
    using V = decltype(vec);
    return V::fmadd(V::load(a + j), V::sub(V::load(x + j), V::set1(m)), V::load(b + j));
  });
#endif
#pragma omp simd
  for (int64_t j = i; j < n; ++j) {
    const float v = a[j] * (load(x[j]) - m) + b[j];
    store(y + j, Silu ? silu(v) : v);
  }
}

template <typename T>
void affine_row_varying(const T* x, T* y, int64_t n, const float* a, float m, const float* b,
                        bool act) {
  if (act)
    affine_row_varying_impl<T, true>(x, y, n, a, m, b);
  else
    affine_row_varying_impl<T, false>(x, y, n, a, m, b);
}

template <typename T, bool Silu>
static void affine_chunk_impl(const T* __restrict__ x, T* __restrict__ y, int64_t positions,
                              int64_t C, const float* __restrict__ a_in,
                              const float* __restrict__ m, const float* __restrict__ b_in,
                              int64_t ab_step) {
  for (int64_t p = 0; p < positions; ++p) {
    const T* xr = x + p * C;
    T* yr = y + p * C;
    const float* __restrict__ a = a_in + p * ab_step;
    const float* __restrict__ b = b_in + p * ab_step;
    int64_t c0 = 0;
#if LDDM_SIMD
    c0 = affine_simd<Silu>(yr, C, [&](auto vec, int64_t c) {
      using V = decltype(vec);
      return V::fmadd(V::load(a + c), V::sub(V::load(xr + c), V::load(m + c)), V::load(b + c));
    });
#endif
#pragma omp simd
    for (int64_t c = c0; c < C; ++c) {
      const float v = a[c] * (load(xr[c]) - m[c]) + b[c];
      store(yr + c, Silu ? silu(v) : v);
    }
  }
}

template <typename T>
void affine_chunk(const T* x, T* y, int64_t positions, int64_t C, const float* a, const float* m,
                  const float* b, int64_t ab_step, bool act) {
  if (act)
    affine_chunk_impl<T, true>(x, y, positions, C, a, m, b, ab_step);
  else
    affine_chunk_impl<T, false>(x, y, positions, C, a, m, b, ab_step);
}

}  // namespace LDDM_ISA_NAMESPACE
}  // namespace cpu
}  // namespace lddm
