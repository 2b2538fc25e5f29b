// Implementations of the kernels declared in cpu_kernels.h. Included once per
// instruction set by isa_<name>.cpp, which names the namespace (LDDM_ISA_NAMESPACE),
// so each build has its own symbols. Portable loops are written so the compiler
// vectorizes them without -ffast-math: fixed-width partial accumulators, no
// cross-lane dependencies. The AVX2 build (LDDM_AVX2) takes the hot loops through the
// intrinsics of avx2_kernels.h and leaves tails and odd sizes to the portable code.
#pragma once

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "cpu/cpu_kernels.h"

#if defined(__AVX2__) && defined(__FMA__)
#include "cpu/avx2_kernels.h"
#define LDDM_AVX2 1
#else
#define LDDM_AVX2 0
#endif

namespace lddm {
namespace cpu {
namespace LDDM_ISA_NAMESPACE {

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

// exp(x) for x in [-87, 88] as 2^n * p(r) with |r| <= ln2/2: a degree-6 Taylor
// polynomial, relative error below 2e-7. Written with float ops the compiler can
// vectorize (std::exp stays a scalar libm call). No range checks: callers clamp.
static inline float exp_in_range(float x) {
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

static inline float exp_approx(float x) {
  return exp_in_range(x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x));
}

// silu(v) = v * sigmoid(v) with sigmoid from e = exp(-|v|), which never overflows.
// |v| is capped at 87 on its bit pattern (an integer min: vectorizes without the
// float selects and second division a clamped exp costs); a NaN v stays NaN through
// the final product. Below -87 the result is v * 1.6e-38 instead of ~v * exp(v):
// under 1e-30 for any |v| < 1e8, and -inf stays -inf (non-finite either way).
static inline float silu(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  bits &= 0x7FFFFFFFu;
  bits = bits < 0x42AE0000u ? bits : 0x42AE0000u;  // 0x42AE0000 = 87.0f
  float a;
  std::memcpy(&a, &bits, sizeof(a));
  const float e = exp_in_range(-a);
  const float r = 1.0f / (1.0f + e);
  return v * (v >= 0.0f ? r : e * r);
}

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

template <typename T, bool Silu>
static void affine_chunk_impl(const T* __restrict__ x, T* __restrict__ y, int64_t positions,
                              int64_t C, const float* __restrict__ a, const float* __restrict__ m,
                              const float* __restrict__ b) {
  for (int64_t p = 0; p < positions; ++p) {
    const T* xr = x + p * C;
    T* yr = y + p * C;
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
                  const float* b, bool act) {
  if (act)
    affine_chunk_impl<T, true>(x, y, positions, C, a, m, b);
  else
    affine_chunk_impl<T, false>(x, y, positions, C, a, m, b);
}

// logits[j] = sum_d q[d] * kt[d, j] for one query row. With T fixed at compile time
// the accumulators are a local array the compiler keeps in vector registers.
template <int kT>
static inline void logits(const float* __restrict__ q, const float* __restrict__ kt, int64_t D,
                          int64_t T_len, float* __restrict__ out) {
  if constexpr (kT > 0) {
    float acc[kT] = {};
    for (int64_t d = 0; d < D; ++d) {
      const float qv = q[d];
#pragma omp simd
      for (int j = 0; j < kT; ++j) acc[j] += qv * kt[d * kT + j];
    }
    for (int j = 0; j < kT; ++j) out[j] = acc[j];
  } else {
    for (int64_t j = 0; j < T_len; ++j) out[j] = 0.0f;
    for (int64_t d = 0; d < D; ++d) {
      const float qv = q[d];
#pragma omp simd
      for (int64_t j = 0; j < T_len; ++j) out[j] += qv * kt[d * T_len + j];
    }
  }
}

// Softmax attention of T query rows against one head's keys (transposed, [D, T]) and
// values: q, v and out rows are D floats apart by their row strides; p is [T, T]
// scratch.
template <int kT>
static inline void attend(const float* __restrict__ q, int64_t q_stride,
                          const float* __restrict__ kt, const float* __restrict__ v,
                          int64_t v_stride, float* __restrict__ out, int64_t out_stride, int64_t D,
                          int64_t T_len, float* __restrict__ p) {
  for (int64_t i = 0; i < T_len; ++i) {
    float* __restrict__ pi = p + i * T_len;
    logits<kT>(q + i * q_stride, kt, D, T_len, pi);
    float mx = pi[0];
#pragma omp simd reduction(max : mx)
    for (int64_t j = 0; j < T_len; ++j) mx = pi[j] > mx ? pi[j] : mx;
    float denom = 0.0f;
#pragma omp simd reduction(+ : denom)
    for (int64_t j = 0; j < T_len; ++j) {
      pi[j] = exp_approx(pi[j] - mx);
      denom += pi[j];
    }
    const float inv = 1.0f / denom;
    float* __restrict__ oi = out + i * out_stride;
    for (int64_t d = 0; d < D; ++d) oi[d] = 0.0f;
    for (int64_t j = 0; j < T_len; ++j) {
      const float w = pi[j] * inv;
      const float* __restrict__ vj = v + j * v_stride;
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) oi[d] += w * vj[d];
    }
  }
}

// A run of up to kAttentionRun positions (b, head, y, x..x+run) at a time: gather
// their [T, D] q/k/v through the strides into one float buffer set per position, laid
// out so every inner loop of the math runs over contiguous memory (k transposed to
// [D, T]: logits accumulate over keys j, the output over d), which the compiler
// vectorizes without reassociating a reduction. Softmax in float. When pixels are
// the innermost dimension (a contiguous [B, C, T, H, W] tensor), the gather and the
// store walk the run's neighbouring pixels together: each cache line read serves the
// whole run instead of one position (one position at a time read 4 bytes of every
// 64-byte line, T * D * 3 lines per position). Positions in heads-inner order
// (channels nearer than pixels) go one at a time.
// kT > 0 fixes T at compile time (the denoiser's T=16), so the loops over keys
// unroll into whole vector registers; kT == 0 takes T_len at run time.
template <typename T, int kT>
void attention_impl(const T* q, const T* k, const T* v, T* o, Strides5 sq, Strides5 sk,
                    Strides5 sv, Strides5 so, int64_t heads, int64_t D, int64_t T_run, int64_t H,
                    int64_t W, int64_t first, int64_t count, float scale, bool heads_inner,
                    float* work) {
  const int64_t T_len = kT > 0 ? kT : T_run;
  // The AVX2 head kernel (any T, D % 8 == 0) takes q transposed ([D, TP], frames
  // padded to a multiple of 8 with zeros) and k as rows, and applies the scale itself.
  const bool vector_heads = LDDM_AVX2 && D % 8 == 0;
  const int64_t TP = (T_len + 7) / 8 * 8;
  const int64_t per = attention_position_floats(T_len, D);
  // Slot r of the run: qf [T, D] pre-scaled, or [D, TP]; kt [D, T], or [T, D] for the
  // AVX2 kernel; vf [T, D]; of [T, D]; p [T, T] logits, then probabilities.
  auto qf = [&](int64_t r) { return work + r * per; };
  auto kt = [&](int64_t r) { return work + r * per + TP * D; };
  auto vf = [&](int64_t r) { return work + r * per + 2 * TP * D; };
  auto of = [&](int64_t r) { return work + r * per + 3 * TP * D; };
  auto pp = [&](int64_t r) { return work + r * per + 4 * TP * D; };
  if (vector_heads)
    for (int64_t r = 0; r < kAttentionRun; ++r)
      for (int64_t i = 0; i < TP * D; ++i) qf(r)[i] = 0.0f;  // the padding lanes stay 0
  const int64_t end = first + count;
  for (int64_t pos = first; pos < end;) {
    int64_t b, h, y, x, run = 1;
    if (heads_inner) {  // order (b, y, x, head)
      h = pos % heads;
      x = (pos / heads) % W;
      y = (pos / (heads * W)) % H;
      b = pos / (heads * W * H);
    } else {  // order (b, head, y, x): the next positions are the next pixels of a row
      x = pos % W;
      y = (pos / W) % H;
      h = (pos / (W * H)) % heads;
      b = pos / (W * H * heads);
      run = std::min({kAttentionRun, W - x, end - pos});
    }
    const T* qb = q + b * sq.b + h * D * sq.c + y * sq.h + x * sq.w;
    const T* kb = k + b * sk.b + h * D * sk.c + y * sk.h + x * sk.w;
    const T* vb = v + b * sv.b + h * D * sv.c + y * sv.h + x * sv.w;
    T* ob = o + b * so.b + h * D * so.c + y * so.h + x * so.w;
    for (int64_t t = 0; t < T_len; ++t) {
      for (int64_t d = 0; d < D; ++d) {
        const T* qtd = qb + t * sq.t + d * sq.c;
        const T* ktd = kb + t * sk.t + d * sk.c;
        const T* vtd = vb + t * sv.t + d * sv.c;
        for (int64_t r = 0; r < run; ++r) {
          if (vector_heads) {
            qf(r)[d * TP + t] = load(qtd[r * sq.w]);
            kt(r)[t * D + d] = load(ktd[r * sk.w]);
          } else {
            qf(r)[t * D + d] = load(qtd[r * sq.w]) * scale;
            kt(r)[d * T_len + t] = load(ktd[r * sk.w]);
          }
          vf(r)[t * D + d] = load(vtd[r * sv.w]);
        }
      }
    }
    for (int64_t r = 0; r < run; ++r) {
#if LDDM_AVX2
      if (vector_heads)
        attend_head(qf(r), kt(r), D, vf(r), D, of(r), D, D, T_len, scale, pp(r));
      else
#endif
        attend<kT>(qf(r), D, kt(r), vf(r), D, of(r), D, D, T_len, pp(r));
    }
    for (int64_t t = 0; t < T_len; ++t)
      for (int64_t d = 0; d < D; ++d) {
        T* otd = ob + t * so.t + d * so.c;
        for (int64_t r = 0; r < run; ++r) store(otd + r * so.w, of(r)[t * D + d]);
      }
    pos += run;
  }
}

// Channels innermost (channels_last_3d views of qkv): one task per pixel (b, y, x).
// Its T rows of C channels are contiguous runs, so they are first copied whole into
// float buffers (streaming reads; per-head gathers of 128 bytes from T far-apart rows
// are latency-bound, and rows a multiple of 4 KiB apart fight over the same L1 sets),
// then each head is computed from the buffers and the result rows are stored whole.
// With AVX2 and D % 8 == 0, q is copied transposed for attend_head and float outputs
// are written in place.
template <typename T, int kT>
void attention_pixels_impl(const T* q, const T* k, const T* v, T* o, Strides5 sq, Strides5 sk,
                           Strides5 sv, Strides5 so, int64_t heads, int64_t D, int64_t T_run,
                           int64_t H, int64_t W, int64_t first, int64_t count, float scale,
                           float* work) {
  const int64_t T_len = kT > 0 ? kT : T_run;
  const int64_t C = heads * D, TP = (T_len + 7) / 8 * 8;
  const bool vector_heads = LDDM_AVX2 && D % 8 == 0;
  float* __restrict__ qp = work;            // [T, C] pre-scaled, or [C, TP] (AVX2)
  float* __restrict__ kp = qp + TP * C;     // [T, C]
  float* __restrict__ vp = kp + TP * C;     // [T, C]
  float* __restrict__ op = vp + TP * C;     // [T, C]
  float* __restrict__ kt = op + TP * C;     // [D, T] one head's keys, transposed
  float* __restrict__ p = kt + TP * D;      // [T, T] and the AVX2 kernel's scratch
  for (int64_t pix = first; pix < first + count; ++pix) {
    const int64_t x = pix % W, y = (pix / W) % H, b = pix / (W * H);
    // The next pixel's rows are requested while this one is computed, a share of the
    // frames per head: its q, k, v and output rows lie far apart (one per frame, each
    // in its own page), which the hardware prefetchers do not follow in time, and
    // requesting them all at once would stall on the cache's miss buffers.
    const int64_t nx = (pix + 1) % W, ny = ((pix + 1) / W) % H, nb = (pix + 1) / (W * H);
    const auto prefetch_next = [&](int64_t t0, int64_t t1) {
      if (pix + 1 >= first + count) return;
      for (int64_t t = t0; t < t1; ++t) {
        const char* rows[3] = {
            reinterpret_cast<const char*>(q + nb * sq.b + t * sq.t + ny * sq.h + nx * sq.w),
            reinterpret_cast<const char*>(k + nb * sk.b + t * sk.t + ny * sk.h + nx * sk.w),
            reinterpret_cast<const char*>(v + nb * sv.b + t * sv.t + ny * sv.h + nx * sv.w)};
        const char* out =
            reinterpret_cast<const char*>(o + nb * so.b + t * so.t + ny * so.h + nx * so.w);
        for (int64_t off = 0; off < C * int64_t(sizeof(T)); off += 64) {
          for (const char* r : rows) __builtin_prefetch(r + off);
          __builtin_prefetch(out + off, 1);
        }
      }
    };
    const T* qb = q + b * sq.b + y * sq.h + x * sq.w;
    T* ob = o + b * so.b + y * so.h + x * so.w;
    for (int64_t t = 0; t < T_len; ++t) {
      const T* kr = k + b * sk.b + t * sk.t + y * sk.h + x * sk.w;
      const T* vr = v + b * sv.b + t * sv.t + y * sv.h + x * sv.w;
      if (!vector_heads) {
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) qp[t * C + c] = load(qb[t * sq.t + c]) * scale;
      }
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) kp[t * C + c] = load(kr[c]);
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) vp[t * C + c] = load(vr[c]);
    }
#if LDDM_AVX2
    if (vector_heads) {
      transpose_rows(qb, sq.t, T_len, C, qp, TP);
      for (int64_t h = 0; h < heads; ++h) {
        const int64_t c0 = h * D;
        prefetch_next(h * T_len / heads, (h + 1) * T_len / heads);
        if constexpr (std::is_same_v<T, float>)
          attend_head(qp + c0 * TP, kp + c0, C, vp + c0, C, ob + c0, so.t, D, T_len, scale, p);
        else
          attend_head(qp + c0 * TP, kp + c0, C, vp + c0, C, op + c0, C, D, T_len, scale, p);
      }
      if constexpr (std::is_same_v<T, float>) continue;
    }
#endif
    if (!vector_heads)
      for (int64_t h = 0; h < heads; ++h) {
        const int64_t c0 = h * D;
        prefetch_next(h * T_len / heads, (h + 1) * T_len / heads);
        for (int64_t t = 0; t < T_len; ++t)
          for (int64_t d = 0; d < D; ++d) kt[d * T_len + t] = kp[t * C + c0 + d];
        attend<kT>(qp + c0, C, kt, vp + c0, C, op + c0, C, D, T_len, p);
      }
    for (int64_t t = 0; t < T_len; ++t) {
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) store(ob + t * so.t + c, op[t * C + c]);
    }
  }
}

template <typename T>
void attention_pixels(const T* q, const T* k, const T* v, T* o, Strides5 sq, Strides5 sk,
                      Strides5 sv, Strides5 so, int64_t heads, int64_t D, int64_t T_len,
                      int64_t H, int64_t W, int64_t first, int64_t count, float scale,
                      float* work) {
  if (T_len == 16)
    attention_pixels_impl<T, 16>(q, k, v, o, sq, sk, sv, so, heads, D, T_len, H, W, first, count,
                                 scale, work);
  else
    attention_pixels_impl<T, 0>(q, k, v, o, sq, sk, sv, so, heads, D, T_len, H, W, first, count,
                                scale, work);
}

template <typename T>
void attention(const T* q, const T* k, const T* v, T* o, Strides5 sq, Strides5 sk, Strides5 sv,
               Strides5 so, int64_t heads, int64_t D, int64_t T_len, int64_t H, int64_t W,
               int64_t first, int64_t count, float scale, bool heads_inner, float* work) {
  if (T_len == 16)
    attention_impl<T, 16>(q, k, v, o, sq, sk, sv, so, heads, D, T_len, H, W, first, count, scale,
                          heads_inner, work);
  else
    attention_impl<T, 0>(q, k, v, o, sq, sk, sv, so, heads, D, T_len, H, W, first, count, scale,
                         heads_inner, work);
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
  k.attention_pixels = &attention_pixels<T>;
  k.sampler_step = &sampler_step<T>;
  return k;
}

}  // namespace LDDM_ISA_NAMESPACE
}  // namespace cpu
}  // namespace lddm
