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

// The backward in the forward's tiles (attention_lanes): the launcher's choice where
// channels are not innermost, and where they are but head_dim is not a multiple of 8
// (else attention_backward_pixels below avoids its transposes). One task is g.heads heads of
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

// --- channels innermost: one pixel at a time, channels in the lanes -----------------

// o[a, :] = sum_s w[a * w_r + s * w_s] x[s, :] for NR output rows of NV vectors of VC::W
// channels (o, w, x offset to the block), S terms: each weight is broadcast from memory
// (any strides, so the same block serves P^T do, dS^T q and dS k without transposing the
// [T, TP] weights) and feeds NV FMAs into accumulators held in registers; the rows are
// stored straight into the gradient tensor, rounded to bf16 there when U is.
template <typename VC, int NR, int NV, typename U>
static inline void weighted_rows(const float* w, int64_t w_r, int64_t w_s, const float* x,
                                 int64_t x_stride, int64_t S, U* o, int64_t o_stride) {
  typename VC::reg acc[NR][NV];
  for (int a = 0; a < NR; ++a)
    for (int c = 0; c < NV; ++c) acc[a][c] = VC::zero();
  for (int64_t s = 0; s < S; ++s) {
    typename VC::reg xv[NV];
    for (int c = 0; c < NV; ++c) xv[c] = VC::load(x + s * x_stride + VC::W * c);
    for (int a = 0; a < NR; ++a) {
      const auto wb = VC::broadcast(w + a * w_r + s * w_s);
      for (int c = 0; c < NV; ++c) acc[a][c] = VC::fmadd(wb, xv[c], acc[a][c]);
    }
  }
  for (int a = 0; a < NR; ++a)
    for (int c = 0; c < NV; ++c) VC::store(o + a * o_stride + VC::W * c, acc[a][c]);
}

// o[r, 0:D] = sum_{s < S} w[r * w_r + s * w_s] x[s, 0:D] for rows r < R (D a multiple of
// VC::W), in register blocks of up to 4 channel vectors x a few rows (as many as the
// registers hold beside the NV loaded x vectors and a broadcast).
template <typename VC, typename U>
static inline void weighted_sum(const float* w, int64_t w_r, int64_t w_s, const float* x,
                                int64_t x_stride, int64_t S, int64_t R, int64_t D, U* o,
                                int64_t o_stride) {
  constexpr int kMaxRows = kRegisters == 32 ? 8 : 4;
  for (int64_t d0 = 0; d0 < D; d0 += 4 * VC::W) {
    const int nv = int(std::min<int64_t>(4, (D - d0) / VC::W));
    const int rows = kRegisters == 32 ? (nv > 2 ? 6 : 8) : (nv > 2 ? 3 : 4);
    for (int64_t r0 = 0; r0 < R; r0 += rows) {
      const int nr = int(std::min<int64_t>(rows, R - r0));
      with_count<kMaxRows>(nr, [&](auto NR) {
        with_count<4>(nv, [&](auto NV) {
          weighted_rows<VC, NR, NV>(w + r0 * w_r, w_r, w_s, x + d0, x_stride, S,
                                    o + r0 * o_stride + d0, o_stride);
        });
      });
    }
  }
}

// dst[t, c] = src[t * t_stride + c * c_stride] as floats, T rows of C.
template <typename T>
static inline void copy_rows(const T* src, int64_t t_stride, int64_t c_stride, int64_t T_len,
                             int64_t C, float* __restrict__ dst) {
  for (int64_t t = 0; t < T_len; ++t) {
    const T* row = src + t * t_stride;
    float* out = dst + t * C;
    int64_t c = 0;
    if (c_stride == 1)
      for (; c + Vec::W <= C; c += Vec::W) Vec::store(out + c, Vec::load(row + c));
    for (; c < C; ++c) out[c] = load(row[c * c_stride]);
  }
}

// The gradients of one head of one pixel, frames of the queries in the lanes (the
// forward's attend_head, transposed where it needs): qt, dot [D, TP] (the head's block of
// the transposed q and output gradient, TP = padded_frames(T), zero past T); q, k, v, go
// its [T, D] rows C apart; lse [TP] the queries' logsumexps (zero past T); st, dst
// [T, TP] scratch. The logits and dP are built as S^T and dP^T, one vector of queries
// per key (logits_block: broadcast key elements x query vectors), so the softmax over
// keys, D_i and dS are vertical; then
//   dv[j] = sum_i P^T[j, i] go[i],  dk[j] = sum_i dS^T[j, i] q[i],  dq[i] = sum_j dS^T[j, i] k[j]
// are broadcast-FMAs over channel vectors (weighted_sum) stored into the gradient rows
// (dq_t, dk_t, dv_t apart). dS carries the scale, as in lane_backward.
template <typename VC, typename U>
static inline void pixel_head_backward(const float* qt, const float* dot, const float* q,
                                       const float* k, const float* v, const float* go,
                                       int64_t C, const float* lse, int64_t D, int64_t T,
                                       float scale, float* __restrict__ st,
                                       float* __restrict__ dst, U* dq, int64_t dq_t, U* dk,
                                       int64_t dk_t, U* dv, int64_t dv_t) {
  constexpr int W = Vec::W;
  const int64_t TP = padded_frames(T);
  const float log2e = 1.44269504088896341f;
  const Vec::reg one = Vec::set1(1.0f);
  logits_tiles(qt, k, C, D, T, Vec::set1(scale * log2e), st);
  logits_tiles(dot, v, C, D, T, one, dst);
  const Vec::reg vscale = Vec::set1(scale);
  for (int64_t i0 = 0; i0 < TP; i0 += W) {
    float* s = st + i0;
    float* d = dst + i0;
    const Vec::reg shift = Vec::mul(Vec::load(lse + i0), Vec::set1(log2e));
    Vec::reg sum = Vec::zero();
    for (int64_t j = 0; j < T; j += 4) {
      const int64_t m = std::min<int64_t>(4, T - j);
      Vec::reg e[4];
      for (int u = 0; u < 4; ++u)
        e[u] = u < m ? Vec::sub(Vec::load(s + (j + u) * TP), shift) : Vec::zero();
      exp2_clamped<Vec, 4>(e);
      for (int u = 0; u < m; ++u) {
        Vec::store(s + (j + u) * TP, e[u]);
        sum = Vec::add(sum, e[u]);
      }
    }
    // Each row divided by its sum: an exact distribution (see attend_backward).
    const Vec::reg inv = Vec::div(one, sum);
    Vec::reg di = Vec::zero();
    for (int64_t j = 0; j < T; ++j) {
      const Vec::reg p = Vec::mul(Vec::load(s + j * TP), inv);
      Vec::store(s + j * TP, p);
      di = Vec::fmadd(p, Vec::load(d + j * TP), di);
    }
    for (int64_t j = 0; j < T; ++j)
      Vec::store(d + j * TP, Vec::mul(Vec::mul(Vec::load(s + j * TP), vscale),
                                      Vec::sub(Vec::load(d + j * TP), di)));
  }
  weighted_sum<VC>(st, TP, 1, go, C, T, T, D, dv, dv_t);  // dv: rows j, terms i
  weighted_sum<VC>(dst, TP, 1, q, C, T, T, D, dk, dk_t);  // dk: rows j, terms i
  weighted_sum<VC>(dst, 1, TP, k, C, T, T, D, dq, dq_t);  // dq: rows i, terms j
}

// Channels innermost with D % 8 == 0 and the gradients' channels adjacent (channels_last_3d
// tensors, channel slices of a channels-last qkv): `count` pixels (b, y, x) from `first`,
// all heads each, without the lane kernel's transposing gathers and scatters. A pixel's T
// rows of C channels are copied whole into compact float buffers (streaming reads, each
// head's slices then in L1; read in place, the tensor's rows T * H * W * C apart would
// share L1 sets, and bf16 rows need converting anyway), q and the
// output gradient also transposed (8 x 8 blocks) for the logits; each head is computed by
// pixel_head_backward, which stores dq, dk, dv rows straight into the tensors. Work:
// attention_grad_pixel_work_floats.
template <typename T>
void attention_backward_pixels(const AttentionGrad<T>& a, int64_t first, int64_t count,
                               float* work) {
  const int64_t heads = a.heads, D = a.D, T_len = a.T_len, H = a.H, W = a.W, C = heads * D;
  const int64_t TP = padded_frames(T_len), HW = H * W;
  float* const qp = work;  // [T, C] rows of q, k, v, go
  float* const kp = qp + T_len * C;
  float* const vp = kp + T_len * C;
  float* const gp = vp + T_len * C;
  float* const qt = gp + T_len * C;  // [C, TP] q and go transposed
  float* const gt = qt + C * TP;
  float* const st = gt + C * TP;  // [T, TP] P^T, dS^T
  float* const dst = st + T_len * TP;
  float* const lse = dst + T_len * TP;  // [TP]
  std::fill(lse, lse + TP, 0.0f);
  const Strides5* in_strides[4] = {&a.sq, &a.sk, &a.sv, &a.sdo};
  const Strides5* out_strides[3] = {&a.sdq, &a.sdk, &a.sdv};
  for (int64_t pix = first; pix < first + count; ++pix) {
    const int64_t x = pix % W, y = pix / W % H, b = pix / HW;
    const auto at = [&](const Strides5& s) { return b * s.b + y * s.h + x * s.w; };
    // The next pixel's rows are requested while this one is computed, a share of the
    // frames per head (as attention_pixels does): they lie one page or more apart, which
    // the hardware prefetchers do not follow in time.
    const int64_t nx = (pix + 1) % W, ny = (pix + 1) / W % H, nb = (pix + 1) / HW;
    const auto prefetch_next = [&](int64_t t0, int64_t t1) {
      if (pix + 1 >= first + count) return;
      const T* ins[4] = {a.q, a.k, a.v, a.dout};
      T* outs[3] = {a.dq, a.dk, a.dv};
      for (int64_t t = t0; t < t1; ++t) {
        for (int i = 0; i < 4; ++i) {
          const Strides5& s = *in_strides[i];
          if (s.c != 1) continue;
          const char* r = reinterpret_cast<const char*>(ins[i] + nb * s.b + t * s.t + ny * s.h +
                                                        nx * s.w);
          for (int64_t off = 0; off < C * int64_t(sizeof(T)); off += 64)
            __builtin_prefetch(r + off);
        }
        for (int i = 0; i < 3; ++i) {
          const Strides5& s = *out_strides[i];
          const char* r = reinterpret_cast<const char*>(outs[i] + nb * s.b + t * s.t + ny * s.h +
                                                        nx * s.w);
          for (int64_t off = 0; off < C * int64_t(sizeof(T)); off += 64)
            __builtin_prefetch(r + off, 1);
        }
      }
    };
    copy_rows(a.q + at(a.sq), a.sq.t, a.sq.c, T_len, C, qp);
    copy_rows(a.k + at(a.sk), a.sk.t, a.sk.c, T_len, C, kp);
    copy_rows(a.v + at(a.sv), a.sv.t, a.sv.c, T_len, C, vp);
    copy_rows(a.dout + at(a.sdo), a.sdo.t, a.sdo.c, T_len, C, gp);
    transpose_rows(qp, C, T_len, C, qt, TP);
    transpose_rows(gp, C, T_len, C, gt, TP);
    T* dq = a.dq + at(a.sdq);
    T* dk = a.dk + at(a.sdk);
    T* dv = a.dv + at(a.sdv);
    for (int64_t h = 0; h < heads; ++h) {
      prefetch_next(h * T_len / heads, (h + 1) * T_len / heads);
      const float* lse_rows = a.lse + (b * heads + h) * T_len * HW + y * W + x;
      for (int64_t t = 0; t < T_len; ++t) lse[t] = lse_rows[t * HW];
      const int64_t c0 = h * D;
      const auto run = [&](auto vc) {
        using VC = decltype(vc);
        pixel_head_backward<VC>(qt + c0 * TP, gt + c0 * TP, qp + c0, kp + c0, vp + c0, gp + c0,
                                C, lse, D, T_len, a.scale, st, dst, dq + c0, a.sdq.t, dk + c0,
                                a.sdk.t, dv + c0, a.sdv.t);
      };
      // Channels in whole vectors: the build's widest where D allows.
      if (D % Vec::W == 0)
        run(Vec{});
      else
        run(V8{});
    }
  }
}
#endif

}  // namespace LDDM_ISA_NAMESPACE
}  // namespace cpu
}  // namespace lddm
