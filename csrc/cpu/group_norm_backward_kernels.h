// group_norm's backward CPU kernels: the per-channel sums of the gradient (pass 1) and
// the input gradient (pass 2), over contiguous rows (NCS) or channels-last chunks
// (NSC). See kernel_common.h for how the instruction-set builds include this.
//
// Per element, with the group's float mean m and 1 / std r:
//   xhat = (x - m) r,  u = w xhat + b,  v = u s + h,  y = silu(v) (or v)
//   gv = dy silu'(v) (or dy),  gu = gv s
// s = 1 + scale and h = shift, per (n, c) (FiLM) or per element (spatial). Pass 1 sums
// gv, gv xhat, gu, gu xhat per channel (weight, bias and FiLM grads, and the two group
// means of the input gradient); with FiLM, s is constant over the channel, so the
// kernels sum gv and gv xhat only and the caller takes the gu sums as s times those
// (two fewer accumulations a vector). For a spatial modulation pass 1 also writes gv u
// and gv per element (their grads before the broadcast is summed out). Pass 2 writes
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

#if LDDM_SIMD
// The vector builds take pass 1 in blocks of 4 vectors whose silu' chains are
// interleaved (see silu_grad<V, U>): one vector at a time, as the compiler vectorizes
// the loops below, the chain's latency and a division per vector made the backward with
// SiLU 3.5x as slow as without (fp32 [2, 128, 16, 8, 8], AVX2). xhat is recomputed after
// silu' rather than kept, which would take registers the chain needs.

// A lane's group statistics and channel parameters: m, r, w, b (u = w xhat + b), and s,
// h (v = u s + h).
template <typename R>
struct GradCoef {
  R m, r, w, b, s, h;
};

// Pass 1 on U vectors from j0: gv = dy silu'(v) (or dy), then sink(u, j, coef, xhat, gv)
// for the u-th vector, at j; coef(j) gives the GradCoef of the lanes at j.
template <typename V, int U, bool Silu, typename T, typename Coef, typename Sink>
static inline void grad_sums_vectors(const T* __restrict__ x, const T* __restrict__ dy,
                                     int64_t j0, const Coef& coef, const Sink& sink) {
  using R = typename V::reg;
  R g[U];
  for (int u = 0; u < U; ++u) {
    const int64_t j = j0 + V::W * u;
    const GradCoef<R> k = coef(j);
    const R xh = V::mul(V::sub(V::load(x + j), k.m), k.r);
    g[u] = V::fmadd(V::fmadd(k.w, xh, k.b), k.s, k.h);
  }
  if constexpr (Silu) silu_grad<V, U>(g);
  for (int u = 0; u < U; ++u) {
    const int64_t j = j0 + V::W * u;
    const GradCoef<R> k = coef(j);
    const R xh = V::mul(V::sub(V::load(x + j), k.m), k.r);
    sink(u, j, k, xh, Silu ? V::mul(g[u], V::load(dy + j)) : V::load(dy + j));
  }
}

// The lanes of v summed in double, in lane order.
template <typename V>
static inline double lane_sum(typename V::reg v) {
  float lanes[V::W];
  V::store(lanes, v);
  double total = 0.0;
  for (int l = 0; l < V::W; ++l) total += double(lanes[l]);
  return total;
}

// gn_grad_row_sums_impl's vector part on [i, n): returns the first index not done (fewer
// than V::W are left) and adds its sums to sums (four; two without Varying).
template <typename V, bool Silu, bool Varying, typename T>
static inline int64_t grad_row_sums_vectors(const T* x, const T* dy, int64_t i, int64_t n,
                                            float m, float r, float w, float b,
                                            const float* __restrict__ s,
                                            const float* __restrict__ h, float* __restrict__ gs,
                                            float* __restrict__ gh, float* __restrict__ wgu,
                                            double* sums) {
  using R = typename V::reg;
  constexpr int W = V::W;
  const GradCoef<R> row{V::set1(m), V::set1(r), V::set1(w), V::set1(b), V::set1(s[0]),
                        V::set1(h[0])};
  const auto coef = [&](int64_t j) {
    GradCoef<R> k = row;
    if constexpr (Varying) {
      k.s = V::load(s + j);
      k.h = V::load(h + j);
    }
    return k;
  };
  // Two sets of partial sums, for even and odd vectors of a block: four dependent adds
  // per block would bound the loop by their latency (one set per vector spills).
  constexpr int A = Varying ? 4 : 2;
  R acc[A][2];
  for (auto& a : acc)
    for (R& v : a) v = V::zero();
  const R ws = V::set1(w * s[0]);
  const auto sink = [&](int u, int64_t j, const GradCoef<R>& k, R xh, R gv) {
    acc[0][u & 1] = V::add(acc[0][u & 1], gv);
    acc[1][u & 1] = V::fmadd(gv, xh, acc[1][u & 1]);
    if constexpr (Varying) {
      const R gu = V::mul(gv, k.s);
      V::store(gs + j, V::mul(gv, V::fmadd(k.w, xh, k.b)));
      V::store(gh + j, gv);
      V::store(wgu + j, V::mul(k.w, gu));
      acc[2][u & 1] = V::add(acc[2][u & 1], gu);
      acc[3][u & 1] = V::fmadd(gu, xh, acc[3][u & 1]);
    } else {
      V::store(wgu + j, V::mul(ws, gv));
    }
  };
  for (; i + 4 * W <= n; i += 4 * W) grad_sums_vectors<V, 4, Silu>(x, dy, i, coef, sink);
  for (; i + W <= n; i += W) grad_sums_vectors<V, 1, Silu>(x, dy, i, coef, sink);
  for (int a = 0; a < A; ++a)
    sums[a] += lane_sum<V>(V::add(acc[a][0], acc[a][1]));
  return i;
}

// gn_grad_chunk_sums_impl's vector part for one position's channels [c, C): returns the
// first channel not done; sums [4, C] accumulated in memory (the first two rows only
// without Spatial).
template <typename V, bool Silu, bool Spatial, typename T>
static inline int64_t grad_chunk_sums_vectors(
    const T* xr, const T* dr, int64_t c, int64_t C, const float* __restrict__ m,
    const float* __restrict__ r, const float* __restrict__ w, const float* __restrict__ b,
    const float* __restrict__ s, const float* __restrict__ h, float* __restrict__ gs,
    float* __restrict__ gh, float* __restrict__ wgu, float* __restrict__ sums) {
  using R = typename V::reg;
  constexpr int W = V::W;
  const auto coef = [&](int64_t j) {
    return GradCoef<R>{V::load(m + j), V::load(r + j), V::load(w + j),
                       V::load(b + j), V::load(s + j), V::load(h + j)};
  };
  const auto sink = [&](int, int64_t j, const GradCoef<R>& k, R xh, R gv) {
    const R gu = V::mul(gv, k.s);
    if constexpr (Spatial) {
      V::store(gs + j, V::mul(gv, V::fmadd(k.w, xh, k.b)));
      V::store(gh + j, gv);
    }
    V::store(wgu + j, V::mul(k.w, gu));
    float* a = sums + j;
    V::store(a, V::add(V::load(a), gv));
    V::store(a + C, V::fmadd(gv, xh, V::load(a + C)));
    if constexpr (Spatial) {
      V::store(a + 2 * C, V::add(V::load(a + 2 * C), gu));
      V::store(a + 3 * C, V::fmadd(gu, xh, V::load(a + 3 * C)));
    }
  };
  for (; c + 4 * W <= C; c += 4 * W) grad_sums_vectors<V, 4, Silu>(xr, dr, c, coef, sink);
  for (; c + W <= C; c += W) grad_sums_vectors<V, 1, Silu>(xr, dr, c, coef, sink);
  return c;
}
#endif

// Varying: s, h, gs, gh are per element ([n]) and sums[0..3] get gv, gv xhat, gu,
// gu xhat; else s[0], h[0] hold the row's constants, gs, gh are unused and only
// sums[0..1] are added to; wgu[i] = w gu written.
template <typename T, bool Silu, bool Varying>
static void gn_grad_row_sums_impl(const T* __restrict__ x, const T* __restrict__ dy, int64_t n,
                                  float m, float r, float w, float b, const float* __restrict__ s,
                                  const float* __restrict__ h, float* __restrict__ gs,
                                  float* __restrict__ gh, float* __restrict__ wgu, double* sums) {
  const float s0 = s[0], h0 = h[0];
  for (int64_t i0 = 0; i0 < n; i0 += kGradRowBlock) {
    const int64_t i1 = std::min(n, i0 + kGradRowBlock);
    int64_t i2 = i0;  // where the vector part stops
#if LDDM_SIMD
    i2 = grad_row_sums_vectors<Vec, Silu, Varying>(x, dy, i2, i1, m, r, w, b, s, h, gs, gh, wgu,
                                                   sums);
    if constexpr (Vec::W > 8)
      i2 = grad_row_sums_vectors<V8, Silu, Varying>(x, dy, i2, i1, m, r, w, b, s, h, gs, gh, wgu,
                                                    sums);
#endif
    float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
    for (int64_t i = i2; i < i1; ++i) {
      const float xh = (load(x[i]) - m) * r;
      const float u = w * xh + b;
      const float si = Varying ? s[i] : s0;
      const float gv = grad_v<Silu>(u * si + (Varying ? h[i] : h0), load(dy[i]));
      const float gu = gv * si;
      if (Varying) {
        gs[i] = gv * u;
        gh[i] = gv;
        a2 += gu;
        a3 += gu * xh;
      }
      wgu[i] = w * gu;
      a0 += gv;
      a1 += gv * xh;
    }
    sums[0] += a0;
    sums[1] += a1;
    if (Varying) {
      sums[2] += a2;
      sums[3] += a3;
    }
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
  int64_t i = 0;
#if LDDM_SIMD && !LDDM_AVX512
  // bf16 in the AVX2 build: rounded by pairs of vectors (the compiler's loop takes
  // 1.5x as long; see store_bf16_vectors).
  if constexpr (std::is_same_v<T, bf16_t>) {
    const V8::reg vr = V8::set1(r), vm = V8::set1(m), vrc1 = V8::set1(-rc1), vrrc2 = V8::set1(rrc2);
    i = store_bf16_vectors(dx, n, [&](int64_t j) {
      return V8::fnmadd(V8::sub(V8::load(x + j), vm), vrrc2,
                        V8::fmadd(vr, V8::load(wgu + j), vrc1));
    });
  }
#endif
#pragma omp simd
  for (int64_t j = i; j < n; ++j) store(dx + j, r * wgu[j] - rc1 - (load(x[j]) - m) * rrc2);
}

// Channels-last chunk [positions, C]: m, r, w, b per channel [C]; s, h rows of C at
// position p * sh_step (0: one FiLM row for the chunk); gs, gh [positions, C] written
// when sh_step != 0; wgu [positions, C] = w gu written; sums [4, C] accumulated (the
// caller zeroes them), with FiLM (sh_step 0) the first two rows only.
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
    int64_t c0 = 0;  // where the vector part stops
    if (sh_step != 0) {
      float* __restrict__ gsr = gs + p * C;
      float* __restrict__ ghr = gh + p * C;
#if LDDM_SIMD
      c0 = grad_chunk_sums_vectors<Vec, Silu, true>(xr, dr, c0, C, m, r, w, b, sp, hp, gsr, ghr,
                                                    kr, sums);
      if constexpr (Vec::W > 8)
        c0 = grad_chunk_sums_vectors<V8, Silu, true>(xr, dr, c0, C, m, r, w, b, sp, hp, gsr, ghr,
                                                     kr, sums);
#endif
#pragma omp simd
      for (int64_t c = c0; c < C; ++c) {
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
#if LDDM_SIMD
      c0 = grad_chunk_sums_vectors<Vec, Silu, false>(xr, dr, c0, C, m, r, w, b, sp, hp, nullptr,
                                                     nullptr, kr, sums);
      if constexpr (Vec::W > 8)
        c0 = grad_chunk_sums_vectors<V8, Silu, false>(xr, dr, c0, C, m, r, w, b, sp, hp, nullptr,
                                                      nullptr, kr, sums);
#endif
#pragma omp simd
      for (int64_t c = c0; c < C; ++c) {
        const float xh = (load(xr[c]) - m[c]) * r[c];
        const float gv = grad_v<Silu>((w[c] * xh + b[c]) * sp[c] + hp[c], load(dr[c]));
        kr[c] = w[c] * (gv * sp[c]);
        a0[c] += gv;
        a1[c] += gv * xh;
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
    int64_t c0 = 0;
#if LDDM_SIMD && !LDDM_AVX512
    if constexpr (std::is_same_v<T, bf16_t>)  // as gn_grad_row_dx
      c0 = store_bf16_vectors(out, C, [&](int64_t c) {
        const V8::reg rc = V8::load(r + c);
        const V8::reg xh = V8::mul(V8::sub(V8::load(xr + c), V8::load(m + c)), rc);
        return V8::mul(rc, V8::fnmadd(xh, V8::load(c2 + c),
                                      V8::sub(V8::load(kr + c), V8::load(c1 + c))));
      });
#endif
#pragma omp simd
    for (int64_t c = c0; c < C; ++c)
      store(out + c, r[c] * (kr[c] - c1[c] - (load(xr[c]) - m[c]) * r[c] * c2[c]));
  }
}

}  // namespace LDDM_ISA_NAMESPACE
}  // namespace cpu
}  // namespace lddm
