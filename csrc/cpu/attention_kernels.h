// temporal_attention's CPU kernels: pixels in the vector lanes, and channels-innermost pixels.
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

// The portable lane_scores and lane_values (vector_kernels.h), same buffers (q, k, v
// [D, T, kLanes], s [T, T, kLanes], inv [T, kLanes], one pixel
// per lane), every loop over the lanes innermost so the compiler vectorizes it without
// reassociating a sum. Natural-base softmax.
static inline void lane_scores_portable(const float* __restrict__ q, const float* __restrict__ k,
                                        int64_t D, int64_t T, float scale,
                                        float* __restrict__ s, float* __restrict__ inv,
                                        float* lse, int64_t lse_t, int64_t lse_w, int64_t n) {
  constexpr int64_t L = kLanes;
  for (int64_t i = 0; i < T; ++i)
    for (int64_t j = 0; j < T; ++j) {
      float acc[L] = {};
      for (int64_t d = 0; d < D; ++d) {
        const float* qi = q + (d * T + i) * L;
        const float* kj = k + (d * T + j) * L;
#pragma omp simd
        for (int64_t l = 0; l < L; ++l) acc[l] += qi[l] * kj[l];
      }
#pragma omp simd
      for (int64_t l = 0; l < L; ++l) s[(i * T + j) * L + l] = acc[l] * scale;
    }
  for (int64_t i = 0; i < T; ++i) {
    float* si = s + i * T * L;
    float mx[L], sum[L] = {};
    for (int64_t l = 0; l < L; ++l) mx[l] = si[l];
    for (int64_t j = 1; j < T; ++j)
#pragma omp simd
      for (int64_t l = 0; l < L; ++l) mx[l] = si[j * L + l] > mx[l] ? si[j * L + l] : mx[l];
    for (int64_t j = 0; j < T; ++j)
#pragma omp simd
      for (int64_t l = 0; l < L; ++l) {
        si[j * L + l] = exp_approx(si[j * L + l] - mx[l]);
        sum[l] += si[j * L + l];
      }
#pragma omp simd
    for (int64_t l = 0; l < L; ++l) inv[i * L + l] = 1.0f / sum[l];
    if (lse != nullptr)
      for (int64_t l = 0; l < n; ++l) lse[i * lse_t + l * lse_w] = mx[l] + std::log(sum[l]);
  }
}

template <typename U>
static inline void lane_values_portable(const float* __restrict__ s, const float* __restrict__ inv,
                                        const float* __restrict__ v, int64_t D, int64_t T, U* o,
                                        int64_t o_d, int64_t o_t) {
  constexpr int64_t L = kLanes;
  for (int64_t d = 0; d < D; ++d)
    for (int64_t i = 0; i < T; ++i) {
      float acc[L] = {};
      for (int64_t j = 0; j < T; ++j) {
        const float* pij = s + (i * T + j) * L;
        const float* vj = v + (d * T + j) * L;
#pragma omp simd
        for (int64_t l = 0; l < L; ++l) acc[l] += pij[l] * vj[l];
      }
      U* out = o + d * o_d + i * o_t;
#pragma omp simd
      for (int64_t l = 0; l < L; ++l) store(out + l, acc[l] * inv[i * L + l]);
    }
}

// buf[x / L, d, t, x % L] = src[d * s.c + t * s.t + x * s.w] for the n pixels x of a
// chunk: tiles [D, T, L] of L = kLanes pixels, zero past n (finite values: the padding
// lanes' softmax stays defined, and is never stored). Each source row of the chunk is
// read once, as whole cache lines where its pixels are adjacent; where its channels are
// (channels_last_3d), 8 pixels x 8 channels at a time, transposed in registers.
template <typename T>
static inline void gather_tiles(const T* __restrict__ src, const Strides5& s, int64_t D,
                                int64_t T_len, int64_t n, float* __restrict__ buf) {
  constexpr int64_t L = kLanes;
  const int64_t tile = D * T_len * L, full = n / L;
  int64_t x_done = 0;  // pixels [0, x_done) are gathered by the transposing loop
#if LDDM_SIMD
  if (s.c == 1 && s.w != 1 && D % 8 == 0) {
    // Channel blocks outermost: consecutive stores then fill the tile's rows in order
    // (measured 20% faster than pixels outermost, 8 x 8 frames, 4 heads x 32).
    x_done = n / 8 * 8;
    for (int64_t d0 = 0; d0 < D; d0 += 8)
      for (int64_t t = 0; t < T_len; ++t)
        for (int64_t x = 0; x < x_done; x += 8) {
          __m256 r[8];
          for (int l = 0; l < 8; ++l) r[l] = V8::load(src + t * s.t + (x + l) * s.w + d0);
          transpose8(r);
          float* out = buf + x / L * tile + t * L + x % L;
          for (int c = 0; c < 8; ++c) V8::store(out + (d0 + c) * T_len * L, r[c]);
        }
  }
#endif
  for (int64_t d = 0; d < D; ++d)
    for (int64_t t = 0; t < T_len; ++t) {
      const T* __restrict__ row = src + d * s.c + t * s.t;
      float* __restrict__ out = buf + (d * T_len + t) * L;
      if (s.w == 1) {
#if LDDM_SIMD
        // Not the loop below: for float GCC made it scalar moves (row and out may
        // overlap as far as it knows), and the copy then cost as much as the math.
        for (int64_t c = 0; c < full; ++c) Vec::store(out + c * tile, Vec::load(row + c * L));
#else
        for (int64_t c = 0; c < full; ++c)
#pragma omp simd
          for (int64_t l = 0; l < L; ++l) out[c * tile + l] = load(row[c * L + l]);
#endif
      } else {
        for (int64_t x = x_done; x < full * L; ++x)
          out[x / L * tile + x % L] = load(row[x * s.w]);
      }
      if (full * L < n)
        for (int64_t l = 0; l < L; ++l) {
          const int64_t x = full * L + l;
          if (x >= x_done) out[full * tile + l] = x < n ? load(row[x * s.w]) : 0.0f;
        }
    }
}

// The inverse for pixels [x0, x1) of a chunk: dst[d * s.c + t * s.t + x * s.w] =
// buf[x / L, d, t, x % L], transposing 8 x 8 blocks where channels are innermost.
template <typename T>
static inline void scatter_tiles(const float* __restrict__ buf, const Strides5& s, int64_t D,
                                 int64_t T_len, int64_t x0, int64_t x1, T* __restrict__ dst) {
  constexpr int64_t L = kLanes;
  const int64_t tile = D * T_len * L;
  int64_t x = x0;
#if LDDM_SIMD
  if (s.c == 1 && s.w != 1 && D % 8 == 0 && x0 % 8 == 0) {
    // Blocks of up to 32 channels are transposed before any is stored, then each pixel's
    // channels are stored in order (whole cache lines); channel blocks outermost, as in
    // gather_tiles.
    const int64_t x_end = x0 + (x1 - x0) / 8 * 8;
    for (int64_t d0 = 0; d0 < D; d0 += 32)
      for (int64_t t = 0; t < T_len; ++t)
        for (int64_t xg = x0; xg < x_end; xg += 8) {
          const int nb = int(std::min<int64_t>(4, (D - d0) / 8));
          __m256 r[4][8];
          const float* in = buf + xg / L * tile + t * L + xg % L;
          for (int b = 0; b < nb; ++b) {
            for (int c = 0; c < 8; ++c) r[b][c] = V8::load(in + (d0 + 8 * b + c) * T_len * L);
            transpose8(r[b]);
          }
          for (int l = 0; l < 8; ++l)
            for (int b = 0; b < nb; ++b)
              V8::store(dst + t * s.t + (xg + l) * s.w + d0 + 8 * b, r[b][l]);
        }
    x = x_end;
  }
#endif
  for (int64_t d = 0; d < D; ++d)
    for (int64_t t = 0; t < T_len; ++t) {
      T* __restrict__ row = dst + d * s.c + t * s.t;
      const float* __restrict__ in = buf + (d * T_len + t) * L;
      int64_t xx = x;
#if LDDM_SIMD
      if (s.w == 1)
        for (; xx % L == 0 && xx + L <= x1; xx += L)
          Vec::store(row + xx, Vec::load(in + xx / L * tile));
#endif
      for (; xx < x1; ++xx) store(row + xx * s.w, in[xx / L * tile + xx % L]);
    }
}

// Channels not innermost (a contiguous [B, C, T, H, W] tensor, channel slices of one,
// [B * T, C, H, W] frames seen as [B, C, T, H, W], other strided views): pixels go in
// the vector lanes. One task is one head of a chunk of P = attention_lane_chunk(T, D)
// neighbouring pixels of a row, (b, head, y, x0 ..) in that order. Its q, k, v are
// copied into float tiles [D, T, lanes] of kLanes pixels, reading each (d, t)
// row of the chunk once, and lane_scores / lane_values compute a tile without
// transposes. Reading a tile's 8 pixels per row straight from the tensor instead read 32
// bytes of each cache line, from rows T * H * W values apart (often a multiple of 4 KiB:
// one L1 set, a page each), and cost more than the math. The output goes straight to
// the tensor where a tile's pixels are adjacent in it, else through a float tile.
template <typename T>
void attention_lanes(const AttentionArgs<T>& a, int64_t first, int64_t count, float* work) {
  constexpr int64_t L = kLanes;
  const int64_t D = a.D, T_len = a.T_len, P = attention_lane_chunk(T_len, D);
  const int64_t tile = D * T_len * L, chunk_floats = D * T_len * P;
  const int64_t row_chunks = (a.W + P - 1) / P;
  float* __restrict__ qb = work;  // q, k, v and output tiles: [P / L][D, T, L] each
  float* __restrict__ kb = qb + chunk_floats;
  float* __restrict__ vb = kb + chunk_floats;
  float* __restrict__ ob = vb + chunk_floats;
  float* __restrict__ s = ob + chunk_floats;        // [T, T, L] logits, then probabilities
  float* __restrict__ inv = s + T_len * T_len * L;  // [T, L]
  for (int64_t chunk = first; chunk < first + count; ++chunk) {
    const int64_t x0 = chunk % row_chunks * P, y = chunk / row_chunks % a.H;
    const int64_t h = chunk / (row_chunks * a.H) % a.heads;
    const int64_t b = chunk / (row_chunks * a.H * a.heads);
    const int64_t n = std::min(P, a.W - x0);
    const auto at = [&](const Strides5& st) {
      return b * st.b + h * D * st.c + y * st.h + x0 * st.w;
    };
    gather_tiles(a.q + at(a.sq), a.sq, D, T_len, n, qb);
    gather_tiles(a.k + at(a.sk), a.sk, D, T_len, n, kb);
    gather_tiles(a.v + at(a.sv), a.sv, D, T_len, n, vb);
    T* out = a.o + at(a.so);
    for (int64_t x = 0; x < n; x += L) {
      const int64_t lanes = std::min(L, n - x), c = x / L;
      float* lse = a.lse ? a.lse + b * a.sl.b + h * a.sl.c + y * a.sl.h + (x0 + x) * a.sl.w
                         : nullptr;
      const bool direct = a.so.w == 1 && lanes == L;
#if LDDM_SIMD
      lane_scores(qb + c * tile, kb + c * tile, D, T_len, a.scale, s, inv, lse, a.sl.t, a.sl.w,
                  lanes);
      if (direct)
        lane_values(s, inv, vb + c * tile, D, T_len, out + x, a.so.c, a.so.t);
      else
        lane_values(s, inv, vb + c * tile, D, T_len, ob + c * tile, T_len * L, L);
#else
      lane_scores_portable(qb + c * tile, kb + c * tile, D, T_len, a.scale, s, inv, lse, a.sl.t,
                           a.sl.w, lanes);
      if (direct)
        lane_values_portable(s, inv, vb + c * tile, D, T_len, out + x, a.so.c, a.so.t);
      else
        lane_values_portable(s, inv, vb + c * tile, D, T_len, ob + c * tile, T_len * L, L);
#endif
      if (!direct) scatter_tiles(ob, a.so, D, T_len, x, x + lanes, out);
    }
  }
}

// Channels innermost (channels_last_3d views of qkv): one task per pixel (b, y, x).
// Its T rows of C channels are contiguous runs, so they are first copied whole into
// float buffers (streaming reads; per-head gathers of 128 bytes from T far-apart rows
// are latency-bound, and rows a multiple of 4 KiB apart fight over the same L1 sets),
// then each head is computed from the buffers and the result rows are stored whole.
// In the vector builds with D % 8 == 0, q is copied transposed for attend_head and
// float outputs are written in place.
template <typename T, int kT>
void attention_pixels_impl(const AttentionArgs<T>& a, int64_t first, int64_t count, float* work) {
  const T *q = a.q, *k = a.k, *v = a.v;
  T* o = a.o;
  const Strides5 &sq = a.sq, &sk = a.sk, &sv = a.sv, &so = a.so;
  const int64_t heads = a.heads, D = a.D, T_run = a.T_len, H = a.H, W = a.W;
  const float scale = a.scale;
  const int64_t T_len = kT > 0 ? kT : T_run;
  const int64_t C = heads * D;
#if LDDM_SIMD
  const int64_t TP = padded_frames(T_len);
  const bool vector_heads = D % 8 == 0;
#else
  const int64_t TP = T_len;
  const bool vector_heads = false;
#endif
  float* __restrict__ qp = work;            // [T, C] pre-scaled, or [C, TP] (vector)
  float* __restrict__ kp = qp + TP * C;     // [T, C]
  float* __restrict__ vp = kp + TP * C;     // [T, C]
  float* __restrict__ op = vp + TP * C;     // [T, C]
  float* __restrict__ kt = op + TP * C;     // [D, T] one head's keys, transposed
  float* __restrict__ p = kt + TP * D;      // [T, T] and the vector kernel's scratch
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
    const auto lse_at = [&](int64_t h) -> float* {  // head h's rows of the logsumexps
      return a.lse ? a.lse + b * a.sl.b + h * a.sl.c + y * a.sl.h + x * a.sl.w : nullptr;
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
#if LDDM_SIMD
    if (vector_heads) {
      transpose_rows(qb, sq.t, T_len, C, qp, TP);
      for (int64_t h = 0; h < heads; ++h) {
        const int64_t c0 = h * D;
        prefetch_next(h * T_len / heads, (h + 1) * T_len / heads);
        float* out = op + c0;
        int64_t out_stride = C;
        if constexpr (std::is_same_v<T, float>) out = ob + c0, out_stride = so.t;
        // Channels of the values in whole vectors: the build's widest where D allows.
        if (D % Vec::W == 0)
          attend_head<Vec>(qp + c0 * TP, kp + c0, C, vp + c0, C, out, out_stride, D, T_len,
                           scale, p, lse_at(h), a.sl.t);
        else
          attend_head<V8>(qp + c0 * TP, kp + c0, C, vp + c0, C, out, out_stride, D, T_len,
                          scale, p, lse_at(h), a.sl.t);
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
        attend<kT>(qp + c0, C, kt, vp + c0, C, op + c0, C, D, T_len, p, lse_at(h), a.sl.t);
      }
    for (int64_t t = 0; t < T_len; ++t) {
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) store(ob + t * so.t + c, op[t * C + c]);
    }
  }
}

template <typename T>
void attention_pixels(const AttentionArgs<T>& a, int64_t first, int64_t count, float* work) {
  if (a.T_len == 16)
    attention_pixels_impl<T, 16>(a, first, count, work);
  else
    attention_pixels_impl<T, 0>(a, first, count, work);
}

}  // namespace LDDM_ISA_NAMESPACE
}  // namespace cpu
}  // namespace lddm
