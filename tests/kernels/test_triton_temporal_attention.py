"""The triton temporal_attention (kernels/temporal_attention.py) against the float64
reference.

Runs on a CUDA GPU, or on CPU through Triton's interpreter when the test run sets
``TRITON_INTERPRET=1`` (small shapes there; full sizes are marked ``gpu``). Fresh random
inputs every run, outputs filled with NaN before the launch, every dtype, q/k/v as
views of one qkv tensor (contiguous and channels_last_3d) and as unrelated strided
tensors, odd T and head_dim, a launch grid capped below the number of work units, and
the grid computed for more than 65,535 (batch, head, position) sequences.

Tolerances: the rule of every kernel test (``parity.check``): float32 within 1e-5 of
max|ref|; bfloat16/float16 within the larger of twice the eager reference's error in that
dtype and one rounding step, relative to max|ref|.
"""

from __future__ import annotations

import pytest
import torch
from parity import check

from lddm_fast import ops
from lddm_fast.layout import attention_output_format
from lddm_fast.ops import reference

STATUS = ops.available_backends()["triton"]
pytestmark = pytest.mark.skipif(
    not STATUS.startswith("ok"), reason=f"triton backend unusable here: {STATUS}"
)
if STATUS.startswith("ok"):
    from lddm_fast.kernels.temporal_attention import attention_grid, temporal_attention

DEVICE = "cuda" if STATUS == "ok" else "cpu"
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
CUDA_GRID_X = 2**31 - 1
CUDA_GRID_YZ = 65535

# (batch, heads, head_dim, T, H, W): head_dim 24 and T = 7 on 5x5 | 1x1 frames, T = 16 |
# T = 17, head_dim 32 | T = 25 | T = 1 | T = 64, head_dim 128 | T = 100 (one sequence per
# 128-row tile) | head_dim 8 (below the 16 of a tensor-core tile).
SHAPES = [
    (2, 2, 24, 7, 5, 5),
    (3, 2, 16, 16, 1, 1),
    (1, 3, 32, 17, 3, 4),
    (1, 1, 16, 25, 2, 3),
    (2, 2, 16, 1, 3, 3),
    (1, 1, 128, 64, 1, 2),
    (1, 1, 16, 100, 1, 2),
    (1, 2, 8, 5, 2, 2),
]


def qkv_views(b, heads, d, t, h, w, dtype, channels_last):
    """q, k, v as channel slices of one [B, 3C, T, H, W] tensor (a 1x1 conv's output)."""
    qkv = torch.randn(b, 3 * heads * d, t, h, w, device=DEVICE).to(dtype)
    if channels_last:
        qkv = qkv.contiguous(memory_format=torch.channels_last_3d)
    return qkv.chunk(3, dim=1)


def run_checked(q, k, v, heads, scale=None, **launch):
    """Run the kernel into a NaN-filled output and check it against float64."""
    out = torch.full(q.shape, float("nan"), dtype=q.dtype, device=q.device)
    y = temporal_attention(q, k, v, num_heads=heads, scale=scale, out=out, **launch)
    assert y is out
    ref = reference.temporal_attention(
        q.double(), k.double(), v.double(), num_heads=heads, scale=scale
    )
    eager = reference.temporal_attention(q, k, v, num_heads=heads, scale=scale)
    check(y, eager, ref)
    return y


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last_3d"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_qkv_views_match_float64(shape, dtype, channels_last):
    b, heads, d, t, h, w = shape
    q, k, v = qkv_views(b, heads, d, t, h, w, dtype, channels_last)
    run_checked(q, k, v, heads)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_independent_strided_tensors_and_explicit_scale(dtype):
    """q, k, v with three unrelated layouts, none of them a standard one."""
    b, c, t, h, w = 2, 48, 7, 3, 5
    q = torch.randn(b, c, t, h, w, device=DEVICE).to(dtype)
    k = (
        torch.randn(b, c, t, h, w, device=DEVICE)
        .to(dtype)
        .contiguous(memory_format=torch.channels_last_3d)
    )
    v = torch.randn(b, t, h, w, 2 * c, device=DEVICE).to(dtype).permute(0, 4, 1, 2, 3)[:, ::2]
    run_checked(q, k, v, heads=2, scale=0.3)


def test_grid_capped_below_units_loops_over_all_of_them():
    """Fewer programs than work units: each program loops; every element is still written."""
    q, k, v = qkv_views(2, 2, 24, 7, 5, 5, torch.float32, channels_last=False)
    run_checked(q, k, v, 2, max_programs=3)


@pytest.mark.parametrize("tiles_per_program", [1, 4])
@pytest.mark.parametrize(
    "batch,heads,height,width,positions_per_tile",
    [(16, 8, 64, 64, 8), (64, 16, 128, 128, 1), (1, 65536, 1, 1, 1), (4096, 4096, 512, 512, 2)],
)
def test_launch_grid_respects_cuda_limits(
    batch, heads, height, width, positions_per_tile, tiles_per_program
):
    """batch * heads * H * W well above 65,535: every grid dimension within its limit, one
    turn of tiles per program unless axis x is full (then the programs loop)."""
    assert batch * heads * height * width > 65535
    (gx, gy, gz), tiles = attention_grid(
        batch, heads, height, width, positions_per_tile, tiles_per_program
    )
    assert tiles == batch * heads * -(-height * width // positions_per_tile)
    assert 1 <= gx <= CUDA_GRID_X and 1 <= gy <= CUDA_GRID_YZ and 1 <= gz <= CUDA_GRID_YZ
    assert gx == min(-(-tiles // tiles_per_program), CUDA_GRID_X)


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last_3d"])
def test_public_op_dispatch_and_output_format(channels_last):
    q, k, v = qkv_views(2, 2, 24, 7, 5, 5, torch.bfloat16, channels_last)
    y = ops.temporal_attention(q, k, v, num_heads=2, backend="triton")
    fmt = attention_output_format(q)
    assert y.is_contiguous(memory_format=fmt)
    assert fmt == (torch.channels_last_3d if channels_last else torch.contiguous_format)
    ref = reference.temporal_attention(q.double(), k.double(), v.double(), num_heads=2)
    check(y, reference.temporal_attention(q, k, v, num_heads=2), ref)


def test_rejects_sequences_too_long_for_one_tile():
    q = torch.randn(1, 16, 200, 1, 1, device=DEVICE)  # T = 200 > 128 frames
    with pytest.raises(ValueError, match="on chip"):
        temporal_attention(q, q, q, num_heads=1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last_3d"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "shape",
    [
        (2, 5, 64, 16, 32, 32),
        (2, 10, 64, 16, 16, 16),
        (4, 8, 128, 16, 8, 8),
        (1, 4, 40, 25, 32, 32),
        (2, 8, 64, 64, 16, 16),
        (64, 8, 16, 16, 16, 16),
    ],
    ids=str,
)
def test_full_size_parity(shape, dtype, channels_last):
    b, heads, d, t, h, w = shape
    q, k, v = qkv_views(b, heads, d, t, h, w, dtype, channels_last)
    run_checked(q, k, v, heads)
