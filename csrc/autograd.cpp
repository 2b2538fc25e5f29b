// Backward formulas of the differentiable lddm:: ops (bindings.cpp registers them for the
// Autograd key). Written in C++ rather than with torch.library.register_autograd because
// a Python autograd wrapper costs 40-60 us per training call, a third of a whole
// forward+backward of a [2, 128, 16, 8, 8] GroupNorm (benchmarks/RESULTS.md). Each
// function calls its op below autograd and saves what the backward op takes; the
// backward ops have no derivative (bindings.cpp gives them autograd's not-implemented
// kernel, so a double backward raises).
#include <torch/autograd.h>

#include "ops.h"

namespace lddm {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::Function;
using torch::autograd::variable_list;

at::Tensor value_or_undefined(const std::optional<at::Tensor>& t) {
  return t.has_value() ? *t : at::Tensor();
}

std::optional<at::Tensor> as_optional(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

// A gradient for an argument that was given (a tensor), none for an absent one.
at::Tensor grad_if_given(const at::Tensor& saved, const at::Tensor& grad) {
  return saved.defined() ? grad : at::Tensor();
}

// with_stats: the group_norm_stats form, whose second output (the group statistics,
// float64 [N, G, 2]) is not differentiable and spares the backward a read of x.
struct GroupNormFunction : public Function<GroupNormFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, int64_t num_groups,
                               const std::optional<at::Tensor>& weight,
                               const std::optional<at::Tensor>& bias, double eps,
                               const std::optional<at::Tensor>& scale,
                               const std::optional<at::Tensor>& shift, bool silu,
                               bool with_stats) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    at::Tensor y, stats;
    if (with_stats) {
      static auto op = c10::Dispatcher::singleton()
                           .findSchemaOrThrow("lddm::group_norm_stats", "")
                           .typed<decltype(group_norm_stats_cpu)>();
      std::tie(y, stats) = op.call(x, num_groups, weight, bias, eps, scale, shift, silu);
    } else {
      static auto op = c10::Dispatcher::singleton()
                           .findSchemaOrThrow("lddm::group_norm", "")
                           .typed<decltype(group_norm_cpu)>();
      y = op.call(x, num_groups, weight, bias, eps, scale, shift, silu);
    }
    ctx->save_for_backward({x, value_or_undefined(weight), value_or_undefined(bias),
                            value_or_undefined(scale), value_or_undefined(shift), stats});
    ctx->saved_data["num_groups"] = num_groups;
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["silu"] = silu;
    if (!with_stats) return {y};
    ctx->mark_non_differentiable({stats});
    // The statistics get no gradient: autograd would otherwise pass zeros for them.
    ctx->set_materialize_grads(false);
    return {y, stats};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("lddm::group_norm_backward", "")
                         .typed<decltype(group_norm_backward_cpu)>();
    // No gradient reached y (grads are not materialized): none for the inputs.
    if (!grads[0].defined()) return variable_list(9);
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &weight = saved[1], &bias = saved[2], &scale = saved[3],
                     &shift = saved[4], &stats = saved[5];
    auto [gx, gw, gb, gs, gh] =
        op.call(grads[0], x, ctx->saved_data["num_groups"].toInt(), as_optional(weight),
                as_optional(bias), ctx->saved_data["eps"].toDouble(), as_optional(scale),
                as_optional(shift), ctx->saved_data["silu"].toBool(), as_optional(stats));
    // One entry per forward argument: x, num_groups, weight, bias, eps, scale, shift, silu,
    // with_stats.
    return {gx,
            at::Tensor(),
            grad_if_given(weight, gw),
            grad_if_given(bias, gb),
            at::Tensor(),
            grad_if_given(scale, gs),
            grad_if_given(shift, gh),
            at::Tensor(),
            at::Tensor()};
  }
};

}  // namespace

at::Tensor group_norm_autograd(const at::Tensor& x, int64_t num_groups,
                               const std::optional<at::Tensor>& weight,
                               const std::optional<at::Tensor>& bias, double eps,
                               const std::optional<at::Tensor>& scale,
                               const std::optional<at::Tensor>& shift, bool silu) {
  return GroupNormFunction::apply(x, num_groups, weight, bias, eps, scale, shift, silu, false)[0];
}

std::tuple<at::Tensor, at::Tensor> group_norm_stats_autograd(
    const at::Tensor& x, int64_t num_groups, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, double eps, const std::optional<at::Tensor>& scale,
    const std::optional<at::Tensor>& shift, bool silu) {
  auto out = GroupNormFunction::apply(x, num_groups, weight, bias, eps, scale, shift, silu, true);
  return {out[0], out[1]};
}

namespace {

// FlashAttention-style: the forward saves the logsumexp [B, heads, T, H, W] (not the
// attention matrix); the backward recomputes the probabilities from it.
struct TemporalAttentionFunction : public Function<TemporalAttentionFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k,
                               const at::Tensor& v, int64_t num_heads, double scale) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("lddm::temporal_attention_lse", "")
                         .typed<decltype(temporal_attention_lse_cpu)>();
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [out, lse] = op.call(q, k, v, num_heads, scale);
    ctx->save_for_backward({q, k, v, lse});
    ctx->saved_data["num_heads"] = num_heads;
    ctx->saved_data["scale"] = scale;
    ctx->mark_non_differentiable({lse});
    ctx->set_materialize_grads(false);  // the logsumexps get no gradient, not zeros
    return {out, lse};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("lddm::temporal_attention_backward", "")
                         .typed<decltype(temporal_attention_backward_cpu)>();
    if (!grads[0].defined()) return variable_list(5);  // as GroupNormFunction's
    const auto saved = ctx->get_saved_variables();
    auto [dq, dk, dv] =
        op.call(grads[0], saved[0], saved[1], saved[2], saved[3],
                ctx->saved_data["num_heads"].toInt(), ctx->saved_data["scale"].toDouble());
    return {dq, dk, dv, at::Tensor(), at::Tensor()};
  }
};

}  // namespace

std::tuple<at::Tensor, at::Tensor> temporal_attention_lse_autograd(const at::Tensor& q,
                                                                   const at::Tensor& k,
                                                                   const at::Tensor& v,
                                                                   int64_t num_heads,
                                                                   double scale) {
  auto out = TemporalAttentionFunction::apply(q, k, v, num_heads, scale);
  return {out[0], out[1]};
}

}  // namespace lddm
