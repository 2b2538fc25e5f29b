"""The ``reference`` backend: plain PyTorch, differentiable, the ground truth.

Every fast backend is tested against these functions, and these are tested against
independent float64 formulas in tests/ops. Math runs in float32 (float64 inputs stay
float64); results are cast back to the input dtype and memory format.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lddm_fast.layout import attention_output_format, memory_format_of


def group_norm(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
    *,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    activation: str | None = None,
) -> torch.Tensor:
    """GroupNorm + affine + FiLM + optional SiLU, see :func:`lddm_fast.ops.group_norm`.

    x: [N, C, *spatial]; weight, bias: [C]; scale, shift: [N, C] (FiLM) or x's dims,
    broadcastable to x (spatial, e.g. [N, C, 1, H, W]).
    """

    def modulation(t: torch.Tensor) -> torch.Tensor:
        t = t.to(compute)
        return t.view(*t.shape, *extra) if t.dim() == 2 else t

    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    extra = (1,) * (x.dim() - 2)
    n, c = x.shape[:2]
    # Two-pass statistics (mean, then mean squared deviation): F.group_norm's CPU
    # channels-last path uses E[x^2] - E[x]^2, which cancels for large-mean inputs.
    xg = x.to(compute).reshape(n, num_groups, -1)
    mean = xg.mean(dim=-1, keepdim=True)
    var = (xg - mean).square().mean(dim=-1, keepdim=True)
    y = ((xg - mean) * torch.rsqrt(var + eps)).reshape(n, c, *x.shape[2:])
    if weight is not None:
        y = y * weight.to(compute).view(1, -1, *extra)
    if bias is not None:
        y = y + bias.to(compute).view(1, -1, *extra)
    if scale is not None:
        y = y * (1 + modulation(scale))
    if shift is not None:
        y = y + modulation(shift)
    if activation == "silu":
        y = F.silu(y)
    return y.to(x.dtype).contiguous(memory_format=memory_format_of(x))


def temporal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    num_heads: int,
    scale: float | None = None,
) -> torch.Tensor:
    """Softmax attention over T at every (b, head, y, x), see
    :func:`lddm_fast.ops.temporal_attention`.

    q, k, v: [B, C, T, H, W] with C = num_heads * head_dim. Returns [B, C, T, H, W].
    """
    B, C, T, H, W = q.shape
    d = C // num_heads
    if scale is None:
        scale = d**-0.5
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32

    def to_seq(t: torch.Tensor) -> torch.Tensor:
        # [B, C, T, H, W] -> [B, heads, H, W, T, d]
        return t.to(compute).reshape(B, num_heads, d, T, H, W).permute(0, 1, 4, 5, 3, 2)

    qs, ks, vs = to_seq(q), to_seq(k), to_seq(v)
    weights = torch.softmax((qs @ ks.transpose(-1, -2)) * scale, dim=-1)
    out = (weights @ vs).permute(0, 1, 5, 4, 2, 3).reshape(B, C, T, H, W)
    return out.to(q.dtype).contiguous(memory_format=attention_output_format(q))


def sampler_step(
    x: torch.Tensor,
    eps: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    noise: torch.Tensor | None = None,
    c: torch.Tensor | None = None,
) -> torch.Tensor:
    """``a*x + b*eps (+ c*noise)`` with per-sample coefficients, see
    :func:`lddm_fast.ops.sampler_step`. x, eps, noise: [B, ...]; a, b, c: [B]."""
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    extra = (1,) * (x.dim() - 1)
    out = a.to(compute).view(-1, *extra) * x.to(compute) + b.to(compute).view(-1, *extra) * eps.to(
        compute
    )
    if noise is not None:
        out = out + c.to(compute).view(-1, *extra) * noise.to(compute)
    return out.to(x.dtype).contiguous(memory_format=memory_format_of(x))
