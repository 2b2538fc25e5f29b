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

}  // namespace LDDM_ISA_NAMESPACE
}  // namespace cpu
}  // namespace lddm
