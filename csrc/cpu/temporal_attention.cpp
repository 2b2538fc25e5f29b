// CPU temporal attention over strided [B, C, T, H, W] q/k/v: parallel over the
// B * heads * H * W independent positions; no permute copies of the inputs.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdlib>
#include <tuple>
#include <vector>

#include "checks.h"
#include "cpu/attention_strides.h"
#include "cpu/dispatch.h"
#include "layout.h"
#include "ops.h"

namespace lddm {
namespace {

using cpu::heads_inner;
using cpu::strides_of;

// lse: null, or the float [B, heads, T, H, W] logsumexp output.
template <typename scalar_t>
void run(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& o,
         float* lse, int64_t heads, float scale) {
  using T = typename cpu::StorageOf<scalar_t>::type;
  const auto& kern = cpu::select_kernels<T>();
  const int64_t B = q.size(0), C = q.size(1), T_len = q.size(2), H = q.size(3), W = q.size(4);
  const int64_t D = C / heads;
  const auto sq = strides_of(q), sk = strides_of(k), sv = strides_of(v), so = strides_of(o);
  const T* qp = cpu::storage(q.const_data_ptr<scalar_t>());
  const T* kp = cpu::storage(k.const_data_ptr<scalar_t>());
  const T* vp = cpu::storage(v.const_data_ptr<scalar_t>());
  T* op = cpu::storage(o.mutable_data_ptr<scalar_t>());
  if (sq.c == 1 && sk.c == 1 && sv.c == 1 && so.c == 1) {
    at::parallel_for(0, B * H * W, 4, [&](int64_t begin, int64_t end) {
      std::vector<float> work(cpu::attention_pixel_work_floats(T_len, C, D));
      kern.attention_pixels(qp, kp, vp, op, lse, sq, sk, sv, so, heads, D, T_len, H, W, begin,
                            end - begin, scale, work.data());
    });
    return;
  }
  const int64_t positions = B * heads * H * W;
  const bool inner = heads_inner(sq);
  at::parallel_for(0, positions, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> work(cpu::attention_work_floats(T_len, D));
    kern.attention(qp, kp, vp, op, lse, sq, sk, sv, so, heads, D, T_len, H, W, begin,
                   end - begin, scale, inner, work.data());
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

at::Tensor attention_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             int64_t num_heads, double scale, float* lse) {
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
  return attention_forward(q, k, v, num_heads, scale, nullptr);
}

std::tuple<at::Tensor, at::Tensor> temporal_attention_lse_cpu(const at::Tensor& q,
                                                              const at::Tensor& k,
                                                              const at::Tensor& v,
                                                              int64_t num_heads, double scale) {
  check_attention_args(q, k, v, num_heads);
  const int64_t B = q.size(0), T = q.size(2), H = q.size(3), W = q.size(4);
  at::Tensor lse = at::empty({B, num_heads, T, H, W}, q.options().dtype(at::kFloat));
  poison_if_requested(lse);
  at::Tensor o = attention_forward(q, k, v, num_heads, scale, lse.mutable_data_ptr<float>());
  return {o, lse};
}

}  // namespace lddm
