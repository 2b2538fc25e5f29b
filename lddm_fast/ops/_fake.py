"""Fake (meta) implementations of the ``lddm::`` custom ops: output shape, dtype and
layout without running a kernel, so torch.compile and CUDA-graph capture can trace
them. csrc/bindings.cpp points the op library at this module."""

from __future__ import annotations

import torch

from lddm_fast.ops.layout import attention_output_format, memory_format_of


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
