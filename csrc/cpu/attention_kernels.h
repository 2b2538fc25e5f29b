// temporal_attention's CPU kernels: strided positions and channels-innermost pixels.
// See kernel_common.h for how the instruction-set builds include this.
#pragma once

#include "cpu/kernel_common.h"

namespace lddm {
namespace cpu {
namespace LDDM_ISA_NAMESPACE {

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
// scratch. lse (when not null) receives each row's logsumexp, lse_stride apart.
template <int kT>
static inline void attend(const float* __restrict__ q, int64_t q_stride,
                          const float* __restrict__ kt, const float* __restrict__ v,
                          int64_t v_stride, float* __restrict__ out, int64_t out_stride, int64_t D,
                          int64_t T_len, float* __restrict__ p, float* lse, int64_t lse_stride) {
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
    if (lse != nullptr) lse[i * lse_stride] = mx + std::log(denom);
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
void attention_impl(const T* q, const T* k, const T* v, T* o, float* lse, Strides5 sq, Strides5 sk,
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
    // Logsumexp rows [B, heads, T, H, W]: the run's pixels are neighbours along x.
    float* lse_b = lse ? lse + (b * heads + h) * T_len * H * W + y * W + x : nullptr;
    for (int64_t r = 0; r < run; ++r) {
      float* lse_r = lse_b ? lse_b + r : nullptr;
#if LDDM_AVX2
      if (vector_heads)
        attend_head(qf(r), kt(r), D, vf(r), D, of(r), D, D, T_len, scale, pp(r), lse_r, H * W);
      else
#endif
        attend<kT>(qf(r), D, kt(r), vf(r), D, of(r), D, D, T_len, pp(r), lse_r, H * W);
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
void attention_pixels_impl(const T* q, const T* k, const T* v, T* o, float* lse, Strides5 sq,
                           Strides5 sk,
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
    const auto lse_at = [&](int64_t h) -> float* {  // head h's rows of [B, heads, T, H, W]
      return lse ? lse + (b * heads + h) * T_len * H * W + y * W + x : nullptr;
    };
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
        float* lse_h = lse_at(h);
        if constexpr (std::is_same_v<T, float>)
          attend_head(qp + c0 * TP, kp + c0, C, vp + c0, C, ob + c0, so.t, D, T_len, scale, p,
                      lse_h, H * W);
        else
          attend_head(qp + c0 * TP, kp + c0, C, vp + c0, C, op + c0, C, D, T_len, scale, p,
                      lse_h, H * W);
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
        attend<kT>(qp + c0, C, kt, vp + c0, C, op + c0, C, D, T_len, p, lse_at(h), H * W);
      }
    for (int64_t t = 0; t < T_len; ++t) {
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) store(ob + t * so.t + c, op[t * C + c]);
    }
  }
}

template <typename T>
void attention_pixels(const T* q, const T* k, const T* v, T* o, float* lse, Strides5 sq,
                      Strides5 sk, Strides5 sv, Strides5 so, int64_t heads, int64_t D,
                      int64_t T_len, int64_t H, int64_t W, int64_t first, int64_t count,
                      float scale, float* work) {
  if (T_len == 16)
    attention_pixels_impl<T, 16>(q, k, v, o, lse, sq, sk, sv, so, heads, D, T_len, H, W, first,
                                 count, scale, work);
  else
    attention_pixels_impl<T, 0>(q, k, v, o, lse, sq, sk, sv, so, heads, D, T_len, H, W, first,
                                count, scale, work);
}

template <typename T>
void attention(const T* q, const T* k, const T* v, T* o, float* lse, Strides5 sq, Strides5 sk,
               Strides5 sv, Strides5 so, int64_t heads, int64_t D, int64_t T_len, int64_t H,
               int64_t W, int64_t first, int64_t count, float scale, bool heads_inner,
               float* work) {
  if (T_len == 16)
    attention_impl<T, 16>(q, k, v, o, lse, sq, sk, sv, so, heads, D, T_len, H, W, first, count,
                          scale, heads_inner, work);
  else
    attention_impl<T, 0>(q, k, v, o, lse, sq, sk, sv, so, heads, D, T_len, H, W, first, count,
                         scale, heads_inner, work);
}

}  // namespace LDDM_ISA_NAMESPACE
}  // namespace cpu
}  // namespace lddm
