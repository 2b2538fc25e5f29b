// temporal_attention backward: dq, dk, dv at every (b, head, y, x) of strided
// [B, C, T, H, W] tensors from the output gradient and the forward's logsumexps,
// FlashAttention-style (the probabilities are recomputed, not stored). Per tile of
// positions (attention_tiles.cuh), with go the output gradient:
//   1. stage q, k, v, go as fp32 [pos, t, d];
//   2. per (pos, i, j), one thread: s = scale q_i.k_j and dp = go_i.v_j;
//   3. per (pos, i), one thread: p_j = exp(s_j - lse_i) / sum_j exp(s_j - lse_i) (the
//      sum is 1 up to rounding: dividing by it keeps each row a distribution, as the
//      CPU backward does), D_i = sum_j p_j dp_j, ds_j = scale p_j (dp_j - D_i);
//   4. per output element, one thread each: dv_j = sum_i p_ij go_i, dk_j = sum_i ds_ij
//      q_i, dq_i = sum_j ds_ij k_j, stored straight into each gradient's layout.
#include <cstdint>

#include "cuda/attention_tiles.cuh"

namespace lddm {
namespace cuda {
namespace {

using namespace attention;  // the tile machinery both passes share

// Seven base offsets (q, k, v, go, dq, dk, dv), four [T, dp] blocks, P and dS.
size_t bytes_per_position(const Geometry64& g) {
  return attention::bytes_per_position(g, 7, 4, 2);
}

enum Tensor { kQ, kK, kV, kGo, kDq, kDk, kDv, kTensors };

template <typename T>
struct Params {
  const T* in[4];   // q, k, v, go: [B, heads * D, T, H, W]
  T* out[3];        // dq, dk, dv: [B, heads * D, T, H, W]
  const float* lse; // [B, heads, T, H, W] contiguous
  VideoStrides s[kTensors];
  bool dfast[kTensors];  // walk channel-fastest (else position-fastest)
  int64_t heads, H, W;
  int64_t positions;  // B * heads * H * W
  int frames, D;
  int npos;
  Geometry g;
  float scale;
};

// out[pos, t, d] = sum_u w[pos, wi(t, u)] x[pos, u, d] over u < frames, for every
// (pos, t, d) of the tile, stored at base[pos] + d s.c + t s.t. w: a [T, tp] block per
// position read as w[u * tp + t] (transposed) or w[t * tp + u].
template <typename T>
__device__ __forceinline__ void weighted_rows(const float* w, bool transposed, const float* x,
                                              T* __restrict__ out, const int64_t* base,
                                              const VideoStrides& s, bool dfast, int count,
                                              int frames, int D, const Geometry& g) {
  const int w_t = transposed ? 1 : g.tp, w_u = transposed ? g.tp : 1;
  for (int e = threadIdx.x; e < count * frames * D; e += kThreads) {
    int pos, t, d;
    split_index(e, dfast, count, frames, D, pos, t, d);
    const float* wp = w + pos * g.score_pos;
    const float* xp = x + pos * g.qkv_pos + d;
    float acc = 0.0f;
    for (int u = 0; u < frames; ++u) acc = fmaf(wp[t * w_t + u * w_u], xp[u * g.dp], acc);
    out[base[pos] + d * s.c + t * s.t] = from_float<T>(acc);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) attention_backward_kernel(const Params<T> p) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int npos = p.npos, frames = p.frames, D = p.D;
  const Geometry g = p.g;
  int64_t* base = reinterpret_cast<int64_t*>(smem);           // [kTensors][npos]
  float* rows = reinterpret_cast<float*>(base + kTensors * npos);
  float* qs = rows;                 // [npos, frames, dp] each
  float* ks = qs + npos * g.qkv_pos;
  float* vs = ks + npos * g.qkv_pos;
  float* gs = vs + npos * g.qkv_pos;
  float* ps = gs + npos * g.qkv_pos;  // [npos, frames, tp]: scores, then P
  float* ds = ps + npos * g.score_pos;  // [npos, frames, tp]: dP, then dS
  const int64_t HW = p.H * p.W;

  const int64_t tiles = (p.positions + npos - 1) / npos;
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t first = tile * npos;
    const int count = int(p.positions - first < npos ? p.positions - first : npos);
    __syncthreads();  // the previous tile's output phase is done with shared memory
    for (int i = threadIdx.x; i < kTensors * count; i += kThreads) {
      const int which = i / count, pos = i % count;
      base[which * npos + pos] =
          position_offset(first + pos, p.s[which], p.heads, D, p.H, p.W);
    }
    __syncthreads();
    stage(p.in[kQ], base + kQ * npos, p.s[kQ], p.dfast[kQ], count, frames, D, g, qs);
    stage(p.in[kK], base + kK * npos, p.s[kK], p.dfast[kK], count, frames, D, g, ks);
    stage(p.in[kV], base + kV * npos, p.s[kV], p.dfast[kV], count, frames, D, g, vs);
    stage(p.in[kGo], base + kGo * npos, p.s[kGo], p.dfast[kGo], count, frames, D, g, gs);
    __syncthreads();

    for (int e = threadIdx.x; e < count * frames * frames; e += kThreads) {
      const int j = e % frames, r = e / frames, i = r % frames, pos = r / frames;
      const float* qrow = qs + pos * g.qkv_pos + i * g.dp;
      const float* krow = ks + pos * g.qkv_pos + j * g.dp;
      const float* grow = gs + pos * g.qkv_pos + i * g.dp;
      const float* vrow = vs + pos * g.qkv_pos + j * g.dp;
      float s = 0.0f, dp = 0.0f;
      for (int d = 0; d < D; ++d) {
        s = fmaf(qrow[d], krow[d], s);
        dp = fmaf(grow[d], vrow[d], dp);
      }
      ps[pos * g.score_pos + i * g.tp + j] = s * p.scale;
      ds[pos * g.score_pos + i * g.tp + j] = dp;
    }
    __syncthreads();

    for (int r = threadIdx.x; r < count * frames; r += kThreads) {
      const int pos = r / frames, i = r % frames;
      float* prow = ps + pos * g.score_pos + i * g.tp;
      float* drow = ds + pos * g.score_pos + i * g.tp;
      const float lse = p.lse[lse_index(first + pos, i, frames, HW)];
      float sum = 0.0f;
      for (int j = 0; j < frames; ++j) {
        const float e = __expf(prow[j] - lse);
        prow[j] = e;
        sum += e;
      }
      const float inv = 1.0f / sum;
      float di = 0.0f;
      for (int j = 0; j < frames; ++j) {
        prow[j] *= inv;
        di = fmaf(prow[j], drow[j], di);
      }
      for (int j = 0; j < frames; ++j) drow[j] = p.scale * prow[j] * (drow[j] - di);
    }
    __syncthreads();

    // dv_j = sum_i P[i, j] go_i and dk_j = sum_i dS[i, j] q_i read the blocks transposed.
    weighted_rows(ps, true, gs, p.out[2], base + kDv * npos, p.s[kDv], p.dfast[kDv], count,
                  frames, D, g);
    weighted_rows(ds, true, qs, p.out[1], base + kDk * npos, p.s[kDk], p.dfast[kDk], count,
                  frames, D, g);
    weighted_rows(ds, false, ks, p.out[0], base + kDq * npos, p.s[kDq], p.dfast[kDq], count,
                  frames, D, g);
  }
}

template <typename T>
cudaError_t launch(const void* go, const void* q, const void* k, const void* v,
                   const float* lse, void* dq, void* dk, void* dv, const VideoStrides (&s)[7],
                   int64_t B, int64_t heads, int64_t D, int64_t frames, int64_t H, int64_t W,
                   float scale, cudaStream_t stream) {
  const int64_t positions = B * heads * H * W;
  if (positions == 0 || frames == 0 || D == 0) return cudaSuccess;
  const Geometry64 g64 = attention::geometry64(frames, D);
  int64_t npos = 0;
  size_t smem = 0;
  const cudaError_t err = attention::plan_tiles(attention_backward_kernel<T>,
                                                bytes_per_position(g64), positions, &npos, &smem);
  if (err != cudaSuccess) return err;
  Params<T> p{};
  p.in[kQ] = static_cast<const T*>(q);
  p.in[kK] = static_cast<const T*>(k);
  p.in[kV] = static_cast<const T*>(v);
  p.in[kGo] = static_cast<const T*>(go);
  p.out[0] = static_cast<T*>(dq);
  p.out[1] = static_cast<T*>(dk);
  p.out[2] = static_cast<T*>(dv);
  p.lse = lse;
  for (int i = 0; i < kTensors; ++i) {
    p.s[i] = s[i];
    p.dfast[i] = attention::channel_fastest(s[i], heads, D, H, W);
  }
  p.heads = heads;
  p.H = H;
  p.W = W;
  p.positions = positions;
  p.frames = int(frames);
  p.D = int(D);
  p.npos = int(npos);
  p.g = attention::narrow(g64);
  p.scale = scale;
  const int64_t tiles = (positions + npos - 1) / npos;
  attention_backward_kernel<T><<<int(std::min(tiles, kMaxGrid)), kThreads, smem, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

size_t temporal_attention_backward_smem_per_position(int64_t T, int64_t D) {
  return bytes_per_position(attention::geometry64(T, D));
}

cudaError_t temporal_attention_backward(DType dtype, const void* go, const void* q,
                                        const void* k, const void* v, const float* lse,
                                        void* dq, void* dk, void* dv, VideoStrides sgo,
                                        VideoStrides sq, VideoStrides sk, VideoStrides sv,
                                        VideoStrides sdq, VideoStrides sdk, VideoStrides sdv,
                                        int64_t B, int64_t heads, int64_t D, int64_t T,
                                        int64_t H, int64_t W, float scale,
                                        cudaStream_t stream) {
  // In the kernel's order: q, k, v, go, dq, dk, dv.
  const VideoStrides s[7] = {sq, sk, sv, sgo, sdq, sdk, sdv};
  return with_storage_type(dtype, [&](auto storage) {
    using Storage = decltype(storage);
    return launch<Storage>(go, q, k, v, lse, dq, dk, dv, s, B, heads, D, T, H, W, scale, stream);
  });
}

}  // namespace cuda
}  // namespace lddm
