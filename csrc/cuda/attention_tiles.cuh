// Tiles of positions in shared memory, shared by the temporal_attention forward and
// backward kernels: a block takes consecutive positions (flattened as (b, head, y, x),
// x fastest), stages each one's [T, head_dim] rows of its input tensors as fp32
// ([pos, t, d], rows and per-position blocks of odd strides so threads that differ in
// position, frame or channel hit distinct banks), computes, and stores straight into
// the outputs' layouts. Elements are walked channel-fastest or position-fastest,
// whichever is coalesced for that tensor's strides.
#pragma once

#include <algorithm>
#include <cstdlib>

#include "cuda/device_utils.cuh"
#include "cuda/temporal_attention.h"

namespace lddm {
namespace cuda {
namespace attention {

constexpr int kThreads = 256;
// Shared memory a tile aims for: four blocks (1024 threads) fit in an H100 SM's
// 228 KB, and no opt-in is needed unless one position alone is bigger.
constexpr int64_t kSmemBudget = 48 * 1024;
// Positions per tile at most, for tiny T * head_dim where the budget would allow more
// than the block's threads can use.
constexpr int64_t kMaxPositions = 64;

// Shared-memory geometry, in floats.
struct Geometry {
  int dp;         // stride of a [D] row: D rounded up to odd
  int tp;         // stride of a score row [T]: T rounded up to odd
  int qkv_pos;    // stride of one position's [T, dp] block: rounded up to odd
  int score_pos;  // stride of one position's [T, tp] score block: rounded up to odd
};

// In int64, so any T and head_dim give a size the caller can compare with the limit;
// the int fields are only filled once that check passed.
struct Geometry64 {
  int64_t dp, tp, qkv_pos, score_pos;
};

inline Geometry64 geometry64(int64_t T, int64_t D) {
  const int64_t dp = D | 1, tp = T | 1;
  return {dp, tp, (T * dp) | 1, (T * tp) | 1};
}

inline Geometry narrow(const Geometry64& g) {
  return {int(g.dp), int(g.tp), int(g.qkv_pos), int(g.score_pos)};
}

// Per position: `offsets` int64 base offsets, `rows` [T, dp] blocks and `scores`
// [T, tp] blocks.
inline size_t bytes_per_position(const Geometry64& g, int offsets, int rows, int scores) {
  return offsets * sizeof(int64_t) + sizeof(float) * size_t(rows * g.qkv_pos + scores * g.score_pos);
}

// Splits e in [0, count * frames * D) into (pos, t, d), d or pos fastest.
__device__ __forceinline__ void split_index(int e, bool dfast, int count, int frames, int D,
                                            int& pos, int& t, int& d) {
  if (dfast) {
    d = e % D;
    const int r = e / D;
    t = r % frames;
    pos = r / frames;
  } else {
    pos = e % count;
    const int r = e / count;
    t = r % frames;
    d = r / frames;
  }
}

// Element offset of position r's (t = 0, d = 0) in a tensor of strides s.
__device__ __forceinline__ int64_t position_offset(int64_t r, const VideoStrides& s,
                                                  int64_t heads, int64_t D, int64_t H,
                                                  int64_t W) {
  const int64_t x = r % W;
  r /= W;
  const int64_t y = r % H;
  r /= H;
  const int64_t c0 = (r % heads) * D;  // the head's first channel
  const int64_t b = r / heads;
  return b * s.b + c0 * s.c + y * s.y + x * s.x;
}

// Index of (position r, frame t) in the logsumexps, [B * heads, T, H * W] contiguous:
// position r is (b * heads + head) * H * W + y * W + x.
__device__ __forceinline__ int64_t lse_index(int64_t r, int t, int frames, int64_t HW) {
  return (r / HW * frames + t) * HW + r % HW;
}

// src: one tensor, position i's (t = 0, d = 0) element at base[i] ([count]); dst:
// [count, frames, dp] fp32 with position stride qkv_pos.
template <typename T>
__device__ __forceinline__ void stage(const T* __restrict__ src, const int64_t* base,
                                      const VideoStrides& s, bool dfast, int count,
                                      int frames, int D, const Geometry& g, float* dst) {
  for (int e = threadIdx.x; e < count * frames * D; e += kThreads) {
    int pos, t, d;
    split_index(e, dfast, count, frames, D, pos, t, d);
    dst[pos * g.qkv_pos + t * g.dp + d] = to_float(src[base[pos] + d * s.c + t * s.t]);
  }
}

// Whether the channel stride is no larger than the stride between consecutive tile
// positions (x, else y, else head, else batch when those sizes are 1).
inline bool channel_fastest(const VideoStrides& s, int64_t heads, int64_t D, int64_t H,
                            int64_t W) {
  const int64_t step = W > 1 ? s.x : H > 1 ? s.y : heads > 1 ? D * s.c : s.b;
  return std::abs(s.c) <= std::abs(step);
}

// Positions per tile and the tile's shared memory for `per_position` bytes each, after
// checking one position fits the device's opt-in limit and opting `kernel` in to what
// the tile needs above the default 48 KB. Returns cudaErrorInvalidValue when one
// position needs more than the device allows.
template <typename Kernel>
cudaError_t plan_tiles(Kernel* kernel, size_t per_position, int64_t positions, int64_t* npos,
                       size_t* smem) {
  int device = 0, optin = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  err = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (err != cudaSuccess) return err;
  if (per_position > size_t(optin)) return cudaErrorInvalidValue;
  *npos = std::max<int64_t>(
      1, std::min({kSmemBudget / int64_t(per_position), kMaxPositions, positions}));
  *smem = size_t(*npos) * per_position;
  if (*smem > 48 * 1024)  // above the default dynamic limit: one large position
    return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(*smem));
  return cudaSuccess;
}

}  // namespace attention
}  // namespace cuda
}  // namespace lddm
