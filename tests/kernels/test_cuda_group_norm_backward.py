"""The cuda backend's group_norm backward (csrc/cuda/group_norm_backward.cu, through
``lddm::group_norm_stats`` and ``lddm::group_norm_backward``) against autograd through the
float64 reference: fresh random inputs and output gradients every run, outputs poisoned
with NaN before every launch, odd sizes (C/G = 5, T = 7, 1-pixel frames, G = 1), every
layout the forward takes (contiguous, channels-last, strided and misaligned views),
every storage dtype, FiLM and spatial (SPADE) scale/shift, SiLU on and off, large means,
rows split across blocks and more blocks than the grid cap. Tolerances: ``parity.check``
(float32 within 1e-5 of max|ref|; 16-bit within twice the eager reference's error in
that dtype, or one rounding step)."""

from functools import partial

import parity
import pytest
import torch
from parity import CUDA_TEST_MARKS, SPATIAL_FORMS, group_norm_fn, layout, rel

pytestmark = CUDA_TEST_MARKS

DEV = "cuda"
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
check_grads = partial(parity.check_grads, backend="cuda")

# The odd shapes, and the phantom64 level-1 one, whose rows the kNCS sums split across
# blocks.
SHAPES = [*parity.GN_GRAD_SHAPES, ((2, 128, 16, 8, 8), 32)]
FORMATS = ["contiguous", "channels_last", "strided", "misaligned", "misaligned_cl"]


def randn(*size, dtype=torch.float32):
    return torch.randn(size, device=DEV).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("shape,groups", SHAPES, ids=str)
@pytest.mark.parametrize("activation", ["silu", None])
def test_grads_match_float64(shape, groups, fmt, dtype, activation):
    """Weight, bias and FiLM in x's dtype; the output gradient in x's layout."""
    n, c = shape[:2]
    x = layout(randn(*shape, dtype=dtype), fmt)
    params = [randn(c, dtype=dtype), randn(c, dtype=dtype)]
    params += [randn(n, c, dtype=dtype) * 0.5, randn(n, c, dtype=dtype)]
    gy = layout(randn(*shape, dtype=dtype), fmt)
    check_grads(group_norm_fn(groups, activation), [x, *params], gy)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("affine,film", [(False, False), (True, False), (False, True)])
def test_absent_parameters_and_float32_parameters(affine, film, dtype):
    shape = (2, 40, 3, 4, 5)
    x = layout(randn(*shape, dtype=dtype), "channels_last")
    w, b = (randn(40), randn(40)) if affine else (None, None)
    scale, shift = (randn(2, 40) * 0.5, randn(2, 40)) if film else (None, None)
    check_grads(group_norm_fn(8, "silu"), [x, w, b, scale, shift], randn(*shape, dtype=dtype))


@pytest.mark.parametrize("fmt", ["contiguous", "channels_last"])
@pytest.mark.parametrize("form", SPATIAL_FORMS)
@pytest.mark.parametrize("shape", [(2, 12, 3, 4, 5), (2, 8, 3, 5)], ids=str)
def test_spatial_modulation_grads(shape, form, fmt):
    """And a FiLM partner's grads from the per-(n, c) sums (film_and_broadcast)."""
    parity.check_group_norm_spatial_grads("cuda", DEV, shape, 4, form, fmt, torch.float32)


@pytest.mark.parametrize("fmt", ["contiguous", "channels_last"])
def test_large_mean(fmt):
    parity.check_group_norm_large_mean_grads("cuda", DEV, fmt)


@pytest.mark.parametrize("fmt", ["contiguous", "channels_last"])
def test_more_blocks_than_the_grid_cap(fmt):
    """N * C = 81,920 channel rows, more than the grid cap of 65,535 (kNCS: a block
    row each), so the sums kernel's grid-stride loop is taken."""
    n, c = 64, 1280
    x = layout(randn(n, c, 1, 2, 2), fmt)
    args = [x, randn(c), randn(c), randn(n, c) * 0.5, randn(n, c)]
    check_grads(group_norm_fn(32, "silu"), args, layout(randn(n, c, 1, 2, 2), fmt))


@pytest.mark.parametrize("fmt", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_saved_statistics_match_recomputed_ones(fmt, dtype):
    """The backward op with the forward's statistics and without (recomputed from x by
    the forward's stats kernels) gives the same gradients, bit for bit."""
    x = layout(randn(2, 40, 7, 5, 5, dtype=dtype), fmt)
    w, b, scale, shift = randn(40), randn(40), randn(2, 40), randn(2, 40)
    _, stats = torch.ops.lddm.group_norm_stats(x, 8, w, b, 1e-5, scale, shift, True)
    assert stats.dtype == torch.float64 and stats.shape == (2, 8, 2)
    mean = x.float().reshape(2, 8, -1).double().mean(-1)
    assert rel(stats[..., 0], mean) <= 1e-6
    gy = torch.randn_like(x)
    saved = torch.ops.lddm.group_norm_backward(gy, x, 8, w, b, 1e-5, scale, shift, True, stats)
    again = torch.ops.lddm.group_norm_backward(gy, x, 8, w, b, 1e-5, scale, shift, True, None)
    for a, r in zip(saved, again, strict=True):
        assert torch.equal(a, r)


@pytest.mark.parametrize("fmt", ["contiguous", "channels_last"])
def test_backward_is_deterministic(fmt):
    x = layout(randn(4, 64, 16, 8, 8), fmt)
    args = (x, 32, randn(64), randn(64), 1e-5, randn(4, 64), randn(4, 64), True)
    _, stats = torch.ops.lddm.group_norm_stats(*args)
    gy = torch.randn_like(x)
    first = torch.ops.lddm.group_norm_backward(gy, *args, stats)
    for _ in range(3):
        again = torch.ops.lddm.group_norm_backward(gy, *args, stats)
        assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))


def test_grad_of_x_alone_and_through_a_view():
    parity.check_group_norm_grad_of_x_through_a_view("cuda", DEV)


def test_finite_differences():
    parity.check_group_norm_finite_differences("cuda", DEV)


@pytest.mark.parametrize("form", ["film", "spatial", "x_only"])
def test_opcheck(form):
    """Schema, fake implementation and the C++ autograd kernel of group_norm_stats on
    CUDA tensors, and the backward op's schema and fake implementation."""
    x = randn(2, 8, 3, 4, 4).contiguous(memory_format=torch.channels_last_3d)
    w, b = randn(8), randn(8)
    if form == "x_only":
        args = (x.requires_grad_(), 4, w, None, 1e-5, None, None, False)
    else:
        mod = (2, 8) if form == "film" else (2, 8, 1, 4, 4)
        x, w, b, scale, shift = [t.requires_grad_() for t in (x, w, b, randn(*mod), randn(*mod))]
        args = (x, 4, w, b, 1e-5, scale, shift, True)
    torch.library.opcheck(torch.ops.lddm.group_norm_stats.default, args)
    _, stats = torch.ops.lddm.group_norm_stats(*args)
    plain = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
    torch.library.opcheck(
        torch.ops.lddm.group_norm_backward.default,
        (torch.randn_like(plain[0]), *plain, stats),
        test_utils=("test_schema", "test_faketensor"),
    )


def test_launcher_rejects_bad_backward_calls():
    x, gy = randn(2, 8, 3, 4, 4), randn(2, 8, 3, 4, 4)
    with pytest.raises(ValueError, match="grad_y has shape"):
        torch.ops.lddm.group_norm_backward(gy[:1], x, 4, None, None, 1e-5, None, None, True)
    bad_stats = torch.zeros(2, 4, 2, device=DEV)  # float32, not float64
    with pytest.raises(ValueError, match="stats must be"):
        torch.ops.lddm.group_norm_backward(gy, x, 4, None, None, 1e-5, None, None, True, bad_stats)
    with pytest.raises(ValueError, match="num_groups"):
        torch.ops.lddm.group_norm_backward(gy, x, 3, None, None, 1e-5, None, None, True)


def test_default_training_call_does_not_take_the_unmeasured_cuda_backward():
    """Until a GPU run ranks it against the Triton backward, a default call that needs
    grad leaves the cuda group_norm backward alone (ops.extension.CUDA_GRAD_DEFAULT_OPS)."""
    from lddm_fast.ops import dispatch
    from lddm_fast.ops.extension import CUDA_GRAD_DEFAULT_OPS

    x = randn(2, 8, 3, 4, 4).requires_grad_()
    chosen = dispatch.select("group_norm", None, x, params={})
    cuda_fn = dispatch.backends()["cuda"].ops["group_norm"]
    assert (chosen is cuda_fn) == ("group_norm" in CUDA_GRAD_DEFAULT_OPS)
