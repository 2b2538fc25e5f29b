// temporal_attention: softmax attention over the T frames at every (b, head, y, x) of
// strided [B, C, T, H, W] tensors, without permute copies.
//
// A block takes a tile of consecutive positions (flattened as (b, head, y, x), x
// fastest) and, for the whole tile at once:
//   1. stages q, k, v of every position as fp32 in shared memory ([pos, t, d]),
//      walking the elements in the order that is coalesced for each tensor's layout
//      (position-fastest for NCTHW, channel-fastest for channels_last_3d);
//   2. computes the scaled scores [pos, i, j] (one thread per score, a loop over d);
//   3. turns each score row into probabilities (one thread per row, fp32 softmax);
//   4. computes o[pos, t, d] = sum_j p[pos, t, j] v[pos, j, d] (one thread per output,
//      a loop over j) and stores it straight into o's layout.
// Every thread works on scalars and loops over shared memory: no per-thread arrays, so
// registers stay bounded for any T and head_dim. Shared-memory rows and per-position
// blocks have odd strides, so threads that differ in position, frame or channel hit
// distinct banks in every phase.
#include "cuda/temporal_attention.h"

#include <algorithm>
#include <cstdlib>

#include "cuda/device_utils.cuh"

namespace lddm {
namespace cuda {
namespace {

constexpr int kThreads = 256;
// Shared memory a tile aims for: four blocks (1024 threads) fit in an H100 SM's
// 228 KB, and no opt-in is needed unless one position alone is bigger.
constexpr int64_t kSmemBudget = 48 * 1024;
// Positions per tile at most, for tiny T * head_dim where the budget would allow more
// than the block's threads can use.
constexpr int64_t kMaxPositions = 64;

// Shared-memory geometry, in floats.
struct Geometry {
  int dp;         // stride of a q/k/v row [D]: D rounded up to odd
  int tp;         // stride of a score row [T]: T rounded up to odd
  int qkv_pos;    // stride of one position's [T, dp] block in q/k/v: rounded up to odd
  int score_pos;  // stride of one position's [T, tp] score block: rounded up to odd
};

// In int64, so any T and head_dim give a size the caller can compare with the limit;
// the int fields are only filled once that check passed.
struct Geometry64 {
  int64_t dp, tp, qkv_pos, score_pos;
};

Geometry64 geometry64(int64_t T, int64_t D) {
  const int64_t dp = D | 1, tp = T | 1;
  return {dp, tp, (T * dp) | 1, (T * tp) | 1};
}

Geometry narrow(const Geometry64& g) {
  return {int(g.dp), int(g.tp), int(g.qkv_pos), int(g.score_pos)};
}

// Per position: four int64 base offsets (q, k, v, o), q/k/v blocks and the scores.
size_t bytes_per_position(const Geometry64& g) {
  return 4 * sizeof(int64_t) + sizeof(float) * size_t(3 * g.qkv_pos + g.score_pos);
}

template <typename T>
struct Params {
  const T* q;  // [B, heads * D, T, H, W] with strides sq
  const T* k;  // [B, heads * D, T, H, W] with strides sk
  const T* v;  // [B, heads * D, T, H, W] with strides sv
  T* o;        // [B, heads * D, T, H, W] with strides so
  VideoStrides sq, sk, sv, so;
  // Walk this tensor's elements channel-fastest (else position-fastest): whichever
  // stride is smaller, so consecutive threads touch neighbouring addresses.
  bool q_dfast, k_dfast, v_dfast, o_dfast;
  int64_t heads, H, W;
  int64_t positions;  // B * heads * H * W
  int frames, D;      // T and head_dim
  int npos;           // positions per tile
  Geometry g;
  float scale;
};

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

// src: one of q/k/v, position i's (t = 0, d = 0) element at base[i] ([count]); dst:
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

template <typename T>
__global__ void __launch_bounds__(kThreads) attention_kernel(const Params<T> p) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int npos = p.npos, frames = p.frames, D = p.D;
  const Geometry g = p.g;
  // Element offset of each tile position's (t = 0, d = 0) in q, k, v, o: [npos] each.
  int64_t* base_q = reinterpret_cast<int64_t*>(smem);
  int64_t* base_k = base_q + npos;
  int64_t* base_v = base_k + npos;
  int64_t* base_o = base_v + npos;
  float* qs = reinterpret_cast<float*>(base_o + npos);  // [npos, frames, dp]
  float* ks = qs + npos * g.qkv_pos;                    // [npos, frames, dp]
  float* vs = ks + npos * g.qkv_pos;                    // [npos, frames, dp]
  float* ss = vs + npos * g.qkv_pos;                    // [npos, frames, tp] scores, then probabilities

  const int64_t tiles = (p.positions + npos - 1) / npos;
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t first = tile * npos;
    const int count = int(p.positions - first < npos ? p.positions - first : npos);
    __syncthreads();  // the previous tile's output phase is done with shared memory
    for (int i = threadIdx.x; i < count; i += kThreads) {
      int64_t r = first + i;
      const int64_t x = r % p.W;
      r /= p.W;
      const int64_t y = r % p.H;
      r /= p.H;
      const int64_t c0 = (r % p.heads) * D;  // the head's first channel
      const int64_t b = r / p.heads;
      base_q[i] = b * p.sq.b + c0 * p.sq.c + y * p.sq.y + x * p.sq.x;
      base_k[i] = b * p.sk.b + c0 * p.sk.c + y * p.sk.y + x * p.sk.x;
      base_v[i] = b * p.sv.b + c0 * p.sv.c + y * p.sv.y + x * p.sv.x;
      base_o[i] = b * p.so.b + c0 * p.so.c + y * p.so.y + x * p.so.x;
    }
    __syncthreads();
    stage(p.q, base_q, p.sq, p.q_dfast, count, frames, D, g, qs);
    stage(p.k, base_k, p.sk, p.k_dfast, count, frames, D, g, ks);
    stage(p.v, base_v, p.sv, p.v_dfast, count, frames, D, g, vs);
    __syncthreads();

    for (int e = threadIdx.x; e < count * frames * frames; e += kThreads) {
      const int j = e % frames, r = e / frames, i = r % frames, pos = r / frames;
      const float* qrow = qs + pos * g.qkv_pos + i * g.dp;
      const float* krow = ks + pos * g.qkv_pos + j * g.dp;
      float acc = 0.0f;
      for (int d = 0; d < D; ++d) acc = fmaf(qrow[d], krow[d], acc);
      ss[pos * g.score_pos + i * g.tp + j] = acc * p.scale;
    }
    __syncthreads();

    for (int r = threadIdx.x; r < count * frames; r += kThreads) {
      float* row = ss + (r / frames) * g.score_pos + (r % frames) * g.tp;
      float mx = row[0];
      for (int j = 1; j < frames; ++j) mx = fmaxf(mx, row[j]);
      float sum = 0.0f;
      for (int j = 0; j < frames; ++j) {
        const float e = __expf(row[j] - mx);
        row[j] = e;
        sum += e;
      }
      const float inv = 1.0f / sum;  // sum >= 1: the maximum contributes exp(0)
      for (int j = 0; j < frames; ++j) row[j] *= inv;
    }
    __syncthreads();

    for (int e = threadIdx.x; e < count * frames * D; e += kThreads) {
      int pos, t, d;
      split_index(e, p.o_dfast, count, frames, D, pos, t, d);
      const float* prow = ss + pos * g.score_pos + t * g.tp;
      const float* vcol = vs + pos * g.qkv_pos + d;
      float acc = 0.0f;
      for (int j = 0; j < frames; ++j) acc = fmaf(prow[j], vcol[j * g.dp], acc);
      p.o[base_o[pos] + d * p.so.c + t * p.so.t] = from_float<T>(acc);
    }
  }
}

// Whether the channel stride is no larger than the stride between consecutive tile
// positions (x, else y, else head, else batch when those sizes are 1).
bool channel_fastest(const VideoStrides& s, int64_t heads, int64_t D, int64_t H, int64_t W) {
  const int64_t step = W > 1 ? s.x : H > 1 ? s.y : heads > 1 ? D * s.c : s.b;
  return std::abs(s.c) <= std::abs(step);
}

template <typename T>
cudaError_t launch(const void* q, const void* k, const void* v, void* o, VideoStrides sq,
                   VideoStrides sk, VideoStrides sv, VideoStrides so, int64_t B, int64_t heads,
                   int64_t D, int64_t frames, int64_t H, int64_t W, float scale,
                   cudaStream_t stream) {
  const int64_t positions = B * heads * H * W;
  if (positions == 0 || frames == 0 || D == 0) return cudaSuccess;
  const Geometry64 g64 = geometry64(frames, D);
  const size_t per_position = bytes_per_position(g64);
  int device = 0, optin = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  err = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (err != cudaSuccess) return err;
  if (per_position > size_t(optin)) return cudaErrorInvalidValue;

  const int64_t npos = std::max<int64_t>(
      1, std::min({kSmemBudget / int64_t(per_position), kMaxPositions, positions}));
  const size_t smem = size_t(npos) * per_position;
  if (smem > 48 * 1024) {
    // Above the default dynamic limit: one position with a large T * head_dim.
    err = cudaFuncSetAttribute(attention_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               int(smem));
    if (err != cudaSuccess) return err;
  }
  Params<T> p{static_cast<const T*>(q),
              static_cast<const T*>(k),
              static_cast<const T*>(v),
              static_cast<T*>(o),
              sq,
              sk,
              sv,
              so,
              channel_fastest(sq, heads, D, H, W),
              channel_fastest(sk, heads, D, H, W),
              channel_fastest(sv, heads, D, H, W),
              channel_fastest(so, heads, D, H, W),
              heads,
              H,
              W,
              positions,
              int(frames),
              int(D),
              int(npos),
              narrow(g64),
              scale};
  const int64_t tiles = (positions + npos - 1) / npos;
  const int grid = int(std::min(tiles, kMaxGrid));
  attention_kernel<T><<<grid, kThreads, smem, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

size_t temporal_attention_smem_per_position(int64_t T, int64_t D) {
  return bytes_per_position(geometry64(T, D));
}

cudaError_t temporal_attention(DType dtype, const void* q, const void* k, const void* v, void* o,
                               VideoStrides sq, VideoStrides sk, VideoStrides sv,
                               VideoStrides so, int64_t B, int64_t heads, int64_t D, int64_t T,
                               int64_t H, int64_t W, float scale, cudaStream_t stream) {
  switch (dtype) {
    case DType::kFloat32:
      return launch<float>(q, k, v, o, sq, sk, sv, so, B, heads, D, T, H, W, scale, stream);
    case DType::kBFloat16:
      return launch<__nv_bfloat16>(q, k, v, o, sq, sk, sv, so, B, heads, D, T, H, W, scale, stream);
    case DType::kFloat16:
      return launch<__half>(q, k, v, o, sq, sk, sv, so, B, heads, D, T, H, W, scale, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace lddm
