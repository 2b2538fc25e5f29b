// Implementations of the kernels declared in cpu_kernels.h. Included once per
// instruction set by isa_<name>.cpp, inside `namespace lddm::cpu::isa_<name>`, so each
// build has its own symbols. Loops are written so the compiler vectorizes them
// without -ffast-math: fixed-width partial accumulators, no cross-lane dependencies.
#pragma once

#include <cstring>

#include "cpu/cpu_kernels.h"

namespace lddm {
namespace cpu {
namespace LDDM_ISA_NAMESPACE {

constexpr int kLanes = 16;

static inline float load(float v) { return v; }
static inline float load(bf16_t v) {
  uint32_t u = uint32_t(v) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}
static inline void store(float* p, float v) { *p = v; }
static inline void store(bf16_t* p, float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof(u));
  // Round to nearest even; keep NaN a (quiet) NaN.
  u = (v != v) ? 0x7FC00000u : u + 0x7FFFu + ((u >> 16) & 1u);
  *p = bf16_t(u >> 16);
}

// exp on [-87, 88] as 2^n * p(r) with |r| <= ln2/2: a degree-6 Taylor polynomial,
// relative error below 2e-7. Written with float ops the compiler can vectorize
// (std::exp stays a scalar libm call).
static inline float exp_approx(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  // Adding 1.5 * 2^23 rounds to the nearest integer in the float's low bits.
  const float shifted = x * 1.44269504088896341f + 12582912.0f;
  const float n = shifted - 12582912.0f;
  const float r = (x - n * 0.693145751953125f) - n * 1.428606765330187e-06f;
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t e = (int32_t(n) + 127) << 23;
  float two_n;
  std::memcpy(&two_n, &e, sizeof(two_n));
  return p * two_n;
}

static inline float silu(float v) { return v / (1.0f + exp_approx(-v)); }

// Corrected two-pass moments: pass 1 finds a shift close to the mean, pass 2 sums
// deviations from it (and corrects the mean by their average). Safe for inputs with
// a large mean (x = 1000 + noise), where a one-pass sum of squares cancels.
template <typename T>
Moments row_moments(const T* x, int64_t n) {
  const float x0 = load(x[0]);
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) acc[j] += load(x[i + j]) - x0;
  double s = 0.0;
  for (int j = 0; j < kLanes; ++j) s += acc[j];
  for (; i < n; ++i) s += load(x[i]) - x0;
  const float shift = x0 + float(s / double(n));

  float a1[kLanes] = {}, a2[kLanes] = {};
  i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) {
      const float d = load(x[i + j]) - shift;
      a1[j] += d;
      a2[j] += d * d;
    }
  double s1 = 0.0, s2 = 0.0;
  for (int j = 0; j < kLanes; ++j) {
    s1 += a1[j];
    s2 += a2[j];
  }
  for (; i < n; ++i) {
    const double d = double(load(x[i])) - shift;
    s1 += d;
    s2 += d * d;
  }
  Moments m;
  m.count = double(n);
  m.mean = double(shift) + s1 / m.count;
  m.m2 = s2 - s1 * s1 / m.count;
  if (m.m2 < 0.0) m.m2 = 0.0;
  return m;
}

template <typename T>
void chunk_moments(const T* x, int64_t positions, int64_t C, float* work) {
  float* shift = work;
  float* s1 = work + C;
  float* s2 = work + 2 * C;
  for (int64_t c = 0; c < C; ++c) {
    shift[c] = load(x[c]);
    s1[c] = 0.0f;
  }
  for (int64_t p = 0; p < positions; ++p) {
    const T* row = x + p * C;
    for (int64_t c = 0; c < C; ++c) s1[c] += load(row[c]) - shift[c];
  }
  for (int64_t c = 0; c < C; ++c) {
    shift[c] += s1[c] / float(positions);
    s1[c] = 0.0f;
    s2[c] = 0.0f;
  }
  for (int64_t p = 0; p < positions; ++p) {
    const T* row = x + p * C;
    for (int64_t c = 0; c < C; ++c) {
      const float d = load(row[c]) - shift[c];
      s1[c] += d;
      s2[c] += d * d;
    }
  }
}

template <typename T, bool Silu>
static void affine_row_impl(const T* x, T* y, int64_t n, float a, float m, float b) {
  for (int64_t i = 0; i < n; ++i) {
    const float v = a * (load(x[i]) - m) + b;
    store(y + i, Silu ? silu(v) : v);
  }
}

template <typename T>
void affine_row(const T* x, T* y, int64_t n, float a, float m, float b, bool act) {
  if (act)
    affine_row_impl<T, true>(x, y, n, a, m, b);
  else
    affine_row_impl<T, false>(x, y, n, a, m, b);
}

template <typename T, bool Silu>
static void affine_chunk_impl(const T* x, T* y, int64_t positions, int64_t C, const float* a,
                              const float* m, const float* b) {
  for (int64_t p = 0; p < positions; ++p) {
    const T* xr = x + p * C;
    T* yr = y + p * C;
    for (int64_t c = 0; c < C; ++c) {
      const float v = a[c] * (load(xr[c]) - m[c]) + b[c];
      store(yr + c, Silu ? silu(v) : v);
    }
  }
}

template <typename T>
void affine_chunk(const T* x, T* y, int64_t positions, int64_t C, const float* a, const float* m,
                  const float* b, bool act) {
  if (act)
    affine_chunk_impl<T, true>(x, y, positions, C, a, m, b);
  else
    affine_chunk_impl<T, false>(x, y, positions, C, a, m, b);
}

// One (b, head, y, x) position at a time: gather its [T, D] q/k/v through the
// strides into contiguous float rows (so the dot products vectorize over D), softmax
// in float, scatter the [T, D] result.
template <typename T>
void attention(const T* q, const T* k, const T* v, T* o, Strides5 sq, Strides5 sk, Strides5 sv,
               Strides5 so, int64_t heads, int64_t D, int64_t T_len, int64_t H, int64_t W,
               int64_t first, int64_t count, float scale, float* work) {
  float* qf = work;
  float* kf = qf + T_len * D;
  float* vf = kf + T_len * D;
  float* of = vf + T_len * D;
  float* p = of + T_len * D;  // [T, T] probabilities
  for (int64_t pos = first; pos < first + count; ++pos) {
    const int64_t x = pos % W;
    const int64_t y = (pos / W) % H;
    const int64_t h = (pos / (W * H)) % heads;
    const int64_t b = pos / (W * H * heads);
    const T* qb = q + b * sq.b + h * D * sq.c + y * sq.h + x * sq.w;
    const T* kb = k + b * sk.b + h * D * sk.c + y * sk.h + x * sk.w;
    const T* vb = v + b * sv.b + h * D * sv.c + y * sv.h + x * sv.w;
    T* ob = o + b * so.b + h * D * so.c + y * so.h + x * so.w;
    for (int64_t t = 0; t < T_len; ++t)
      for (int64_t d = 0; d < D; ++d) {
        qf[t * D + d] = load(qb[t * sq.t + d * sq.c]) * scale;
        kf[t * D + d] = load(kb[t * sk.t + d * sk.c]);
        vf[t * D + d] = load(vb[t * sv.t + d * sv.c]);
      }
    for (int64_t i = 0; i < T_len; ++i) {
      float* pi = p + i * T_len;
      float mx = -3.0e38f;
      for (int64_t j = 0; j < T_len; ++j) {
        float s = 0.0f;
        for (int64_t d = 0; d < D; ++d) s += qf[i * D + d] * kf[j * D + d];
        pi[j] = s;
        mx = s > mx ? s : mx;
      }
      float denom = 0.0f;
      for (int64_t j = 0; j < T_len; ++j) {
        pi[j] = exp_approx(pi[j] - mx);
        denom += pi[j];
      }
      const float inv = 1.0f / denom;
      float* oi = of + i * D;
      for (int64_t d = 0; d < D; ++d) oi[d] = 0.0f;
      for (int64_t j = 0; j < T_len; ++j) {
        const float w = pi[j] * inv;
        for (int64_t d = 0; d < D; ++d) oi[d] += w * vf[j * D + d];
      }
    }
    for (int64_t t = 0; t < T_len; ++t)
      for (int64_t d = 0; d < D; ++d) store(ob + t * so.t + d * so.c, of[t * D + d]);
  }
}

template <typename T>
void sampler_step(const T* x, const T* eps, const T* noise, T* out, int64_t n, float a, float b,
                  float c) {
  if (noise == nullptr) {
    for (int64_t i = 0; i < n; ++i) store(out + i, a * load(x[i]) + b * load(eps[i]));
  } else {
    for (int64_t i = 0; i < n; ++i)
      store(out + i, a * load(x[i]) + b * load(eps[i]) + c * load(noise[i]));
  }
}

template <typename T>
Kernels<T> make_kernels() {
  Kernels<T> k;
  k.row_moments = &row_moments<T>;
  k.chunk_moments = &chunk_moments<T>;
  k.affine_row = &affine_row<T>;
  k.affine_chunk = &affine_chunk<T>;
  k.attention = &attention<T>;
  k.sampler_step = &sampler_step<T>;
  return k;
}

}  // namespace LDDM_ISA_NAMESPACE
}  // namespace cpu
}  // namespace lddm
