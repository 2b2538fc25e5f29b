// The intrinsic building blocks of the CPU kernels, written once over the vector types of
// simd.h (V8: AVX2, V16: AVX-512) where the compiler cannot be asked for the code from
// portable loops: the reciprocal estimate (a division costs several times its
// throughput), 8x8 transposes, and the register-blocked attention of one head and of a
// vector of pixels in the lanes. Included only by kernel_common.h in the builds compiled
// for AVX2 + FMA (isa_avx2.cpp) or AVX-512 (isa_avx512.cpp).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "cpu/simd.h"

namespace lddm {
namespace cpu {
namespace LDDM_ISA_NAMESPACE {

// Vector registers of the build: the register blocks below keep their accumulators in
// them (AVX-512 has twice as many, so its blocks are larger).
inline constexpr int kRegisters = LDDM_AVX512 ? 32 : 16;

// f(std::integral_constant<int, n>{}) for a run-time n in [1, Max]: one instantiation per
// block size, so a block's accumulators are arrays of compile-time size in registers.
template <int Max, typename F>
static inline void with_count(int n, F&& f) {
  if constexpr (Max >= 1) {
    if (n == Max) return f(std::integral_constant<int, Max>{});
    with_count<Max - 1>(n, f);
  }
}

inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// --- math ------------------------------------------------------------------------

// The math below works on U vectors at once, each step applied to all of them
// before the next: one exp2 or silu is a chain of ~20 dependent instructions, and
// interleaving independent chains in program order is what keeps the FMA pipes busy
// (the out-of-order window alone covers too few of them).

// 2^x with x clamped to [-125, 125], so 2^n, the result and its reciprocal estimate
// stay normal floats; a NaN x stays NaN (max/min return their second operand when
// either is NaN). x = n + f with n the nearest integer, found by adding 1.5 * 2^23 (the
// sum's low mantissa bits are n, shifted into the exponent field by scale_pow2); 2^f on
// |f| <= 1/2 by a degree-5 polynomial with constant term 1, fitted for least maximum
// relative error: 1.9e-7 in float arithmetic.
template <typename V, int U>
static inline void exp2_clamped(typename V::reg* x) {
  using R = typename V::reg;
  const R magic = V::set1(12582912.0f);
  R shifted[U], f[U], p[U];
  for (int u = 0; u < U; ++u) x[u] = V::min(V::set1(125.0f), V::max(V::set1(-125.0f), x[u]));
  for (int u = 0; u < U; ++u) shifted[u] = V::add(x[u], magic);
  for (int u = 0; u < U; ++u) f[u] = V::sub(x[u], V::sub(shifted[u], magic));
  for (int u = 0; u < U; ++u)
    p[u] = V::fmadd(V::set1(1.3264727313e-3f), f[u], V::set1(9.6715129912e-3f));
  for (int u = 0; u < U; ++u) p[u] = V::fmadd(p[u], f[u], V::set1(5.5507335812e-2f));
  for (int u = 0; u < U; ++u) p[u] = V::fmadd(p[u], f[u], V::set1(2.4022242427e-1f));
  for (int u = 0; u < U; ++u) p[u] = V::fmadd(p[u], f[u], V::set1(6.9314700365e-1f));
  for (int u = 0; u < U; ++u) p[u] = V::fmadd(p[u], f[u], V::set1(1.0f));
  for (int u = 0; u < U; ++u) x[u] = V::scale_pow2(p[u], shifted[u]);
}

// silu(v) = v / (1 + 2^(-v log2 e)), in place. The clamp in exp2_clamped caps the
// denominator at 1 + 2^125 (v < -86.6 gives v * 2.4e-38); a NaN v stays NaN, +-inf
// stay +-inf. 1 / d is the hardware estimate and one Newton step (error ~1e-7): a
// division costs several times its throughput.
template <typename V, int U>
static inline void silu(typename V::reg* v) {
  using R = typename V::reg;
  R e[U], r[U];
  for (int u = 0; u < U; ++u) e[u] = V::mul(v[u], V::set1(-1.44269504088896341f));
  exp2_clamped<V, U>(e);
  for (int u = 0; u < U; ++u) e[u] = V::add(e[u], V::set1(1.0f));
  for (int u = 0; u < U; ++u) r[u] = V::rcp(e[u]);
  for (int u = 0; u < U; ++u) r[u] = V::fmadd(V::fnmadd(e[u], r[u], V::set1(1.0f)), r[u], r[u]);
  for (int u = 0; u < U; ++u) v[u] = V::mul(v[u], r[u]);
}

// silu'(v) = s (1 + v (1 - s)), s = sigmoid(v), in place; as silu: s = 1 / (1 + e) with
// e = 2^(-v log2 e) clamped, the reciprocal from the estimate and one Newton step. 1 - s
// is taken as e s, which keeps its precision where s rounds to 1.
template <typename V, int U>
static inline void silu_grad(typename V::reg* v) {
  using R = typename V::reg;
  const R one = V::set1(1.0f);
  R e[U], s[U];
  for (int u = 0; u < U; ++u) e[u] = V::mul(v[u], V::set1(-1.44269504088896341f));
  exp2_clamped<V, U>(e);
  for (int u = 0; u < U; ++u) {
    const R d = V::add(e[u], one), r = V::rcp(d);
    s[u] = V::fmadd(V::fnmadd(d, r, one), r, r);
  }
  for (int u = 0; u < U; ++u) v[u] = V::mul(s[u], V::fmadd(v[u], V::mul(e[u], s[u]), one));
}

#if !LDDM_AVX512
// out[j] = f(j), the V8 of floats at j, for j from 0 while 8 are left; returns the first j
// not written. For the AVX2 build, which rounds to bf16 with a dozen integer
// instructions (simd.h): by pairs of vectors, which share a pack and a permute, in a
// loop of their own. Interleaved with the FMAs of a SiLU, the same instructions made a
// [256, 1024] affine + SiLU pass 1.8x as long as in float; in a loop after it, 1.3x.
template <typename F>
static inline int64_t store_bf16_vectors(bf16_t* out, int64_t n, const F& f) {
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) V8::store2(out + j, f(j), f(j + 8));
  for (; j + 8 <= n; j += 8) V8::store(out + j, f(j));
  return j;
}
#endif

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

// qt[c, 0:TP] = rows[0:T][c] for c < C (C a multiple of 8, TP of 8), lanes T..TP zero:
// the queries of a head laid out with frames innermost, as attend_head takes them.
template <typename T>
static inline void transpose_rows(const T* rows, int64_t row_stride, int64_t T_len, int64_t C,
                                  float* __restrict__ qt, int64_t TP) {
  for (int64_t t0 = 0; t0 < TP; t0 += 8)
    for (int64_t c0 = 0; c0 < C; c0 += 8) {
      __m256 r[8];
      for (int l = 0; l < 8; ++l)
        r[l] = t0 + l < T_len ? V8::load(rows + (t0 + l) * row_stride + c0) : V8::zero();
      transpose8(r);
      for (int l = 0; l < 8; ++l) V8::store(qt + (c0 + l) * TP + t0, r[l]);
    }
}

// logsumexps in natural units, (max + log2 sum) ln 2, of the first n lanes of a softmax
// in base 2, stored at lse[l * stride].
template <typename V>
static inline void store_lse(typename V::reg mx, typename V::reg sum, int64_t n, float* lse,
                             int64_t stride) {
  alignas(64) float m[V::W], s[V::W];
  V::store(m, mx);
  V::store(s, sum);
  for (int64_t l = 0; l < n; ++l) lse[l * stride] = (m[l] + std::log2(s[l])) * 0.693147180559945309f;
}

// In place over rows[j * stride] for j < T (one vector each): rows become 2^(row - max_j),
// the result is 1 / sum_j, and mx receives max_j.
template <typename V>
static inline typename V::reg softmax2_rows(float* rows, int64_t stride, int64_t T,
                                            typename V::reg* mx_out, typename V::reg* sum_out) {
  using R = typename V::reg;
  R mx = V::load(rows);
  for (int64_t j = 1; j < T; ++j) mx = V::max(mx, V::load(rows + j * stride));
  R sum = V::zero();
  for (int64_t j = 0; j < T; j += 4) {
    const int64_t n = std::min<int64_t>(4, T - j);
    R e[4];
    for (int u = 0; u < 4; ++u) e[u] = u < n ? V::sub(V::load(rows + (j + u) * stride), mx) : mx;
    exp2_clamped<V, 4>(e);
    for (int u = 0; u < n; ++u) {
      V::store(rows + (j + u) * stride, e[u]);
      sum = V::add(sum, e[u]);
    }
  }
  *mx_out = mx;
  *sum_out = sum;
  return V::div(V::set1(1.0f), sum);
}

// --- attention of one head, queries in the lanes -------------------------------------

// o[i, 0:NV W] = inv[i] * sum_j pt[j, i] v[j, 0:NV W] for NQ query rows (W = VC::W
// channels per vector): the NQ x NV accumulators stay in registers (sizes fixed at
// compile time) while each v row is read once.
template <typename VC, int NQ, int NV>
static inline void pv_block(const float* pt, int64_t pt_stride, const float* inv, const float* v,
                            int64_t v_stride, float* o, int64_t o_stride, int64_t T) {
  typename VC::reg acc[NQ][NV];
  for (int a = 0; a < NQ; ++a)
    for (int c = 0; c < NV; ++c) acc[a][c] = VC::zero();
  for (int64_t j = 0; j < T; ++j) {
    const float* vj = v + j * v_stride;
    for (int a = 0; a < NQ; ++a) {
      const auto w = VC::broadcast(pt + j * pt_stride + a);
      for (int c = 0; c < NV; ++c) acc[a][c] = VC::fmadd(w, VC::load(vj + VC::W * c), acc[a][c]);
    }
  }
  for (int a = 0; a < NQ; ++a) {
    const auto scale = VC::broadcast(inv + a);
    for (int c = 0; c < NV; ++c) VC::store(o + a * o_stride + VC::W * c, VC::mul(acc[a][c], scale));
  }
}

// pt[j0 + a, i0:i0 + NQV W] = scale * sum_d k[j0 + a, d] qt[d, i0:...] for NK keys:
// outer products of broadcast key elements and query vectors, all NK x NQV
// accumulators in registers, no shuffles.
template <int NK, int NQV>
static inline void logits_block(const float* qt, int64_t TP, const float* k, int64_t k_stride,
                                int64_t D, Vec::reg scale, float* pt) {
  Vec::reg acc[NK][NQV];
  for (int a = 0; a < NK; ++a)
    for (int c = 0; c < NQV; ++c) acc[a][c] = Vec::zero();
  for (int64_t d = 0; d < D; ++d) {
    Vec::reg qv[NQV];
    for (int c = 0; c < NQV; ++c) qv[c] = Vec::load(qt + d * TP + Vec::W * c);
    for (int a = 0; a < NK; ++a) {
      const Vec::reg kb = Vec::broadcast(k + a * k_stride + d);
      for (int c = 0; c < NQV; ++c) acc[a][c] = Vec::fmadd(kb, qv[c], acc[a][c]);
    }
  }
  for (int a = 0; a < NK; ++a)
    for (int c = 0; c < NQV; ++c) Vec::store(pt + a * TP + Vec::W * c, Vec::mul(acc[a][c], scale));
}

// Frames rounded up to whole query vectors: attend_head's TP.
inline int64_t padded_frames(int64_t T) { return round_up(T, Vec::W); }

// out[j * TP + i] = scale * k[j] . q[i] for keys j < T and queries i < TP =
// padded_frames(T): qt is the queries transposed, [D, TP]; k rows of D floats k_stride
// apart. Register blocks of a few keys x 2 query vectors (logits_block: 2 NK
// accumulators, 2 query vectors and a broadcast, by register count).
static inline void logits_tiles(const float* qt, const float* k, int64_t k_stride, int64_t D,
                                int64_t T, Vec::reg scale, float* out) {
  constexpr int W = Vec::W;
  constexpr int kKeys = kRegisters == 32 ? 8 : 4;
  const int64_t TP = padded_frames(T);
  for (int64_t i0 = 0; i0 < TP; i0 += 2 * W) {
    const int nqv = TP - i0 >= 2 * W ? 2 : 1;
    for (int64_t j0 = 0; j0 < T; j0 += kKeys) {
      const int nk = int(std::min<int64_t>(kKeys, T - j0));
      with_count<kKeys>(nk, [&](auto NK) {
        with_count<2>(nqv, [&](auto NQV) {
          logits_block<NK, NQV>(qt + i0, TP, k + j0 * k_stride, k_stride, D, scale,
                                out + j0 * TP + i0);
        });
      });
    }
  }
}

// o[i] = sum_j softmax_j(scale * q[i] . k[j]) v[j] for T queries against T keys.
// qt: the queries transposed, [D, padded_frames(T)] (see transpose_rows); k, v, o: T
// rows of D floats (D a multiple of VC::W) at the given row strides; work: (T + 1) *
// padded_frames(T) floats.
//
// The logits are built transposed, one vector per key holding Vec::W queries
// (logits_block), so the softmax over keys is plain vertical vector math with no
// horizontal reductions. o = p v by pv_block, a few queries x 4 channel vectors at a
// time, scaled by 1 / sum at the end.
template <typename VC>
static inline void attend_head(const float* qt, const float* k, int64_t k_stride, const float* v,
                               int64_t v_stride, float* o, int64_t o_stride, int64_t D, int64_t T,
                               float scale, float* __restrict__ work, float* lse = nullptr,
                               int64_t lse_stride = 0) {
  constexpr int W = Vec::W;
  // Query rows per values block (4 NQ accumulators and a broadcast), by register count.
  constexpr int kQueries = kRegisters == 32 ? 6 : 3;
  const int64_t TP = padded_frames(T);
  float* __restrict__ pt = work;            // [T keys, TP queries]
  float* __restrict__ inv = work + T * TP;  // [TP] 1 / sum_j of each query's weights
  // Logits carry the log2 e factor: the softmax below is in base 2.
  logits_tiles(qt, k, k_stride, D, T, Vec::set1(scale * 1.44269504088896341f), pt);
  for (int64_t i0 = 0; i0 < TP; i0 += W) {
    Vec::reg mx, sum;
    Vec::store(inv + i0, softmax2_rows<Vec>(pt + i0, TP, T, &mx, &sum));
    if (lse != nullptr)
      store_lse<Vec>(mx, sum, std::min<int64_t>(W, T - i0), lse + i0 * lse_stride, lse_stride);
  }
  for (int64_t i0 = 0; i0 < T; i0 += kQueries) {
    const int nq = int(std::min<int64_t>(kQueries, T - i0));
    for (int64_t d0 = 0; d0 < D; d0 += 4 * VC::W) {
      const int nv = int(std::min<int64_t>(4, (D - d0) / VC::W));
      with_count<kQueries>(nq, [&](auto NQ) {
        with_count<4>(nv, [&](auto NV) {
          pv_block<VC, NQ, NV>(pt + i0, TP, inv + i0, v + d0, v_stride, o + i0 * o_stride + d0,
                               o_stride, T);
        });
      });
    }
  }
}

// --- attention of a vector of pixels, one per lane -----------------------------------

// One head of Vec::W neighbouring pixels with the pixels innermost, the order a
// contiguous [B, C, T, H, W] tensor holds them in: q, k, v [D, T, L], logits and
// probabilities s [T, T, L], normalisers inv [T, L], L = Vec::W. Every product is then a
// vertical vector operation: no transposes, no horizontal sums, and any head_dim
// vectorizes.
inline constexpr int64_t kLanes = Vec::W;
// Query x key rows per logits block and query rows x channels per values block: 3 x 4
// measured fastest with 16 registers (12 accumulators); 4 x 4 with 32.
inline constexpr int kLaneQueries = kRegisters == 32 ? 4 : 3;
inline constexpr int kLaneBlock = 4;

// s[i, j] (+)= scale * sum_d q[d, i] k[d, j] for NQ queries x NK keys over D channels
// (q, k, s offset to the block): NQ + NK loads feed NQ x NK FMAs into accumulators kept
// in registers.
template <int NQ, int NK>
static inline void lane_logits(const float* q, const float* k, int64_t D, int64_t T,
                               Vec::reg scale, float* s, bool add) {
  constexpr int64_t L = kLanes;
  Vec::reg acc[NQ][NK];
  for (int a = 0; a < NQ; ++a)
    for (int c = 0; c < NK; ++c) acc[a][c] = Vec::zero();
  for (int64_t d = 0; d < D; ++d) {
    Vec::reg qv[NQ];
    for (int a = 0; a < NQ; ++a) qv[a] = Vec::load(q + (d * T + a) * L);
    for (int c = 0; c < NK; ++c) {
      const Vec::reg kv = Vec::load(k + (d * T + c) * L);
      for (int a = 0; a < NQ; ++a) acc[a][c] = Vec::fmadd(qv[a], kv, acc[a][c]);
    }
  }
  for (int a = 0; a < NQ; ++a)
    for (int c = 0; c < NK; ++c) {
      float* out = s + (a * T + c) * L;
      const Vec::reg prev = add ? Vec::load(out) : Vec::zero();
      Vec::store(out, Vec::fmadd(acc[a][c], scale, prev));
    }
}

// o[d, i] = inv[i] * sum_j p[i, j] v[d, j] for NQ queries x ND channels (p, inv, v offset
// to the block), stored at o + d * o_d + i * o_t.
template <int NQ, int ND, typename U>
static inline void lane_pv(const float* p, const float* inv, const float* v, int64_t T, U* o,
                           int64_t o_d, int64_t o_t) {
  constexpr int64_t L = kLanes;
  Vec::reg acc[NQ][ND];
  for (int a = 0; a < NQ; ++a)
    for (int c = 0; c < ND; ++c) acc[a][c] = Vec::zero();
  for (int64_t j = 0; j < T; ++j) {
    Vec::reg pv[NQ];
    for (int a = 0; a < NQ; ++a) pv[a] = Vec::load(p + (a * T + j) * L);
    for (int c = 0; c < ND; ++c) {
      const Vec::reg vv = Vec::load(v + (c * T + j) * L);
      for (int a = 0; a < NQ; ++a) acc[a][c] = Vec::fmadd(pv[a], vv, acc[a][c]);
    }
  }
  for (int a = 0; a < NQ; ++a) {
    const Vec::reg r = Vec::load(inv + a * L);
    for (int c = 0; c < ND; ++c) Vec::store(o + c * o_d + a * o_t, Vec::mul(acc[a][c], r));
  }
}

// s[i, j] = scale * sum_d q[d, i] k[d, j] for T x T rows of a vector of pixels (q, k
// [D, T, L], s [T, T, L]).
static inline void lane_products(const float* q, const float* k, int64_t D, int64_t T,
                                 float scale, float* __restrict__ s) {
  constexpr int64_t L = kLanes;
  const Vec::reg vscale = Vec::set1(scale);
  // Channels in slices of 256 / L (16 KiB of a tile at T = 16), so that a slice of q and
  // k stays in L1 while the blocks sweep it; a head_dim of 64 ran 15% slower in one pass.
  constexpr int64_t slice = 256 / L;
  for (int64_t d0 = 0; d0 < D; d0 += slice) {
    const int64_t dn = std::min<int64_t>(slice, D - d0);
    for (int64_t i0 = 0; i0 < T; i0 += kLaneQueries) {
      const int nq = int(std::min<int64_t>(kLaneQueries, T - i0));
      for (int64_t j0 = 0; j0 < T; j0 += kLaneBlock) {
        const int nk = int(std::min<int64_t>(kLaneBlock, T - j0));
        with_count<kLaneQueries>(nq, [&](auto NQ) {
          with_count<kLaneBlock>(nk, [&](auto NK) {
            lane_logits<NQ, NK>(q + (d0 * T + i0) * L, k + (d0 * T + j0) * L, dn, T, vscale,
                                s + (i0 * T + j0) * L, d0 > 0);
          });
        });
      }
    }
  }
}

// The softmax half of the attention of T queries against T keys for a vector of pixels
// (buffers as above): s[i, j] = 2^(scale log2(e) q_i.k_j - max_j), unnormalised, inv[i]
// = 1 / sum_j s[i, j]; lse (when not null) receives the first n pixels' logsumexps at
// lse[i * lse_t + l * lse_w].
static inline void lane_scores(const float* q, const float* k, int64_t D, int64_t T, float scale,
                               float* __restrict__ s, float* __restrict__ inv, float* lse,
                               int64_t lse_t, int64_t lse_w, int64_t n) {
  constexpr int64_t L = kLanes;
  // Logits carry the log2 e factor: the softmax below is in base 2.
  lane_products(q, k, D, T, scale * 1.44269504088896341f, s);
  for (int64_t i = 0; i < T; ++i) {
    Vec::reg mx, sum;
    Vec::store(inv + i * L, softmax2_rows<Vec>(s + i * T * L, L, T, &mx, &sum));
    if (lse != nullptr) store_lse<Vec>(mx, sum, n, lse + i * lse_t, lse_w);
  }
}

// The values half: o[d, i] = inv[i] * sum_j s[i, j] v[d, j] (s, inv from lane_scores),
// a vector of lanes stored at o + d * o_d + i * o_t: a float buffer, or the output tensor
// itself. Channel blocks outermost: a block of v (4 channels, 2-4 KiB) stays in L1 while
// the probabilities stream past it, instead of all of v per block of queries.
template <typename U>
static inline void lane_values(const float* s, const float* inv, const float* v, int64_t D,
                               int64_t T, U* o, int64_t o_d, int64_t o_t) {
  constexpr int64_t L = kLanes;
  for (int64_t d0 = 0; d0 < D; d0 += kLaneBlock) {
    const int nd = int(std::min<int64_t>(kLaneBlock, D - d0));
    for (int64_t i0 = 0; i0 < T; i0 += kLaneQueries) {
      const int nq = int(std::min<int64_t>(kLaneQueries, T - i0));
      with_count<kLaneQueries>(nq, [&](auto NQ) {
        with_count<kLaneBlock>(nd, [&](auto ND) {
          lane_pv<NQ, ND>(s + i0 * T * L, inv + i0 * L, v + d0 * T * L, T,
                          o + d0 * o_d + i0 * o_t, o_d, o_t);
        });
      });
    }
  }
}

}  // namespace LDDM_ISA_NAMESPACE
}  // namespace cpu
}  // namespace lddm
