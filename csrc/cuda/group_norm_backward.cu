// group_norm backward: gradients of x, weight, bias and the FiLM or spatial scale and
// shift of GroupNorm + affine + modulation + optional SiLU, in five launches.
//
// 1. coef: per (n, c), the group's statistics (from the forward's float64 stats) and
//    the channel's parameters, as the next kernels take them.
// 2. sums: per (n, c), the sums of gv, gv xhat, gu, gu xhat (group_norm_backward.h)
//    over slices (kNCS: a channel row is S consecutive values, cut into `splits`
//    slices, a block each) or chunks of positions across all channels (kNSC, coalesced
//    along the channels), reduced in a fixed order to partial records; no atomics, so
//    the result does not depend on block scheduling. A spatial modulation's
//    per-element gradients (gv u, gv) are written here.
// 3. finalize: one block per (n, group) combines each channel's partials in order in
//    fp64 and reduces the group's two means of dx's formula.
// 4. param_grads: weight and bias grads (summed over the batch) and the FiLM grads.
// 5. dx: elementwise, recomputing gv from x and dy.
//
// xhat is (x - m) r + off with m the mean rounded to fp32 and off = (m - mean) r, so
// x - m is exact near the mean and large-mean inputs keep their precision (as the
// forward and csrc/cpu/group_norm_backward.cpp).
#include "cuda/group_norm_backward.h"

#include <algorithm>

#include "cuda/device_utils.cuh"

namespace lddm {
namespace cuda {
namespace {

constexpr int kThreads = 256;          // coef, sums, param_grads and dx blocks
constexpr int kFinalizeThreads = 128;  // finalize: one block per (n, group)
// Sums blocks to aim for (several waves on a 132-SM H100) and the fewest values a
// block reads when the data has them (as the forward's stats kernels).
constexpr int64_t kTargetBlocks = 1024;
constexpr int64_t kMinBlockValues = 8192;

// Per (n, c): xhat = (x - m) r + off, u = w xhat + b, v = u s + h (s = 1 + scale and h
// = shift for FiLM; 1 and 0 for a spatial modulation, applied per element).
struct Coef {
  float m, r, off, w, b, s, h, pad;
};

struct Plan {
  int64_t splits;     // kNCS: slices per (n, c) row; kNSC: position chunks per sample
  int64_t chunk_len;  // kNSC: positions per chunk (unused for kNCS)
  int64_t partials;   // float4 partial records
};

Plan make_plan(GroupNormLayout layout, int64_t N, int64_t C, int64_t S) {
  if (layout == GroupNormLayout::kNCS) {
    const int64_t splits = slices_per_item(N * C, S, kTargetBlocks, kMinBlockValues);
    return {splits, 0, N * C * splits};
  }
  const PositionChunks chunks = position_chunks(N, S, C, kTargetBlocks, kMinBlockValues);
  return {chunks.count, chunks.len, N * chunks.count * C};
}

// Workspace: coef [N * C], partials, sums [N * C] (float4: gv, gv xhat, gu, gu xhat),
// group means [N * G] (float2: mean(w gu), mean(w gu xhat)), each 16-byte aligned.
struct Workspace {
  Coef* coef;
  float4* partial;
  float4* sums;
  float2* group;
};

size_t workspace_layout(const Plan& plan, int64_t N, int64_t C, int64_t G, void* base,
                        Workspace* out) {
  const size_t sizes[] = {size_t(N * C) * sizeof(Coef), size_t(plan.partials) * sizeof(float4),
                          size_t(N * C) * sizeof(float4), size_t(N * G) * sizeof(float2)};
  size_t offsets[4], total = 0;
  for (int i = 0; i < 4; ++i) {
    offsets[i] = total;
    total += align16(sizes[i]);
  }
  if (out != nullptr) {
    char* p = static_cast<char*>(base);
    *out = {reinterpret_cast<Coef*>(p + offsets[0]), reinterpret_cast<float4*>(p + offsets[1]),
            reinterpret_cast<float4*>(p + offsets[2]), reinterpret_cast<float2*>(p + offsets[3])};
  }
  return total;
}

__device__ __forceinline__ float4 add4(float4 a, float4 b) {
  return make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
}

// Sums K values over the block into thread 0, in an order fixed by the block size
// (shuffle tree, then warp 0 over the warp results): deterministic.
template <typename F, int K, int kBlock>
__device__ void block_sum(F (&v)[K]) {
  static_assert(kBlock % 32 == 0 && kBlock <= 1024, "whole warps, at most 32 of them");
  constexpr int kWarps = kBlock / 32;
  __shared__ F warp_sums[kWarps][K];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int off = 16; off > 0; off /= 2)
#pragma unroll
    for (int k = 0; k < K; ++k) v[k] += __shfl_down_sync(0xffffffffu, v[k], off);
  __syncthreads();  // a previous call's warp 0 is done reading warp_sums
  if (lane == 0) {
#pragma unroll
    for (int k = 0; k < K; ++k) warp_sums[warp][k] = v[k];
  }
  __syncthreads();
  if (warp == 0) {
#pragma unroll
    for (int k = 0; k < K; ++k) v[k] = lane < kWarps ? warp_sums[lane][k] : F(0);
    for (int off = 16; off > 0; off /= 2)
#pragma unroll
      for (int k = 0; k < K; ++k) v[k] += __shfl_down_sync(0xffffffffu, v[k], off);
  }
}

// stats: [N, G, 2] (mean, 1 / std); weight, bias [C], scale, shift [N, C] or null.
__global__ void __launch_bounds__(kThreads)
    coef_kernel(const double* __restrict__ stats, const float* __restrict__ weight,
                const float* __restrict__ bias, const float* __restrict__ scale,
                const float* __restrict__ shift, int64_t N, int64_t C, int64_t G,
                Coef* __restrict__ coef) {
  const int64_t cg = C / G;
  for (int64_t i = blockIdx.x * int64_t(kThreads) + threadIdx.x; i < N * C;
       i += int64_t(gridDim.x) * kThreads) {
    const int64_t n = i / C, c = i % C, ng = n * G + c / cg;
    const double mean = stats[2 * ng], rstd = stats[2 * ng + 1];
    Coef k;
    k.m = float(mean);
    k.r = float(rstd);
    k.off = float((double(k.m) - mean) * rstd);
    k.w = weight ? weight[c] : 1.0f;
    k.b = bias ? bias[c] : 0.0f;
    k.s = scale ? 1.0f + scale[i] : 1.0f;
    k.h = shift ? shift[i] : 0.0f;
    k.pad = 0.0f;
    coef[i] = k;
  }
}

// One element's backward values: xhat, u, gv and gu = gv s.
struct Grad {
  float xh, u, gv, gu;
};

// s, h: the element's modulation (k.s, k.h for FiLM).
__device__ __forceinline__ Grad element_grad(float x, float dy, const Coef& k, float s, float h,
                                             bool silu) {
  Grad g;
  g.xh = (x - k.m) * k.r + k.off;
  g.u = k.w * g.xh + k.b;
  g.gv = dy;
  if (silu) {
    const float v = g.u * s + h;
    const float sg = 1.0f / (1.0f + __expf(-v));
    g.gv = dy * sg * (1.0f + v * (1.0f - sg));
  }
  g.gu = g.gv * s;
  return g;
}

// p % period in 32 bits (group_norm_backward refuses a spatial modulation of S >= 2^31
// positions): a 64-bit division is a called routine, whose frame spilled registers.
__device__ __forceinline__ int64_t period_index(int64_t p, int64_t period) {
  return int64_t(uint32_t(p) % uint32_t(period));
}

// The spatial modulation at entry q (one period in x's inner order), or FiLM's k.s, k.h.
template <bool kSpatial>
__device__ __forceinline__ float2 modulation(const SpatialModulation& sp, int64_t q,
                                             const Coef& k) {
  if constexpr (kSpatial)
    return make_float2(sp.scale ? 1.0f + sp.scale[q] : 1.0f, sp.shift ? sp.shift[q] : 0.0f);
  return make_float2(k.s, k.h);
}

// x, dy: [N * C rows, S] (kNCS); partial: [N * C, splits]. Block (x, y) sums slice y
// of rows x, x + gridDim.x, ... (a 2-D grid: no 64-bit division per item, whose called
// routine spilled registers). gs, gh (kSpatial, may be null): per-element gv u and gv,
// x's layout.
template <typename T, bool kSpatial>
__global__ void __launch_bounds__(kThreads)
    sums_ncs_kernel(const T* __restrict__ dy, const T* __restrict__ x,
                    const Coef* __restrict__ coef, SpatialModulation sp, int64_t rows,
                    int64_t S, int64_t splits, bool silu, float* __restrict__ gs,
                    float* __restrict__ gh, float4* __restrict__ partial) {
  const int64_t slice = ceil_div(S, splits), split = blockIdx.y;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t item = row * splits + split;
    const Coef k = coef[row];
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    const int64_t end = min64(S, (split + 1) * slice);
    const int64_t first = split * slice + threadIdx.x;
    // The modulation's period index i % period, stepped rather than divided per value.
    int64_t q = 0, q_step = 0;
    if constexpr (kSpatial) {
      q = period_index(first, sp.period);
      q_step = period_index(kThreads, sp.period);
    }
    for (int64_t i = first; i < end; i += kThreads) {
      const int64_t e = row * S + i;
      const float2 mod = modulation<kSpatial>(sp, row * sp.period + q, k);
      if constexpr (kSpatial) {
        q += q_step;
        if (q >= sp.period) q -= sp.period;
      }
      const Grad g = element_grad(to_float(x[e]), to_float(dy[e]), k, mod.x, mod.y, silu);
      if constexpr (kSpatial) {
        if (gs) gs[e] = g.gv * g.u;
        if (gh) gh[e] = g.gv;
      }
      acc[0] += g.gv;
      acc[1] += g.gv * g.xh;
      acc[2] += g.gu;
      acc[3] += g.gu * g.xh;
    }
    block_sum<float, 4, kThreads>(acc);
    if (threadIdx.x == 0) partial[item] = make_float4(acc[0], acc[1], acc[2], acc[3]);
  }
}

// x, dy: [N, S, C] (kNSC); partial: [N, chunks, C], each channel's sums over one chunk
// of chunk_len positions. Threads form `rows` x `lanes` (lanes = channels at once):
// thread (row, lane) reads positions p0 + row, p0 + row + rows, ... of channel c0 +
// lane, so consecutive threads read consecutive memory; the rows are then added per
// channel in order through shared memory.
template <typename T, bool kSpatial>
__global__ void __launch_bounds__(kThreads)
    sums_nsc_kernel(const T* __restrict__ dy, const T* __restrict__ x,
                    const Coef* __restrict__ coef, SpatialModulation sp, int64_t N, int64_t C,
                    int64_t S, int64_t chunks, int64_t chunk_len, bool silu,
                    float* __restrict__ gs, float* __restrict__ gh,
                    float4* __restrict__ partial) {
  __shared__ float4 row_sums[kThreads];
  const int lanes = int(min64(C, kThreads));
  const int rows = kThreads / lanes;
  const int row = threadIdx.x / lanes, lane = threadIdx.x % lanes;
  for (int64_t item = blockIdx.x; item < N * chunks; item += gridDim.x) {
    const int64_t n = item / chunks, p0 = (item % chunks) * chunk_len;
    const int64_t len = min64(chunk_len, S - p0);
    for (int64_t c0 = 0; c0 < C; c0 += lanes) {
      const int64_t c = c0 + lane;
      float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      if (row < rows && c < C) {
        const Coef k = coef[n * C + c];
        for (int64_t p = p0 + row; p < p0 + len; p += rows) {
          const int64_t e = (n * S + p) * C + c;
          const int64_t q = kSpatial ? (n * sp.period + period_index(p, sp.period)) * C + c : 0;
          const float2 mod = modulation<kSpatial>(sp, q, k);
          const Grad g = element_grad(to_float(x[e]), to_float(dy[e]), k, mod.x, mod.y, silu);
          if constexpr (kSpatial) {
            if (gs) gs[e] = g.gv * g.u;
            if (gh) gh[e] = g.gv;
          }
          acc = add4(acc, make_float4(g.gv, g.gv * g.xh, g.gu, g.gu * g.xh));
        }
      }
      __syncthreads();  // the previous round's readers are done with row_sums
      if (row < rows) row_sums[threadIdx.x] = acc;
      __syncthreads();
      if (row == 0 && c < C) {
        float4 total = row_sums[lane];
        for (int r = 1; r < rows; ++r) total = add4(total, row_sums[r * lanes + lane]);
        partial[item * C + c] = total;
      }
    }
  }
}

// One block per (n, group): each channel's partials combined in order (kNCS [N * C,
// splits], kNSC [N, splits, C]) into sums [N * C], and the group's means of w gu and w gu
// xhat over its (C / G) * S values into group [N * G].
__global__ void __launch_bounds__(kFinalizeThreads)
    finalize_kernel(const float4* __restrict__ partial, const Coef* __restrict__ coef,
                    GroupNormLayout layout, int64_t N, int64_t C, int64_t S, int64_t G,
                    int64_t splits, float4* __restrict__ sums, float2* __restrict__ group) {
  const int64_t cg = C / G;
  const bool ncs = layout == GroupNormLayout::kNCS;
  for (int64_t ng = blockIdx.x; ng < N * G; ng += gridDim.x) {
    const int64_t n = ng / G, g = ng % G;
    double wg[2] = {0.0, 0.0};  // sums of w gu and w gu xhat over this thread's channels
    for (int64_t c = g * cg + threadIdx.x; c < (g + 1) * cg; c += kFinalizeThreads) {
      double t[4] = {0.0, 0.0, 0.0, 0.0};
      for (int64_t split = 0; split < splits; ++split) {
        const float4 p = ncs ? partial[(n * C + c) * splits + split]
                             : partial[(n * splits + split) * C + c];
        t[0] += p.x;
        t[1] += p.y;
        t[2] += p.z;
        t[3] += p.w;
      }
      sums[n * C + c] = make_float4(float(t[0]), float(t[1]), float(t[2]), float(t[3]));
      const double w = coef[n * C + c].w;
      wg[0] += w * t[2];
      wg[1] += w * t[3];
    }
    block_sum<double, 2, kFinalizeThreads>(wg);
    if (threadIdx.x == 0) {
      const double count = double(cg * S);
      group[ng] = make_float2(float(wg[0] / count), float(wg[1] / count));
    }
  }
}

// weight, bias grads [C] (each channel's sums over the batch, in order) and FiLM grads
// [N, C]: scale's is sum gv u = w sum gv xhat + b sum gv, shift's sum gv.
__global__ void __launch_bounds__(kThreads)
    param_grads_kernel(const float4* __restrict__ sums, const Coef* __restrict__ coef,
                       int64_t N, int64_t C, GroupNormParamGrads grads) {
  for (int64_t i = blockIdx.x * int64_t(kThreads) + threadIdx.x; i < N * C;
       i += int64_t(gridDim.x) * kThreads) {
    const float4 s = sums[i];
    const Coef k = coef[i];
    if (grads.scale) grads.scale[i] = k.w * s.y + k.b * s.x;
    if (grads.shift) grads.shift[i] = s.x;
    if (i < C) {
      double gw = 0.0, gb = 0.0;
      for (int64_t n = 0; n < N; ++n) {
        gw += sums[n * C + i].w;
        gb += sums[n * C + i].z;
      }
      if (grads.weight) grads.weight[i] = float(gw);
      if (grads.bias) grads.bias[i] = float(gb);
    }
  }
}

// dx = r (w gu - mean(w gu) - xhat mean(w gu xhat)) per element; x, dy, dx [N, C, S] in
// kLayout, `total` values.
template <typename T, GroupNormLayout kLayout, bool kSpatial>
__global__ void __launch_bounds__(kThreads)
    dx_kernel(const T* __restrict__ dy, const T* __restrict__ x, T* __restrict__ dx,
              const Coef* __restrict__ coef, const float2* __restrict__ group,
              SpatialModulation sp, int64_t C, int64_t S, int64_t G, int64_t total, bool silu) {
  constexpr bool kNCS = kLayout == GroupNormLayout::kNCS;
  const int64_t cg = C / G;
  for (int64_t e = blockIdx.x * int64_t(kThreads) + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * kThreads) {
    const int64_t n = e / (C * S);
    const int64_t c = kNCS ? e / S % C : e % C;
    const int64_t p = kNCS ? e % S : e / C % S;  // position
    const Coef k = coef[n * C + c];
    int64_t q = 0;
    if constexpr (kSpatial) {
      const int64_t pp = period_index(p, sp.period);
      q = kNCS ? (n * C + c) * sp.period + pp : (n * sp.period + pp) * C + c;
    }
    const float2 mod = modulation<kSpatial>(sp, q, k);
    const Grad g = element_grad(to_float(x[e]), to_float(dy[e]), k, mod.x, mod.y, silu);
    const float2 means = group[n * G + c / cg];
    dx[e] = from_float<T>(k.r * (k.w * g.gu - means.x - g.xh * means.y));
  }
}

template <typename T, bool kSpatial>
void launch_passes(GroupNormLayout layout, const Plan& plan, const T* dy, const T* x, T* dx,
                   const Workspace& ws, SpatialModulation sp, int64_t N, int64_t C, int64_t S,
                   int64_t G, bool silu, const GroupNormParamGrads& grads, cudaStream_t stream) {
  const bool ncs = layout == GroupNormLayout::kNCS;
  if (ncs)
    sums_ncs_kernel<T, kSpatial><<<dim3(grid_for(N * C), unsigned(plan.splits)), kThreads, 0,
                                   stream>>>(
        dy, x, ws.coef, sp, N * C, S, plan.splits, silu, grads.spatial_scale, grads.spatial_shift,
        ws.partial);
  else
    sums_nsc_kernel<T, kSpatial><<<grid_for(N * plan.splits), kThreads, 0, stream>>>(
        dy, x, ws.coef, sp, N, C, S, plan.splits, plan.chunk_len, silu, grads.spatial_scale,
        grads.spatial_shift, ws.partial);
  finalize_kernel<<<grid_for(N * G), kFinalizeThreads, 0, stream>>>(
      ws.partial, ws.coef, layout, N, C, S, G, plan.splits, ws.sums, ws.group);
  param_grads_kernel<<<grid_for(ceil_div(N * C, kThreads)), kThreads, 0, stream>>>(
      ws.sums, ws.coef, N, C, grads);
  const int64_t total = N * C * S;
  const int grid = grid_for(ceil_div(total, kThreads));
  if (ncs)
    dx_kernel<T, GroupNormLayout::kNCS, kSpatial><<<grid, kThreads, 0, stream>>>(
        dy, x, dx, ws.coef, ws.group, sp, C, S, G, total, silu);
  else
    dx_kernel<T, GroupNormLayout::kNSC, kSpatial><<<grid, kThreads, 0, stream>>>(
        dy, x, dx, ws.coef, ws.group, sp, C, S, G, total, silu);
}

template <typename T>
cudaError_t launch(GroupNormLayout layout, const void* dy, const void* x, void* dx,
                   const double* stats, const float* weight, const float* bias,
                   const float* scale, const float* shift, SpatialModulation sp, int64_t N,
                   int64_t C, int64_t S, int64_t G, bool silu, const GroupNormParamGrads& grads,
                   void* workspace, cudaStream_t stream) {
  const Plan plan = make_plan(layout, N, C, S);
  Workspace ws;
  workspace_layout(plan, N, C, G, workspace, &ws);
  coef_kernel<<<grid_for(ceil_div(N * C, kThreads)), kThreads, 0, stream>>>(
      stats, weight, bias, scale, shift, N, C, G, ws.coef);
  const auto* dy_t = static_cast<const T*>(dy);
  const auto* x_t = static_cast<const T*>(x);
  auto* dx_t = static_cast<T*>(dx);
  if (sp.active())
    launch_passes<T, true>(layout, plan, dy_t, x_t, dx_t, ws, sp, N, C, S, G, silu, grads, stream);
  else
    launch_passes<T, false>(layout, plan, dy_t, x_t, dx_t, ws, sp, N, C, S, G, silu, grads, stream);
  // Reports a failed launch of any of them (the error state holds the latest error).
  return cudaGetLastError();
}

}  // namespace

size_t group_norm_backward_workspace_bytes(GroupNormLayout layout, int64_t N, int64_t C,
                                           int64_t S, int64_t G) {
  if (N * C * S == 0) return 0;
  return workspace_layout(make_plan(layout, N, C, S), N, C, G, nullptr, nullptr);
}

cudaError_t group_norm_backward(DType dtype, GroupNormLayout layout, const void* dy,
                                const void* x, void* dx, const double* stats,
                                const float* weight, const float* bias, const float* scale,
                                const float* shift, SpatialModulation spatial, int64_t N,
                                int64_t C, int64_t S, int64_t G, bool silu,
                                GroupNormParamGrads grads, void* workspace, cudaStream_t stream) {
  if (N * C * S == 0) return cudaSuccess;
  if (G <= 0 || C % G != 0 || stats == nullptr) return cudaErrorInvalidValue;
  if (spatial.active() && (scale || shift || spatial.period <= 0 || S % spatial.period != 0 ||
                           S >= kMaxSpatialPositions))
    return cudaErrorInvalidValue;
  return with_storage_type(dtype, [&](auto storage) {
    using Storage = decltype(storage);
    return launch<Storage>(layout, dy, x, dx, stats, weight, bias, scale, shift, spatial, N, C,
                           S, G, silu, grads, workspace, stream);
  });
}

}  // namespace cuda
}  // namespace lddm
