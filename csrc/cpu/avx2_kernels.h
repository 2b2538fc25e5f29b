// AVX2 + FMA building blocks of the CPU kernels, written with intrinsics where the
// compiler cannot be asked for the instruction from portable loops: the reciprocal
// estimate (a division costs several times its throughput), 8x8 transposes, and the
// register-blocked attention of one head and of 8 pixels in the lanes. Included only by
// cpu_kernels_impl.h in the build compiled with -mavx2 -mfma (isa_avx2.cpp).
#pragma once

#if !(defined(__AVX2__) && defined(__FMA__))
#error "avx2_kernels.h needs -mavx2 -mfma"
#endif

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "cpu/cpu_kernels.h"

namespace lddm {
namespace cpu {
namespace isa_avx2 {

// --- loads and stores of 8 values as floats -------------------------------------

static inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
static inline __m256 load8(const bf16_t* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
static inline void store8(float* p, __m256 v) { _mm256_storeu_ps(p, v); }
// Round to nearest even, NaN stays a quiet NaN (as the scalar store in the impl).
static inline void store8(bf16_t* p, __m256 v) {
  const __m256i u = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF)));
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7FC00000), nan);
  r = _mm256_srli_epi32(r, 16);
  // packus works per 128-bit lane: [a0..a3 b0..b3 | a4..a7 b4..b7] -> fix the order.
  const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(packed));
}

// --- math ------------------------------------------------------------------------

// The math below works on U vectors at once, each step applied to all of them
// before the next: one exp2 or silu is a chain of ~20 dependent instructions, and
// interleaving independent chains in program order is what keeps the FMA pipes busy
// (the out-of-order window alone covers too few of them).

// 2^x with x clamped to [-125, 125], so 2^n, the result and its reciprocal estimate
// stay normal floats; a NaN x stays NaN (max/min return their second operand when
// either is NaN). x = n + f with n the nearest integer, found by adding 1.5 * 2^23 (the
// sum's low mantissa bits are n, shifted into the exponent field below); 2^f on
// |f| <= 1/2 by a degree-5 polynomial with constant term 1, fitted for least maximum
// relative error: 1.9e-7 in float arithmetic.
template <int U>
static inline void exp2_clamped(__m256* x) {
  const __m256 magic = _mm256_set1_ps(12582912.0f);
  __m256 shifted[U], f[U], p[U];
  for (int u = 0; u < U; ++u)
    x[u] = _mm256_min_ps(_mm256_set1_ps(125.0f), _mm256_max_ps(_mm256_set1_ps(-125.0f), x[u]));
  for (int u = 0; u < U; ++u) shifted[u] = _mm256_add_ps(x[u], magic);
  for (int u = 0; u < U; ++u) f[u] = _mm256_sub_ps(x[u], _mm256_sub_ps(shifted[u], magic));
  for (int u = 0; u < U; ++u)
    p[u] = _mm256_fmadd_ps(_mm256_set1_ps(1.3264727313e-3f), f[u],
                           _mm256_set1_ps(9.6715129912e-3f));
  for (int u = 0; u < U; ++u) p[u] = _mm256_fmadd_ps(p[u], f[u], _mm256_set1_ps(5.5507335812e-2f));
  for (int u = 0; u < U; ++u) p[u] = _mm256_fmadd_ps(p[u], f[u], _mm256_set1_ps(2.4022242427e-1f));
  for (int u = 0; u < U; ++u) p[u] = _mm256_fmadd_ps(p[u], f[u], _mm256_set1_ps(6.9314700365e-1f));
  for (int u = 0; u < U; ++u) p[u] = _mm256_fmadd_ps(p[u], f[u], _mm256_set1_ps(1.0f));
  // p * 2^n by adding n to p's exponent (an integer add instead of a multiply).
  for (int u = 0; u < U; ++u)
    x[u] = _mm256_castsi256_ps(_mm256_add_epi32(
        _mm256_castps_si256(p[u]), _mm256_slli_epi32(_mm256_castps_si256(shifted[u]), 23)));
}

// silu(v) = v / (1 + 2^(-v log2 e)), in place. The clamp in exp2_clamped caps the
// denominator at 1 + 2^125 (v < -86.6 gives v * 2.4e-38); a NaN v stays NaN, +-inf
// stay +-inf. 1 / d is the 12-bit estimate and one Newton step (error ~1e-7): a
// division costs several times its throughput.
template <int U>
static inline void silu(__m256* v) {
  __m256 e[U], r[U];
  for (int u = 0; u < U; ++u) e[u] = _mm256_mul_ps(v[u], _mm256_set1_ps(-1.44269504088896341f));
  exp2_clamped<U>(e);
  for (int u = 0; u < U; ++u) e[u] = _mm256_add_ps(e[u], _mm256_set1_ps(1.0f));
  for (int u = 0; u < U; ++u) r[u] = _mm256_rcp_ps(e[u]);
  for (int u = 0; u < U; ++u)
    r[u] = _mm256_fmadd_ps(_mm256_fnmadd_ps(e[u], r[u], _mm256_set1_ps(1.0f)), r[u], r[u]);
  for (int u = 0; u < U; ++u) v[u] = _mm256_mul_ps(v[u], r[u]);
}

// In place: r[i][l] becomes r[l][i].
static inline void transpose8(__m256 r[8]) {
  __m256 t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
    u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
    r[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
  }
}

// qt[c, 0:TP] = rows[0:T][c] for c < C (C a multiple of 8), lanes T..TP zero: the
// queries of a head laid out with frames innermost, as attend_head takes them.
template <typename T>
static inline void transpose_rows(const T* rows, int64_t row_stride, int64_t T_len, int64_t C,
                                  float* __restrict__ qt, int64_t TP) {
  for (int64_t t0 = 0; t0 < TP; t0 += 8)
    for (int64_t c0 = 0; c0 < C; c0 += 8) {
      __m256 r[8];
      for (int l = 0; l < 8; ++l)
        r[l] = t0 + l < T_len ? load8(rows + (t0 + l) * row_stride + c0) : _mm256_setzero_ps();
      transpose8(r);
      for (int l = 0; l < 8; ++l) _mm256_storeu_ps(qt + (c0 + l) * TP + t0, r[l]);
    }
}

// --- attention of one head --------------------------------------------------------

inline int64_t round_up8(int64_t n) { return (n + 7) / 8 * 8; }

// o[i, 0:8 NV] = inv[i] * sum_j pt[j, i] v[j, 0:8 NV] for NQ query rows: the NQ x NV
// accumulators stay in registers (sizes fixed at compile time) while each v row is
// read once.
template <int NQ, int NV>
static inline void pv_block(const float* pt, int64_t pt_stride, const float* inv, const float* v,
                            int64_t v_stride, float* o, int64_t o_stride, int64_t T) {
  __m256 acc[NQ][NV];
  for (int a = 0; a < NQ; ++a)
    for (int c = 0; c < NV; ++c) acc[a][c] = _mm256_setzero_ps();
  for (int64_t j = 0; j < T; ++j) {
    const float* vj = v + j * v_stride;
    for (int a = 0; a < NQ; ++a) {
      const __m256 w = _mm256_broadcast_ss(pt + j * pt_stride + a);
      for (int c = 0; c < NV; ++c)
        acc[a][c] = _mm256_fmadd_ps(w, _mm256_loadu_ps(vj + 8 * c), acc[a][c]);
    }
  }
  for (int a = 0; a < NQ; ++a) {
    const __m256 scale = _mm256_broadcast_ss(inv + a);
    for (int c = 0; c < NV; ++c)
      _mm256_storeu_ps(o + a * o_stride + 8 * c, _mm256_mul_ps(acc[a][c], scale));
  }
}

// pt[j0 + a, i0:i0 + 8 NQV] = scale * sum_d k[j0 + a, d] qt[d, i0:...] for NK keys:
// outer products of broadcast key elements and query vectors, all NK x NQV
// accumulators in registers, no shuffles.
template <int NK, int NQV>
static inline void logits_block(const float* qt, int64_t TP, const float* k, int64_t k_stride,
                                int64_t D, __m256 scale, float* pt) {
  __m256 acc[NK][NQV];
  for (int a = 0; a < NK; ++a)
    for (int c = 0; c < NQV; ++c) acc[a][c] = _mm256_setzero_ps();
  for (int64_t d = 0; d < D; ++d) {
    __m256 qv[NQV];
    for (int c = 0; c < NQV; ++c) qv[c] = _mm256_loadu_ps(qt + d * TP + 8 * c);
    for (int a = 0; a < NK; ++a) {
      const __m256 kb = _mm256_broadcast_ss(k + a * k_stride + d);
      for (int c = 0; c < NQV; ++c) acc[a][c] = _mm256_fmadd_ps(kb, qv[c], acc[a][c]);
    }
  }
  for (int a = 0; a < NK; ++a)
    for (int c = 0; c < NQV; ++c)
      _mm256_storeu_ps(pt + a * TP + 8 * c, _mm256_mul_ps(acc[a][c], scale));
}

// o[i] = sum_j softmax_j(scale * q[i] . k[j]) v[j] for T queries against T keys.
// qt: the queries transposed, [D, round_up8(T)] (see transpose_rows); k, v, o: T rows
// of D floats (D a multiple of 8) at the given row strides; work: (T + 1) *
// round_up8(T) floats.
//
// The logits are built transposed, one vector per key holding 8 queries
// (logits_block), so the softmax over keys is plain vertical vector math with no
// horizontal reductions. o = p v by pv_block, 3 queries x 32 channels at a time,
// scaled by 1 / sum at the end.
static inline void attend_head(const float* qt, const float* k, int64_t k_stride, const float* v,
                               int64_t v_stride, float* o, int64_t o_stride, int64_t D, int64_t T,
                               float scale, float* __restrict__ work, float* lse = nullptr,
                               int64_t lse_stride = 0) {
  const int64_t TP = round_up8(T);
  float* __restrict__ pt = work;            // [T keys, TP queries]
  float* __restrict__ inv = work + T * TP;  // [TP] 1 / sum_j of each query's weights
  // Logits carry the log2 e factor: the softmax below is in base 2.
  const __m256 scale_log2e = _mm256_set1_ps(scale * 1.44269504088896341f);
  for (int64_t i0 = 0; i0 < TP; i0 += 16) {
    const int nqv = TP - i0 >= 16 ? 2 : 1;
    for (int64_t j0 = 0; j0 < T; j0 += 4) {
      const int nk = int(std::min<int64_t>(4, T - j0));
      const float* kj = k + j0 * k_stride;
      float* pj = pt + j0 * TP + i0;
      switch (nk * 2 + nqv - 1) {
#define LDDM_QK_CASE(NK, NQV)                                            \
  case NK * 2 + NQV - 1:                                                 \
    logits_block<NK, NQV>(qt + i0, TP, kj, k_stride, D, scale_log2e, pj); \
    break;
        LDDM_QK_CASE(4, 2) LDDM_QK_CASE(3, 2) LDDM_QK_CASE(2, 2) LDDM_QK_CASE(1, 2)
        LDDM_QK_CASE(4, 1) LDDM_QK_CASE(3, 1) LDDM_QK_CASE(2, 1) LDDM_QK_CASE(1, 1)
#undef LDDM_QK_CASE
      }
    }
  }
  for (int64_t i0 = 0; i0 < TP; i0 += 8) {
    __m256 mx = _mm256_loadu_ps(pt + i0);
    for (int64_t j = 1; j < T; ++j) mx = _mm256_max_ps(mx, _mm256_loadu_ps(pt + j * TP + i0));
    __m256 sum = _mm256_setzero_ps();
    for (int64_t j = 0; j < T; j += 4) {
      const int64_t n = std::min<int64_t>(4, T - j);
      __m256 e[4];
      for (int u = 0; u < 4; ++u)
        e[u] = u < n ? _mm256_sub_ps(_mm256_loadu_ps(pt + (j + u) * TP + i0), mx) : mx;
      exp2_clamped<4>(e);
      for (int u = 0; u < n; ++u) {
        _mm256_storeu_ps(pt + (j + u) * TP + i0, e[u]);
        sum = _mm256_add_ps(sum, e[u]);
      }
    }
    _mm256_storeu_ps(inv + i0, _mm256_div_ps(_mm256_set1_ps(1.0f), sum));
    if (lse != nullptr) {  // logsumexp in natural units: (max + log2 sum) ln 2
      alignas(32) float mx8[8], sum8[8];
      _mm256_store_ps(mx8, mx);
      _mm256_store_ps(sum8, sum);
      for (int64_t l = 0; l < 8 && i0 + l < T; ++l)
        lse[(i0 + l) * lse_stride] = (mx8[l] + std::log2(sum8[l])) * 0.693147180559945309f;
    }
  }
  // o = p v in blocks of NQ queries x 8 NV channels.
  for (int64_t i0 = 0; i0 < T; i0 += 3) {
    const int nq = int(std::min<int64_t>(3, T - i0));
    for (int64_t d0 = 0; d0 < D; d0 += 32) {
      const int nv = int(std::min<int64_t>(4, (D - d0) / 8));
      const float* vd = v + d0;
      float* od = o + i0 * o_stride + d0;
      switch (nq * 4 + nv - 1) {
#define LDDM_PV_CASE(NQ, NV)                                              \
  case NQ * 4 + NV - 1:                                                   \
    pv_block<NQ, NV>(pt + i0, TP, inv + i0, vd, v_stride, od, o_stride, T); \
    break;
        LDDM_PV_CASE(3, 4) LDDM_PV_CASE(3, 3) LDDM_PV_CASE(3, 2) LDDM_PV_CASE(3, 1)
        LDDM_PV_CASE(2, 4) LDDM_PV_CASE(2, 3) LDDM_PV_CASE(2, 2) LDDM_PV_CASE(2, 1)
        LDDM_PV_CASE(1, 4) LDDM_PV_CASE(1, 3) LDDM_PV_CASE(1, 2) LDDM_PV_CASE(1, 1)
#undef LDDM_PV_CASE
      }
    }
  }
}

// --- attention of 8 pixels, one per vector lane -------------------------------------

// One head of 8 neighbouring pixels with the pixels innermost, the order a contiguous
// [B, C, T, H, W] tensor holds them in: q, k, v [D, T, 8], logits and probabilities
// s [T, T, 8], normalisers inv [T, 8]. Every product is then a vertical vector
// operation: no transposes, no horizontal sums, and any head_dim vectorizes.

// s[i, j] (+)= scale * sum_d q[d, i] k[d, j] for NQ queries x NK keys over D channels
// (q, k, s offset to the block): NQ + NK loads feed NQ x NK FMAs into accumulators kept
// in registers (3 x 4 measured fastest: 12 accumulators, 16 registers in all).
template <int NQ, int NK>
static inline void lane_logits(const float* q, const float* k, int64_t D, int64_t T,
                               __m256 scale, float* s, bool add) {
  __m256 acc[NQ][NK];
  for (int a = 0; a < NQ; ++a)
    for (int c = 0; c < NK; ++c) acc[a][c] = _mm256_setzero_ps();
  for (int64_t d = 0; d < D; ++d) {
    __m256 qv[NQ];
    for (int a = 0; a < NQ; ++a) qv[a] = _mm256_loadu_ps(q + (d * T + a) * 8);
    for (int c = 0; c < NK; ++c) {
      const __m256 kv = _mm256_loadu_ps(k + (d * T + c) * 8);
      for (int a = 0; a < NQ; ++a) acc[a][c] = _mm256_fmadd_ps(qv[a], kv, acc[a][c]);
    }
  }
  for (int a = 0; a < NQ; ++a)
    for (int c = 0; c < NK; ++c) {
      float* out = s + (a * T + c) * 8;
      const __m256 prev = add ? _mm256_loadu_ps(out) : _mm256_setzero_ps();
      _mm256_storeu_ps(out, _mm256_fmadd_ps(acc[a][c], scale, prev));
    }
}

// o[d, i] = inv[i] * sum_j p[i, j] v[d, j] for NQ queries x ND channels (p, inv, v offset
// to the block), stored at o + d * o_d + i * o_t.
template <int NQ, int ND, typename U>
static inline void lane_pv(const float* p, const float* inv, const float* v, int64_t T, U* o,
                           int64_t o_d, int64_t o_t) {
  __m256 acc[NQ][ND];
  for (int a = 0; a < NQ; ++a)
    for (int c = 0; c < ND; ++c) acc[a][c] = _mm256_setzero_ps();
  for (int64_t j = 0; j < T; ++j) {
    __m256 pv[NQ];
    for (int a = 0; a < NQ; ++a) pv[a] = _mm256_loadu_ps(p + (a * T + j) * 8);
    for (int c = 0; c < ND; ++c) {
      const __m256 vv = _mm256_loadu_ps(v + (c * T + j) * 8);
      for (int a = 0; a < NQ; ++a) acc[a][c] = _mm256_fmadd_ps(pv[a], vv, acc[a][c]);
    }
  }
  for (int a = 0; a < NQ; ++a) {
    const __m256 r = _mm256_loadu_ps(inv + a * 8);
    for (int c = 0; c < ND; ++c) store8(o + c * o_d + a * o_t, _mm256_mul_ps(acc[a][c], r));
  }
}

// The softmax half of the attention of T queries against T keys for 8 pixels (buffers
// as above): s[i, j] = 2^(scale log2(e) q_i.k_j - max_j), unnormalised, inv[i] = 1 /
// sum_j s[i, j]; lse (when not null) receives the first n pixels' logsumexps at
// lse[i * lse_t + l * lse_w].
static inline void lane_scores(const float* q, const float* k, int64_t D, int64_t T, float scale,
                               float* __restrict__ s, float* __restrict__ inv, float* lse,
                               int64_t lse_t, int64_t lse_w, int64_t n) {
  // Logits carry the log2 e factor: the softmax below is in base 2.
  const __m256 scale_log2e = _mm256_set1_ps(scale * 1.44269504088896341f);
  // Channels in slices of 32, so that a slice of q and k (16 KiB each) stays in L1 while
  // the blocks sweep it; a head_dim of 64 ran 15% slower in one pass.
  for (int64_t d0 = 0; d0 < D; d0 += 32) {
    const int64_t dn = std::min<int64_t>(32, D - d0);
    for (int64_t i0 = 0; i0 < T; i0 += 3) {
      const int nq = int(std::min<int64_t>(3, T - i0));
      for (int64_t j0 = 0; j0 < T; j0 += 4) {
        const int nk = int(std::min<int64_t>(4, T - j0));
        const float* qi = q + (d0 * T + i0) * 8;
        const float* kj = k + (d0 * T + j0) * 8;
        float* sij = s + (i0 * T + j0) * 8;
        switch (nq * 4 + nk - 1) {
#define LDDM_LANE_QK_CASE(NQ, NK)                                        \
  case NQ * 4 + NK - 1:                                                  \
    lane_logits<NQ, NK>(qi, kj, dn, T, scale_log2e, sij, d0 > 0);        \
    break;
          LDDM_LANE_QK_CASE(3, 4) LDDM_LANE_QK_CASE(3, 3) LDDM_LANE_QK_CASE(3, 2)
          LDDM_LANE_QK_CASE(3, 1) LDDM_LANE_QK_CASE(2, 4) LDDM_LANE_QK_CASE(2, 3)
          LDDM_LANE_QK_CASE(2, 2) LDDM_LANE_QK_CASE(2, 1) LDDM_LANE_QK_CASE(1, 4)
          LDDM_LANE_QK_CASE(1, 3) LDDM_LANE_QK_CASE(1, 2) LDDM_LANE_QK_CASE(1, 1)
#undef LDDM_LANE_QK_CASE
        }
      }
    }
  }
  for (int64_t i = 0; i < T; ++i) {
    float* si = s + i * T * 8;
    __m256 mx = _mm256_loadu_ps(si);
    for (int64_t j = 1; j < T; ++j) mx = _mm256_max_ps(mx, _mm256_loadu_ps(si + j * 8));
    __m256 sum = _mm256_setzero_ps();
    for (int64_t j = 0; j < T; j += 4) {
      const int64_t m = std::min<int64_t>(4, T - j);
      __m256 e[4];
      for (int u = 0; u < 4; ++u)
        e[u] = u < m ? _mm256_sub_ps(_mm256_loadu_ps(si + (j + u) * 8), mx) : mx;
      exp2_clamped<4>(e);
      for (int u = 0; u < m; ++u) {
        _mm256_storeu_ps(si + (j + u) * 8, e[u]);
        sum = _mm256_add_ps(sum, e[u]);
      }
    }
    _mm256_storeu_ps(inv + i * 8, _mm256_div_ps(_mm256_set1_ps(1.0f), sum));
    if (lse != nullptr) {  // logsumexp in natural units: (max + log2 sum) ln 2
      alignas(32) float mx8[8], sum8[8];
      _mm256_store_ps(mx8, mx);
      _mm256_store_ps(sum8, sum);
      for (int64_t l = 0; l < n; ++l)
        lse[i * lse_t + l * lse_w] = (mx8[l] + std::log2(sum8[l])) * 0.693147180559945309f;
    }
  }
}

// The values half: o[d, i] = inv[i] * sum_j s[i, j] v[d, j] (s, inv from lane_scores),
// 8 lanes stored at o + d * o_d + i * o_t: a float buffer, or the output tensor itself.
// Channel blocks outermost: a block of v (4 channels, 2 KiB) stays in L1 while the
// probabilities stream past it, instead of all of v (16-32 KiB) per block of queries.
template <typename U>
static inline void lane_values(const float* s, const float* inv, const float* v, int64_t D,
                               int64_t T, U* o, int64_t o_d, int64_t o_t) {
  for (int64_t d0 = 0; d0 < D; d0 += 4) {
    const int nd = int(std::min<int64_t>(4, D - d0));
    for (int64_t i0 = 0; i0 < T; i0 += 3) {
      const int nq = int(std::min<int64_t>(3, T - i0));
      const float* pi = s + i0 * T * 8;
      const float* vd = v + d0 * T * 8;
      U* od = o + d0 * o_d + i0 * o_t;
      switch (nq * 4 + nd - 1) {
#define LDDM_LANE_PV_CASE(NQ, ND)                                \
  case NQ * 4 + ND - 1:                                          \
    lane_pv<NQ, ND>(pi, inv + i0 * 8, vd, T, od, o_d, o_t);      \
    break;
        LDDM_LANE_PV_CASE(3, 4) LDDM_LANE_PV_CASE(3, 3) LDDM_LANE_PV_CASE(3, 2)
        LDDM_LANE_PV_CASE(3, 1) LDDM_LANE_PV_CASE(2, 4) LDDM_LANE_PV_CASE(2, 3)
        LDDM_LANE_PV_CASE(2, 2) LDDM_LANE_PV_CASE(2, 1) LDDM_LANE_PV_CASE(1, 4)
        LDDM_LANE_PV_CASE(1, 3) LDDM_LANE_PV_CASE(1, 2) LDDM_LANE_PV_CASE(1, 1)
#undef LDDM_LANE_PV_CASE
      }
    }
  }
}

}  // namespace isa_avx2
}  // namespace cpu
}  // namespace lddm
