// Torch-side argument handling shared by the CPU and CUDA group_norm launchers; each
// launcher adds its own device-type and dtype checks.
#pragma once

#include <optional>
#include <utility>

#include <ATen/ATen.h>

#include "layout.h"

namespace lddm {

// x is 4-D [N, C, H, W] or 5-D [N, C, T, H, W]; num_groups divides C; weight, bias
// [C] and scale, shift [N, C] are floating-point tensors on x's device.
inline void check_group_norm_args(const at::Tensor& x, int64_t num_groups,
                                  const std::optional<at::Tensor>& weight,
                                  const std::optional<at::Tensor>& bias,
                                  const std::optional<at::Tensor>& scale,
                                  const std::optional<at::Tensor>& shift) {
  TORCH_CHECK_VALUE(x.dim() == 4 || x.dim() == 5,
                    "x must be 4-D [N, C, H, W] or 5-D [N, C, T, H, W], got ", x.sizes());
  const int64_t N = x.size(0), C = x.size(1);
  TORCH_CHECK_VALUE(num_groups > 0 && C % num_groups == 0, "num_groups=", num_groups,
                    " must be a positive divisor of C=", C);
  for (const auto& [t, name] : {std::pair{&weight, "weight"}, std::pair{&bias, "bias"},
                                std::pair{&scale, "scale"}, std::pair{&shift, "shift"}}) {
    if (!t->has_value()) continue;
    const at::Tensor& p = **t;
    TORCH_CHECK_VALUE(p.device() == x.device(), name, " is on ", p.device(), " but x is on ",
                      x.device());
    TORCH_CHECK_VALUE(at::isFloatingType(p.scalar_type()), name,
                      " must be a floating-point tensor, got ", p.scalar_type());
    const bool per_sample = t == &scale || t == &shift;
    const auto expected = per_sample ? std::vector<int64_t>{N, C} : std::vector<int64_t>{C};
    TORCH_CHECK_VALUE(p.sizes() == at::IntArrayRef(expected), name, " must have shape ",
                      at::IntArrayRef(expected), ", got ", p.sizes());
  }
}

// The input a group_norm kernel reads and the output it writes (output_format):
// channels-last (NSC) x as it is; any other strides get one contiguous copy (NCS).
struct GroupNormIO {
  at::Tensor x;
  at::Tensor y;  // empty, in x's layout
  bool nsc;
};

inline GroupNormIO group_norm_io(const at::Tensor& x_in) {
  const at::MemoryFormat fmt = output_format(x_in);
  const bool nsc = fmt != at::MemoryFormat::Contiguous;
  at::Tensor x = nsc ? x_in : x_in.contiguous();
  at::Tensor y = at::empty_like(x, fmt);
  return {std::move(x), std::move(y), nsc};
}

// An optional weight / bias / FiLM tensor as contiguous float32 (the kernels' format).
inline std::optional<at::Tensor> as_float32(const std::optional<at::Tensor>& t) {
  if (!t.has_value()) return std::nullopt;
  return t->to(at::kFloat).contiguous();
}

}  // namespace lddm
