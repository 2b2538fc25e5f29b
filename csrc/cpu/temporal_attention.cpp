// CPU temporal attention over strided [B, C, T, H, W] q/k/v, parallel over independent
// pixels (channels innermost) or chunks of one head's pixels (any other layout); no
// permute copies of the inputs.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <memory>
#include <tuple>
#include <vector>

#include "checks.h"
#include "cpu/attention_strides.h"
#include "cpu/dispatch.h"
#include "layout.h"
#include "ops.h"

namespace lddm {
namespace {

using cpu::strides_of;

// lse: undefined, or the float [B, heads, T, H, W] logsumexp output.
template <typename scalar_t>
void run(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& o,
         const at::Tensor& lse, int64_t heads, float scale) {
  using T = typename cpu::StorageOf<scalar_t>::type;
  const auto& kern = cpu::select_kernels<T>();
  const bool channels_inner =
      q.stride(1) == 1 && k.stride(1) == 1 && v.stride(1) == 1 && o.stride(1) == 1;
  const int64_t B = q.size(0), C = q.size(1), T_len = q.size(2), H = q.size(3), W = q.size(4);
  const int64_t D = C / heads;
  cpu::AttentionArgs<T> a{cpu::storage(q.const_data_ptr<scalar_t>()),
                          cpu::storage(k.const_data_ptr<scalar_t>()),
                          cpu::storage(v.const_data_ptr<scalar_t>()),
                          cpu::storage(o.mutable_data_ptr<scalar_t>()),
                          lse.defined() ? lse.mutable_data_ptr<float>() : nullptr,
                          strides_of(q),
                          strides_of(k),
                          strides_of(v),
                          strides_of(o),
                          lse.defined() ? strides_of(lse) : cpu::Strides5{},
                          heads,
                          D,
                          T_len,
                          H,
                          W,
                          scale};
  if (channels_inner) {
    at::parallel_for(0, B * H * W, 4, [&](int64_t begin, int64_t end) {
      std::vector<float> work(cpu::attention_pixel_work_floats(T_len, C, D));
      kern.attention_pixels(a, begin, end - begin, work.data());
    });
    return;
  }
  if (lse.defined())
    cpu::merge_rows({a.sq, a.sk, a.sv, a.so, a.sl}, a.H, a.W);
  else
    cpu::merge_rows({a.sq, a.sk, a.sv, a.so}, a.H, a.W);
  const int64_t chunk = cpu::attention_lane_chunk(T_len, D);
  const int64_t chunks = B * heads * a.H * ((a.W + chunk - 1) / chunk);
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    // Not value-initialised: every tile is written before it is read, and zeroing up to
    // 1 MiB per call would be wasted.
    std::unique_ptr<float[]> work(new float[cpu::attention_lane_work_floats(T_len, D)]);
    kern.attention_lanes(a, begin, end - begin, work.get());
  });
}

// Argument checks shared by the forward ops: q, k, v CPU [B, C, T, H, W] of one dtype
// (float32 or bfloat16), num_heads a divisor of C.
void check_attention_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                          int64_t num_heads) {
  for (const auto& [t, name] : {std::pair{&q, "q"}, std::pair{&k, "k"}, std::pair{&v, "v"}}) {
    LDDM_CHECK_DEVICE(*t, at::kCPU, "q/k/v");
    TORCH_CHECK_VALUE(t->dim() == 5, name, " must be 5-D [B, C, T, H, W], got ", t->sizes());
    TORCH_CHECK_VALUE(t->sizes() == q.sizes(), name, " has shape ", t->sizes(),
                      " but q has ", q.sizes());
    TORCH_CHECK_VALUE(t->scalar_type() == q.scalar_type(), name, " is ", t->scalar_type(),
                      " but q is ", q.scalar_type());
  }
  TORCH_CHECK_VALUE(q.scalar_type() == at::kFloat || q.scalar_type() == at::kBFloat16,
                    "q must be float32 or bfloat16 for the cpp backend, got ", q.scalar_type());
  const int64_t C = q.size(1);
  TORCH_CHECK_VALUE(num_heads > 0 && C % num_heads == 0, "num_heads=", num_heads,
                    " must be a positive divisor of C=", C);
}

// lse: undefined, or the logsumexp output (see run).
at::Tensor attention_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             int64_t num_heads, double scale, const at::Tensor& lse) {
  at::Tensor o = at::empty(q.sizes(), q.options().memory_format(attention_output_format(q)));
  poison_if_requested(o);
  if (o.numel() == 0) return o;
  if (q.scalar_type() == at::kFloat)
    run<float>(q, k, v, o, lse, num_heads, float(scale));
  else
    run<c10::BFloat16>(q, k, v, o, lse, num_heads, float(scale));
  return o;
}

}  // namespace

at::Tensor temporal_attention_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  int64_t num_heads, double scale) {
  check_attention_args(q, k, v, num_heads);
  return attention_forward(q, k, v, num_heads, scale, at::Tensor());
}

std::tuple<at::Tensor, at::Tensor> temporal_attention_lse_cpu(const at::Tensor& q,
                                                              const at::Tensor& k,
                                                              const at::Tensor& v,
                                                              int64_t num_heads, double scale) {
  check_attention_args(q, k, v, num_heads);
  const int64_t B = q.size(0), T = q.size(2), H = q.size(3), W = q.size(4);
  at::Tensor lse = at::empty({B, num_heads, T, H, W}, q.options().dtype(at::kFloat));
  poison_if_requested(lse);
  at::Tensor o = attention_forward(q, k, v, num_heads, scale, lse);
  return {o, lse};
}

}  // namespace lddm
