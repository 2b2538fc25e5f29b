// Torch-side launcher of the group_norm CUDA kernels: checks tensors, allocates the
// output and the workspace with torch, takes the current stream, calls the
// framework-free entry point in group_norm.cu.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "checks.h"
#include "cuda/group_norm.h"
#include "ops.h"

namespace lddm {

at::Tensor group_norm_cuda(const at::Tensor& x_in, int64_t num_groups,
                           const std::optional<at::Tensor>& weight,
                           const std::optional<at::Tensor>& bias, double eps,
                           const std::optional<at::Tensor>& scale,
                           const std::optional<at::Tensor>& shift, bool silu) {
  LDDM_CHECK_DEVICE(x_in, at::kCUDA, "x");
  TORCH_CHECK_VALUE(x_in.dim() == 4 || x_in.dim() == 5,
                    "x must be 4-D [N, C, H, W] or 5-D [N, C, T, H, W], got ", x_in.sizes());
  cuda::DType dtype;
  switch (x_in.scalar_type()) {
    case at::kFloat: dtype = cuda::DType::kFloat32; break;
    case at::kBFloat16: dtype = cuda::DType::kBFloat16; break;
    case at::kHalf: dtype = cuda::DType::kFloat16; break;
    default: TORCH_CHECK_VALUE(false, "x must be float32, bfloat16 or float16, got ", x_in.scalar_type());
  }
  const int64_t N = x_in.size(0), C = x_in.size(1);
  TORCH_CHECK_VALUE(num_groups > 0 && C % num_groups == 0, "num_groups=", num_groups,
                    " must be a positive divisor of C=", C);
  for (const auto& [t, name] : {std::pair{&weight, "weight"}, std::pair{&bias, "bias"},
                                std::pair{&scale, "scale"}, std::pair{&shift, "shift"}}) {
    if (!t->has_value()) continue;
    const at::Tensor& p = **t;
    TORCH_CHECK_VALUE(p.device() == x_in.device(), name, " is on ", p.device(), " but x is on ",
                      x_in.device());
    TORCH_CHECK_VALUE(at::isFloatingType(p.scalar_type()), name,
                      " must be a floating-point tensor, got ", p.scalar_type());
    const bool per_sample = t == &scale || t == &shift;
    const auto expected = per_sample ? std::vector<int64_t>{N, C} : std::vector<int64_t>{C};
    TORCH_CHECK_VALUE(p.sizes() == at::IntArrayRef(expected), name, " must have shape ",
                      at::IntArrayRef(expected), ", got ", p.sizes());
  }

  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto cl = x_in.dim() == 4 ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::ChannelsLast3d;
  // Same rule as lddm_fast.ops.layout.memory_format_of: channels-last only when x is
  // that and not also plain contiguous; any other strides get one contiguous copy.
  const bool nsc = !x_in.is_contiguous() && x_in.is_contiguous(cl);
  const at::Tensor x = nsc ? x_in : x_in.contiguous();
  at::Tensor y = at::empty_like(x, nsc ? cl : at::MemoryFormat::Contiguous);
  poison_if_requested(y);
  if (x.numel() == 0) return y;

  const int64_t S = x.numel() / (N * C);
  const auto layout = nsc ? cuda::GroupNormLayout::kNSC : cuda::GroupNormLayout::kNCS;
  // Coefficients as fp32 on the device; the kernels fold them into per-(n, c) a and b.
  auto as_float = [](const std::optional<at::Tensor>& t) -> std::optional<at::Tensor> {
    if (!t.has_value()) return std::nullopt;
    return t->to(at::kFloat).contiguous();
  };
  const auto w = as_float(weight), b = as_float(bias), sc = as_float(scale), sh = as_float(shift);
  auto ptr = [](const std::optional<at::Tensor>& t) -> const float* {
    return t ? t->const_data_ptr<float>() : nullptr;
  };
  // From the caching allocator: no cudaMalloc per call, and safe under graph capture.
  const at::Tensor workspace = at::empty(
      {int64_t(cuda::group_norm_workspace_bytes(layout, N, C, S, num_groups))},
      x.options().dtype(at::kByte));
  const cudaError_t err = cuda::group_norm(
      dtype, layout, x.const_data_ptr(), y.mutable_data_ptr(), ptr(w), ptr(b), ptr(sc), ptr(sh),
      N, C, S, num_groups, eps, silu, workspace.mutable_data_ptr(),
      c10::cuda::getCurrentCUDAStream(x.device().index()).stream());
  TORCH_CHECK(err == cudaSuccess, "lddm::group_norm CUDA launch failed: ", cudaGetErrorString(err));
  return y;
}

}  // namespace lddm
