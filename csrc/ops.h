// Declarations of every op implementation registered in bindings.cpp.
#pragma once

#include <optional>
#include <tuple>

#include <ATen/core/Tensor.h>

namespace lddm {

// x: [N, C, *spatial] (4-D or 5-D), contiguous or channels_last(_3d); weight, bias: [C];
// scale, shift: [N, C] (FiLM) or x's dims broadcastable to x (spatial, e.g. SPADE's
// [N, C, 1, H, W]). Returns act((xhat * weight + bias) * (1 + scale) + shift) in x's dtype
// and memory format.
at::Tensor group_norm_cpu(const at::Tensor& x, int64_t num_groups,
                          const std::optional<at::Tensor>& weight,
                          const std::optional<at::Tensor>& bias, double eps,
                          const std::optional<at::Tensor>& scale,
                          const std::optional<at::Tensor>& shift, bool silu);

// group_norm_cpu for a training call: also returns each group's mean and 1 / std as
// float64 [N, G, 2], which the backward takes instead of re-reading x for them.
std::tuple<at::Tensor, at::Tensor> group_norm_stats_cpu(
    const at::Tensor& x, int64_t num_groups, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, double eps, const std::optional<at::Tensor>& scale,
    const std::optional<at::Tensor>& shift, bool silu);

// Backward of group_norm_cpu for the same arguments and grad_y (x's shape): returns
// (grad_x in x's memory format, grad_weight [C], grad_bias [C], grad_scale, grad_shift),
// each parameter grad in that argument's shape and dtype; an absent weight or bias gets
// a float32 [C] grad, an absent scale or shift a float32 [N, C] one (unused). stats:
// group_norm_stats' second output, or None to recompute the statistics from x.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> group_norm_backward_cpu(
    const at::Tensor& grad_y, const at::Tensor& x, int64_t num_groups,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, double eps,
    const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& shift, bool silu,
    const std::optional<at::Tensor>& stats);

// q, k, v: [B, C, T, H, W], any strides, C = num_heads * head_dim. Softmax attention over
// T at every (b, head, y, x); returns [B, C, T, H, W] (channels_last_3d when q.stride(1)
// is 1, else contiguous).
at::Tensor temporal_attention_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  int64_t num_heads, double scale);

// temporal_attention_cpu that also returns each query's logsumexp over the keys,
// log sum_j exp(scale q.k_j): float32 [B, num_heads, T, H, W] contiguous (the backward's
// saved state, FlashAttention-style).
std::tuple<at::Tensor, at::Tensor> temporal_attention_lse_cpu(const at::Tensor& q,
                                                              const at::Tensor& k,
                                                              const at::Tensor& v,
                                                              int64_t num_heads, double scale);

// Backward of temporal_attention_lse_cpu: grad_out any strides (q's shape), lse from
// the forward (the probabilities are recomputed from it). Returns (dq, dk, dv), each in its input's output-format rule
// (channels_last_3d when its channel stride is 1, else contiguous).
std::tuple<at::Tensor, at::Tensor, at::Tensor> temporal_attention_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& lse, int64_t num_heads, double scale);

// x, eps, noise: [B, ...]; a, b, c: [B] float32. Returns a*x + b*eps (+ c*noise).
at::Tensor sampler_step_cpu(const at::Tensor& x, const at::Tensor& eps, const at::Tensor& a,
                            const at::Tensor& b, const std::optional<at::Tensor>& noise,
                            const std::optional<at::Tensor>& c);

// Autograd kernels (csrc/autograd.cpp) of group_norm, group_norm_stats and
// temporal_attention_lse: same arguments and outputs; each runs the op below autograd and
// records its backward op (group_norm_backward, temporal_attention_backward) on the graph.
at::Tensor group_norm_autograd(const at::Tensor& x, int64_t num_groups,
                               const std::optional<at::Tensor>& weight,
                               const std::optional<at::Tensor>& bias, double eps,
                               const std::optional<at::Tensor>& scale,
                               const std::optional<at::Tensor>& shift, bool silu);
std::tuple<at::Tensor, at::Tensor> group_norm_stats_autograd(
    const at::Tensor& x, int64_t num_groups, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, double eps, const std::optional<at::Tensor>& scale,
    const std::optional<at::Tensor>& shift, bool silu);
std::tuple<at::Tensor, at::Tensor> temporal_attention_lse_autograd(const at::Tensor& q,
                                                                   const at::Tensor& k,
                                                                   const at::Tensor& v,
                                                                   int64_t num_heads,
                                                                   double scale);

#ifdef LDDM_WITH_CUDA
// CUDA versions of the ops above: same arguments, semantics and output layouts; float16
// is accepted as well.
at::Tensor group_norm_cuda(const at::Tensor& x, int64_t num_groups,
                           const std::optional<at::Tensor>& weight,
                           const std::optional<at::Tensor>& bias, double eps,
                           const std::optional<at::Tensor>& scale,
                           const std::optional<at::Tensor>& shift, bool silu);

std::tuple<at::Tensor, at::Tensor> group_norm_stats_cuda(
    const at::Tensor& x, int64_t num_groups, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, double eps, const std::optional<at::Tensor>& scale,
    const std::optional<at::Tensor>& shift, bool silu);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> group_norm_backward_cuda(
    const at::Tensor& grad_y, const at::Tensor& x, int64_t num_groups,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, double eps,
    const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& shift, bool silu,
    const std::optional<at::Tensor>& stats);

at::Tensor temporal_attention_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                   int64_t num_heads, double scale);

std::tuple<at::Tensor, at::Tensor> temporal_attention_lse_cuda(const at::Tensor& q,
                                                               const at::Tensor& k,
                                                               const at::Tensor& v,
                                                               int64_t num_heads, double scale);

std::tuple<at::Tensor, at::Tensor, at::Tensor> temporal_attention_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& lse, int64_t num_heads, double scale);

at::Tensor sampler_step_cuda(const at::Tensor& x, const at::Tensor& eps, const at::Tensor& a,
                             const at::Tensor& b, const std::optional<at::Tensor>& noise,
                             const std::optional<at::Tensor>& c);
#endif

}  // namespace lddm
