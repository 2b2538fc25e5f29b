// group_norm: GroupNorm + affine + FiLM + optional SiLU in three launches.
//
// 1. stats: blocks reduce slices of each (n, group) to partial moments (mean and sum of
//    squared deviations relative to a pivot value, Welford / Chan combine) written to
//    the workspace; no atomics, so the result does not depend on block scheduling.
//    kNCS: a group is (C/G)*S consecutive values, cut into `splits` slices, one block
//    each (several blocks per group when N*G alone would not fill the GPU).
//    kNSC: a block takes a chunk of positions of one sample across all C channels (the
//    coalesced direction) and writes per-channel partials.
// 2. finalize: one block per (n, group) adds each partial's pivot back and combines the
//    partials in a fixed order in fp64, then writes per-(n, c) coefficients of
//    y = a * (x - m) + b.
// 3. apply: elementwise, 16-byte vectors when aligned and a vector stays within one
//    channel row (kNCS) or one channel vector (kNSC). A spatial modulation is applied
//    here, per element, after the per-(n, c) affine: (a (x - m) + b) (1 + s) + h.
//
// Pivots (kNCS: the group's first value; kNSC: the channel's value at position 0) keep
// the fp32 accumulators small for large-mean inputs: moments of x - pivot lose nothing
// to the mean's magnitude. m is the fp64 mean rounded to fp32 with the rounding error
// folded into b, so x - m is exact for x near the mean (as in csrc/cpu/group_norm.cpp).
#include "cuda/group_norm.h"

#include <algorithm>

#include "cuda/device_utils.cuh"

namespace lddm {
namespace cuda {
namespace {

constexpr int kThreads = 256;          // stats and apply blocks
constexpr int kFinalizeThreads = 128;  // finalize: one block per (n, group)
// Stats blocks to aim for: several waves on a 132-SM H100, so small N*G still fills it.
constexpr int64_t kTargetBlocks = 1024;
// A stats block reads at least this many values (when the group has them), so the
// per-block reduction and its partial record stay a small fraction of the work.
constexpr int64_t kMinBlockValues = 8192;

// Moments of `count` values relative to a pivot (see above): mean and sum of squared
// deviations from that mean. count is a float: exact up to 2^24 values per partial,
// and beyond that a relative 6e-8 error in a combine weight is harmless.
struct Partial {
  float mean;
  float m2;
  float count;
};

struct Plan {
  int64_t splits;     // kNCS: slices per (n, group); kNSC: position chunks per sample
  int64_t chunk_len;  // kNSC: positions per chunk (unused for kNCS)
  int64_t partials;   // Partial records in the workspace
};

// Depends on sizes only (not on the device or dtype), so group_norm_workspace_bytes
// and the launch agree.
Plan make_plan(GroupNormLayout layout, int64_t N, int64_t C, int64_t S, int64_t G) {
  if (layout == GroupNormLayout::kNCS) {
    const int64_t splits = slices_per_item(N * G, (C / G) * S, kTargetBlocks, kMinBlockValues);
    return {splits, 0, N * G * splits};
  }
  const PositionChunks chunks = position_chunks(N, S, C, kTargetBlocks, kMinBlockValues);
  return {chunks.count, chunks.len, N * chunks.count * C};
}

// Chan et al.: merge (mean_b, m2_b, n_b) into (mean, m2, n); F is float or double.
template <typename F>
__device__ __forceinline__ void chan_combine(F& mean, F& m2, F& n, F mean_b, F m2_b, F n_b) {
  if (n_b == F(0)) return;
  const F total = n + n_b;
  const F delta = mean_b - mean;
  const F r = n_b / total;
  mean += delta * r;
  m2 += m2_b + delta * delta * n * r;
  n = total;
}

// Combines the moments of a whole block into thread 0, in an order fixed by the block
// size (shuffle tree, then warp 0 over the warp results): deterministic.
template <typename F, int kBlock>
__device__ void block_combine(F& mean, F& m2, F& n) {
  static_assert(kBlock % 32 == 0 && kBlock <= 1024, "whole warps, at most 32 of them");
  constexpr int kWarps = kBlock / 32;
  __shared__ F warp_mean[kWarps], warp_m2[kWarps], warp_n[kWarps];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  // Lanes past the warp's end read their own value; only lane 0's result is used, and
  // lane 0 only ever reads lanes inside the warp.
  for (int off = 16; off > 0; off /= 2) {
    const F mb = __shfl_down_sync(0xffffffffu, mean, off);
    const F qb = __shfl_down_sync(0xffffffffu, m2, off);
    const F nb = __shfl_down_sync(0xffffffffu, n, off);
    chan_combine(mean, m2, n, mb, qb, nb);
  }
  __syncthreads();  // a previous call's warp 0 is done reading the arrays
  if (lane == 0) {
    warp_mean[warp] = mean;
    warp_m2[warp] = m2;
    warp_n[warp] = n;
  }
  __syncthreads();
  if (warp == 0) {
    mean = lane < kWarps ? warp_mean[lane] : F(0);
    m2 = lane < kWarps ? warp_m2[lane] : F(0);
    n = lane < kWarps ? warp_n[lane] : F(0);
    for (int off = 16; off > 0; off /= 2) {
      const F mb = __shfl_down_sync(0xffffffffu, mean, off);
      const F qb = __shfl_down_sync(0xffffffffu, m2, off);
      const F nb = __shfl_down_sync(0xffffffffu, n, off);
      chan_combine(mean, m2, n, mb, qb, nb);
    }
  }
}

// x: [N*G groups, L] (kNCS: each group's (C/G)*S values are consecutive), read as
// vectors of W values when kVec (L % W == 0 and x 16-byte aligned); partial:
// [N*G, splits]. Block `item` reduces slice item % splits of group item / splits.
template <typename T, bool kVec>
__global__ void __launch_bounds__(kThreads)
    stats_ncs_kernel(const T* __restrict__ x, Partial* __restrict__ partial, int64_t groups,
                     int64_t L, int64_t splits) {
  constexpr int W = kVec ? Vec<T>::kWidth : 1;
  const int64_t units = L / W;
  const int64_t slice = ceil_div(units, splits);
  for (int64_t item = blockIdx.x; item < groups * splits; item += gridDim.x) {
    const int64_t ng = item / splits, split = item % splits;
    const T* xg = x + ng * L;
    const float pivot = to_float(xg[0]);
    float mean = 0.0f, m2 = 0.0f, n = 0.0f;
    const int64_t end = min64(units, (split + 1) * slice);
    for (int64_t u = split * slice + threadIdx.x; u < end; u += kThreads) {
      float d[W];
      if constexpr (kVec) {
        const Vec<T> v = reinterpret_cast<const Vec<T>*>(xg)[u];
#pragma unroll
        for (int i = 0; i < W; ++i) d[i] = to_float(v.v[i]) - pivot;
      } else {
        d[0] = to_float(xg[u]) - pivot;
      }
      // Exact two-pass moments of the W values in registers, then one Chan merge (one
      // division per vector instead of one per value).
      float vmean = 0.0f;
#pragma unroll
      for (int i = 0; i < W; ++i) vmean += d[i];
      vmean *= 1.0f / W;
      float vm2 = 0.0f;
#pragma unroll
      for (int i = 0; i < W; ++i) vm2 += (d[i] - vmean) * (d[i] - vmean);
      chan_combine(mean, m2, n, vmean, vm2, float(W));
    }
    block_combine<float, kThreads>(mean, m2, n);
    if (threadIdx.x == 0) partial[item] = Partial{mean, m2, n};
  }
}

// Values per vector in stats_nsc_kernel: each is a channel with its own Welford state
// in registers, so 4 for every dtype (16-byte loads for fp32, 8-byte for 16-bit types,
// still fully coalesced); 8 states pushed the 16-bit variants into spills.
constexpr int kNscWidth = 4;

// x: [N, S, C] (channels-last), read as C / W channel vectors per position (kVec: W =
// kNscWidth, C % W == 0 and x aligned to the vector); partial: [N, chunks, C], the
// moments of each channel over one chunk of chunk_len positions, relative to x[n, 0, c].
//
// Threads form `rows` x `lanes` (lanes = channel vectors handled at once): thread (row,
// lane) reads positions p0 + row, p0 + row + rows, ... of channel vector cv0 + lane, so
// consecutive threads read consecutive memory, and keeps one Welford state per channel
// of its vector; the rows are then merged per channel in order through shared memory.
template <typename T, bool kVec>
__global__ void __launch_bounds__(kThreads)
    stats_nsc_kernel(const T* __restrict__ x, Partial* __restrict__ partial, int64_t N,
                     int64_t C, int64_t S, int64_t chunks, int64_t chunk_len) {
  constexpr int W = kVec ? kNscWidth : 1;
  using V = Vec<T, W * sizeof(T)>;
  // [rows * lanes, W] (mean, m2) per thread and channel of its vector.
  __shared__ float2 row_moments[kThreads * W];
  const int64_t CV = C / W;
  const int lanes = int(min64(CV, kThreads));
  const int rows = kThreads / lanes;
  const int row = threadIdx.x / lanes, lane = threadIdx.x % lanes;
  for (int64_t item = blockIdx.x; item < N * chunks; item += gridDim.x) {
    const int64_t n = item / chunks, p0 = (item % chunks) * chunk_len;
    const int64_t len = min64(chunk_len, S - p0);
    const T* xn = x + n * S * C;
    for (int64_t cv0 = 0; cv0 < CV; cv0 += lanes) {
      const int64_t cv = cv0 + lane;
      float mean[W], m2[W];
#pragma unroll
      for (int i = 0; i < W; ++i) mean[i] = m2[i] = 0.0f;
      if (row < rows && cv < CV) {
        // Kept in storage form: fewer registers than W floats.
        V pivot;
        if constexpr (kVec)
          pivot = reinterpret_cast<const V*>(xn)[cv];
        else
          pivot.v[0] = xn[cv];
        const T* xp = xn + (p0 + row) * C + cv * W;  // this thread's vector at position p0 + row
        float count = 0.0f;
        for (int64_t p = p0 + row; p < p0 + len; p += rows, xp += rows * C) {
          float d[W];
          if constexpr (kVec) {
            const V v = *reinterpret_cast<const V*>(xp);
#pragma unroll
            for (int i = 0; i < W; ++i) d[i] = to_float(v.v[i]) - to_float(pivot.v[i]);
          } else {
            d[0] = to_float(*xp) - to_float(pivot.v[0]);
          }
          count += 1.0f;
          const float inv = 1.0f / count;  // shared by the W channels' Welford updates
#pragma unroll
          for (int i = 0; i < W; ++i) {
            const float delta = d[i] - mean[i];
            mean[i] += delta * inv;
            m2[i] += delta * (d[i] - mean[i]);
          }
        }
      }
      __syncthreads();  // the previous round's readers are done with row_moments
      if (row < rows) {
#pragma unroll
        for (int i = 0; i < W; ++i) row_moments[threadIdx.x * W + i] = make_float2(mean[i], m2[i]);
      }
      __syncthreads();
      // Slot s = lane * W + i is channel cv0 * W + s; row r's copy is at r * lanes * W + s.
      const int64_t width = min64(lanes, CV - cv0) * W;
      // Every thread of row r read the same positions: len / rows of them, one more for
      // the first len % rows rows.
      const float per_row = float(len / rows);
      const int extra_rows = int(len % rows);
      for (int64_t s = threadIdx.x; s < width; s += kThreads) {
        float m = 0.0f, q = 0.0f, k = 0.0f;
        for (int r = 0; r < rows; ++r) {
          const float2 v = row_moments[r * lanes * W + s];
          chan_combine(m, q, k, v.x, v.y, per_row + (r < extra_rows ? 1.0f : 0.0f));
        }
        partial[item * C + cv0 * W + s] = Partial{m, q, k};
      }
    }
  }
}

// x: [N, C, S] in `layout` (read for the pivots); partial: kNCS [N*G, splits] | kNSC
// [N, splits (chunks), C]; weight, bias: [C] or null; scale, shift: [N, C] or null;
// a, m, b: [N, C], y = a * (x - m) + b before the activation; stats: [N, G, 2] (mean,
// 1 / std) or null.
template <typename T>
__global__ void __launch_bounds__(kFinalizeThreads)
    finalize_kernel(const T* __restrict__ x, const Partial* __restrict__ partial,
                    GroupNormLayout layout, const float* __restrict__ weight,
                    const float* __restrict__ bias, const float* __restrict__ scale,
                    const float* __restrict__ shift, int64_t N, int64_t C, int64_t S,
                    int64_t G, int64_t splits, double eps, float* __restrict__ a,
                    float* __restrict__ m, float* __restrict__ b, double* __restrict__ stats) {
  __shared__ double group_stats[3];  // rstd, mean rounded to fp32, its rounding error
  const int64_t cg = C / G;
  const bool ncs = layout == GroupNormLayout::kNCS;
  // A group's partials as [splits, per_split]: kNCS one per split, kNSC one per chunk
  // and channel. Threads walk them with a stride of kFinalizeThreads, tracking (split,
  // j) incrementally: 64-bit divisions in the loop cost more than the combine.
  const int64_t per_split = ncs ? 1 : cg;
  const int64_t step_split = kFinalizeThreads / per_split, step_j = kFinalizeThreads % per_split;
  const int64_t first_split = threadIdx.x / per_split, first_j = threadIdx.x % per_split;
  for (int64_t ng = blockIdx.x; ng < N * G; ng += gridDim.x) {
    const int64_t n = ng / G, g = ng % G;
    // Absolute means in fp64 from here on, so partials with different pivots combine.
    const double group_pivot = ncs ? to_float(x[(n * C + g * cg) * S]) : 0.0;
    double mean = 0.0, m2 = 0.0, count = 0.0;
    for (int64_t split = first_split, j = first_j; split < splits;) {
      Partial p;
      double pivot = group_pivot;
      if (ncs) {
        p = partial[ng * splits + split];
      } else {
        const int64_t c = g * cg + j;
        p = partial[(n * splits + split) * C + c];
        pivot = to_float(x[n * S * C + c]);
      }
      chan_combine<double>(mean, m2, count, pivot + p.mean, p.m2, p.count);
      split += step_split;
      j += step_j;
      if (j >= per_split) {
        j -= per_split;
        ++split;
      }
    }
    block_combine<double, kFinalizeThreads>(mean, m2, count);
    if (threadIdx.x == 0) {
      const float mean_f = float(mean);
      group_stats[0] = 1.0 / sqrt(m2 / count + eps);
      group_stats[1] = mean_f;
      group_stats[2] = mean - double(mean_f);
      if (stats != nullptr) {
        stats[2 * ng] = mean;
        stats[2 * ng + 1] = group_stats[0];
      }
    }
    __syncthreads();
    const double rstd = group_stats[0], mean_lo = group_stats[2];
    const float mean_f = float(group_stats[1]);
    for (int64_t c = g * cg + threadIdx.x; c < (g + 1) * cg; c += kFinalizeThreads) {
      const double w = weight ? weight[c] : 1.0;
      const double bi = bias ? bias[c] : 0.0;
      const double s = scale ? 1.0 + scale[n * C + c] : 1.0;
      const double sh = shift ? shift[n * C + c] : 0.0;
      a[n * C + c] = float(rstd * w * s);
      m[n * C + c] = mean_f;
      b[n * C + c] = float((bi - mean_lo * rstd * w) * s + sh);
    }
    // The next group's block_combine starts with a barrier, so group_stats is not
    // overwritten while it is read.
  }
}

// x, y: [N, C, S] (kNCS) or [N, S, C] (kNSC), `total` values, as vectors of W values
// (kVec: a vector lies in one channel row, S % W == 0, or one channel vector, C % W ==
// 0; x and y 16-byte aligned); a, m, b: [N, C]. kSpatial: sp.scale / sp.shift in x's
// inner order, one period per sample (kVec then also needs period % W == 0 for kNCS, so
// a vector does not wrap around the period).
template <typename T, GroupNormLayout kLayout, bool kVec, bool kSpatial>
__global__ void __launch_bounds__(kThreads)
    apply_kernel(const T* __restrict__ x, T* __restrict__ y, const float* __restrict__ a,
                 const float* __restrict__ m, const float* __restrict__ b, int64_t C,
                 int64_t S, int64_t total, bool silu, SpatialModulation sp) {
  constexpr int W = kVec ? Vec<T>::kWidth : 1;
  constexpr bool kNCS = kLayout == GroupNormLayout::kNCS;
  const int64_t units = total / W;
  for (int64_t u = blockIdx.x * int64_t(kThreads) + threadIdx.x; u < units;
       u += int64_t(gridDim.x) * kThreads) {
    const int64_t e = u * W;
    // Coefficient index of the vector's first value; kNSC vectors step through channels.
    const int64_t k0 = kNCS ? e / S : e / (S * C) * C + e % C;
    // Modulation index of the vector's first value: kNCS [N*C, period] rows, kNSC
    // [N, period, C]; consecutive values of a vector are consecutive entries.
    int64_t q0 = 0;
    if constexpr (kSpatial) {
      const int64_t P = sp.period;
      q0 = kNCS ? k0 * P + e % S % P : (k0 / C * P + e / C % S % P) * C + e % C;
    }
    Vec<T> v;
    if constexpr (kVec)
      v = reinterpret_cast<const Vec<T>*>(x)[u];
    else
      v.v[0] = x[e];
#pragma unroll
    for (int i = 0; i < W; ++i) {
      const int64_t k = kNCS ? k0 : k0 + i;
      float r = a[k] * (to_float(v.v[i]) - m[k]) + b[k];
      if constexpr (kSpatial) {
        if (sp.scale) r *= 1.0f + sp.scale[q0 + i];
        if (sp.shift) r += sp.shift[q0 + i];
      }
      if (silu) r = r / (1.0f + __expf(-r));
      v.v[i] = from_float<T>(r);
    }
    if constexpr (kVec)
      reinterpret_cast<Vec<T>*>(y)[u] = v;
    else
      y[e] = v.v[0];
  }
}

template <typename T, GroupNormLayout kLayout, bool kVec>
void launch_apply(const T* x, T* y, const float* a, const float* m, const float* b, int64_t C,
                  int64_t S, int64_t total, bool silu, SpatialModulation sp, cudaStream_t stream) {
  constexpr int W = kVec ? Vec<T>::kWidth : 1;
  const int grid = grid_for(ceil_div(total / W, kThreads));
  if (sp.active())
    apply_kernel<T, kLayout, kVec, true><<<grid, kThreads, 0, stream>>>(x, y, a, m, b, C, S, total, silu, sp);
  else
    apply_kernel<T, kLayout, kVec, false><<<grid, kThreads, 0, stream>>>(x, y, a, m, b, C, S, total, silu, sp);
}

template <typename T>
cudaError_t launch(GroupNormLayout layout, const void* x_raw, void* y_raw, const float* weight,
                   const float* bias, const float* scale, const float* shift,
                   SpatialModulation sp, int64_t N, int64_t C, int64_t S, int64_t G, double eps,
                   bool silu, double* stats, void* workspace, cudaStream_t stream) {
  constexpr int W = Vec<T>::kWidth;
  const Plan plan = make_plan(layout, N, C, S, G);
  // Workspace: [plan.partials] Partial records, then (16-byte aligned) a, m, b.
  auto* partial = static_cast<Partial*>(workspace);
  float* a = reinterpret_cast<float*>(static_cast<char*>(workspace) +
                                      align16(plan.partials * sizeof(Partial)));  // [N, C]
  float* m = a + N * C;                                                          // [N, C]
  float* b = m + N * C;                                                          // [N, C]
  const int64_t cg = C / G;
  const auto* x = static_cast<const T*>(x_raw);  // [N, C, S] in `layout`
  auto* y = static_cast<T*>(y_raw);              // [N, C, S] in `layout`

  if (layout == GroupNormLayout::kNCS) {
    const int grid = grid_for(N * G * plan.splits);
    if (cg * S % W == 0 && aligned16(x))
      stats_ncs_kernel<T, true><<<grid, kThreads, 0, stream>>>(x, partial, N * G, cg * S, plan.splits);
    else
      stats_ncs_kernel<T, false><<<grid, kThreads, 0, stream>>>(x, partial, N * G, cg * S, plan.splits);
  } else {
    const int grid = grid_for(N * plan.splits);
    if (C % kNscWidth == 0 && aligned(x, kNscWidth * sizeof(T)))
      stats_nsc_kernel<T, true><<<grid, kThreads, 0, stream>>>(x, partial, N, C, S, plan.splits, plan.chunk_len);
    else
      stats_nsc_kernel<T, false><<<grid, kThreads, 0, stream>>>(x, partial, N, C, S, plan.splits, plan.chunk_len);
  }

  finalize_kernel<T><<<grid_for(N * G), kFinalizeThreads, 0, stream>>>(
      x, partial, layout, weight, bias, scale, shift, N, C, S, G, plan.splits, eps, a, m, b,
      stats);
  if (y == nullptr) return cudaGetLastError();  // statistics only

  const int64_t total = N * C * S;
  const bool ncs = layout == GroupNormLayout::kNCS;
  const bool vec = (ncs ? S % W == 0 && (!sp.active() || sp.period % W == 0) : C % W == 0) &&
                   aligned16(x) && aligned16(y);
  if (ncs && vec)
    launch_apply<T, GroupNormLayout::kNCS, true>(x, y, a, m, b, C, S, total, silu, sp, stream);
  else if (ncs)
    launch_apply<T, GroupNormLayout::kNCS, false>(x, y, a, m, b, C, S, total, silu, sp, stream);
  else if (vec)
    launch_apply<T, GroupNormLayout::kNSC, true>(x, y, a, m, b, C, S, total, silu, sp, stream);
  else
    launch_apply<T, GroupNormLayout::kNSC, false>(x, y, a, m, b, C, S, total, silu, sp, stream);
  // Reports a failed launch of any of the three: a launch that succeeds does not
  // clear the error state, which holds the most recent error until it is read.
  return cudaGetLastError();
}

}  // namespace

size_t group_norm_workspace_bytes(GroupNormLayout layout, int64_t N, int64_t C, int64_t S,
                                  int64_t G) {
  if (N * C * S == 0) return 0;
  const Plan plan = make_plan(layout, N, C, S, G);
  return align16(plan.partials * sizeof(Partial)) + 3 * size_t(N * C) * sizeof(float);
}

cudaError_t group_norm(DType dtype, GroupNormLayout layout, const void* x, void* y,
                       const float* weight, const float* bias, const float* scale,
                       const float* shift, SpatialModulation spatial, int64_t N, int64_t C,
                       int64_t S, int64_t G, double eps, bool silu, double* stats,
                       void* workspace, cudaStream_t stream) {
  if (N * C * S == 0) return cudaSuccess;
  if (G <= 0 || C % G != 0 || (y == nullptr && stats == nullptr)) return cudaErrorInvalidValue;
  if (spatial.active() && (scale || shift || spatial.period <= 0 || S % spatial.period != 0))
    return cudaErrorInvalidValue;
  return with_storage_type(dtype, [&](auto storage) {
    using Storage = decltype(storage);
    return launch<Storage>(layout, x, y, weight, bias, scale, shift, spatial, N, C, S, G, eps,
                           silu, stats, workspace, stream);
  });
}

}  // namespace cuda
}  // namespace lddm
