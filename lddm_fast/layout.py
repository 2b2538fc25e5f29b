"""Memory-format rules shared by every backend, so all of them return the same layout.

A leaf module (torch only): the ops, their fake implementations and the Triton
kernels all import it, and it imports none of them; csrc/layout.h mirrors it."""

from __future__ import annotations

import torch


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """The format an op's output takes for input ``x``: channels_last(_3d) when x is
    in it (and not also plain contiguous), else contiguous."""
    if x.is_contiguous():
        return torch.contiguous_format
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format


def attention_output_format(q: torch.Tensor) -> torch.memory_format:
    """Temporal attention writes channels_last_3d when q's channels are innermost
    (q is a view of a channels_last_3d qkv tensor), else contiguous [B, C, T, H, W]."""
    if q.shape[1] > 1 and q.stride(1) == 1:
        return torch.channels_last_3d
    return torch.contiguous_format
