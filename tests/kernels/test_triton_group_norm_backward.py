"""The triton group_norm backward (kernels/group_norm.py, through the
``lddm_triton::group_norm`` custom op) against autograd through the float64 reference.

Runs on a CUDA GPU, or on CPU through Triton's interpreter when the test run sets
``TRITON_INTERPRET=1`` (small shapes). Fresh random inputs and output gradients every
run, every kernel output (y, the saved statistics, every gradient buffer) NaN-poisoned
before its launch, every dtype, contiguous / channels-last / strided x, odd sizes, FiLM,
spatial (SPADE) scale/shift, SiLU on and off, large means, float32 parameters with
16-bit x. Tolerances: ``parity.check`` (float32 within 1e-5 of max|ref|; 16-bit within
twice the eager reference's error in that dtype, or one rounding step).
"""

from __future__ import annotations

from functools import partial

import parity
import pytest
import torch
from parity import SPATIAL_FORMS, group_norm_fn, layout

from lddm_fast import ops

STATUS = ops.available_backends()["triton"]
pytestmark = [
    pytest.mark.skipif(
        not STATUS.startswith("ok"), reason=f"triton backend unusable here: {STATUS}"
    ),
    pytest.mark.usefixtures("poisoned_outputs"),
]

DEVICE = "cuda" if STATUS == "ok" else "cpu"
# (layout, dtype): every layout in float32, both memory formats in 16 bits.
LAYOUT_DTYPES = [
    ("contiguous", torch.float32),
    ("channels_last", torch.float32),
    ("strided", torch.float32),
    ("contiguous", torch.bfloat16),
    ("channels_last", torch.bfloat16),
    ("channels_last", torch.float16),
]
check_grads = partial(parity.check_grads, backend="triton")

SHAPES = parity.GN_GRAD_SHAPES


def randn(*size, dtype=torch.float32):
    return torch.randn(size, device=DEVICE).to(dtype)


@pytest.mark.parametrize("fmt,dtype", LAYOUT_DTYPES, ids=str)
@pytest.mark.parametrize("shape,groups", SHAPES, ids=str)
def test_grads_match_float64(shape, groups, fmt, dtype):
    """Weight, bias, FiLM and SiLU, parameters in x's dtype; the output gradient in
    x's layout."""
    n, c = shape[:2]
    x = layout(randn(*shape, dtype=dtype), fmt)
    params = [randn(c, dtype=dtype), randn(c, dtype=dtype)]
    params += [randn(n, c, dtype=dtype) * 0.5, randn(n, c, dtype=dtype)]
    gy = layout(randn(*shape, dtype=dtype), fmt)
    check_grads(group_norm_fn(groups, "silu"), [x, *params], gy)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize(
    "affine,film,activation",
    [(False, False, None), (True, False, "silu"), (False, True, None), (True, True, None)],
)
def test_epilogue_combinations(affine, film, activation, dtype):
    """Absent parameters, and float32 parameters with a 16-bit x."""
    shape = (2, 40, 3, 4, 5)
    x = layout(randn(*shape, dtype=dtype), "channels_last")
    w, b = (randn(40), randn(40)) if affine else (None, None)
    scale, shift = (randn(2, 40) * 0.5, randn(2, 40)) if film else (None, None)
    check_grads(group_norm_fn(8, activation), [x, w, b, scale, shift], randn(*shape, dtype=dtype))


@pytest.mark.parametrize(
    "fmt,dtype", [("contiguous", torch.float32), ("channels_last", torch.bfloat16)], ids=str
)
@pytest.mark.parametrize("form", SPATIAL_FORMS)
@pytest.mark.parametrize("shape", [(2, 12, 3, 4, 5), (2, 8, 3, 5)], ids=str)
def test_spatial_modulation_grads(shape, form, fmt, dtype):
    parity.check_group_norm_spatial_grads("triton", DEVICE, shape, 4, form, fmt, dtype)


@pytest.mark.parametrize("fmt", ["contiguous", "channels_last"])
def test_large_mean(fmt):
    """xhat comes from the saved mean of x - k, not from 1000."""
    parity.check_group_norm_large_mean_grads("triton", DEVICE, fmt)


@pytest.mark.parametrize("fmt", ["strided_cl", "spatial_slice"])
def test_views_that_are_copied(fmt):
    """x whose spatial dims do not collapse into one stride: the forward and the
    backward read a copy; dx comes back in x's shape."""
    base = randn(2, 24, 3, 4, 6)
    x = base[..., 1:] if fmt == "spatial_slice" else layout(base, fmt)
    c = x.shape[1]
    args = [x, randn(c), randn(c), randn(2, c), randn(2, c)]
    check_grads(group_norm_fn(6, "silu"), args, randn(*x.shape))


def test_grad_of_x_alone_and_through_a_view():
    parity.check_group_norm_grad_of_x_through_a_view("triton", DEVICE)


def test_finite_differences():
    parity.check_group_norm_finite_differences("triton", DEVICE)


@pytest.mark.parametrize(
    "form,fmt",
    [
        ("film", torch.channels_last_3d),
        ("spatial", torch.contiguous_format),
        ("x_only", torch.channels_last_3d),
    ],
    ids=str,
)
def test_opcheck(form, fmt):
    """Schema, fake implementation and autograd registration of the custom op."""
    x = randn(2, 8, 3, 4, 4).contiguous(memory_format=fmt)
    w, b = randn(8), randn(8)
    if form == "x_only":
        args = (x.requires_grad_(), 4, w, None, 1e-5, None, None, False)
    else:
        mod = (2, 8) if form == "film" else (2, 8, 1, 4, 4)
        leaves = [t.requires_grad_() for t in (x, w, b, randn(*mod), randn(*mod))]
        x, w, b, scale, shift = leaves
        args = (x, 4, w, b, 1e-5, scale, shift, True)
    torch.library.opcheck(torch.ops.lddm_triton.group_norm.default, args)


def test_backward_op_opcheck():
    x = randn(2, 8, 3, 4, 4).contiguous(memory_format=torch.channels_last_3d)
    scale = randn(2, 8, 1, 4, 4)
    _, stats = torch.ops.lddm_triton.group_norm(x, 4, None, None, 1e-5, scale, None, True)
    args = (torch.randn_like(x), x, stats, 4, randn(8), None, scale, None, True)
    torch.library.opcheck(
        torch.ops.lddm_triton.group_norm_backward.default,
        args,
        test_utils=("test_schema", "test_faketensor"),
    )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("fmt", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize(
    "shape,groups", [((2, 320, 16, 32, 32), 32), ((8, 1280, 16, 8, 8), 32)], ids=str
)
def test_full_size_grads(shape, groups, dtype, fmt):
    """The denoiser's shapes: several strips per channel block, autotuned configs."""
    n, c = shape[:2]
    x = layout(randn(*shape, dtype=dtype) + 3, fmt)
    args = [x, randn(c), randn(c), randn(n, c) * 0.5, randn(n, c)]
    check_grads(group_norm_fn(groups, "silu"), args, layout(randn(*shape, dtype=dtype), fmt))
