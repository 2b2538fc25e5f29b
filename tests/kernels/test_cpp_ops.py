"""The cpp backend (lddm_fast._C on CPU) against the float64 reference: fresh random
inputs each run, outputs poisoned with NaN before every launch, odd and strided
shapes, both memory formats, both dtypes, and both CPU kernel builds (baseline and
AVX2)."""

import pytest
import torch
from parity import (
    ATTENTION_FORMATS,
    CPP_DTYPES,
    CPP_TEST_MARKS,
    FP32_TOL,
    SPATIAL_FORMS,
    attention_qkv,
    check,
    check_group_norm,
    layout,
    rel,
    spatial_modulation,
)

from lddm_fast import ops
from lddm_fast.layout import attention_output_format, memory_format_of

pytestmark = CPP_TEST_MARKS


GN_SHAPES = [
    ((2, 40, 7, 5, 5), 8),  # C/G = 5, T = 7
    ((2, 32, 7, 1, 1), 32),  # G = C, 1-pixel frames
    ((3, 6, 9, 9), 1),  # 4-D, G = 1
    ((1, 320, 3, 4, 4), 32),  # C/G = 10
    ((2, 24, 1, 1), 3),  # 4-D single pixel
    ((2, 44, 3, 5, 5), 11),  # AVX2: 32-channel block + one vector + 4 scalar channels
    ((1, 4, 3, 19, 23), 2),  # rows of 1311: AVX2 bf16 rounds them in chunks of 1024
    ((1, 1040, 1, 2, 3), 8),  # channels-last positions of 1040 channels, likewise
]


@pytest.mark.parametrize("shape,groups", GN_SHAPES)
@pytest.mark.parametrize("fmt", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("film,silu", [(False, False), (True, True), (False, True), (True, False)])
@pytest.mark.parametrize("dtype", CPP_DTYPES)
def test_group_norm(shape, groups, fmt, film, silu, dtype, isa):
    n, c = shape[:2]
    x = layout(torch.randn(shape).to(dtype), fmt)
    w, b = torch.randn(c), torch.randn(c)
    scale = torch.randn(n, c) if film else None
    shift = torch.randn(n, c) if film else None
    act = "silu" if silu else None
    check_group_norm(x, groups, w, b, "cpp", scale=scale, shift=shift, activation=act)


@pytest.mark.parametrize("shape,groups", GN_SHAPES)
@pytest.mark.parametrize("fmt", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("form", SPATIAL_FORMS)
@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.parametrize("dtype", CPP_DTYPES)
def test_group_norm_spatial(shape, groups, fmt, form, silu, dtype, isa):
    """The spatial (SPADE) scale/shift: per-element coefficients of one period (H * W
    positions when broadcast over T, else all of them), in both output passes."""
    c = shape[1]
    x = layout(torch.randn(shape).to(dtype), fmt)
    w, b = torch.randn(c), torch.randn(c)
    scale, shift = spatial_modulation(x, form)
    act = "silu" if silu else None
    check_group_norm(x, groups, w, b, "cpp", scale=scale, shift=shift, activation=act)


@pytest.mark.parametrize("fmt", ["contiguous", "channels_last"])
def test_group_norm_spatial_scale_or_shift_alone_over_rounds(fmt, isa):
    # channels_last samples of 288 KB (several rounds, chunks of positions that cross
    # frame boundaries: runs that wrap the modulation's period), scale or shift alone.
    x = layout(1000 + torch.randn(3, 64, 5, 15, 15), fmt)
    w, b = torch.randn(64), torch.randn(64)
    mod = torch.randn(3, 64, 1, 15, 15)
    for kw in ({"scale": mod}, {"shift": mod}):
        y = ops.group_norm(x, 16, w, b, activation="silu", backend="cpp", **kw)
        ref = ops.group_norm(
            x.double(),
            16,
            w.double(),
            b.double(),
            activation="silu",
            backend="reference",
            **{k: v.double() for k, v in kw.items()},
        )
        assert rel(y, ref) <= FP32_TOL


@pytest.mark.parametrize("fmt", ["contiguous", "channels_last"])
def test_group_norm_large_mean(fmt, isa):
    x = layout(1000 + torch.randn(2, 64, 5, 6, 6), fmt)
    y = ops.group_norm(x, 8, backend="cpp")
    ref = ops.group_norm(x.double(), 8, backend="reference")
    assert rel(y, ref) <= FP32_TOL


def test_group_norm_many_rounds_and_chunks(isa):
    # channels_last samples of 288 KB: several rounds of whole samples (statistics then
    # output, per round) and chunks of positions with a partial last one.
    x = layout(torch.randn(3, 64, 5, 15, 15), "channels_last")
    w, b = torch.randn(64), torch.randn(64)
    scale, shift = torch.randn(3, 64), torch.randn(3, 64)
    y = ops.group_norm(x, 16, w, b, scale=scale, shift=shift, activation="silu", backend="cpp")
    ref = ops.group_norm(
        x.double(),
        16,
        w.double(),
        b.double(),
        scale=scale.double(),
        shift=shift.double(),
        activation="silu",
        backend="reference",
    )
    assert rel(y, ref) <= FP32_TOL


@pytest.mark.parametrize("fmt", ["contiguous", "channels_last"])
def test_group_norm_silu_saturates(fmt, isa):
    # Normalised values of +-hundreds: silu's exponential is clamped in the vector code;
    # the result must stay finite, v for large v and ~0 for very negative v.
    x = layout(torch.randn(2, 48, 3, 4, 4), fmt)
    w = torch.full((48,), 300.0)
    y = ops.group_norm(x, 6, w, activation="silu", backend="cpp")
    ref = ops.group_norm(x.double(), 6, w.double(), activation="silu", backend="reference")
    pre = ops.group_norm(x.double(), 6, w.double(), backend="reference")
    assert (pre < -100).any() and (pre > 100).any()
    assert rel(y, ref) <= FP32_TOL


def test_group_norm_no_affine_matches_torch(isa):
    x = torch.randn(3, 16, 4, 5, 5)
    torch.testing.assert_close(
        ops.group_norm(x, 4, backend="cpp"), torch.nn.functional.group_norm(x, 4)
    )


ATTN_CASES = [
    (7, 2, 24, (3, 5)),  # odd T, head_dim 24
    (7, 3, 5, (3, 5)),  # odd channel count (C = 15), head_dim 5
    (1, 1, 16, (2, 2)),  # T = 1
    (16, 4, 32, (1, 1)),  # 1-pixel frames
    (17, 3, 16, (2, 3)),
    (16, 2, 64, (3, 2)),  # the denoiser's T, head_dim 64
    (9, 2, 12, (2, 3)),  # head_dim not a multiple of 8: the portable loops in every build
    (5, 2, 16, (3, 11)),  # rows of 11 pixels: tiles across row ends, a partial last tile
    (16, 2, 40, (9, 9)),  # head_dim 40 (a 32-channel slice and 8); chunks of 48 + 33 pixels
    (3, 1, 8, (13, 13)),  # 169 pixels: 64-pixel chunks and a partial one
]


@pytest.mark.parametrize("T,heads,d,hw", ATTN_CASES)
@pytest.mark.parametrize("fmt", ATTENTION_FORMATS)
@pytest.mark.parametrize("dtype", CPP_DTYPES)
def test_temporal_attention(T, heads, d, hw, fmt, dtype, isa):
    q, k, v = attention_qkv(2, heads * d, T, hw, fmt, dtype)
    y = ops.temporal_attention(q, k, v, num_heads=heads, backend="cpp")
    eager = ops.temporal_attention(q, k, v, num_heads=heads, backend="reference")
    ref = ops.temporal_attention(
        q.double(), k.double(), v.double(), num_heads=heads, backend="reference"
    )
    assert y.dtype == dtype and y.shape == q.shape
    assert y.is_contiguous(memory_format=attention_output_format(q))
    check(y, eager, ref)


@pytest.mark.parametrize("noise", [False, True])
@pytest.mark.parametrize("fmt", ["contiguous", "channels_last", "strided", "strided_cl"])
@pytest.mark.parametrize("dtype", CPP_DTYPES)
def test_sampler_step(noise, fmt, dtype, isa):
    x, eps, nz = (layout(torch.randn(3, 4, 7, 5, 5).to(dtype), fmt) for _ in range(3))
    a, b, c = torch.rand(3), torch.rand(3), torch.rand(3)
    args = (nz, c) if noise else (None, None)
    y = ops.sampler_step(x, eps, a, b, *args, backend="cpp")
    eager = ops.sampler_step(x, eps, a, b, *args, backend="reference")
    ref = ops.sampler_step(
        x.double(),
        eps.double(),
        a.double(),
        b.double(),
        *((nz.double(), c.double()) if noise else (None, None)),
        backend="reference",
    )
    assert y.shape == x.shape and y.dtype == dtype
    # The fake implementation's layout, which torch.compile plans the next ops from.
    assert y.is_contiguous(memory_format=memory_format_of(x))
    check(y, eager, ref)


# Direct calls to the registered op (bypassing the Python validation) must still
# reject bad arguments with an error naming them.
def test_op_rejects_bad_group_count():
    with pytest.raises(ValueError, match="num_groups=3"):
        torch.ops.lddm.group_norm(torch.randn(2, 8, 4, 4), 3, None, None, 1e-5, None, None, False)


def test_op_rejects_unsupported_dtype():
    with pytest.raises(ValueError, match="x must be float32 or bfloat16"):
        torch.ops.lddm.group_norm(
            torch.randn(2, 8, 4, 4).half(), 4, None, None, 1e-5, None, None, False
        )
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        torch.ops.lddm.group_norm(
            torch.ones(2, 8, 4, 4, dtype=torch.int32), 4, None, None, 1e-5, None, None, False
        )


def test_op_rejects_bad_film_shape():
    with pytest.raises(ValueError, match="scale must have shape"):
        torch.ops.lddm.group_norm(
            torch.randn(2, 8, 4, 4), 4, None, None, 1e-5, torch.randn(8), None, False
        )


def test_op_rejects_modulation_not_broadcastable():
    with pytest.raises(ValueError, match="scale must have shape"):
        torch.ops.lddm.group_norm(
            torch.randn(2, 8, 3, 4, 4), 4, None, None, 1e-5, torch.randn(2, 8, 1, 4, 3), None, False
        )


def test_op_rejects_mismatched_attention_inputs():
    q = torch.randn(1, 8, 3, 2, 2)
    with pytest.raises(ValueError, match="k has shape"):
        torch.ops.lddm.temporal_attention(q, torch.randn(1, 8, 4, 2, 2), q, 2, 1.0)
    with pytest.raises(ValueError, match="num_heads=3"):
        torch.ops.lddm.temporal_attention(q, q, q, 3, 1.0)


def test_cpu_isa_names_the_build_and_refuses_unknown_names(monkeypatch):
    """LDDM_CPU_ISA picks a build by name; an unknown name is an error that says which
    names exist, not a silent fallback, for cpu_isa() and for the ops alike."""
    from lddm_fast import _C

    monkeypatch.delenv("LDDM_CPU_ISA", raising=False)
    widest = _C.cpu_isa()
    assert widest in ("default", "avx2", "avx512")
    monkeypatch.setenv("LDDM_CPU_ISA", "default")
    assert _C.cpu_isa() == "default"
    monkeypatch.setenv("LDDM_CPU_ISA", "sse9")
    with pytest.raises(RuntimeError, match="sse9 is not one of default, avx2, avx512"):
        _C.cpu_isa()
    x = torch.randn(1, 8, 2, 2, 2)
    with pytest.raises(RuntimeError, match="sse9 is not one of"):
        torch.ops.lddm.group_norm(x, 2, None, None, 1e-5, None, None, False)
