// CPU sampler_step: x_next = a*x + b*eps (+ c*noise) with per-sample coefficients.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "checks.h"
#include "cpu/dispatch.h"
#include "layout.h"
#include "ops.h"

namespace lddm {
namespace {

constexpr int64_t kBlock = 1 << 14;  // values per task

template <typename scalar_t>
void run(const at::Tensor& x, const at::Tensor& eps, const at::Tensor* noise, at::Tensor& out,
         const float* a, const float* b, const float* c) {
  using T = typename cpu::StorageOf<scalar_t>::type;
  const auto& k = cpu::select_kernels<T>();
  const int64_t B = x.size(0), per = x.numel() / B, blocks = (per + kBlock - 1) / kBlock;
  const T* xp = cpu::storage(x.const_data_ptr<scalar_t>());
  const T* ep = cpu::storage(eps.const_data_ptr<scalar_t>());
  const T* np = noise ? cpu::storage(noise->const_data_ptr<scalar_t>()) : nullptr;
  T* op = cpu::storage(out.mutable_data_ptr<scalar_t>());
  at::parallel_for(0, B * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t i = item / blocks, off = i * per + (item % blocks) * kBlock;
      const int64_t n = std::min(kBlock, (i + 1) * per - off);
      k.sampler_step(xp + off, ep + off, np ? np + off : nullptr, op + off, n, a[i], b[i],
                     c ? c[i] : 0.0f);
    }
  });
}

}  // namespace

at::Tensor sampler_step_cpu(const at::Tensor& x_in, const at::Tensor& eps_in,
                            const at::Tensor& a_in, const at::Tensor& b_in,
                            const std::optional<at::Tensor>& noise_in,
                            const std::optional<at::Tensor>& c_in) {
  LDDM_CHECK_DEVICE(x_in, at::kCPU, "x");
  TORCH_CHECK_VALUE(x_in.dim() >= 1, "x must have a batch dimension [B, ...]");
  TORCH_CHECK_VALUE(x_in.scalar_type() == at::kFloat || x_in.scalar_type() == at::kBFloat16,
                    "x must be float32 or bfloat16 for the cpp backend, got ",
                    x_in.scalar_type());
  TORCH_CHECK_VALUE(eps_in.sizes() == x_in.sizes() && eps_in.scalar_type() == x_in.scalar_type(),
                    "eps must match x in shape and dtype");
  TORCH_CHECK_VALUE(noise_in.has_value() == c_in.has_value(),
                    "noise and c must be given together");
  const int64_t B = x_in.size(0);
  LDDM_CHECK_DEVICE(eps_in, at::kCPU, "eps");
  for (const auto& [t, name] : {std::pair{&a_in, "a"}, std::pair{&b_in, "b"}}) {
    LDDM_CHECK_DEVICE(*t, at::kCPU, "a/b");
    TORCH_CHECK_VALUE(t->sizes() == at::IntArrayRef({B}), name, " must have shape [", B,
                      "], got ", t->sizes());
  }
  // The kernel walks one flat [B, per_sample] buffer; a dense channels_last x is flat
  // too, so keep its format and give eps/noise the same one.
  const auto fmt = output_format(x_in);
  const at::Tensor x = x_in.contiguous(fmt), eps = eps_in.contiguous(fmt);
  std::optional<at::Tensor> noise;
  if (noise_in.has_value()) {
    TORCH_CHECK_VALUE(
        noise_in->sizes() == x_in.sizes() && noise_in->scalar_type() == x_in.scalar_type(),
        "noise must match x in shape and dtype");
    LDDM_CHECK_DEVICE(*noise_in, at::kCPU, "noise");
    LDDM_CHECK_DEVICE(*c_in, at::kCPU, "c");
    TORCH_CHECK_VALUE(c_in->sizes() == at::IntArrayRef({B}), "c must have shape [", B,
                      "], got ", c_in->sizes());
    noise = noise_in->contiguous(fmt);
  }
  const at::Tensor a = a_in.to(at::kFloat).contiguous(), b = b_in.to(at::kFloat).contiguous();
  const std::optional<at::Tensor> c =
      c_in.has_value() ? std::optional<at::Tensor>(c_in->to(at::kFloat).contiguous()) : std::nullopt;
  at::Tensor out = at::empty_like(x, fmt);
  poison_if_requested(out);
  if (out.numel() == 0) return out;
  const float* cp = c ? c->const_data_ptr<float>() : nullptr;
  const at::Tensor* np = noise ? &*noise : nullptr;
  if (x.scalar_type() == at::kFloat)
    run<float>(x, eps, np, out, a.const_data_ptr<float>(), b.const_data_ptr<float>(), cp);
  else
    run<c10::BFloat16>(x, eps, np, out, a.const_data_ptr<float>(), b.const_data_ptr<float>(), cp);
  return out;
}

}  // namespace lddm
