"""Loads the compiled extension ``lddm_fast._C`` at import and remembers why it failed.

Importing ``_C`` registers the ``torch.ops.lddm.*`` custom ops and the backward of
those that have one (static ``TORCH_LIBRARY`` initialisers in csrc/bindings.cpp; the
autograd kernels are C++, csrc/autograd.cpp, so a training call runs no Python). The
package works without it: only the ``cpp`` and ``cuda`` backends need it. Status is
computed once, here, so the dispatcher reads plain module globals (cheap, and
traceable by torch.compile).
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


def _load() -> tuple[ModuleType | None, str]:
    try:
        from lddm_fast import _C
    except ImportError as exc:
        return None, f"extension not built: {exc}"
    _register_fakes()
    return _C, "ok"


EXTENSION, EXTENSION_STATUS = _load()
# How CMake built the CUDA part: "built for sm_80 sm_90a ..." or "not built: <why>".
CUDA_BUILD = EXTENSION.cuda_status if EXTENSION is not None else EXTENSION_STATUS
