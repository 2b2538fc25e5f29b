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

    @torch.library.register_fake("lddm::temporal_attention")
    def _temporal_attention(q, k, v, num_heads, scale):
        return torch.empty(q.shape, dtype=q.dtype, device=q.device).contiguous(
            memory_format=attention_output_format(q)
        )

    @torch.library.register_fake("lddm::sampler_step")
    def _sampler_step(x, eps, a, b, noise, c):
        return torch.empty_like(x, memory_format=memory_format_of(x))


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
