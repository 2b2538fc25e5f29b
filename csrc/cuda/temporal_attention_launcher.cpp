// Torch-side launcher of the temporal_attention CUDA kernel: checks tensors, allocates
// the output in the layout the fake implementation promises, takes the current stream,
// calls the framework-free entry point in temporal_attention.cu.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "checks.h"
#include "cuda/temporal_attention.h"
#include "layout.h"
#include "ops.h"

namespace lddm {
namespace {

cuda::VideoStrides strides_of(const at::Tensor& t) {
  return {t.stride(0), t.stride(1), t.stride(2), t.stride(3), t.stride(4)};
}

}  // namespace

at::Tensor temporal_attention_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                   int64_t num_heads, double scale) {
  LDDM_CHECK_DEVICE(q, at::kCUDA, "q");
  for (const auto& [t, name] : {std::pair{&q, "q"}, std::pair{&k, "k"}, std::pair{&v, "v"}}) {
    TORCH_CHECK_VALUE(t->device() == q.device(), name, " is on ", t->device(), " but q is on ",
                      q.device());
    TORCH_CHECK_VALUE(t->dim() == 5, name, " must be 5-D [B, C, T, H, W], got ", t->sizes());
    TORCH_CHECK_VALUE(t->sizes() == q.sizes(), name, " has shape ", t->sizes(), " but q has ",
                      q.sizes());
    TORCH_CHECK_VALUE(t->scalar_type() == q.scalar_type(), name, " is ", t->scalar_type(),
                      " but q is ", q.scalar_type());
  }
  const cuda::DType dtype = cuda_dtype_of(q, "q");
  const int64_t B = q.size(0), C = q.size(1), T = q.size(2), H = q.size(3), W = q.size(4);
  TORCH_CHECK_VALUE(num_heads > 0 && C % num_heads == 0, "num_heads=", num_heads,
                    " must be a positive divisor of C=", C);
  const int64_t D = C / num_heads;

  const c10::cuda::CUDAGuard guard(q.device());
  // One position's q, k, v and scores live in shared memory together.
  const size_t need = cuda::temporal_attention_smem_per_position(T, D);
  int limit = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin,
                                        q.device().index()));
  TORCH_CHECK_VALUE(need <= size_t(limit), "T=", T, " frames with head_dim=", D, " need ", need,
                    " bytes of shared memory per position, more than this GPU's ", limit,
                    "; use a smaller T or head_dim, or another backend");
  at::Tensor o = at::empty(q.sizes(), q.options().memory_format(attention_output_format(q)));
  poison_if_requested(o);
  if (o.numel() == 0) return o;
  const cudaError_t err = cuda::temporal_attention(
      dtype, q.const_data_ptr(), k.const_data_ptr(), v.const_data_ptr(), o.mutable_data_ptr(),
      strides_of(q), strides_of(k), strides_of(v), strides_of(o), B, num_heads, D, T, H, W,
      float(scale), c10::cuda::getCurrentCUDAStream(q.device().index()).stream());
  TORCH_CHECK(err == cudaSuccess, "lddm::temporal_attention CUDA launch failed: ",
              cudaGetErrorString(err));
  return o;
}

}  // namespace lddm
