"""The cuda backend (lddm_fast._C's CUDA kernels) against the float64 reference: fresh
random inputs each run, outputs poisoned with NaN before every launch, odd and strided
shapes, both memory formats, misaligned views (the scalar paths), FiLM and spatial
(SPADE) scale/shift, split reductions, large-mean inputs, more than 65,535 attention
positions, every storage dtype, and bad calls rejected with an error naming the argument.

Tolerances: float32 max|y - ref| / max|ref| <= 1e-5; bfloat16 / float16 no worse than
twice the error of the eager reference backend in that dtype (FlashAttention's rule),
with a floor of one rounding step (2^-8 / 2^-10).
"""

import pytest
import torch
from parity import (
    CUDA_TEST_MARKS,
    FP32_TOL,
    SPATIAL_FORMS,
    check,
    check_group_norm,
    layout,
    rel,
    spatial_modulation,
)

from lddm_fast import ops
from lddm_fast.layout import attention_output_format, memory_format_of
from lddm_fast.ops.extension import cuda_attention_smem_bytes, cuda_limits

pytestmark = CUDA_TEST_MARKS

DEV = "cuda"
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


# (shape, groups): odd channel counts per group, T = 1 / 7 / 17, 1x1 and 5x5 frames,
# 4-D inputs, aligned vector-friendly sizes, and one large group whose statistics are
# split across blocks (kNCS slices, kNSC position chunks).
GN_SHAPES = [
    ((2, 40, 7, 5, 5), 8),
    ((2, 32, 17, 1, 1), 32),
    ((3, 6, 9, 9), 1),
    ((1, 320, 1, 4, 4), 32),
    ((2, 24, 1, 1), 3),
    ((2, 64, 16, 8, 8), 32),
    ((1, 32, 16, 32, 32), 1),
]
GN_FORMATS = ["contiguous", "channels_last", "strided", "misaligned", "misaligned_cl"]


@pytest.mark.parametrize("shape,groups", GN_SHAPES, ids=str)
@pytest.mark.parametrize("fmt", GN_FORMATS)
@pytest.mark.parametrize("film,silu", [(False, False), (True, True), (False, True), (True, False)])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_group_norm(shape, groups, fmt, film, silu, dtype):
    run_group_norm(layout(torch.randn(shape, device=DEV).to(dtype), fmt), groups, film, silu)


def run_group_norm(x, groups, film=True, silu=True):
    n, c = x.shape[:2]
    w, b = torch.randn(c, device=DEV), torch.randn(c, device=DEV)
    scale = torch.randn(n, c, device=DEV) if film else None
    shift = torch.randn(n, c, device=DEV) if film else None
    act = "silu" if silu else None
    check_group_norm(x, groups, w, b, "cuda", scale=scale, shift=shift, activation=act)


# The spatial (SPADE) scale/shift, applied per element after the per-(n, c) affine; the
# launcher stores one period of it (H * W positions when broadcast over T) in x's
# inner order. Odd periods (5x5, 1x1 frames) take the scalar path of kNCS.
@pytest.mark.parametrize("shape,groups", GN_SHAPES, ids=str)
@pytest.mark.parametrize("fmt", ["contiguous", "channels_last", "strided", "misaligned"])
@pytest.mark.parametrize("form", SPATIAL_FORMS)
@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_group_norm_spatial(shape, groups, fmt, form, silu, dtype):
    x = layout(torch.randn(shape, device=DEV).to(dtype), fmt)
    c = x.shape[1]
    w, b = torch.randn(c, device=DEV), torch.randn(c, device=DEV)
    scale, shift = spatial_modulation(x, form)
    act = "silu" if silu else None
    check_group_norm(x, groups, w, b, "cuda", scale=scale, shift=shift, activation=act)


@pytest.mark.parametrize("fmt", ["contiguous", "channels_last"])
def test_group_norm_spatial_scale_or_shift_alone(fmt):
    x = layout(1000 + torch.randn(3, 64, 5, 15, 15, device=DEV), fmt)
    w, b = torch.randn(64, device=DEV), torch.randn(64, device=DEV)
    mod = torch.randn(3, 64, 1, 15, 15, device=DEV)
    for kw in ({"scale": mod}, {"shift": mod}):
        y = ops.group_norm(x, 16, w, b, activation="silu", backend="cuda", **kw)
        kw64 = {k: v.double() for k, v in kw.items()}
        ref = ops.group_norm(
            x.double(), 16, w.double(), b.double(), activation="silu", backend="reference", **kw64
        )
        assert rel(y, ref) <= FP32_TOL


# Each launch caps its grid at 65,535 blocks and grid-strides past it: N * G statistics
# and finalize blocks (kNCS), N * chunks statistics blocks (kNSC), and the elementwise
# pass on the scalar path of a misaligned input (18.9M values / 256 threads).
@pytest.mark.parametrize(
    "shape,groups,fmt",
    [
        ((2049, 32, 1, 1), 32, "contiguous"),
        ((65600, 4, 1, 2), 2, "channels_last"),
        ((1, 32, 16, 192, 192), 8, "misaligned"),
    ],
    ids=str,
)
def test_group_norm_more_blocks_than_the_grid_cap(shape, groups, fmt):
    run_group_norm(layout(torch.randn(shape, device=DEV), fmt), groups)


@pytest.mark.parametrize("fmt", ["contiguous", "channels_last"])
@pytest.mark.parametrize("shape", [(2, 64, 5, 6, 6), (1, 32, 16, 32, 32)], ids=str)
def test_group_norm_large_mean(shape, fmt):
    """E[x^2] - E[x]^2 would lose every significant bit here; Welford / Chan must not."""
    x = layout(1000 + torch.randn(shape, device=DEV), fmt)
    ref = ops.group_norm(x.double(), 8, backend="reference")
    assert rel(ops.group_norm(x, 8, backend="cuda"), ref) <= FP32_TOL


@pytest.mark.parametrize("fmt", ["contiguous", "channels_last"])
def test_group_norm_is_deterministic(fmt):
    """Split reductions combine partials in a fixed order: bitwise-equal reruns."""
    x = layout(torch.randn(1, 32, 16, 32, 32, device=DEV), fmt)
    first = ops.group_norm(x, 1, activation="silu", backend="cuda")
    assert torch.equal(first, ops.group_norm(x, 1, activation="silu", backend="cuda"))


def test_group_norm_no_affine_matches_torch():
    x = torch.randn(3, 16, 4, 5, 5, device=DEV)
    torch.testing.assert_close(
        ops.group_norm(x, 4, backend="cuda"), torch.nn.functional.group_norm(x, 4)
    )


# (T, heads, head_dim, (H, W)): T = 1 / 7 / 17 / 16 / 64, 1x1 and 5x5 frames, head_dim
# 24 / 32 / 40 / 64 / 128 (24 and 40 are not powers of two); T = 64 with head_dim 128
# needs more than 48 KB of shared memory for one position (the opt-in path).
ATTN_CASES = [
    (7, 2, 24, (5, 5)),
    (1, 3, 32, (5, 5)),
    (17, 2, 32, (1, 1)),
    (16, 4, 64, (3, 5)),
    (7, 1, 128, (1, 1)),
    (17, 5, 40, (5, 5)),
    (64, 2, 128, (2, 3)),
]


def attention_inputs(B, C, T, hw, dtype, fmt):
    if fmt == "contiguous":
        return [torch.randn(B, C, T, *hw, device=DEV).to(dtype) for _ in range(3)]
    if fmt == "strided":  # three unrelated layouts, none of them a standard one
        q = torch.randn(B, C, T, *hw, device=DEV).to(dtype)
        k = torch.randn(B, C, T, *hw, device=DEV).to(dtype)
        k = k.contiguous(memory_format=torch.channels_last_3d)
        v = torch.randn(B, T, *hw, 2 * C, device=DEV).to(dtype).permute(0, 4, 1, 2, 3)[:, ::2]
        return [q, k, v]
    qkv = torch.randn(B, 3 * C, T, *hw, device=DEV).to(dtype)
    if fmt == "qkv_views_cl":
        qkv = qkv.contiguous(memory_format=torch.channels_last_3d)
    return list(qkv.chunk(3, dim=1))


def run_attention(q, k, v, heads, scale=None):
    why = cuda_limits("temporal_attention", q, {"num_heads": heads})
    if why is not None:
        pytest.skip(f"this GPU cannot run the shape: {why}")
    ref = ops.temporal_attention(
        q.double(), k.double(), v.double(), num_heads=heads, scale=scale, backend="reference"
    )
    eager = ops.temporal_attention(q, k, v, num_heads=heads, scale=scale, backend="reference")
    y = ops.temporal_attention(q, k, v, num_heads=heads, scale=scale, backend="cuda")
    assert y.dtype == q.dtype and y.shape == q.shape
    assert y.is_contiguous(memory_format=attention_output_format(q))
    check(y, eager, ref)


@pytest.mark.parametrize("T,heads,d,hw", ATTN_CASES, ids=str)
@pytest.mark.parametrize("fmt", ["contiguous", "qkv_views", "qkv_views_cl", "strided"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_temporal_attention(T, heads, d, hw, fmt, dtype):
    q, k, v = attention_inputs(2, heads * d, T, hw, dtype, fmt)
    run_attention(q, k, v, heads)


def test_temporal_attention_explicit_scale():
    q, k, v = attention_inputs(2, 48, 7, (3, 5), torch.float32, "qkv_views")
    run_attention(q, k, v, 2, scale=0.3)


@pytest.mark.parametrize("fmt", ["qkv_views", "qkv_views_cl"])
def test_temporal_attention_more_tiles_than_the_grid_cap(fmt):
    """B * heads * H * W = 16 * 520^2 = 4.3M positions in tiles of 64: 67,600 tiles for
    a grid capped at 65,535 blocks, so the tile loop's second pass runs."""
    q, k, v = attention_inputs(1, 16, 2, (520, 520), torch.float32, fmt)
    run_attention(q, k, v, 16)


SAMPLER_FORMATS = ["contiguous", "channels_last", "strided_cl", "misaligned"]


@pytest.mark.parametrize("noise", [False, True])
@pytest.mark.parametrize("fmt", SAMPLER_FORMATS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_sampler_step(noise, fmt, dtype):
    # 4 * 8 * 5 * 5 = 800 values per sample: a multiple of every vector width, so the
    # aligned cases take the vector path and "misaligned" the scalar one.
    run_sampler_step(
        *(layout(torch.randn(3, 4, 8, 5, 5, device=DEV).to(dtype), fmt) for _ in range(3)), noise
    )


def test_sampler_step_more_blocks_than_the_grid_cap():
    """18.9M values on the scalar path (misaligned): 73,728 blocks of 256 for a grid
    capped at 65,535."""
    run_sampler_step(
        *(layout(torch.randn(2, 4, 16, 384, 384, device=DEV), "misaligned") for _ in range(3)), True
    )


def run_sampler_step(x, eps, nz, noise):
    B = x.shape[0]
    a, b, c = (torch.rand(B, device=DEV) for _ in range(3))
    args = (nz, c) if noise else (None, None)
    ref = ops.sampler_step(
        x.double(),
        eps.double(),
        a.double(),
        b.double(),
        *((nz.double(), c.double()) if noise else (None, None)),
        backend="reference",
    )
    eager = ops.sampler_step(x, eps, a, b, *args, backend="reference")
    y = ops.sampler_step(x, eps, a, b, *args, backend="cuda")
    assert y.shape == x.shape and y.dtype == x.dtype
    assert y.is_contiguous(memory_format=memory_format_of(x))
    check(y, eager, ref)


# Schemas and fake implementations agree with the CUDA kernels (strides included).
OPCHECK_TESTS = ("test_schema", "test_faketensor")


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last_3d])
def test_group_norm_opcheck(fmt):
    x = torch.randn(2, 8, 3, 4, 4, device=DEV).contiguous(memory_format=fmt)
    args = (
        x,
        4,
        torch.randn(8, device=DEV),
        torch.randn(8, device=DEV),
        1e-5,
        torch.randn(2, 8, device=DEV),
        torch.randn(2, 8, device=DEV),
        True,
    )
    torch.library.opcheck(torch.ops.lddm.group_norm.default, args, test_utils=OPCHECK_TESTS)


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last_3d])
def test_group_norm_spatial_opcheck(fmt):
    x = torch.randn(2, 8, 3, 4, 4, device=DEV).contiguous(memory_format=fmt)
    mod = torch.randn(2, 16, 1, 4, 4, device=DEV).chunk(2, dim=1)
    args = (x, 4, None, None, 1e-5, mod[0], mod[1], True)
    torch.library.opcheck(torch.ops.lddm.group_norm.default, args, test_utils=OPCHECK_TESTS)


@pytest.mark.parametrize("fmt", ["qkv_views", "qkv_views_cl"])
def test_temporal_attention_opcheck(fmt):
    q, k, v = attention_inputs(2, 16, 5, (3, 3), torch.float32, fmt)
    torch.library.opcheck(
        torch.ops.lddm.temporal_attention.default, (q, k, v, 2, 0.25), test_utils=OPCHECK_TESTS
    )


# Bad calls. Through lddm_fast.ops the Python checks answer first; direct
# torch.ops.lddm calls reach the CUDA launchers, whose checks must name the argument
# too (a call mixing CUDA and CPU tensors dispatches to the CUDA kernel).
def test_public_op_rejects_bad_group_count():
    with pytest.raises(ValueError, match="num_groups=3"):
        ops.group_norm(torch.randn(2, 8, 4, 4, device=DEV), 3, backend="cuda")


def test_launcher_rejects_bad_group_norm_calls():
    x = torch.randn(2, 8, 4, 4, device=DEV)
    gn = torch.ops.lddm.group_norm
    with pytest.raises(ValueError, match="num_groups=3 must be a positive divisor of C=8"):
        gn(x, 3, None, None, 1e-5, None, None, False)
    with pytest.raises(ValueError, match="x must be float32, bfloat16 or float16"):
        gn(x.to(torch.int32), 4, None, None, 1e-5, None, None, False)
    with pytest.raises(ValueError, match="x must be 4-D"):
        gn(x[0], 4, None, None, 1e-5, None, None, False)
    with pytest.raises(ValueError, match="weight is on cpu"):
        gn(x, 4, torch.randn(8), None, 1e-5, None, None, False)
    with pytest.raises(ValueError, match="bias must have shape"):
        gn(x, 4, None, torch.randn(7, device=DEV), 1e-5, None, None, False)
    with pytest.raises(ValueError, match="scale must have shape"):
        gn(x, 4, None, None, 1e-5, torch.randn(8, device=DEV), None, False)
    with pytest.raises(ValueError, match="shift must be a floating-point tensor"):
        gn(x, 4, None, None, 1e-5, None, torch.ones(2, 8, dtype=torch.int64, device=DEV), False)


def test_launcher_rejects_bad_attention_calls():
    q = torch.randn(1, 8, 3, 2, 2, device=DEV)
    attn = torch.ops.lddm.temporal_attention
    with pytest.raises(ValueError, match="k is on cpu"):
        attn(q, q.cpu(), q, 2, 1.0)
    with pytest.raises(ValueError, match="k has shape"):
        attn(q, torch.randn(1, 8, 4, 2, 2, device=DEV), q, 2, 1.0)
    with pytest.raises(ValueError, match="v is Half but q is Float"):
        attn(q, q, q.half(), 2, 1.0)
    with pytest.raises(ValueError, match="num_heads=3"):
        attn(q, q, q, 3, 1.0)
    with pytest.raises(ValueError, match="q must be float32, bfloat16 or float16"):
        attn(q.double(), q.double(), q.double(), 2, 1.0)
    long = torch.randn(1, 128, 200, 1, 1, device=DEV)  # 200 frames of head_dim 128
    with pytest.raises(ValueError, match="bytes of shared memory per position"):
        attn(long, long, long, 1, 1.0)


def test_launcher_rejects_bad_sampler_step_calls():
    x = torch.randn(3, 4, 5, device=DEV)
    a = torch.rand(3, device=DEV)
    step = torch.ops.lddm.sampler_step
    with pytest.raises(ValueError, match="a is on cpu"):
        step(x, x, a.cpu(), a, None, None)
    with pytest.raises(ValueError, match="eps must match x"):
        step(x, x[:2], a, a, None, None)
    with pytest.raises(ValueError, match="noise and c must be given together"):
        step(x, x, a, a, x, None)


@pytest.mark.parametrize(("T", "d"), [(300, 128), (257, 96), (1000, 1)])
def test_dispatcher_shared_memory_count_matches_the_launcher(T, d):
    """lddm_fast.ops.extension mirrors the kernel's shared-memory count so the
    dispatcher can refuse a shape first: the launcher's own count, in its error for a
    shape too large for any GPU, must be the same number."""
    q = torch.randn(1, d, T, 1, 1, device=DEV)
    need = cuda_attention_smem_bytes(T, d)
    with pytest.raises(ValueError, match=rf"T={T} frames with head_dim={d} need {need} bytes"):
        torch.ops.lddm.temporal_attention(q, q, q, 1, 1.0)
