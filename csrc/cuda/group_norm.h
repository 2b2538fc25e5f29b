// Framework-free interface of the group_norm CUDA kernels (raw pointers + stream), so
// this file and group_norm.cu compile with nvcc alone, without torch.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

#include "cuda/dtype.h"

namespace lddm {
namespace cuda {

// Memory order of x and y viewed as [N, C, S] (S = the product of the spatial sizes):
// kNCS is contiguous NCHW / NCTHW, kNSC is channels_last / channels_last_3d.
enum class GroupNormLayout { kNCS, kNSC };

// Device workspace in bytes that group_norm needs for these sizes (partial statistics
// and per-(n, c) coefficients). The caller allocates it, 16-byte aligned, for each
// call: that call's launches on its stream write and then read it.
size_t group_norm_workspace_bytes(GroupNormLayout layout, int64_t N, int64_t C, int64_t S,
                                  int64_t G);

// A spatial (SPADE) modulation: float32 scale and shift (either may be null) of one
// period of `period` positions per sample, dense in x's inner order: [N, C, period] for
// kNCS, [N, period, C] for kNSC. Position s of x (flat over its spatial dims) takes
// entry s % period, so a [N, C, 1, H, W] modulation of a 5-D x is stored once (period
// H * W) and reused by every frame.
struct SpatialModulation {
  const float* scale = nullptr;
  const float* shift = nullptr;
  int64_t period = 0;
  bool active() const { return scale != nullptr || shift != nullptr; }
};

// y = act((xhat * weight + bias) * (1 + scale) + shift), xhat normalised over the
// (C / G) * S values of each (n, group). x, y: [N, C, S] in `layout`, distinct buffers;
// weight, bias: [C] float32 or null; scale, shift: [N, C] float32 (FiLM) or null, or
// instead `spatial` (then scale and shift must be null); act is SiLU when `silu`.
// Statistics in fp32 with a Chan combine in a fixed order (deterministic), coefficients
// in fp64. stats: null, or [N, G, 2] float64 receiving each group's mean and 1 / std
// (what the backward takes); y may be null when stats is not: statistics only.
// workspace: group_norm_workspace_bytes(...) bytes on the device.
cudaError_t group_norm(DType dtype, GroupNormLayout layout, const void* x, void* y,
                       const float* weight, const float* bias, const float* scale,
                       const float* shift, SpatialModulation spatial, int64_t N, int64_t C,
                       int64_t S, int64_t G, double eps, bool silu, double* stats,
                       void* workspace, cudaStream_t stream);

}  // namespace cuda
}  // namespace lddm
