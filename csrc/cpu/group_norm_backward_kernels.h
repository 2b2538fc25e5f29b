// group_norm's backward CPU kernels: the per-channel sums of the gradient (pass 1) and
// the input gradient (pass 2), over contiguous rows (NCS) or channels-last chunks
// (NSC). See kernel_common.h for how the instruction-set builds include this.
//
// Per element, with the group's float mean m and 1 / std r:
//   xhat = (x - m) r,  u = w xhat + b,  v = u s + h,  y = silu(v) (or v)
//   gv = dy silu'(v) (or dy),  gu = gv s
// s = 1 + scale and h = shift, per (n, c) (FiLM) or per element (spatial). Pass 1 sums
// gv, gv xhat, gu, gu xhat per channel (weight, bias and FiLM grads, and the two group
// means of the input gradient); for a spatial modulation it also writes gv u and gv per
// element (their grads before the broadcast is summed out). Pass 2 writes
//   dx = r (w gu - c1 - xhat c2),  c1 = mean_group(w gu),  c2 = mean_group(w gu xhat).
// Pass 1 also keeps w gu per element (in float: in dx itself for float outputs), so
// pass 2 reads x and that instead of recomputing v and silu'(v) from x and dy (a third
// of the backward's time at the model's shapes).
#pragma once

#include "cpu/kernel_common.h"

namespace lddm {
namespace cpu {
namespace LDDM_ISA_NAMESPACE {

// Values per float partial sum of a row: bounds the rounding error of long rows
// (a 64x64x16 channel has 65536 values) before the partials are added in double.
inline constexpr int64_t kGradRowBlock = 2048;

template <bool Silu>
static inline float grad_v(float v, float dy) {
  return Silu ? dy * silu_grad(v) : dy;
}

// Varying: s, h, gs, gh are per element ([n]); else s[0], h[0] hold the row's constants
// and gs, gh are unused; wgu[i] = w gu written.
template <typename T, bool Silu, bool Varying>
static void gn_grad_row_sums_impl(const T* __restrict__ x, const T* __restrict__ dy, int64_t n,
                                  float m, float r, float w, float b, const float* __restrict__ s,
                                  const float* __restrict__ h, float* __restrict__ gs,
                                  float* __restrict__ gh, float* __restrict__ wgu, double* sums) {
  const float s0 = s[0], h0 = h[0];
  for (int64_t i0 = 0; i0 < n; i0 += kGradRowBlock) {
    const int64_t i1 = std::min(n, i0 + kGradRowBlock);
    float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
    for (int64_t i = i0; i < i1; ++i) {
      const float xh = (load(x[i]) - m) * r;
      const float u = w * xh + b;
      const float si = Varying ? s[i] : s0;
      const float gv = grad_v<Silu>(u * si + (Varying ? h[i] : h0), load(dy[i]));
      const float gu = gv * si;
      if (Varying) {
        gs[i] = gv * u;
        gh[i] = gv;
      }
      wgu[i] = w * gu;
      a0 += gv;
      a1 += gv * xh;
      a2 += gu;
      a3 += gu * xh;
    }
    sums[0] += a0;
    sums[1] += a1;
    sums[2] += a2;
    sums[3] += a3;
  }
}

template <typename T>
void gn_grad_row_sums(const T* x, const T* dy, int64_t n, float m, float r, float w, float b,
                      const float* s, const float* h, bool varying, bool silu, float* gs,
                      float* gh, float* wgu, double* sums) {
  with_flag(silu, [&](auto S) {
    with_flag(varying, [&](auto V) {
      gn_grad_row_sums_impl<T, S, V>(x, dy, n, m, r, w, b, s, h, gs, gh, wgu, sums);
    });
  });
}

// Pass 2 from pass 1's w gu: dx[i] = r (wgu[i] - c1 - xhat[i] c2). wgu may be dx itself
// (float outputs): each element is read before it is written.
template <typename T>
void gn_grad_row_dx(const T* __restrict__ x, const float* wgu, T* dx, int64_t n, float m, float r,
                    float c1, float c2) {
  const float rc1 = r * c1, rrc2 = r * r * c2;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) store(dx + i, r * wgu[i] - rc1 - (load(x[i]) - m) * rrc2);
}

// Channels-last chunk [positions, C]: m, r, w, b per channel [C]; s, h rows of C at
// position p * sh_step (0: one FiLM row for the chunk); gs, gh [positions, C] written
// when sh_step != 0; wgu [positions, C] = w gu written; sums [4, C] accumulated (the
// caller zeroes them).
template <typename T, bool Silu>
static void gn_grad_chunk_sums_impl(const T* __restrict__ x, const T* __restrict__ dy,
                                    int64_t positions, int64_t C, const float* __restrict__ m,
                                    const float* __restrict__ r, const float* __restrict__ w,
                                    const float* __restrict__ b, const float* __restrict__ s,
                                    const float* __restrict__ h, int64_t sh_step,
                                    float* __restrict__ gs, float* __restrict__ gh,
                                    float* __restrict__ wgu, float* __restrict__ sums) {
  float* __restrict__ a0 = sums;
  float* __restrict__ a1 = sums + C;
  float* __restrict__ a2 = sums + 2 * C;
  float* __restrict__ a3 = sums + 3 * C;
  for (int64_t p = 0; p < positions; ++p) {
    const T* __restrict__ xr = x + p * C;
    const T* __restrict__ dr = dy + p * C;
    const float* __restrict__ sp = s + p * sh_step;
    const float* __restrict__ hp = h + p * sh_step;
    float* __restrict__ kr = wgu + p * C;
    if (sh_step != 0) {
      float* __restrict__ gsr = gs + p * C;
      float* __restrict__ ghr = gh + p * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        const float xh = (load(xr[c]) - m[c]) * r[c];
        const float u = w[c] * xh + b[c];
        const float gv = grad_v<Silu>(u * sp[c] + hp[c], load(dr[c]));
        const float gu = gv * sp[c];
        gsr[c] = gv * u;
        ghr[c] = gv;
        kr[c] = w[c] * gu;
        a0[c] += gv;
        a1[c] += gv * xh;
        a2[c] += gu;
        a3[c] += gu * xh;
      }
    } else {
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        const float xh = (load(xr[c]) - m[c]) * r[c];
        const float gv = grad_v<Silu>((w[c] * xh + b[c]) * sp[c] + hp[c], load(dr[c]));
        const float gu = gv * sp[c];
        kr[c] = w[c] * gu;
        a0[c] += gv;
        a1[c] += gv * xh;
        a2[c] += gu;
        a3[c] += gu * xh;
      }
    }
  }
}

template <typename T>
void gn_grad_chunk_sums(const T* x, const T* dy, int64_t positions, int64_t C, const float* m,
                        const float* r, const float* w, const float* b, const float* s,
                        const float* h, int64_t sh_step, bool silu, float* gs, float* gh,
                        float* wgu, float* sums) {
  with_flag(silu, [&](auto S) {
    gn_grad_chunk_sums_impl<T, S>(x, dy, positions, C, m, r, w, b, s, h, sh_step, gs, gh, wgu,
                                  sums);
  });
}

// Pass 2 over a chunk from pass 1's w gu (possibly dx itself, as gn_grad_row_dx): c1, c2
// are the group constants of each channel's group, [C].
template <typename T>
void gn_grad_chunk_dx(const T* __restrict__ x, const float* wgu, T* dx, int64_t positions,
                      int64_t C, const float* __restrict__ m, const float* __restrict__ r,
                      const float* __restrict__ c1, const float* __restrict__ c2) {
  for (int64_t p = 0; p < positions; ++p) {
    const T* __restrict__ xr = x + p * C;
    const float* kr = wgu + p * C;
    T* out = dx + p * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c)
      store(out + c, r[c] * (kr[c] - c1[c] - (load(xr[c]) - m[c]) * r[c] * c2[c]));
  }
}

}  // namespace LDDM_ISA_NAMESPACE
}  // namespace cpu
}  // namespace lddm
