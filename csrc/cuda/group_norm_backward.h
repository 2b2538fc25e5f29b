// Framework-free interface of the group_norm backward CUDA kernels (raw pointers +
// stream), as group_norm.h is for the forward.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

#include "cuda/dtype.h"
#include "cuda/group_norm.h"

namespace lddm {
namespace cuda {

// Positions per sample (S) a spatial modulation may have in the backward: its period
// index is taken in 32 bits.
constexpr int64_t kMaxSpatialPositions = int64_t(1) << 31;

// Device workspace in bytes that group_norm_backward needs for these sizes.
size_t group_norm_backward_workspace_bytes(GroupNormLayout layout, int64_t N, int64_t C,
                                           int64_t S, int64_t G);

// Where group_norm_backward writes the parameters' gradients, float32, each may be null:
// weight, bias [C]; scale, shift [N, C], the per-(n, c) sums of gv u and gv (a FiLM
// argument's grads, also where a spatial partner made the modulation per element); a
// spatial modulation's per-element gradients gv u and gv (before its broadcast dims are
// summed out) [N, C, S] in x's layout.
struct GroupNormParamGrads {
  float* weight = nullptr;
  float* bias = nullptr;
  float* scale = nullptr;
  float* shift = nullptr;
  float* spatial_scale = nullptr;
  float* spatial_shift = nullptr;
};

// The gradients of group_norm (same x, weight, bias, scale, shift, spatial, silu) for
// the output gradient dy: dx and `grads`. dy, x, dx: [N, C, S] in `layout`, dtype
// `dtype`; stats: [N, G, 2] float64 mean and 1 / std per (n, group), as group_norm
// writes them. Per element, with xhat the normalised x, s = 1 + scale, h = shift:
//   u = w xhat + b, v = u s + h, gv = dy act'(v), gu = gv s,
//   dx = rstd (w gu - mean_group(w gu) - xhat mean_group(w gu xhat)).
// Per-(n, c) sums of gv, gv xhat, gu, gu xhat are reduced in a fixed order
// (deterministic), then dx is written by a second pass that recomputes gv from x and
// dy (cheaper than storing it). A spatial modulation needs S < kMaxSpatialPositions.
// workspace: group_norm_backward_workspace_bytes(...).
cudaError_t group_norm_backward(DType dtype, GroupNormLayout layout, const void* dy,
                                const void* x, void* dx, const double* stats,
                                const float* weight, const float* bias, const float* scale,
                                const float* shift, SpatialModulation spatial, int64_t N,
                                int64_t C, int64_t S, int64_t G, bool silu,
                                GroupNormParamGrads grads, void* workspace, cudaStream_t stream);

}  // namespace cuda
}  // namespace lddm
