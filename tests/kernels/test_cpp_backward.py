"""The cpp backend's backward passes (group_norm, temporal_attention) against autograd
through the float64 reference: fresh random inputs and output gradients each run,
gradient outputs poisoned with NaN before every launch, odd and strided shapes, both
memory formats, both dtypes, both CPU kernel builds; plus a finite-difference check of
the fp32 kernels (the backend takes no float64, so no torch.autograd.gradcheck)."""

from functools import partial

import parity
import pytest
import torch
from parity import (
    ATTENTION_FORMATS,
    CPP_DTYPES,
    CPP_TEST_MARKS,
    SPATIAL_FORMS,
    attention_qkv,
    directional_check,
    layout,
    rel,
)

from lddm_fast import ops

pytestmark = CPP_TEST_MARKS


check_grads = partial(parity.check_grads, backend="cpp")


# ---- group_norm -------------------------------------------------------------------

GN_SHAPES = [
    ((2, 40, 7, 5, 5), 8),  # C/G = 5, T = 7
    ((2, 24, 7, 1, 1), 24),  # G = C, 1-pixel frames
    ((3, 6, 9, 9), 1),  # 4-D, G = 1
    ((2, 44, 3, 5, 5), 11),  # AVX2 tails: 32 + 8 + 4 channels
    ((1, 12, 2, 1, 3), 3),  # S = 6
]


def _gn_fn(groups, silu):
    return parity.group_norm_fn(groups, "silu" if silu else None)


@pytest.mark.parametrize("shape,groups", GN_SHAPES)
@pytest.mark.parametrize("fmt", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize(
    "affine,film,silu",
    [(True, True, True), (False, False, False), (True, False, True), (False, True, False)],
)
@pytest.mark.parametrize("dtype", CPP_DTYPES)
def test_group_norm_grad(shape, groups, fmt, affine, film, silu, dtype, isa):
    n, c = shape[:2]
    x = layout(torch.randn(shape).to(dtype), fmt)
    w, b = (torch.randn(c), torch.randn(c)) if affine else (None, None)
    scale, shift = (torch.randn(n, c) * 0.5, torch.randn(n, c)) if film else (None, None)
    gy = layout(torch.randn(shape).to(dtype), fmt)
    check_grads(_gn_fn(groups, silu), [x, w, b, scale, shift], gy)


@pytest.mark.parametrize("shape,groups", GN_SHAPES[:4])
@pytest.mark.parametrize("fmt", ["contiguous", "channels_last"])
@pytest.mark.parametrize("form", SPATIAL_FORMS)
@pytest.mark.parametrize("dtype", CPP_DTYPES)
def test_group_norm_grad_spatial(shape, groups, fmt, form, dtype, isa):
    parity.check_group_norm_spatial_grads("cpp", "cpu", shape, groups, form, fmt, dtype)


@pytest.mark.parametrize("fmt", ["contiguous", "channels_last"])
def test_group_norm_grad_large_mean_many_chunks(fmt, isa):
    # Channels-last samples of several chunks with a partial last one.
    parity.check_group_norm_large_mean_grads("cpp", "cpu", fmt, (3, 64, 5, 15, 15), 16)


@pytest.mark.parametrize("fmt", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", CPP_DTYPES)
def test_group_norm_saved_statistics(fmt, dtype, isa):
    """Training calls run group_norm_stats, whose [N, G, 2] means and rstds the backward
    takes instead of recomputing them: they match float64 ones, the output is the
    inference op's to the bit, and so is every grad of the backward with or without them."""
    x = layout(1000 + torch.randn(3, 40, 5, 7, 7), fmt).to(dtype)  # mean 1000, many chunks
    args = (x, 8, torch.randn(40), torch.randn(40), 1e-5, torch.randn(3, 40), None, True)
    y, stats = torch.ops.lddm.group_norm_stats(*args)
    assert torch.equal(y, torch.ops.lddm.group_norm(*args))
    groups = x.double().reshape(3, 8, -1)
    mean, var = groups.mean(-1), groups.var(-1, unbiased=False)
    # Float32 partial sums merged in double: float32 accuracy relative to the spread.
    torch.testing.assert_close(stats[..., 0], mean, rtol=0, atol=1e-5 * var.sqrt().max().item())
    torch.testing.assert_close(stats[..., 1], (var + 1e-5).rsqrt(), rtol=1e-5, atol=0)
    gy = torch.randn(x.shape).to(dtype)
    with_stats = torch.ops.lddm.group_norm_backward(gy, *args, stats)
    recomputed = torch.ops.lddm.group_norm_backward(gy, *args)
    for a, b in zip(with_stats, recomputed, strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match=r"stats must be group_norm_stats' float64 \[N, G, 2\]"):
        torch.ops.lddm.group_norm_backward(gy, *args, stats.float())


def test_group_norm_grad_of_x_alone(isa):
    parity.check_group_norm_grad_of_x_through_a_view("cpp", "cpu")


# ---- temporal_attention -------------------------------------------------------------

ATTN_CASES = [
    (7, 2, 24, (3, 5)),  # odd T, head_dim 24
    (1, 1, 16, (2, 2)),  # T = 1
    (16, 4, 8, (1, 1)),  # 1-pixel frames
    (16, 2, 32, (3, 2)),  # the denoiser's T
    (9, 3, 12, (2, 11)),  # head_dim 12, C = 36; rows longer than the runs of 8 pixels
    (5, 2, 16, (9, 9)),  # 81 pixels: a 64-pixel chunk of whole vectors, then 17
    # The channels-last pixel kernel: head_dim 40 = 4 + 1 vectors of 8 channels (a second,
    # narrower channel block); 18 frames: two vectors of queries in AVX-512 lanes.
    (3, 2, 40, (2, 3)),
    (18, 2, 16, (1, 3)),
]


@pytest.mark.parametrize("T,heads,d,hw", ATTN_CASES)
@pytest.mark.parametrize(
    "fmt", ["contiguous", "qkv_views", "qkv_views_cl", "channels_last_3d", "transposed_hw"]
)
@pytest.mark.parametrize("dtype", CPP_DTYPES)
def test_temporal_attention_grad(T, heads, d, hw, fmt, dtype, isa):
    B, C = 2, heads * d
    q, k, v = attention_qkv(B, C, T, hw, fmt, dtype)
    # An output gradient in yet another layout (channels-last), read through its strides.
    go = torch.randn(B, C, T, *hw).to(dtype).contiguous(memory_format=torch.channels_last_3d)
    check_grads(parity.attention_fn(heads), [q, k, v], go)


@pytest.mark.parametrize("go_fmt", ["contiguous", "expanded"])
@pytest.mark.parametrize("dtype", CPP_DTYPES)
def test_temporal_attention_grad_channels_last_other_grad_layout(go_fmt, dtype, isa):
    # Channels-last q, k, v (the pixel kernel) with an output gradient whose channels are
    # not adjacent: contiguous, or a broadcast one (all strides 0, as .sum() gives).
    q, k, v = attention_qkv(2, 32, 9, (2, 3), "qkv_views_cl", dtype)
    go = torch.randn(2, 32, 9, 2, 3).to(dtype)
    if go_fmt == "expanded":
        go = go[:1, :1, :1, :1, :1].expand(2, 32, 9, 2, 3)
    check_grads(parity.attention_fn(2), [q, k, v], go)


def test_temporal_attention_grad_through_qkv_views(isa):
    parity.check_attention_grad_through_one_qkv_leaf("cpp", "cpu")


@pytest.mark.parametrize("hw", [(3, 5), (9, 9)])  # 81 pixels: a 64-pixel chunk, then 17
@pytest.mark.parametrize("fmt", ATTENTION_FORMATS)
def test_logsumexp_matches_reference(fmt, hw, isa):
    q, k, v = attention_qkv(2, 24, 7, hw, fmt, torch.float32)
    out, lse = torch.ops.lddm.temporal_attention_lse(q, k, v, 2, 0.3)
    parity.check_logsumexp(lse, q, k, 2, 0.3)
    assert (
        rel(
            out,
            ops.temporal_attention(
                q.double(), k.double(), v.double(), num_heads=2, scale=0.3, backend="reference"
            ),
        )
        <= 1e-5
    )


# ---- finite differences ---------------------------------------------------------------


def test_group_norm_finite_differences(isa):
    parity.check_group_norm_finite_differences("cpp", "cpu")


def test_temporal_attention_finite_differences(isa):
    q, k, v = (torch.randn(1, 8, 5, 2, 2) for _ in range(3))

    def fn(q, k, v, backend="cpp"):
        return ops.temporal_attention(q, k, v, num_heads=2, backend=backend)

    directional_check(fn, partial(fn, backend="reference"), [q, k, v])


# ---- outputs without a gradient ---------------------------------------------------------


class _NoGrad(torch.autograd.Function):
    """A sum of its input that passes it no gradient (None) back."""

    @staticmethod
    def forward(ctx, t):
        return t.sum()

    @staticmethod
    def backward(ctx, grad):
        return None


def test_output_without_gradient_gives_inputs_none(isa):
    # A gradient stopped at an op's output (None from the next function) reaches the op's
    # backward undefined: its inputs get no gradient from it, not zeros and not an error.
    x = torch.randn(2, 8, 3, 2, 2, requires_grad=True)
    w = torch.randn(8, requires_grad=True)
    q = torch.randn(1, 8, 5, 2, 2, requires_grad=True)
    y = ops.group_norm(x, 2, w, activation="silu", backend="cpp")
    o = ops.temporal_attention(q, q * 2, q * 3, num_heads=2, backend="cpp")
    (_NoGrad.apply(y) + _NoGrad.apply(o) + x.sum() + q.sum()).backward()
    assert torch.equal(x.grad, torch.ones_like(x)) and w.grad is None
    assert torch.equal(q.grad, torch.ones_like(q))
