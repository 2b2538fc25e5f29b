"""The triton group_norm (kernels/group_norm.py) against the float64 reference.

Runs on a CUDA GPU, or on CPU through Triton's interpreter when the test run sets
``TRITON_INTERPRET=1`` (small shapes there; full sizes are marked ``gpu``). Fresh random
inputs every run, outputs filled with NaN before the launch (an unwritten element
fails), every dtype, both memory formats, odd sizes, FiLM, spatial (SPADE) scale/shift and
SiLU on and off, large means, strided views and the split reduction forced on small
shapes.

Tolerances: the rule of every kernel test (``parity.check``): float32 within 1e-5 of
max|ref|; bfloat16/float16 within the larger of twice the eager reference's error in that
dtype and one rounding step, relative to max|ref|.
"""

from __future__ import annotations

import pytest
import torch
from parity import SPATIAL_FORMS, check, spatial_modulation

from lddm_fast import ops
from lddm_fast.ops import reference

STATUS = ops.available_backends()["triton"]
pytestmark = pytest.mark.skipif(
    not STATUS.startswith("ok"), reason=f"triton backend unusable here: {STATUS}"
)
if STATUS.startswith("ok"):
    from lddm_fast.kernels.group_norm import group_norm

DEVICE = "cuda" if STATUS == "ok" else "cpu"
DTYPES = [torch.float32, torch.bfloat16, torch.float16]

# (shape, groups): C/G = 5, T = 7, H = W = 5 | 4-D | H = W = 1 | C/G = 10 (C = 320) |
# G = 1 | G = C.
SHAPES = [
    ((2, 40, 7, 5, 5), 8),
    ((2, 40, 5, 5), 8),
    ((3, 24, 3, 1, 1), 6),
    ((1, 320, 2, 3, 3), 32),
    ((2, 12, 6, 7), 1),
    ((2, 12, 3, 4, 5), 12),
]
LAYOUTS = ["contiguous", "channels_last"]


def channels_last(x: torch.Tensor) -> torch.Tensor:
    fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
    return x.contiguous(memory_format=fmt)


def make_inputs(
    shape, dtype, layout="contiguous", mean=0.0, film=True, affine=True, param_dtype=None
):
    """x, weight, bias, scale, shift on DEVICE; params in ``param_dtype`` (default x's)."""
    param_dtype = param_dtype or dtype
    n, c = shape[:2]
    x = (torch.randn(shape, device=DEVICE) * 2 + mean).to(dtype)
    if layout == "channels_last":
        x = channels_last(x)

    def param(*size):
        return torch.randn(size, device=DEVICE).to(param_dtype)

    weight, bias = (param(c), param(c)) if affine else (None, None)
    scale, shift = (param(n, c) * 0.5, param(n, c)) if film else (None, None)
    return x, weight, bias, scale, shift


def nan_like(x: torch.Tensor) -> torch.Tensor:
    return torch.full_like(x, float("nan"))  # keeps x's memory format


def run_checked(x, groups, weight, bias, scale, shift, activation, split=None, eps=1e-5):
    """Run the kernel into a NaN-filled output and check it against float64."""
    out = nan_like(x)
    y = group_norm(
        x,
        groups,
        weight,
        bias,
        eps,
        scale=scale,
        shift=shift,
        activation=activation,
        out=out,
        split=split,
    )
    assert y is out

    def f64(t):
        return None if t is None else t.double()

    ref = reference.group_norm(
        f64(x),
        groups,
        f64(weight),
        f64(bias),
        eps,
        scale=f64(scale),
        shift=f64(shift),
        activation=activation,
    )
    eager = reference.group_norm(
        x, groups, weight, bias, eps, scale=scale, shift=shift, activation=activation
    )
    check(y, eager, ref)
    return y


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,groups", SHAPES, ids=str)
def test_matches_float64(shape, groups, dtype, layout):
    x, weight, bias, scale, shift = make_inputs(shape, dtype, layout)
    run_checked(x, groups, weight, bias, scale, shift, "silu")


@pytest.mark.parametrize("form", SPATIAL_FORMS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,groups", SHAPES, ids=str)
def test_spatial_modulation(shape, groups, dtype, layout, form):
    """SPADE scale/shift applied per element in the apply pass's epilogue."""
    x, weight, bias, _, _ = make_inputs(shape, dtype, layout, film=False)
    scale, shift = spatial_modulation(x, form)
    run_checked(x, groups, weight, bias, scale, shift, "silu")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_spatial_scale_or_shift_alone_split_large_mean(layout):
    x, weight, bias, _, _ = make_inputs((1, 40, 7, 5, 5), torch.float32, layout, mean=50.0)
    mod, _ = spatial_modulation(x, "spade")
    run_checked(x, 8, weight, bias, mod, None, None, split=3)
    run_checked(x, 8, weight, bias, None, mod, "silu", split=3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no_affine"])
@pytest.mark.parametrize("film", [True, False], ids=["film", "no_film"])
@pytest.mark.parametrize("activation", ["silu", None])
def test_epilogue_combinations(activation, film, affine, dtype):
    x, weight, bias, scale, shift = make_inputs(
        (2, 40, 3, 4, 5), dtype, "channels_last", film=film, affine=affine
    )
    run_checked(x, 8, weight, bias, scale, shift, activation)


def test_scale_without_shift_and_float32_params_with_bf16_input():
    x, weight, bias, scale, _ = make_inputs(
        (2, 40, 3, 4, 5), torch.bfloat16, param_dtype=torch.float32
    )
    run_checked(x, 8, weight, bias, scale, None, None)
    run_checked(x, 8, None, bias, None, scale, "silu")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_large_mean(dtype, layout):
    """x = 1000 + noise: a sum-of-squares variance would cancel catastrophically."""
    x, weight, bias, scale, shift = make_inputs((2, 40, 4, 5, 5), dtype, layout, mean=1000.0)
    run_checked(x, 8, weight, bias, scale, shift, "silu")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("split", [2, 7])
def test_forced_split_reduction(split, layout):
    """Each group's statistics split across programs and merged in the apply pass."""
    x, weight, bias, scale, shift = make_inputs((1, 40, 7, 5, 5), torch.float32, layout, mean=50.0)
    run_checked(x, 8, weight, bias, scale, shift, "silu", split=split)


def test_split_reduction_is_deterministic():
    x, weight, bias, scale, shift = make_inputs((1, 40, 7, 5, 5), torch.bfloat16)
    first = run_checked(x, 8, weight, bias, scale, shift, "silu", split=5)
    second = run_checked(x, 8, weight, bias, scale, shift, "silu", split=5)
    assert torch.equal(first, second)


@pytest.mark.parametrize(
    "view",
    ["batch_slice", "channel_slice_of_channels_last", "channel_slice", "spatial_slice"],
)
def test_strided_views(view):
    """Views read through their strides; one whose spatial dims do not collapse into a
    single stride (a spatial slice) goes through a copy and must give the same result."""
    base, weight, bias, scale, shift = make_inputs((4, 48, 3, 5, 6), torch.float32)
    if view == "batch_slice":
        x = base[::2]
        scale, shift = scale[::2], shift[::2]  # strided FiLM rows too
    elif view == "channel_slice_of_channels_last":
        x = channels_last(base)[:, 8:]
    elif view == "channel_slice":
        x = base[:, 8:]
    else:
        x = base[..., 1:]
    n, c = x.shape[:2]
    run_checked(x, 8, weight[:c], bias[:c], scale[:n, :c], shift[:n, :c], "silu")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_public_op_dispatch_and_memory_format(layout):
    x, weight, bias, scale, shift = make_inputs((2, 40, 7, 5, 5), torch.bfloat16, layout)
    y = ops.group_norm(
        x, 8, weight, bias, scale=scale, shift=shift, activation="silu", backend="triton"
    )
    expected = reference.group_norm(x, 8, weight, bias, scale=scale, shift=shift, activation="silu")
    assert y.stride() == expected.stride() == x.stride()
    ref = reference.group_norm(
        x.double(),
        8,
        weight.double(),
        bias.double(),
        scale=scale.double(),
        shift=shift.double(),
        activation="silu",
    )
    check(y, expected, ref)


def test_rejects_out_aliasing_input():
    x = torch.randn(2, 8, 3, 3, device=DEVICE)
    with pytest.raises(ValueError, match="share storage"):
        group_norm(x, 2, out=x)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "shape,groups",
    [
        ((2, 320, 16, 32, 32), 32),
        ((1, 640, 16, 16, 16), 32),
        ((8, 1280, 16, 8, 8), 32),
        ((4, 320, 64, 64), 32),
        ((1, 128, 17, 40, 40), 32),
    ],
    ids=str,
)
def test_full_size_parity(shape, groups, dtype, layout):
    x, weight, bias, scale, shift = make_inputs(shape, dtype, layout, mean=3.0)
    run_checked(x, groups, weight, bias, scale, shift, "silu")
