// CPU temporal attention backward: dq, dk, dv from the output gradient and the
// forward's logsumexp (temporal_attention_lse), parallel over the B * heads * H * W
// independent positions, reading and writing every tensor through its strides (no
// permute copies; q/k/v are usually channel slices of one qkv tensor).
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

template <typename scalar_t>
void run(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& dout,
         const at::Tensor& lse, at::Tensor& dq, at::Tensor& dk, at::Tensor& dv, int64_t heads,
         float scale) {
  using T = typename cpu::StorageOf<scalar_t>::type;
  const auto& kern = cpu::select_kernels<T>();
  const int64_t B = q.size(0), C = q.size(1), T_len = q.size(2), H = q.size(3), W = q.size(4);
  const auto in = [](const at::Tensor& t) { return cpu::storage(t.const_data_ptr<scalar_t>()); };
  const auto out = [](at::Tensor& t) { return cpu::storage(t.mutable_data_ptr<scalar_t>()); };
  cpu::AttentionGrad<T> args{in(q),
                                   in(k),
                                   in(v),
                                   in(dout),
                                   lse.const_data_ptr<float>(),
                                   out(dq),
                                   out(dk),
                                   out(dv),
                                   cpu::strides_of(q),
                                   cpu::strides_of(k),
                                   cpu::strides_of(v),
                                   cpu::strides_of(dout),
                                   cpu::strides_of(dq),
                                   cpu::strides_of(dk),
                                   cpu::strides_of(dv),
                                   heads,
                                   C / heads,
                                   T_len,
                                   H,
                                   W,
                                   scale,
                                   cpu::heads_inner(cpu::strides_of(q))};
  if (kern.attention_backward_lanes == nullptr) {
    at::parallel_for(0, B * heads * H * W, 16, [&](int64_t begin, int64_t end) {
      std::vector<float> work(cpu::attention_grad_work_floats(T_len, C / heads));
      kern.attention_backward(args, begin, end - begin, work.data());
    });
    return;
  }
  // Channels innermost in every gradient, whole 8-channel blocks per head: one pixel at a
  // time with channels in the lanes, reading rows whole and storing the gradients in place
  // (the lane kernel's 8 x 8 transposing gathers and scatters cost several times its math
  // there).
  const auto unit = [](const cpu::Strides5& s) { return s.c == 1; };
  if (kern.attention_backward_pixels != nullptr && args.heads_inner && args.D % 8 == 0 &&
      unit(args.sdq) && unit(args.sdk) && unit(args.sdv)) {
    const int64_t work_floats = cpu::attention_grad_pixel_work_floats(T_len, C);
    at::parallel_for(0, B * H * W, 8, [&](int64_t begin, int64_t end) {
      std::unique_ptr<float[]> work(new float[work_floats]);
      kern.attention_backward_pixels(args, begin, end - begin, work.get());
    });
    return;
  }
  // The logsumexps are contiguous: their rows always follow.
  cpu::merge_rows({args.sq, args.sk, args.sv, args.sdo, args.sdq, args.sdk, args.sdv}, args.H,
                  args.W);
  const cpu::AttentionGradTasks g =
      cpu::attention_grad_tasks(T_len, args.D, heads, args.heads_inner);
  const int64_t tasks = B * (heads / g.heads) * args.H * ((args.W + g.pixels - 1) / g.pixels);
  const int64_t work_floats =
      cpu::attention_grad_lane_work_floats(T_len, args.D, heads, args.heads_inner);
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    // Not value-initialised: every tile is written before it is read.
    std::unique_ptr<float[]> work(new float[work_floats]);
    kern.attention_backward_lanes(args, begin, end - begin, work.get());
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> temporal_attention_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& lse, int64_t num_heads, double scale) {
  for (const auto& [t, name] : {std::pair{&grad_out, "grad_out"}, std::pair{&q, "q"},
                                std::pair{&k, "k"}, std::pair{&v, "v"}}) {
    LDDM_CHECK_DEVICE(*t, at::kCPU, "grad_out/q/k/v");
    TORCH_CHECK_VALUE(t->dim() == 5, name, " must be 5-D [B, C, T, H, W], got ", t->sizes());
    TORCH_CHECK_VALUE(t->sizes() == q.sizes(), name, " has shape ", t->sizes(), " but q has ",
                      q.sizes());
  }
  for (const auto& [t, name] : {std::pair{&k, "k"}, std::pair{&v, "v"}})
    TORCH_CHECK_VALUE(t->scalar_type() == q.scalar_type(), name, " is ", t->scalar_type(),
                      " but q is ", q.scalar_type());
  TORCH_CHECK_VALUE(q.scalar_type() == at::kFloat || q.scalar_type() == at::kBFloat16,
                    "q must be float32 or bfloat16 for the cpp backend, got ", q.scalar_type());
  const int64_t B = q.size(0), C = q.size(1), T = q.size(2), H = q.size(3), W = q.size(4);
  TORCH_CHECK_VALUE(num_heads > 0 && C % num_heads == 0, "num_heads=", num_heads,
                    " must be a positive divisor of C=", C);
  LDDM_CHECK_DEVICE(lse, at::kCPU, "lse");
  TORCH_CHECK_VALUE(lse.scalar_type() == at::kFloat && lse.is_contiguous() &&
                        lse.sizes() == at::IntArrayRef({B, num_heads, T, H, W}),
                    "lse must be a contiguous float32 [B, num_heads, T, H, W] = ",
                    at::IntArrayRef({B, num_heads, T, H, W}), ", got ", lse.scalar_type(), " ",
                    lse.sizes());
  const at::Tensor dout = grad_out.to(q.scalar_type());
  // Each gradient in its input's layout rule (channels_last_3d for channel slices of a
  // channels-last qkv), so autograd's concatenation into the qkv grad reads them in order.
  const auto grad_like = [&](const at::Tensor& t) {
    at::Tensor g = at::empty(t.sizes(), t.options().memory_format(attention_output_format(t)));
    poison_if_requested(g);
    return g;
  };
  at::Tensor dq = grad_like(q), dk = grad_like(k), dv = grad_like(v);
  if (q.numel() == 0) return {dq, dk, dv};
  if (q.scalar_type() == at::kFloat)
    run<float>(q, k, v, dout, lse, dq, dk, dv, num_heads, float(scale));
  else
    run<c10::BFloat16>(q, k, v, dout, lse, dq, dk, dv, num_heads, float(scale));
  return {dq, dk, dv};
}

}  // namespace lddm
