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

#if LDDM_AVX2
// chunk_moments for the channels [0, C8), C8 a multiple of 8. Pass 1 streams the chunk
// row by row (sequential reads, the first touch of the chunk in memory) into per-channel
// sums kept in s1; pass 2 re-reads it from cache in blocks of 32 channels whose
// accumulators stay in registers for all positions.
template <typename T>
static void chunk_moments_avx2(const T* __restrict__ x, int64_t positions, int64_t C, int64_t C8,
                               float* __restrict__ shift, float* __restrict__ s1,
                               float* __restrict__ s2) {
  for (int64_t c = 0; c < C8; c += 8) _mm256_storeu_ps(s1 + c, _mm256_setzero_ps());
  for (int64_t p = 1; p < positions; ++p)
    for (int64_t c = 0; c < C8; c += 8)
      _mm256_storeu_ps(s1 + c, _mm256_add_ps(_mm256_loadu_ps(s1 + c),
                                             _mm256_sub_ps(load8(x + p * C + c), load8(x + c))));
  const __m256 inv_n = _mm256_set1_ps(1.0f / float(positions));
  for (int64_t c = 0; c < C8; c += 8)
    _mm256_storeu_ps(shift + c, _mm256_fmadd_ps(_mm256_loadu_ps(s1 + c), inv_n, load8(x + c)));
  const auto block = [&](auto nv) {
    constexpr int NV = decltype(nv)::value;
    return [&](int64_t c0) {
      __m256 sh[NV], a1[NV], a2[NV];
      for (int v = 0; v < NV; ++v) {
        sh[v] = _mm256_loadu_ps(shift + c0 + 8 * v);
        a1[v] = a2[v] = _mm256_setzero_ps();
      }
      for (int64_t p = 0; p < positions; ++p)
        for (int v = 0; v < NV; ++v) {
          const __m256 d = _mm256_sub_ps(load8(x + p * C + c0 + 8 * v), sh[v]);
          a1[v] = _mm256_add_ps(a1[v], d);
          a2[v] = _mm256_fmadd_ps(d, d, a2[v]);
        }
      for (int v = 0; v < NV; ++v) {
        _mm256_storeu_ps(s1 + c0 + 8 * v, a1[v]);
        _mm256_storeu_ps(s2 + c0 + 8 * v, a2[v]);
      }
    };
  };
  const auto block4 = block(std::integral_constant<int, 4>{});
  const auto block1 = block(std::integral_constant<int, 1>{});
  int64_t c0 = 0;
  for (; c0 + 32 <= C8; c0 += 32) block4(c0);
  for (; c0 < C8; c0 += 8) block1(c0);
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
#if LDDM_AVX2
  c0 = C / 8 * 8;
  if (c0 > 0) chunk_moments_avx2(x, positions, C, c0, shift, s1, s2);
#endif
  chunk_moments_tail(x, positions, C, c0, shift, s1, s2);
}

template <typename T, bool Silu>
static void affine_row_impl(const T* __restrict__ x, T* __restrict__ y, int64_t n, float a, float m,
                            float b) {
  int64_t i = 0;
#if LDDM_AVX2
  const __m256 va = _mm256_set1_ps(a), vm = _mm256_set1_ps(m), vb = _mm256_set1_ps(b);
  for (; i + 32 <= n; i += 32) {
    __m256 v[4];
    for (int u = 0; u < 4; ++u)
      v[u] = _mm256_fmadd_ps(va, _mm256_sub_ps(load8(x + i + 8 * u), vm), vb);
    if (Silu) silu<4>(v);
    for (int u = 0; u < 4; ++u) store8(y + i + 8 * u, v[u]);
  }
  for (; i + 8 <= n; i += 8) {
    __m256 v = _mm256_fmadd_ps(va, _mm256_sub_ps(load8(x + i), vm), vb);
    if (Silu) silu<1>(&v);
    store8(y + i, v);
  }
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
#if LDDM_AVX2
  const __m256 vm = _mm256_set1_ps(m);
  const auto affine8 = [&](int64_t j) {
    return _mm256_fmadd_ps(_mm256_loadu_ps(a + j), _mm256_sub_ps(load8(x + j), vm),
                           _mm256_loadu_ps(b + j));
  };
  for (; i + 32 <= n; i += 32) {
    __m256 v[4];
    for (int u = 0; u < 4; ++u) v[u] = affine8(i + 8 * u);
    if (Silu) silu<4>(v);
    for (int u = 0; u < 4; ++u) store8(y + i + 8 * u, v[u]);
  }
  for (; i + 8 <= n; i += 8) {
    __m256 v = affine8(i);
    if (Silu) silu<1>(&v);
    store8(y + i, v);
  }
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
#if LDDM_AVX2
    const auto affine8 = [&](int64_t c) {
      return _mm256_fmadd_ps(_mm256_loadu_ps(a + c),
                             _mm256_sub_ps(load8(xr + c), _mm256_loadu_ps(m + c)),
                             _mm256_loadu_ps(b + c));
    };
    for (; c0 + 32 <= C; c0 += 32) {
      __m256 v[4];
      for (int u = 0; u < 4; ++u) v[u] = affine8(c0 + 8 * u);
      if (Silu) silu<4>(v);
      for (int u = 0; u < 4; ++u) store8(yr + c0 + 8 * u, v[u]);
    }
    for (; c0 + 8 <= C; c0 += 8) {
      __m256 v = affine8(c0);
      if (Silu) silu<1>(&v);
      store8(yr + c0, v);
    }
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
