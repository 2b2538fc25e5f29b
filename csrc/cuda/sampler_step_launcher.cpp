// Torch-side launcher of the sampler_step CUDA kernel: checks tensors, takes the
// current stream, calls the framework-free entry point in sampler_step.cu.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "checks.h"
#include "cuda/sampler_step.h"
#include "layout.h"
#include "ops.h"

namespace lddm {

at::Tensor sampler_step_cuda(const at::Tensor& x_in, const at::Tensor& eps_in,
                             const at::Tensor& a_in, const at::Tensor& b_in,
                             const std::optional<at::Tensor>& noise_in,
                             const std::optional<at::Tensor>& c_in) {
  LDDM_CHECK_DEVICE(x_in, at::kCUDA, "x");
  TORCH_CHECK_VALUE(x_in.dim() >= 1, "x must have a batch dimension [B, ...]");
  const cuda::DType dtype = cuda_dtype_of(x_in, "x");
  const int64_t B = x_in.size(0);
  TORCH_CHECK_VALUE(noise_in.has_value() == c_in.has_value(), "noise and c must be given together");
  for (const auto& [t, name] : {std::pair{&eps_in, "eps"}, std::pair{noise_in ? &*noise_in : nullptr, "noise"}}) {
    if (t == nullptr) continue;
    TORCH_CHECK_VALUE(t->device() == x_in.device(), name, " is on ", t->device(), " but x is on ", x_in.device());
    TORCH_CHECK_VALUE(t->sizes() == x_in.sizes() && t->scalar_type() == x_in.scalar_type(), name,
                      " must match x in shape and dtype");
  }
  for (const auto& [t, name] : {std::pair{&a_in, "a"}, std::pair{&b_in, "b"}, std::pair{c_in ? &*c_in : nullptr, "c"}}) {
    if (t == nullptr) continue;
    TORCH_CHECK_VALUE(t->device() == x_in.device(), name, " is on ", t->device(), " but x is on ", x_in.device(),
                      " (keep coefficients on the device: no host sync inside a captured graph)");
    TORCH_CHECK_VALUE(t->sizes() == at::IntArrayRef({B}), name, " must have shape [", B, "], got ", t->sizes());
  }
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto fmt = output_format(x_in);
  const at::Tensor x = x_in.contiguous(fmt), eps = eps_in.contiguous(fmt);
  const std::optional<at::Tensor> noise =
      noise_in ? std::optional<at::Tensor>(noise_in->contiguous(fmt)) : std::nullopt;
  const at::Tensor a = a_in.to(at::kFloat).contiguous(), b = b_in.to(at::kFloat).contiguous();
  const std::optional<at::Tensor> c =
      c_in ? std::optional<at::Tensor>(c_in->to(at::kFloat).contiguous()) : std::nullopt;
  at::Tensor out = at::empty_like(x, fmt);
  poison_if_requested(out);
  const cudaError_t err = cuda::sampler_step(
      dtype, x.const_data_ptr(), eps.const_data_ptr(), noise ? noise->const_data_ptr() : nullptr,
      out.mutable_data_ptr(), a.const_data_ptr<float>(), b.const_data_ptr<float>(),
      c ? c->const_data_ptr<float>() : nullptr, B, B ? x.numel() / B : 0,
      c10::cuda::getCurrentCUDAStream(x.device().index()).stream());
  TORCH_CHECK(err == cudaSuccess, "lddm::sampler_step CUDA launch failed: ", cudaGetErrorString(err));
  return out;
}

}  // namespace lddm
