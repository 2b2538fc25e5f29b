"""The reference backend against float64 formulas written here, independently of it
(numpy, no torch.nn.functional), since every other backend is tested against it."""

import numpy as np
import pytest
import torch

from lddm_fast import ops
from lddm_fast.layout import memory_format_of


def group_norm_formula(x, groups, w, b, scale, shift, silu, eps=1e-5):
    """x: [N, C, *S] float64 numpy -> same shape."""
    n, c = x.shape[:2]
    xg = x.reshape(n, groups, -1)
    mean = xg.mean(axis=2, keepdims=True)
    var = ((xg - mean) ** 2).mean(axis=2, keepdims=True)
    y = ((xg - mean) / np.sqrt(var + eps)).reshape(x.shape)
    bc = (slice(None), slice(None)) + (None,) * (x.ndim - 2)
    if w is not None:
        y = y * w[(None,) + bc[1:]] + b[(None,) + bc[1:]]
    if scale is not None:
        y = y * (1 + scale[bc]) + shift[bc]
    if silu:
        y = y / (1 + np.exp(-y))
    return y


def attention_formula(q, k, v, heads, scale):
    """q, k, v: [B, C, T, H, W] float64 numpy -> [B, C, T, H, W]."""
    B, C, T, H, W = q.shape
    d = C // heads
    qs, ks, vs = (a.reshape(B, heads, d, T, H, W) for a in (q, k, v))
    logits = np.einsum("bhdtyx,bhdsyx->bhyxts", qs, ks) * scale
    logits -= logits.max(axis=-1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=-1, keepdims=True)
    return np.einsum("bhyxts,bhdsyx->bhdtyx", p, vs).reshape(B, C, T, H, W)


TOL = {torch.float64: 1e-12, torch.float32: 2e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}


def rel_err(y: torch.Tensor, ref: np.ndarray) -> float:
    return float(np.abs(y.double().numpy() - ref).max() / max(np.abs(ref).max(), 1e-30))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "shape,groups",
    [((2, 40, 7, 5, 5), 8), ((3, 6, 4, 4), 1), ((2, 12, 1, 1), 12), ((1, 32, 3, 1, 1), 4)],
)
@pytest.mark.parametrize("fmt", ["contiguous", "channels_last"])
@pytest.mark.parametrize("film,silu", [(False, False), (True, True), (True, False)])
def test_group_norm_matches_formula(dtype, shape, groups, fmt, film, silu):
    x = torch.randn(shape, dtype=torch.float64)
    if fmt == "channels_last":
        x = x.contiguous(
            memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        )
    n, c = shape[:2]
    w, b = torch.randn(c, dtype=torch.float64), torch.randn(c, dtype=torch.float64)
    scale = torch.randn(n, c, dtype=torch.float64) if film else None
    shift = torch.randn(n, c, dtype=torch.float64) if film else None
    xd = x.to(dtype)

    def cast(t):
        return None if t is None else t.to(dtype)

    y = ops.group_norm(
        xd,
        groups,
        cast(w),
        cast(b),
        scale=cast(scale),
        shift=cast(shift),
        activation="silu" if silu else None,
        backend="reference",
    )
    # Compare against the formula on the dtype-rounded inputs, so only the op's error counts.
    f = lambda t: None if t is None else t.to(dtype).double().numpy()  # noqa: E731
    ref = group_norm_formula(f(x), groups, f(w), f(b), f(scale), f(shift), silu)
    assert y.dtype == dtype and y.shape == x.shape
    assert y.is_contiguous(memory_format=memory_format_of(xd))
    assert rel_err(y, ref) <= TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape,groups", [((2, 40, 7, 5, 6), 8), ((3, 6, 4, 5), 3)])
def test_group_norm_spatial_matches_formula(dtype, shape, groups):
    """SPADE form: scale/shift [N, C, 1, H, W] ([N, C, H, W] for 4-D x), broadcast over T."""
    n, c, *spatial = shape
    frame = [1, *spatial[-2:]] if len(shape) == 5 else spatial
    x = torch.randn(shape, dtype=torch.float64)
    w, b = torch.randn(c, dtype=torch.float64), torch.randn(c, dtype=torch.float64)
    scale, shift = (torch.randn(n, c, *frame, dtype=torch.float64) for _ in range(2))
    y = ops.group_norm(
        x.to(dtype),
        groups,
        w.to(dtype),
        b.to(dtype),
        scale=scale.to(dtype),
        shift=shift.to(dtype),
        activation="silu",
        backend="reference",
    )
    f = lambda t: t.to(dtype).double().numpy()  # noqa: E731
    # The formula indexes [N, C] modulations with trailing None axes; give it the
    # spatial ones already broadcast to x.
    xs = f(x)
    ref = group_norm_formula(xs, groups, f(w), f(b), None, None, False)
    ref = ref * (1 + np.broadcast_to(f(scale), xs.shape)) + np.broadcast_to(f(shift), xs.shape)
    ref = ref / (1 + np.exp(-ref))
    assert y.dtype == dtype and y.shape == x.shape
    assert rel_err(y, ref) <= TOL[dtype]


def test_group_norm_large_mean_is_stable():
    x = (1000 + torch.randn(2, 64, 4, 8, 8)).contiguous(memory_format=torch.channels_last_3d)
    y = ops.group_norm(x, 8, backend="reference")
    ref = group_norm_formula(x.double().numpy(), 8, None, None, None, None, False)
    # fp32 cannot hold 1000 + noise more finely than 6e-5; the error must stay at that scale.
    assert np.abs(y.double().numpy() - ref).max() < 5e-4


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "T,heads,d,hw", [(7, 2, 24, (3, 5)), (1, 1, 16, (2, 2)), (16, 4, 8, (1, 1))]
)
@pytest.mark.parametrize("layout", ["contiguous", "qkv_views", "qkv_views_cl"])
def test_temporal_attention_matches_formula(dtype, T, heads, d, hw, layout):
    B, C = 2, heads * d
    if layout == "contiguous":
        q, k, v = (torch.randn(B, C, T, *hw, dtype=torch.float64) for _ in range(3))
    else:
        qkv = torch.randn(B, 3 * C, T, *hw, dtype=torch.float64)
        if layout == "qkv_views_cl":
            qkv = qkv.contiguous(memory_format=torch.channels_last_3d)
        q, k, v = qkv.chunk(3, dim=1)
    scale = 0.37
    y = ops.temporal_attention(
        q.to(dtype), k.to(dtype), v.to(dtype), num_heads=heads, scale=scale, backend="reference"
    )
    f = lambda t: t.to(dtype).double().numpy()  # noqa: E731
    ref = attention_formula(f(q), f(k), f(v), heads, scale)
    assert y.dtype == dtype and y.shape == q.shape
    assert rel_err(y, ref) <= TOL[dtype]


def test_temporal_attention_default_scale():
    q, k, v = (torch.randn(1, 48, 5, 2, 2, dtype=torch.float64) for _ in range(3))
    y = ops.temporal_attention(q, k, v, num_heads=2, backend="reference")
    ref = attention_formula(q.numpy(), k.numpy(), v.numpy(), 2, 24**-0.5)
    assert rel_err(y, ref) <= 1e-12


@pytest.mark.parametrize("noise", [False, True])
def test_sampler_step_matches_formula(noise):
    x, eps, nz = (torch.randn(3, 4, 2, 5, 5, dtype=torch.float64) for _ in range(3))
    a, b, c = (torch.rand(3, dtype=torch.float64) for _ in range(3))
    y = ops.sampler_step(
        x, eps, a, b, nz if noise else None, c if noise else None, backend="reference"
    )
    ref = (
        a.numpy()[:, None, None, None, None] * x.numpy()
        + b.numpy()[:, None, None, None, None] * eps.numpy()
    )
    if noise:
        ref = ref + c.numpy()[:, None, None, None, None] * nz.numpy()
    assert rel_err(y, ref) <= 1e-12


def test_reference_is_differentiable():
    x = torch.randn(2, 8, 3, 4, 4, requires_grad=True)
    scale = torch.randn(2, 8, requires_grad=True)
    ops.group_norm(x, 4, scale=scale, shift=torch.zeros(2, 8), activation="silu").sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and scale.grad.abs().sum() > 0
