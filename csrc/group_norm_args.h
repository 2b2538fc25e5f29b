// Torch-side argument handling shared by the CPU and CUDA group_norm launchers; each
// launcher adds its own device-type and dtype checks.
#pragma once

#include <algorithm>
#include <optional>
#include <tuple>
#include <utility>
#include <vector>

#include <ATen/ATen.h>

#include "layout.h"

namespace lddm {

// Whether a scale/shift tensor is a spatial modulation (x's dims, each 1 or x's size,
// e.g. [N, C, 1, H, W]) rather than per-sample FiLM [N, C].
inline bool is_spatial_modulation(const at::Tensor& x, const at::Tensor& t) {
  if (t.dim() != x.dim()) return false;
  for (int64_t d = 0; d < x.dim(); ++d)
    if (t.size(d) != 1 && t.size(d) != x.size(d)) return false;
  return true;
}

// x is 4-D [N, C, H, W] or 5-D [N, C, T, H, W]; num_groups divides C; weight, bias
// [C] and scale, shift ([N, C] FiLM, or spatial: x's dims, broadcastable to x) are
// floating-point tensors on x's device.
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
    if (per_sample && is_spatial_modulation(x, p)) continue;
    const auto expected = per_sample ? std::vector<int64_t>{N, C} : std::vector<int64_t>{C};
    TORCH_CHECK_VALUE(p.sizes() == at::IntArrayRef(expected), name, " must have shape ",
                      at::IntArrayRef(expected), per_sample ? " or be broadcastable to x" : "",
                      ", got ", p.sizes());
  }
}

// Whether either of scale/shift is a spatial modulation (see is_spatial_modulation).
inline bool has_spatial_modulation(const at::Tensor& x, const std::optional<at::Tensor>& scale,
                                   const std::optional<at::Tensor>& shift) {
  return (scale && is_spatial_modulation(x, *scale)) || (shift && is_spatial_modulation(x, *shift));
}

// Positions of one period of a spatial modulation: H * W when every spatial scale/shift
// is broadcast over T (x 5-D, T dim of size 1: the SPADE case), else all of x's
// positions S. The modulation at position p (flat over T, H, W) is entry p % period.
inline int64_t modulation_period(const at::Tensor& x, const std::optional<at::Tensor>& scale,
                                 const std::optional<at::Tensor>& shift) {
  const int64_t S = x.numel() / std::max<int64_t>(x.size(0) * x.size(1), 1);
  if (x.dim() != 5) return S;
  for (const auto* t : {&scale, &shift})
    if (*t && (*t)->dim() == 5 && (*t)->size(2) != 1) return S;
  return x.size(3) * x.size(4);
}

// A scale/shift (FiLM or spatial) as a dense float32 [N, period, C] (nsc: channels
// innermost, as x's channels-last rows) or [N, C, period] (x contiguous), broadcast
// values materialised: one period of the modulation per sample, in x's inner order.
inline at::Tensor spatial_modulation(const at::Tensor& x, const at::Tensor& t, int64_t period,
                                     bool nsc) {
  const int64_t N = x.size(0), C = x.size(1);
  std::vector<int64_t> shape(x.dim(), 1);
  at::Tensor m = t.to(at::kFloat);
  if (m.dim() == 2) {  // FiLM next to a spatial partner: constant over positions
    shape[0] = N;
    shape[1] = C;
    m = m.view(shape);
  }
  m = m.expand(x.sizes());
  const int64_t S = x.numel() / std::max<int64_t>(N * C, 1);
  if (period != S) m = m.select(2, 0);  // [N, C, H, W]: broadcast over T
  m = m.reshape({N, C, period});
  return (nsc ? m.transpose(1, 2) : m).contiguous();
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

// An optional float32 tensor's data, or null.
inline const float* float_ptr(const std::optional<at::Tensor>& t) {
  return t ? t->const_data_ptr<float>() : nullptr;
}

// weight, bias and the modulation as the group_norm kernels (CPU forward, CUDA forward
// and backward) take them, float32 and contiguous: a FiLM scale / shift as [N, C] (sc,
// sh); a spatial one (or both, when either is spatial) as one period in x's inner order
// (sc_sp, sh_sp; see spatial_modulation), sc and sh then empty. nsc: x is channels-last.
struct GroupNormParams {
  std::optional<at::Tensor> w, b, sc, sh, sc_sp, sh_sp;
  int64_t period = 0;

  GroupNormParams(const at::Tensor& x, bool nsc, const std::optional<at::Tensor>& weight,
                  const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& scale,
                  const std::optional<at::Tensor>& shift)
      : w(as_float32(weight)), b(as_float32(bias)) {
    if (!has_spatial_modulation(x, scale, shift)) {
      sc = as_float32(scale);
      sh = as_float32(shift);
      return;
    }
    period = modulation_period(x, scale, shift);
    if (scale) sc_sp = spatial_modulation(x, *scale, period, nsc);
    if (shift) sh_sp = spatial_modulation(x, *shift, period, nsc);
  }
};

// The checks both backward launchers make beyond check_group_norm_args: grad_y has x's
// shape and device, and stats (if given) is group_norm_stats' [N, G, 2] float64 on x's
// device.
inline void check_group_norm_backward_args(const at::Tensor& grad_y, const at::Tensor& x,
                                           int64_t num_groups,
                                           const std::optional<at::Tensor>& stats) {
  TORCH_CHECK_VALUE(grad_y.device() == x.device(), "grad_y is on ", grad_y.device(),
                    " but x is on ", x.device());
  TORCH_CHECK_VALUE(grad_y.sizes() == x.sizes(), "grad_y has shape ", grad_y.sizes(),
                    " but x has ", x.sizes());
  if (!stats) return;
  const int64_t N = x.size(0);
  TORCH_CHECK_VALUE(stats->device() == x.device() && stats->scalar_type() == at::kDouble &&
                        stats->sizes() == at::IntArrayRef({N, num_groups, 2}),
                    "stats must be group_norm_stats' float64 [N, G, 2] = [", N, ", ",
                    num_groups, ", 2] tensor on ", x.device(), ", got ", stats->scalar_type(),
                    " ", stats->sizes(), " on ", stats->device());
}

// The gradient of a scale/shift argument, as the backward kernels return it: from the
// per-(n, c) sums (FiLM, or the argument absent: then [N, C] float32, unused) or summed
// over the broadcast dims of the per-element gradient (spatial).
inline at::Tensor modulation_grad(const std::optional<at::Tensor>& t, const at::Tensor& x,
                                  const at::Tensor& from_sums, const at::Tensor& per_element) {
  if (!t) return from_sums;
  if (is_spatial_modulation(x, *t) && t->dim() != 2)
    return per_element.sum_to_size(t->sizes()).to(t->scalar_type()).contiguous();
  return from_sums.to(t->scalar_type());
}

// group_norm_backward's result from the kernels' float32 grads: gx, then weight and
// bias grads [C] in their arguments' dtypes (float32 for an absent one), then scale and
// shift grads (modulation_grad: film_* [N, C] sums, or the per-element *_el summed to a
// spatial argument's shape).
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> group_norm_grads(
    const at::Tensor& gx, const at::Tensor& x, const at::Tensor& gw, const at::Tensor& gb,
    const at::Tensor& film_gs, const at::Tensor& film_gh, const at::Tensor& gs_el,
    const at::Tensor& gh_el, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& scale,
    const std::optional<at::Tensor>& shift) {
  return {gx, gw.to(weight ? weight->scalar_type() : at::kFloat),
          gb.to(bias ? bias->scalar_type() : at::kFloat),
          modulation_grad(scale, x, film_gs, gs_el), modulation_grad(shift, x, film_gh, gh_el)};
}

}  // namespace lddm
