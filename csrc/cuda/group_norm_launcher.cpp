// Torch-side launchers of the group_norm CUDA kernels (forward and backward): check
// tensors, allocate outputs and workspaces with torch, take the current stream, call
// the framework-free entry points in group_norm.cu and group_norm_backward.cu.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "checks.h"
#include "cuda/group_norm.h"
#include "cuda/group_norm_backward.h"
#include "group_norm_args.h"
#include "ops.h"

namespace lddm {
namespace {

// A spatial modulation as the CUDA kernels take it.
cuda::SpatialModulation spatial_of(const GroupNormParams& p) {
  return {float_ptr(p.sc_sp), float_ptr(p.sh_sp), p.period};
}

cudaStream_t stream_of(const at::Tensor& x) {
  return c10::cuda::getCurrentCUDAStream(x.device().index()).stream();
}

// y and, with_stats, each group's mean and 1 / std as float64 [N, G, 2] (undefined
// without), as group_norm_impl in csrc/cpu/group_norm.cpp.
std::tuple<at::Tensor, at::Tensor> group_norm_impl(
    const at::Tensor& x_in, int64_t num_groups, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, double eps, const std::optional<at::Tensor>& scale,
    const std::optional<at::Tensor>& shift, bool silu, bool with_stats) {
  LDDM_CHECK_DEVICE(x_in, at::kCUDA, "x");
  check_group_norm_args(x_in, num_groups, weight, bias, scale, shift);
  const cuda::DType dtype = cuda_dtype_of(x_in, "x");
  const int64_t N = x_in.size(0), C = x_in.size(1);

  const c10::cuda::CUDAGuard guard(x_in.device());
  auto [x, y, nsc] = group_norm_io(x_in);
  poison_if_requested(y);
  // Zeros where nothing is normalised (an empty x writes no statistics).
  at::Tensor stats = with_stats ? at::zeros({N, num_groups, 2}, x.options().dtype(at::kDouble))
                                : at::Tensor();
  if (x.numel() == 0) return {y, stats};

  const int64_t S = x.numel() / (N * C);
  const auto layout = nsc ? cuda::GroupNormLayout::kNSC : cuda::GroupNormLayout::kNCS;
  const GroupNormParams p(x, nsc, weight, bias, scale, shift);
  // From the caching allocator: no cudaMalloc per call, and safe under graph capture.
  const at::Tensor workspace = at::empty(
      {int64_t(cuda::group_norm_workspace_bytes(layout, N, C, S, num_groups))},
      x.options().dtype(at::kByte));
  const cudaError_t err = cuda::group_norm(
      dtype, layout, x.const_data_ptr(), y.mutable_data_ptr(), float_ptr(p.w), float_ptr(p.b),
      float_ptr(p.sc), float_ptr(p.sh), spatial_of(p), N, C, S, num_groups, eps, silu,
      with_stats ? stats.mutable_data_ptr<double>() : nullptr, workspace.mutable_data_ptr(),
      stream_of(x));
  TORCH_CHECK(err == cudaSuccess, "lddm::group_norm CUDA launch failed: ", cudaGetErrorString(err));
  return {y, stats};
}

}  // namespace

at::Tensor group_norm_cuda(const at::Tensor& x, int64_t num_groups,
                           const std::optional<at::Tensor>& weight,
                           const std::optional<at::Tensor>& bias, double eps,
                           const std::optional<at::Tensor>& scale,
                           const std::optional<at::Tensor>& shift, bool silu) {
  return std::get<0>(
      group_norm_impl(x, num_groups, weight, bias, eps, scale, shift, silu, false));
}

std::tuple<at::Tensor, at::Tensor> group_norm_stats_cuda(
    const at::Tensor& x, int64_t num_groups, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, double eps, const std::optional<at::Tensor>& scale,
    const std::optional<at::Tensor>& shift, bool silu) {
  return group_norm_impl(x, num_groups, weight, bias, eps, scale, shift, silu, true);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> group_norm_backward_cuda(
    const at::Tensor& grad_y, const at::Tensor& x_in, int64_t num_groups,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, double eps,
    const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& shift, bool silu,
    const std::optional<at::Tensor>& stats) {
  LDDM_CHECK_DEVICE(x_in, at::kCUDA, "x");
  check_group_norm_args(x_in, num_groups, weight, bias, scale, shift);
  const cuda::DType dtype = cuda_dtype_of(x_in, "x");
  check_group_norm_backward_args(grad_y, x_in, num_groups, stats);
  const int64_t N = x_in.size(0), C = x_in.size(1);

  const c10::cuda::CUDAGuard guard(x_in.device());
  auto [x, gx, nsc] = group_norm_io(x_in);
  poison_if_requested(gx);
  const at::MemoryFormat fmt = output_format(x_in);  // x's and gx's (group_norm_io)
  const at::Tensor gy = grad_y.to(x.scalar_type()).contiguous(fmt);
  const auto f32 = x.options().dtype(at::kFloat);
  const bool is_spatial = has_spatial_modulation(x, scale, shift);
  at::Tensor gw = at::empty({C}, f32), gb = at::empty({C}, f32);
  at::Tensor film_gs = at::empty({N, C}, f32), film_gh = at::empty({N, C}, f32);
  at::Tensor gs_el, gh_el;  // per-element grads of a spatial scale / shift, x's layout
  if (is_spatial) {
    gs_el = at::empty(x.sizes(), f32.memory_format(fmt));
    gh_el = at::empty(x.sizes(), f32.memory_format(fmt));
  }
  const auto result = [&] {
    return group_norm_grads(gx, x, gw, gb, film_gs, film_gh, gs_el, gh_el, weight, bias, scale,
                            shift);
  };
  if (x.numel() == 0) {  // nothing normalised: the parameters' grads are zero
    for (at::Tensor* t : {&gw, &gb, &film_gs, &film_gh}) t->zero_();
    if (is_spatial) {
      gs_el.zero_();
      gh_el.zero_();
    }
    return result();
  }

  const int64_t S = x.numel() / (N * C);
  TORCH_CHECK_VALUE(!is_spatial || S < cuda::kMaxSpatialPositions,
                    "the CUDA group_norm backward takes a spatial scale/shift only for x with "
                    "fewer than 2^31 positions per sample, got ", S);
  const auto layout = nsc ? cuda::GroupNormLayout::kNSC : cuda::GroupNormLayout::kNCS;
  const GroupNormParams p(x, nsc, weight, bias, scale, shift);
  const cudaStream_t stream = stream_of(x);
  at::Tensor saved;
  if (stats) {
    saved = stats->contiguous();
  } else {  // recomputed with the forward's code (its statistics only)
    saved = at::empty({N, num_groups, 2}, x.options().dtype(at::kDouble));
    const at::Tensor fwd_ws = at::empty(
        {int64_t(cuda::group_norm_workspace_bytes(layout, N, C, S, num_groups))},
        x.options().dtype(at::kByte));
    const cudaError_t err = cuda::group_norm(
        dtype, layout, x.const_data_ptr(), nullptr, float_ptr(p.w), float_ptr(p.b),
        float_ptr(p.sc), float_ptr(p.sh), spatial_of(p), N, C, S, num_groups, eps, silu,
        saved.mutable_data_ptr<double>(),
        fwd_ws.mutable_data_ptr(), stream);
    TORCH_CHECK(err == cudaSuccess, "lddm::group_norm_backward CUDA statistics failed: ",
                cudaGetErrorString(err));
  }
  cuda::GroupNormParamGrads grads;
  grads.weight = gw.mutable_data_ptr<float>();
  grads.bias = gb.mutable_data_ptr<float>();
  grads.scale = film_gs.mutable_data_ptr<float>();
  grads.shift = film_gh.mutable_data_ptr<float>();
  if (is_spatial) {
    grads.spatial_scale = gs_el.mutable_data_ptr<float>();
    grads.spatial_shift = gh_el.mutable_data_ptr<float>();
  }
  const at::Tensor workspace = at::empty(
      {int64_t(cuda::group_norm_backward_workspace_bytes(layout, N, C, S, num_groups))},
      x.options().dtype(at::kByte));
  const cudaError_t err = cuda::group_norm_backward(
      dtype, layout, gy.const_data_ptr(), x.const_data_ptr(), gx.mutable_data_ptr(),
      saved.const_data_ptr<double>(), float_ptr(p.w), float_ptr(p.b), float_ptr(p.sc),
      float_ptr(p.sh), spatial_of(p), N, C, S, num_groups, silu, grads,
      workspace.mutable_data_ptr(), stream);
  TORCH_CHECK(err == cudaSuccess, "lddm::group_norm_backward CUDA launch failed: ",
              cudaGetErrorString(err));
  return result();
}

}  // namespace lddm
