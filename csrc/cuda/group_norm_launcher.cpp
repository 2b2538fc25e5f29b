// Torch-side launcher of the group_norm CUDA kernels: checks tensors, allocates the
// output and the workspace with torch, takes the current stream, calls the
// framework-free entry point in group_norm.cu.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "checks.h"
#include "group_norm_args.h"
#include "cuda/group_norm.h"
#include "ops.h"

namespace lddm {

at::Tensor group_norm_cuda(const at::Tensor& x_in, int64_t num_groups,
                           const std::optional<at::Tensor>& weight,
                           const std::optional<at::Tensor>& bias, double eps,
                           const std::optional<at::Tensor>& scale,
                           const std::optional<at::Tensor>& shift, bool silu) {
  LDDM_CHECK_DEVICE(x_in, at::kCUDA, "x");
  check_group_norm_args(x_in, num_groups, weight, bias, scale, shift);
  const cuda::DType dtype = cuda_dtype_of(x_in, "x");
  const int64_t N = x_in.size(0), C = x_in.size(1);

  const c10::cuda::CUDAGuard guard(x_in.device());
  auto [x, y, nsc] = group_norm_io(x_in);
  poison_if_requested(y);
  if (x.numel() == 0) return y;

  const int64_t S = x.numel() / (N * C);
  const auto layout = nsc ? cuda::GroupNormLayout::kNSC : cuda::GroupNormLayout::kNCS;
  // Coefficients as fp32 on the device. FiLM scale/shift fold into per-(n, c) a and b;
  // a spatial one (or both, when either is spatial) is materialised as one period in
  // x's inner order and applied per element.
  const bool is_spatial = has_spatial_modulation(x, scale, shift);
  const int64_t period = is_spatial ? modulation_period(x, scale, shift) : 0;
  auto film = [&](const std::optional<at::Tensor>& t) {
    return is_spatial ? std::nullopt : as_float32(t);
  };
  auto dense = [&](const std::optional<at::Tensor>& t) -> std::optional<at::Tensor> {
    if (!is_spatial || !t) return std::nullopt;
    return spatial_modulation(x, *t, period, nsc);
  };
  const auto w = as_float32(weight), b = as_float32(bias), sc = film(scale), sh = film(shift);
  const auto sc_sp = dense(scale), sh_sp = dense(shift);
  auto ptr = [](const std::optional<at::Tensor>& t) -> const float* {
    return t ? t->const_data_ptr<float>() : nullptr;
  };
  const cuda::SpatialModulation spatial{ptr(sc_sp), ptr(sh_sp), period};
  // From the caching allocator: no cudaMalloc per call, and safe under graph capture.
  const at::Tensor workspace = at::empty(
      {int64_t(cuda::group_norm_workspace_bytes(layout, N, C, S, num_groups))},
      x.options().dtype(at::kByte));
  const cudaError_t err = cuda::group_norm(
      dtype, layout, x.const_data_ptr(), y.mutable_data_ptr(), ptr(w), ptr(b), ptr(sc), ptr(sh),
      spatial, N, C, S, num_groups, eps, silu, workspace.mutable_data_ptr(),
      c10::cuda::getCurrentCUDAStream(x.device().index()).stream());
  TORCH_CHECK(err == cudaSuccess, "lddm::group_norm CUDA launch failed: ", cudaGetErrorString(err));
  return y;
}

}  // namespace lddm
