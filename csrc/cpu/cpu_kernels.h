// Framework-free CPU kernels, compiled once per instruction set (isa_*.cpp) and picked
// at run time (see select_kernels in cpu/dispatch.h). No torch headers here: an
// inline torch function compiled with -mavx2 could otherwise be linked into the
// baseline build and crash a CPU without AVX2.
#pragma once

#include <cstdint>

namespace lddm {
namespace cpu {

using bf16_t = uint16_t;  // bfloat16 storage; converted to float on load

// Mean and sum of squared deviations (M2) of `count` values, in double so that
// rows, channels and chunks merge without cancellation (M2 = sum of the parts' M2
// + sum n_i (mean_i - mean)^2).
// Plain aggregate (no inline constructors that an AVX2 build could emit).
struct Moments {
  double mean;
  double m2;
  double count;
};

// Strides (in elements) of one [B, C, T, H, W] tensor.
struct Strides5 {
  int64_t b, c, t, h, w;
};

// The tensors of one temporal attention forward: q, k, v read and o written, all
// [B, C, T, H, W] at the given strides with C = heads * D; lse null, or the float
// logsumexp of each query written at strides sl (its head stride in sl.c).
template <typename T>
struct AttentionArgs {
  const T* q;
  const T* k;
  const T* v;
  T* o;
  float* lse;
  Strides5 sq, sk, sv, so, sl;
  int64_t heads, D, T_len, H, W;
  float scale;
};

// The tensors of one temporal attention backward: q, k, v, the output gradient dout,
// the forward's logsumexp lse ([B, heads, T, H, W] contiguous float), and the gradients
// dq, dk, dv written; all [B, C, T, H, W] at the given strides.
template <typename T>
struct AttentionGrad {
  const T* q;
  const T* k;
  const T* v;
  const T* dout;
  const float* lse;
  T* dq;
  T* dk;
  T* dv;
  Strides5 sq, sk, sv, sdo, sdq, sdk, sdv;
  int64_t heads, D, T_len, H, W;
  float scale;
  bool heads_inner;
};

template <typename T>
struct Kernels {
  // x: [n] contiguous -> its moments.
  Moments (*row_moments)(const T* x, int64_t n);
  // x: [positions, C] (channels innermost) -> per channel c a shift[c] near the mean,
  // the sum of deviations from it s1[c] and of their squares s2[c] (the caller forms
  // mean and M2 in double).
  void (*chunk_moments)(const T* x, int64_t positions, int64_t C, float* shift, float* s1,
                        float* s2);
  // y[i] = act(a * (x[i] - m) + b) for a contiguous row of n values. Subtracting the
  // (float-rounded) group mean first keeps large-mean inputs exact: x - m is exact
  // when x is near m, where a * x + b' would cancel two large terms.
  void (*affine_row)(const T* x, T* y, int64_t n, float a, float m, float b, bool silu);
  // y[i] = act(a[i] * (x[i] - m) + b[i]): affine_row with a and b per element (a spatial
  // scale/shift folded in), for a contiguous row of n values.
  void (*affine_row_varying)(const T* x, T* y, int64_t n, const float* a, float m,
                             const float* b, bool silu);
  // y[p, c] = act(a[p * ab_step + c] * (x[p, c] - m[c]) + b[p * ab_step + c]) for
  // [positions, C], channels innermost: ab_step 0 gives per-channel a and b (FiLM), C
  // per-position rows (a spatial scale/shift folded in).
  void (*affine_chunk)(const T* x, T* y, int64_t positions, int64_t C, const float* a,
                       const float* m, const float* b, int64_t ab_step, bool silu);
  // group_norm backward (see group_norm_backward_kernels.h for the math). Pass 1 over a
  // contiguous row of n values of one channel: adds sum gv, gv xhat, gu, gu xhat to
  // sums[0..3] and writes wgu[i] = w gu; varying: s, h per element [n] and gs[i] = gv u,
  // gh[i] = gv written, else s[0], h[0] are the row's constants.
  void (*gn_grad_row_sums)(const T* x, const T* dy, int64_t n, float m, float r, float w,
                           float b, const float* s, const float* h, bool varying, bool silu,
                           float* gs, float* gh, float* wgu, double* sums);
  // Pass 2 over the row: dx[i] = r (wgu[i] - c1 - xhat[i] c2); wgu may be dx (float).
  void (*gn_grad_row_dx)(const T* x, const float* wgu, T* dx, int64_t n, float m, float r,
                         float c1, float c2);
  // The two passes over a channels-last chunk [positions, C]: m, r, w, b per channel
  // [C]; s, h rows of C at p * sh_step (0: FiLM); gs, gh [positions, C] written when
  // sh_step != 0; wgu [positions, C]; sums [4, C] accumulated; c1, c2 per channel [C].
  void (*gn_grad_chunk_sums)(const T* x, const T* dy, int64_t positions, int64_t C,
                             const float* m, const float* r, const float* w, const float* b,
                             const float* s, const float* h, int64_t sh_step, bool silu,
                             float* gs, float* gh, float* wgu, float* sums);
  void (*gn_grad_chunk_dx)(const T* x, const float* wgu, T* dx, int64_t positions, int64_t C,
                           const float* m, const float* r, const float* c1, const float* c2);
  // Softmax attention over T (scale * q.k_j logits); lse, when requested, is each
  // query's log sum_j exp(scale q.k_j) (what the backward needs). Two walks of the
  // same math: attention_pixels when every channel stride is 1, `count` consecutive
  // pixels (b, y, x) from `first`, all heads each, work of attention_pixel_work_floats;
  // attention_lanes otherwise, `count` consecutive chunks from `first` ordered (b, head,
  // y, x / chunk), a chunk being one head of attention_lane_chunk(T, D) neighbouring
  // pixels of a row (fewer at its end), work of attention_lane_work_floats.
  void (*attention_pixels)(const AttentionArgs<T>& a, int64_t first, int64_t count,
                           float* work);
  void (*attention_lanes)(const AttentionArgs<T>& a, int64_t first, int64_t count, float* work);
  // Gradients of q, k, v for `count` consecutive positions from `first`, ordered (b, y,
  // x, head) when heads_inner (channels nearer than pixels in memory), else (b, head,
  // y, x); from the output gradient and the forward's logsumexp; work holds
  // attention_grad_work_floats(T, D) floats.
  void (*attention_backward)(const AttentionGrad<T>& a, int64_t first, int64_t count,
                             float* work);
  // The same in the forward's pixel tiles (vector builds; null in the portable one): tasks
  // [first, first + count) of B * (heads / g.heads) * a.H * ceil(a.W / g.pixels), g =
  // attention_grad_tasks; logsumexps contiguous [B, heads, T, a.H, a.W]; work:
  // attention_grad_lane_work_floats.
  void (*attention_backward_lanes)(const AttentionGrad<T>& a, int64_t first, int64_t count,
                                   float* work);
  // The same one pixel at a time, channels in the lanes (vector builds; null in the
  // portable one), for channels-innermost tensors: `count` pixels (b, y, x) from `first`,
  // all heads each; needs D % 8 == 0 and the channel strides of dq, dk, dv 1; logsumexps
  // contiguous [B, heads, T, H, W]; work: attention_grad_pixel_work_floats.
  void (*attention_backward_pixels)(const AttentionGrad<T>& a, int64_t first, int64_t count,
                                    float* work);
  // out[i] = a * x[i] + b * eps[i] (+ c * noise[i] when noise is not null), n values.
  void (*sampler_step)(const T* x, const T* eps, const T* noise, T* out, int64_t n, float a,
                       float b, float c);
};

// Floats in the widest vector of any build (AVX-512): the vector kernels pad frames to
// whole vectors of queries and tile pixels by whole vectors, and the buffers the torch
// side allocates are sized for the widest.
inline constexpr int64_t kMaxVectorFloats = 16;

// Buffers are sized for TP = T rounded up to whole vectors of frames (the vector kernel's
// padded query lanes); the probabilities take T + 1 rows of TP (its normalisers).
inline int64_t attention_pixel_work_floats(int64_t T, int64_t C, int64_t D) {
  const int64_t TP = (T + kMaxVectorFloats - 1) / kMaxVectorFloats * kMaxVectorFloats;
  return 4 * TP * C + TP * D + (T + 1) * TP;
}

// Pixels per task of attention_lanes, a multiple of every build's lanes: q, k and v
// tiles of at most 64 Ki floats (256 KiB) each, and at most 64 pixels, a whole 8 x 8
// latent frame (one run of memory per (d, t) in a contiguous tensor). Measured single-threaded on the
// kernels suite's shapes (T = 16, head_dim 32 and 64): 128 or 256 pixels ran up to 30%
// slower (the tiles outgrow L2), 32 pixels up to 10% slower, 16 up to 20%.
inline int64_t attention_lane_chunk(int64_t T, int64_t D) {
  const int64_t P = 65536 / (D * T) / kMaxVectorFloats * kMaxVectorFloats;
  return P < kMaxVectorFloats ? kMaxVectorFloats : (P > 64 ? 64 : P);
}
// The q, k, v and output tiles of a chunk, logits [T, T, lanes], normalisers [T, lanes].
inline int64_t attention_lane_work_floats(int64_t T, int64_t D) {
  return 4 * attention_lane_chunk(T, D) * D * T + kMaxVectorFloats * (T * T + T);
}

// How attention_backward_lanes splits the work: tasks of `heads` heads (all of them where
// a pixel's channels are adjacent, heads_inner: its rows are then gathered and scattered
// whole, C channels in a run, instead of head_dim at a time) of `pixels` neighbouring
// pixels (one vector of the widest build for all heads; a chunk of attention_lanes for
// one head).
struct AttentionGradTasks {
  int64_t heads, pixels;
};
inline AttentionGradTasks attention_grad_tasks(int64_t T, int64_t D, int64_t heads,
                                               bool heads_inner) {
  if (heads_inner) return {heads, kMaxVectorFloats};
  return {1, attention_lane_chunk(T, D)};
}

// attention_backward_lanes: q, k, v and output-gradient tiles of a task (their head
// blocks receive dk, dv and dq), probabilities, dS and a transpose [T, T, lanes], and
// logsumexps and ones [T, lanes].
inline int64_t attention_grad_lane_work_floats(int64_t T, int64_t D, int64_t heads,
                                               bool heads_inner) {
  const AttentionGradTasks g = attention_grad_tasks(T, D, heads, heads_inner);
  return 4 * g.heads * g.pixels * D * T + kMaxVectorFloats * (3 * T * T + 2 * T);
}

// attention_backward_pixels: a pixel's q, k, v and output-gradient rows [T, C], q and the
// output gradient transposed [C, TP], P^T and dS^T [T, TP] and the logsumexps [TP], TP =
// T rounded up to whole vectors of the widest build.
inline int64_t attention_grad_pixel_work_floats(int64_t T, int64_t C) {
  const int64_t TP = (T + kMaxVectorFloats - 1) / kMaxVectorFloats * kMaxVectorFloats;
  return 4 * T * C + 2 * C * TP + 2 * T * TP + TP;
}

// Positions the attention backward gathers together (neighbouring pixels).
inline constexpr int64_t kAttentionRun = 8;

// Float buffers of one position of the attention backward: q (pre-scaled), k, v, dout,
// dq, dk, dv as [T, D], and one query's probabilities and dP [T] each.
inline int64_t attention_grad_position_floats(int64_t T, int64_t D) {
  return 7 * T * D + 2 * T;
}
inline int64_t attention_grad_work_floats(int64_t T, int64_t D) {
  return kAttentionRun * attention_grad_position_floats(T, D);
}

// Each build's kernel table for T (float or bf16_t), made once (cpu_kernels_impl.h;
// instantiated by isa_<name>.cpp). Null where this compiler made no such build: AVX2 and
// AVX-512 on non-x86 compilers, AVX-512 on one without AVX512-BF16. isa_default always
// has one.
namespace isa_default {
template <typename T>
const Kernels<T>* kernels();
}  // namespace isa_default
namespace isa_avx2 {
template <typename T>
const Kernels<T>* kernels();
}  // namespace isa_avx2
namespace isa_avx512 {
template <typename T>
const Kernels<T>* kernels();
}  // namespace isa_avx512

}  // namespace cpu
}  // namespace lddm
