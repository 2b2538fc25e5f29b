"""Loads the compiled extension ``lddm_fast._C`` at import and remembers why it failed.

Importing ``_C`` registers the ``torch.ops.lddm.*`` custom ops (static
``TORCH_LIBRARY`` initialisers in csrc/bindings.cpp). The package works without it:
only the ``cpp`` and ``cuda`` backends need it. Status is computed once, here, so the
dispatcher reads plain module globals (cheap, and traceable by torch.compile).
"""

from __future__ import annotations

from types import ModuleType

import torch  # libtorch must be loaded before the extension


def _register_fakes() -> None:
    """Fake (meta) implementations of the ``lddm::`` ops: output shape, dtype and
    layout without running a kernel, so torch.compile and CUDA-graph capture can trace
    them. csrc/bindings.cpp names this module as the ops' Python home."""
    from lddm_fast.layout import attention_output_format, memory_format_of

    @torch.library.register_fake("lddm::group_norm")
    def _group_norm(x, num_groups, weight, bias, eps, scale, shift, silu):
        return torch.empty_like(x, memory_format=memory_format_of(x))

    def attention_like(t):
        return torch.empty(t.shape, dtype=t.dtype, device=t.device).contiguous(
            memory_format=attention_output_format(t)
        )

    @torch.library.register_fake("lddm::temporal_attention")
    def _temporal_attention(q, k, v, num_heads, scale):
        return attention_like(q)

    @torch.library.register_fake("lddm::temporal_attention_lse")
    def _temporal_attention_lse(q, k, v, num_heads, scale):
        b, _, t, h, w = q.shape
        return attention_like(q), q.new_empty((b, num_heads, t, h, w), dtype=torch.float32)

    @torch.library.register_fake("lddm::temporal_attention_backward")
    def _temporal_attention_backward(grad_out, q, k, v, lse, num_heads, scale):
        return attention_like(q), attention_like(k), attention_like(v)

    @torch.library.register_fake("lddm::sampler_step")
    def _sampler_step(x, eps, a, b, noise, c):
        return torch.empty_like(x, memory_format=memory_format_of(x))

    @torch.library.register_fake("lddm::group_norm_stats")
    def _group_norm_stats(x, num_groups, weight, bias, eps, scale, shift, silu):
        stats = x.new_empty((x.shape[0], num_groups, 2), dtype=torch.float64)
        return torch.empty_like(x, memory_format=memory_format_of(x)), stats

    @torch.library.register_fake("lddm::group_norm_backward")
    def _group_norm_backward(
        grad_y, x, num_groups, weight, bias, eps, scale, shift, silu, stats=None
    ):
        n, c = x.shape[:2]

        def param_grad(t, shape):
            # The argument's shape and dtype; an absent one gets an unused float32 grad.
            if t is None:
                return x.new_empty(shape, dtype=torch.float32)
            return x.new_empty(t.shape, dtype=t.dtype)

        return (
            torch.empty_like(x, memory_format=memory_format_of(x)),
            param_grad(weight, (c,)),
            param_grad(bias, (c,)),
            param_grad(scale, (n, c)),
            param_grad(shift, (n, c)),
        )


def _register_autograd() -> None:
    """Backward formulas of the differentiable ``lddm::`` ops, each one call of its
    backward op (the kernels in csrc/cpu/*_backward.cpp)."""

    # group_norm_stats (what training calls run) also returns the group statistics, which
    # the backward takes instead of re-reading x for them; plain group_norm recomputes them.
    def group_norm_setup(ctx, inputs, output):
        x, num_groups, weight, bias, eps, scale, shift, silu = inputs
        stats = output[1] if isinstance(output, tuple) else None
        if stats is not None:
            ctx.mark_non_differentiable(stats)
        ctx.save_for_backward(x, weight, bias, scale, shift, stats)
        ctx.args = (num_groups, eps, silu)

    def group_norm_backward(ctx, grad, *_grad_stats):
        x, weight, bias, scale, shift, stats = ctx.saved_tensors
        num_groups, eps, silu = ctx.args
        grads = torch.ops.lddm.group_norm_backward(
            grad, x, num_groups, weight, bias, eps, scale, shift, silu, stats
        )
        need = ctx.needs_input_grad
        wanted = (need[0], need[2], need[3], need[5], need[6])  # x, weight, bias, scale, shift
        gx, gw, gb, gs, gh = (g if w else None for g, w in zip(grads, wanted, strict=True))
        return gx, None, gw, gb, None, gs, gh, None

    for op in ("lddm::group_norm", "lddm::group_norm_stats"):
        torch.library.register_autograd(op, group_norm_backward, setup_context=group_norm_setup)

    # FlashAttention-style: the forward saves the logsumexp [B, heads, T, H, W] (not the
    # attention matrix); the backward recomputes the probabilities from it.
    def attention_setup(ctx, inputs, output):
        q, k, v, num_heads, scale = inputs
        _, lse = output
        ctx.mark_non_differentiable(lse)
        ctx.save_for_backward(q, k, v, lse)
        ctx.args = (num_heads, scale)

    def attention_backward(ctx, grad_out, _grad_lse):
        q, k, v, lse = ctx.saved_tensors
        grads = torch.ops.lddm.temporal_attention_backward(grad_out, q, k, v, lse, *ctx.args)
        dq, dk, dv = (
            g if need else None for g, need in zip(grads, ctx.needs_input_grad[:3], strict=True)
        )
        return dq, dk, dv, None, None

    torch.library.register_autograd(
        "lddm::temporal_attention_lse", attention_backward, setup_context=attention_setup
    )


def _load() -> tuple[ModuleType | None, str]:
    try:
        from lddm_fast import _C
    except ImportError as exc:
        return None, f"extension not built: {exc}"
    _register_fakes()
    _register_autograd()
    return _C, "ok"


EXTENSION, EXTENSION_STATUS = _load()
# How CMake built the CUDA part: "built for sm_80 sm_90a ..." or "not built: <why>".
CUDA_BUILD = EXTENSION.cuda_status if EXTENSION is not None else EXTENSION_STATUS
