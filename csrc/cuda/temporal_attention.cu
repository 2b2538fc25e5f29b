// temporal_attention: softmax attention over the T frames at every (b, head, y, x) of
// strided [B, C, T, H, W] tensors, without permute copies.
//
// A block takes a tile of consecutive positions (attention_tiles.cuh) and, for the
// whole tile at once:
//   1. stages q, k, v of every position as fp32 in shared memory ([pos, t, d]),
//      walking the elements in the order that is coalesced for each tensor's layout
//      (position-fastest for NCTHW, channel-fastest for channels_last_3d);
//   2. computes the scaled scores [pos, i, j] (one thread per score, a loop over d);
//   3. turns each score row into probabilities (one thread per row, fp32 softmax),
//      writing the row's logsumexp when the caller wants it (the backward's input);
//   4. computes o[pos, t, d] = sum_j p[pos, t, j] v[pos, j, d] (one thread per output,
//      a loop over j) and stores it straight into o's layout.
// Every thread works on scalars and loops over shared memory: no per-thread arrays, so
// registers stay bounded for any T and head_dim. Shared-memory rows and per-position
// blocks have odd strides, so threads that differ in position, frame or channel hit
// distinct banks in every phase.
#include "cuda/temporal_attention.h"

#include <cmath>

#include "cuda/attention_tiles.cuh"

namespace lddm {
namespace cuda {
namespace {

using namespace attention;  // the tile machinery both passes share

// Four base offsets (q, k, v, o), the q, k, v blocks and the scores.
size_t bytes_per_position(const Geometry64& g) {
  return attention::bytes_per_position(g, 4, 3, 1);
}

template <typename T>
struct Params {
  const T* q;  // [B, heads * D, T, H, W] with strides sq
  const T* k;  // [B, heads * D, T, H, W] with strides sk
  const T* v;  // [B, heads * D, T, H, W] with strides sv
  T* o;        // [B, heads * D, T, H, W] with strides so
  float* lse;  // [B, heads, T, H, W] contiguous, or null
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
      base_q[i] = position_offset(first + i, p.sq, p.heads, D, p.H, p.W);
      base_k[i] = position_offset(first + i, p.sk, p.heads, D, p.H, p.W);
      base_v[i] = position_offset(first + i, p.sv, p.heads, D, p.H, p.W);
      base_o[i] = position_offset(first + i, p.so, p.heads, D, p.H, p.W);
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
      if (p.lse != nullptr)
        p.lse[lse_index(first + r / frames, r % frames, frames, p.H * p.W)] = mx + logf(sum);
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

template <typename T>
cudaError_t launch(const void* q, const void* k, const void* v, void* o, float* lse,
                   VideoStrides sq, VideoStrides sk, VideoStrides sv, VideoStrides so, int64_t B,
                   int64_t heads, int64_t D, int64_t frames, int64_t H, int64_t W, float scale,
                   cudaStream_t stream) {
  const int64_t positions = B * heads * H * W;
  if (positions == 0 || frames == 0 || D == 0) return cudaSuccess;
  const Geometry64 g64 = attention::geometry64(frames, D);
  int64_t npos = 0;
  size_t smem = 0;
  const cudaError_t err = attention::plan_tiles(attention_kernel<T>, bytes_per_position(g64),
                                                positions, &npos, &smem);
  if (err != cudaSuccess) return err;
  const auto dfast = [&](const VideoStrides& s) {
    return attention::channel_fastest(s, heads, D, H, W);
  };
  Params<T> p{static_cast<const T*>(q),
              static_cast<const T*>(k),
              static_cast<const T*>(v),
              static_cast<T*>(o),
              lse,
              sq,
              sk,
              sv,
              so,
              dfast(sq),
              dfast(sk),
              dfast(sv),
              dfast(so),
              heads,
              H,
              W,
              positions,
              int(frames),
              int(D),
              int(npos),
              attention::narrow(g64),
              scale};
  const int64_t tiles = (positions + npos - 1) / npos;
  attention_kernel<T><<<int(std::min(tiles, kMaxGrid)), kThreads, smem, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

size_t temporal_attention_smem_per_position(int64_t T, int64_t D) {
  return bytes_per_position(attention::geometry64(T, D));
}

cudaError_t temporal_attention(DType dtype, const void* q, const void* k, const void* v, void* o,
                               float* lse, VideoStrides sq, VideoStrides sk, VideoStrides sv,
                               VideoStrides so, int64_t B, int64_t heads, int64_t D, int64_t T,
                               int64_t H, int64_t W, float scale, cudaStream_t stream) {
  return with_storage_type(dtype, [&](auto storage) {
    using Storage = decltype(storage);
    return launch<Storage>(q, k, v, o, lse, sq, sk, sv, so, B, heads, D, T, H, W, scale, stream);
  });
}

}  // namespace cuda
}  // namespace lddm
