// Torch-side launchers of the temporal_attention CUDA kernels (forward, forward with
// logsumexps, backward): check tensors, allocate outputs in the layouts the fake
// implementations promise, take the current stream, call the framework-free entry
// points in temporal_attention.cu and temporal_attention_backward.cu.
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

cudaStream_t stream_of(const at::Tensor& t) {
  return c10::cuda::getCurrentCUDAStream(t.device().index()).stream();
}

// Checks q, k, v (and the backward's output gradient) as one call's operands:
// CUDA, 5-D, q's shape; k and v q's dtype; C a multiple of num_heads. Returns head_dim.
int64_t check_operands(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                       int64_t num_heads, const at::Tensor* grad_out = nullptr) {
  LDDM_CHECK_DEVICE(q, at::kCUDA, "q");
  const auto check_shape = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK_VALUE(t.device() == q.device(), name, " is on ", t.device(), " but q is on ",
                      q.device());
    TORCH_CHECK_VALUE(t.dim() == 5, name, " must be 5-D [B, C, T, H, W], got ", t.sizes());
    TORCH_CHECK_VALUE(t.sizes() == q.sizes(), name, " has shape ", t.sizes(), " but q has ",
                      q.sizes());
  };
  check_shape(q, "q");
  check_shape(k, "k");
  check_shape(v, "v");
  if (grad_out != nullptr) check_shape(*grad_out, "grad_out");
  for (const auto& [t, name] : {std::pair{&k, "k"}, std::pair{&v, "v"}})
    TORCH_CHECK_VALUE(t->scalar_type() == q.scalar_type(), name, " is ", t->scalar_type(),
                      " but q is ", q.scalar_type());
  const int64_t C = q.size(1);
  TORCH_CHECK_VALUE(num_heads > 0 && C % num_heads == 0, "num_heads=", num_heads,
                    " must be a positive divisor of C=", C);
  return C / num_heads;
}

// One position's operands live in shared memory together: `need` bytes (the kernels'
// temporal_attention(_backward)_smem_per_position) against this GPU's opt-in limit.
void check_shared_memory(const at::Tensor& q, int64_t D, size_t need, const char* pass) {
  int limit = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin,
                                        q.device().index()));
  TORCH_CHECK_VALUE(need <= size_t(limit), "T=", q.size(2), " frames with head_dim=", D,
                    " need ", need, " bytes of shared memory per position for the ", pass,
                    ", more than this GPU's ", limit,
                    "; use a smaller T or head_dim, or another backend");
}

at::Tensor output_like(const at::Tensor& t) {
  at::Tensor out = at::empty(t.sizes(), t.options().memory_format(attention_output_format(t)));
  poison_if_requested(out);
  return out;
}

std::tuple<at::Tensor, at::Tensor> attention_impl(const at::Tensor& q, const at::Tensor& k,
                                                  const at::Tensor& v, int64_t num_heads,
                                                  double scale, bool with_lse) {
  const int64_t D = check_operands(q, k, v, num_heads);
  const cuda::DType dtype = cuda_dtype_of(q, "q");
  const int64_t B = q.size(0), T = q.size(2), H = q.size(3), W = q.size(4);
  const c10::cuda::CUDAGuard guard(q.device());
  check_shared_memory(q, D, cuda::temporal_attention_smem_per_position(T, D), "forward");
  at::Tensor o = output_like(q);
  at::Tensor lse;
  if (with_lse) {
    lse = at::empty({B, num_heads, T, H, W}, q.options().dtype(at::kFloat));
    poison_if_requested(lse);
  }
  if (o.numel() == 0) return {o, lse};
  const cudaError_t err = cuda::temporal_attention(
      dtype, q.const_data_ptr(), k.const_data_ptr(), v.const_data_ptr(), o.mutable_data_ptr(),
      with_lse ? lse.mutable_data_ptr<float>() : nullptr, strides_of(q), strides_of(k),
      strides_of(v), strides_of(o), B, num_heads, D, T, H, W, float(scale), stream_of(q));
  TORCH_CHECK(err == cudaSuccess, "lddm::temporal_attention CUDA launch failed: ",
              cudaGetErrorString(err));
  return {o, lse};
}

}  // namespace

at::Tensor temporal_attention_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                   int64_t num_heads, double scale) {
  return std::get<0>(attention_impl(q, k, v, num_heads, scale, false));
}

std::tuple<at::Tensor, at::Tensor> temporal_attention_lse_cuda(const at::Tensor& q,
                                                               const at::Tensor& k,
                                                               const at::Tensor& v,
                                                               int64_t num_heads, double scale) {
  return attention_impl(q, k, v, num_heads, scale, true);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> temporal_attention_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& lse, int64_t num_heads, double scale) {
  const int64_t D = check_operands(q, k, v, num_heads, &grad_out);
  const cuda::DType dtype = cuda_dtype_of(q, "q");
  const int64_t B = q.size(0), T = q.size(2), H = q.size(3), W = q.size(4);
  TORCH_CHECK_VALUE(lse.device() == q.device() && lse.scalar_type() == at::kFloat &&
                        lse.is_contiguous() &&
                        lse.sizes() == at::IntArrayRef({B, num_heads, T, H, W}),
                    "lse must be a contiguous float32 [B, num_heads, T, H, W] = ",
                    at::IntArrayRef({B, num_heads, T, H, W}), " tensor on ", q.device(),
                    ", got ", lse.scalar_type(), " ", lse.sizes(), " on ", lse.device());
  const c10::cuda::CUDAGuard guard(q.device());
  check_shared_memory(q, D, cuda::temporal_attention_backward_smem_per_position(T, D),
                      "backward");
  const at::Tensor go = grad_out.to(q.scalar_type());
  // Each gradient in its input's layout rule (channels_last_3d for channel slices of a
  // channels-last qkv), so autograd's concatenation into the qkv grad reads them in order.
  at::Tensor dq = output_like(q), dk = output_like(k), dv = output_like(v);
  if (q.numel() == 0) return {dq, dk, dv};
  const cudaError_t err = cuda::temporal_attention_backward(
      dtype, go.const_data_ptr(), q.const_data_ptr(), k.const_data_ptr(), v.const_data_ptr(),
      lse.const_data_ptr<float>(), dq.mutable_data_ptr(), dk.mutable_data_ptr(),
      dv.mutable_data_ptr(), strides_of(go), strides_of(q), strides_of(k), strides_of(v),
      strides_of(dq), strides_of(dk), strides_of(dv), B, num_heads, D, T, H, W, float(scale),
      stream_of(q));
  TORCH_CHECK(err == cudaSuccess, "lddm::temporal_attention_backward CUDA launch failed: ",
              cudaGetErrorString(err));
  return {dq, dk, dv};
}

}  // namespace lddm
