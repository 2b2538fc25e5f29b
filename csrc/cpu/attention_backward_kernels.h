// temporal_attention's backward CPU kernel, FlashAttention-style: the probabilities
// are recomputed from q, k and the forward's logsumexp instead of being stored. See
// kernel_common.h for how the instruction-set builds include this.
//
// Per position (b, head, y, x), with s_ij = scale q_i . k_j and P_ij = exp(s_ij - lse_i):
//   dv_j = sum_i P_ij do_i,   dP_ij = do_i . v_j,   D_i = sum_j P_ij dP_ij,
//   dS_ij = P_ij (dP_ij - D_i),   dq_i = scale sum_j dS_ij k_j,   dk_j = scale sum_i dS_ij q_i
// D_i equals do_i . o_i, but the forward's o is rounded to its storage dtype (bf16:
// 3 significant digits), so it is summed from the float P and dP of the row instead.
#pragma once

#include "cpu/attention_kernels.h"
#include "cpu/kernel_common.h"

namespace lddm {
namespace cpu {
namespace LDDM_ISA_NAMESPACE {

static inline float dot(const float* __restrict__ a, const float* __restrict__ b, int64_t n) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

// y += a x over n floats.
static inline void axpy(float a, const float* __restrict__ x, float* __restrict__ y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

// The gradients of one position from its gathered [T, D] rows (q pre-scaled); lse: its
// T logsumexps, lse_stride apart; p, dp: [T] scratch rows.
static inline void attend_backward(const float* __restrict__ q, const float* __restrict__ k,
                                   const float* __restrict__ v, const float* __restrict__ go,
                                   const float* lse, int64_t lse_stride, float* __restrict__ dq,
                                   float* __restrict__ dk, float* __restrict__ dv, int64_t D,
                                   int64_t T, float scale, float* __restrict__ p,
                                   float* __restrict__ dp) {
  for (int64_t i = 0; i < T * D; ++i) dq[i] = dk[i] = dv[i] = 0.0f;
  for (int64_t i = 0; i < T; ++i) {
    const float l = lse[i * lse_stride];
    const float* __restrict__ qi = q + i * D;
    const float* __restrict__ goi = go + i * D;
    float sum = 0.0f;
    for (int64_t j = 0; j < T; ++j) {
      p[j] = exp_approx(dot(qi, k + j * D, D) - l);
      dp[j] = dot(goi, v + j * D, D);
      sum += p[j];
    }
    // The logits are summed in another order than the forward's, so exp(s - lse) sums to
    // 1 only within rounding; dividing by the sum makes the row an exact distribution
    // (one key: exactly 1, so dq = dk = 0 as they must be).
    float di = 0.0f;
    for (int64_t j = 0; j < T; ++j) {
      p[j] = p[j] / sum;
      di += p[j] * dp[j];
    }
    for (int64_t j = 0; j < T; ++j) {
      const float ds = p[j] * (dp[j] - di);
      axpy(p[j], goi, dv + j * D, D);
      axpy(ds, k + j * D, dq + i * D, D);
      axpy(ds, qi, dk + j * D, D);  // q is pre-scaled: dk carries its scale
    }
  }
  for (int64_t i = 0; i < T * D; ++i) dq[i] *= scale;
}

// Positions (b, y, x, head) when heads_inner, else (b, head, y, x) with runs of up to
// kAttentionRun neighbouring pixels gathered together, so each cache line of a
// contiguous [B, C, T, H, W] tensor serves the whole run.
template <typename T>
void attention_backward(const AttentionGrad<T>& a, int64_t first, int64_t count, float* work) {
  const int64_t heads = a.heads, D = a.D, T_len = a.T_len, H = a.H, W = a.W;
  const int64_t TD = T_len * D, per = attention_grad_position_floats(T_len, D);
  // Slot r: 7 [T, D] buffers (q, k, v, do, dq, dk, dv), then the p and dp rows [T].
  const auto buf = [&](int64_t r, int64_t which) { return work + r * per + which * TD; };
  const int64_t end = first + count;
  for (int64_t pos = first; pos < end;) {
    int64_t b, h, y, x, run = 1;
    if (a.heads_inner) {
      h = pos % heads;
      x = (pos / heads) % W;
      y = (pos / (heads * W)) % H;
      b = pos / (heads * W * H);
    } else {
      x = pos % W;
      y = (pos / W) % H;
      h = (pos / (W * H)) % heads;
      b = pos / (W * H * heads);
      run = std::min({kAttentionRun, W - x, end - pos});
    }
    const auto at = [&](const Strides5& s) { return b * s.b + h * D * s.c + y * s.h + x * s.w; };
    const T* src[4] = {a.q + at(a.sq), a.k + at(a.sk), a.v + at(a.sv), a.dout + at(a.sdo)};
    const Strides5* sst[4] = {&a.sq, &a.sk, &a.sv, &a.sdo};
    for (int which = 0; which < 4; ++which) {
      const Strides5& s = *sst[which];
      const float mul = which == 0 ? a.scale : 1.0f;
      for (int64_t t = 0; t < T_len; ++t)
        for (int64_t d = 0; d < D; ++d) {
          const T* e = src[which] + t * s.t + d * s.c;
          for (int64_t r = 0; r < run; ++r) buf(r, which)[t * D + d] = load(e[r * s.w]) * mul;
        }
    }
    const float* lse = a.lse + (b * heads + h) * T_len * H * W + y * W + x;
    for (int64_t r = 0; r < run; ++r)
      attend_backward(buf(r, 0), buf(r, 1), buf(r, 2), buf(r, 3), lse + r, H * W, buf(r, 4),
                      buf(r, 5), buf(r, 6), D, T_len, a.scale, buf(r, 7), buf(r, 7) + T_len);
    T* dst[3] = {a.dq + at(a.sdq), a.dk + at(a.sdk), a.dv + at(a.sdv)};
    const Strides5* dstr[3] = {&a.sdq, &a.sdk, &a.sdv};
    for (int which = 0; which < 3; ++which) {
      const Strides5& s = *dstr[which];
      for (int64_t t = 0; t < T_len; ++t)
        for (int64_t d = 0; d < D; ++d) {
          T* e = dst[which] + t * s.t + d * s.c;
          for (int64_t r = 0; r < run; ++r) store(e + r * s.w, buf(r, 4 + which)[t * D + d]);
        }
    }
    pos += run;
  }
}

#if LDDM_SIMD
// dst[j, i] = src[i, j] for T x T vectors of lanes.
static inline void transpose_lanes(const float* __restrict__ src, int64_t T,
                                   float* __restrict__ dst) {
  for (int64_t i = 0; i < T; ++i)
    for (int64_t j = 0; j < T; ++j)
      Vec::store(dst + (j * T + i) * kLanes, Vec::load(src + (i * T + j) * kLanes));
}

// The gradients of one head of a vector of pixels, one per lane, from its tiles q, k, v,
// go [D, T, L] and logsumexps lse [T, L] (natural units). The formulas of
// attend_backward, each product a vertical one (the forward's lane kernels):
//   P = 2^(log2(e) (scale q.k - lse)), each row divided by its sum (see attend_backward),
//   dP = go . v,  dS = P (dP - sum_j P dP),  dv = P^T go,  dq = scale dS k,  dk = scale dS^T q.
// In place, each tile taking a gradient once it is no longer read: dv goes to v, dq to
// go and dk to k. dS is kept with its scale applied. p, ds, pt: [T, T, L] scratch; ones:
// [T, L] of 1 (lane_values' normalisers).
static inline void lane_backward(const float* q, float* k, float* v, float* go, const float* lse,
                                 const float* ones, int64_t D, int64_t T, float scale,
                                 float* __restrict__ p, float* __restrict__ ds,
                                 float* __restrict__ pt) {
  constexpr int64_t L = kLanes;
  const float log2e = 1.44269504088896341f;
  lane_products(q, k, D, T, scale * log2e, p);
  lane_products(go, v, D, T, 1.0f, ds);
  for (int64_t i = 0; i < T; ++i) {
    float* pi = p + i * T * L;
    float* dsi = ds + i * T * L;
    const Vec::reg shift = Vec::mul(Vec::load(lse + i * L), Vec::set1(log2e));
    Vec::reg sum = Vec::zero();
    for (int64_t j = 0; j < T; j += 4) {
      const int64_t m = std::min<int64_t>(4, T - j);
      Vec::reg e[4];
      for (int u = 0; u < 4; ++u)
        e[u] = u < m ? Vec::sub(Vec::load(pi + (j + u) * L), shift) : Vec::zero();
      exp2_clamped<Vec, 4>(e);
      for (int u = 0; u < m; ++u) {
        Vec::store(pi + (j + u) * L, e[u]);
        sum = Vec::add(sum, e[u]);
      }
    }
    const Vec::reg inv = Vec::div(Vec::set1(1.0f), sum);
    Vec::reg di = Vec::zero();
    for (int64_t j = 0; j < T; ++j) {
      const Vec::reg pij = Vec::mul(Vec::load(pi + j * L), inv);
      Vec::store(pi + j * L, pij);
      di = Vec::fmadd(pij, Vec::load(dsi + j * L), di);
    }
    const Vec::reg vscale = Vec::set1(scale);
    for (int64_t j = 0; j < T; ++j)
      Vec::store(dsi + j * L, Vec::mul(Vec::mul(Vec::load(pi + j * L), vscale),
                                       Vec::sub(Vec::load(dsi + j * L), di)));
  }
  transpose_lanes(p, T, pt);
  lane_values(pt, ones, go, D, T, v, T * L, L);  // dv; v is free after dP
  lane_values(ds, ones, k, D, T, go, T * L, L);  // dq; go is free after dv
  transpose_lanes(ds, T, pt);
  lane_values(pt, ones, q, D, T, k, T * L, L);  // dk; k is free after dq
}

// The backward in the forward's tiles (attention_lanes). One task is g.heads heads of
// g.pixels neighbouring pixels of a row (g = attention_grad_tasks): all heads of one
// vector of pixels where a pixel's channels are adjacent (heads_inner: its rows are then
// read and written whole), else one head of a chunk. q, k, v and the output gradient are
// gathered into float tiles [g.heads * D, T, L] (a head's block of a tile is [D, T, L]),
// each head of each tile computed by lane_backward in place, and dq, dk, dv scattered
// back through their strides. a.H, a.W: the launcher may merge rows into one (see
// temporal_attention.cpp); the logsumexps are contiguous [B, heads, T, a.H, a.W].
template <typename T>
void attention_backward_lanes(const AttentionGrad<T>& a, int64_t first, int64_t count,
                              float* work) {
  constexpr int64_t L = kLanes;
  const int64_t D = a.D, T_len = a.T_len, TTL = T_len * T_len * L;
  const AttentionGradTasks g = attention_grad_tasks(T_len, D, a.heads, a.heads_inner);
  const int64_t CG = g.heads * D, tile = CG * T_len * L, head_block = D * T_len * L;
  const int64_t chunk_floats = CG * T_len * g.pixels, row_chunks = (a.W + g.pixels - 1) / g.pixels;
  const int64_t groups = a.heads / g.heads;
  float* const qb = work;  // q, k, v, go tiles: [g.pixels / L][CG, T, L] each
  float* const kb = qb + chunk_floats;
  float* const vb = kb + chunk_floats;
  float* const gb = vb + chunk_floats;
  float* const p = gb + chunk_floats;  // [T, T, L] each
  float* const ds = p + TTL;
  float* const pt = ds + TTL;
  float* const lse = pt + TTL;  // [T, L] each
  float* const ones = lse + T_len * L;
  std::fill(ones, ones + T_len * L, 1.0f);
  for (int64_t task = first; task < first + count; ++task) {
    // (b, head group, y, chunk), chunks fastest: neighbouring tasks read neighbouring rows.
    const int64_t x0 = task % row_chunks * g.pixels, y = task / row_chunks % a.H;
    const int64_t h0 = task / (row_chunks * a.H) % groups * g.heads;
    const int64_t b = task / (row_chunks * a.H * groups);
    const int64_t n = std::min(g.pixels, a.W - x0);
    const auto at = [&](const Strides5& st) {
      return b * st.b + h0 * D * st.c + y * st.h + x0 * st.w;
    };
    gather_tiles(a.q + at(a.sq), a.sq, CG, T_len, n, qb);
    gather_tiles(a.k + at(a.sk), a.sk, CG, T_len, n, kb);
    gather_tiles(a.v + at(a.sv), a.sv, CG, T_len, n, vb);
    gather_tiles(a.dout + at(a.sdo), a.sdo, CG, T_len, n, gb);
    for (int64_t x = 0; x < n; x += L) {
      const int64_t lanes = std::min(L, n - x);
      for (int64_t h = 0; h < g.heads; ++h) {
        const float* lse_rows = a.lse + ((b * a.heads + h0 + h) * T_len * a.H + y) * a.W + x0 + x;
        for (int64_t t = 0; t < T_len; ++t)
          for (int64_t l = 0; l < L; ++l)
            lse[t * L + l] = l < lanes ? lse_rows[t * a.H * a.W + l] : 0.0f;
        const int64_t off = x / L * tile + h * head_block;
        lane_backward(qb + off, kb + off, vb + off, gb + off, lse, ones, D, T_len, a.scale, p,
                      ds, pt);
      }
    }
    scatter_tiles(gb, a.sdq, CG, T_len, 0, n, a.dq + at(a.sdq));
    scatter_tiles(kb, a.sdk, CG, T_len, 0, n, a.dk + at(a.sdk));
    scatter_tiles(vb, a.sdv, CG, T_len, 0, n, a.dv + at(a.sdv));
  }
}
#endif

}  // namespace LDDM_ISA_NAMESPACE
}  // namespace cpu
}  // namespace lddm
