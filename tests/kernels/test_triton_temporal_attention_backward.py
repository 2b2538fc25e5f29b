"""The triton temporal_attention backward (kernels/temporal_attention.py, through the
``lddm_triton::temporal_attention_lse`` custom op) against autograd through the float64
reference.

Runs on a CUDA GPU, or on CPU through Triton's interpreter when the test run sets
``TRITON_INTERPRET=1`` (small shapes). Fresh random inputs and output gradients every
run, every kernel output (o, the logsumexp, dq, dk, dv) NaN-poisoned before its launch,
every dtype, q/k/v as channel views of one qkv tensor (contiguous and channels_last_3d)
and as unrelated strided tensors, odd T and head_dim, 1-pixel frames, T = 1, and a launch
grid capped below the number of tiles. Tolerances: ``parity.check``.
"""

from __future__ import annotations

from functools import partial

import parity
import pytest
import torch
from parity import attention_qkv, directional_check, rel

from lddm_fast import ops

STATUS = ops.available_backends()["triton"]
pytestmark = [
    pytest.mark.skipif(
        not STATUS.startswith("ok"), reason=f"triton backend unusable here: {STATUS}"
    ),
    pytest.mark.usefixtures("poisoned_outputs"),
]
if STATUS.startswith("ok"):
    from lddm_fast.kernels.temporal_attention import (
        temporal_attention,
        temporal_attention_backward,
    )

DEVICE = "cuda" if STATUS == "ok" else "cpu"
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
check_grads = partial(parity.check_grads, backend="triton")

CASES, FORMATS, attn_fn = parity.ATTN_GRAD_CASES, parity.ATTN_GRAD_FORMATS, parity.attention_fn


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("T,heads,d,hw", CASES, ids=str)
def test_grads_match_float64(T, heads, d, hw, fmt, dtype):
    parity.check_attention_grads("triton", DEVICE, T, heads, d, hw, fmt, dtype)


@pytest.mark.parametrize("fmt", ["frames_cl", "transposed_hw", "misaligned"])
def test_other_layouts_and_explicit_scale(fmt):
    q, k, v = attention_qkv(2, 24, 7, (3, 4), fmt, torch.float32, DEVICE)
    check_grads(attn_fn(2, scale=0.3), [q, k, v], torch.randn(2, 24, 7, 3, 4, device=DEVICE))


def test_grad_through_one_qkv_leaf():
    parity.check_attention_grad_through_one_qkv_leaf("triton", DEVICE)


@pytest.mark.parametrize("fmt", ["qkv_views_cl", "mixed"])
def test_logsumexp_and_capped_grid(fmt):
    """The saved logsumexp against float64, and the backward with fewer programs than
    tiles (each program loops) still writing every element."""
    q, k, v = attention_qkv(2, 24, 7, (5, 5), fmt, torch.float32, DEVICE)
    B, C, T, H, W = q.shape
    lse = torch.full((B, 2, T, H, W), float("nan"), device=DEVICE)
    temporal_attention(q, k, v, num_heads=2, scale=0.3, lse=lse, max_programs=3)
    parity.check_logsumexp(lse, q, k, 2, 0.3)

    go = torch.randn(B, C, T, H, W, device=DEVICE)
    grads = temporal_attention_backward(go, q, k, v, lse, num_heads=2, scale=0.3, max_programs=3)
    leaves = [t.double().requires_grad_() for t in (q, k, v)]
    ops.temporal_attention(*leaves, num_heads=2, scale=0.3, backend="reference").backward(
        go.double()
    )
    for got, leaf in zip(grads, leaves, strict=True):
        assert rel(got, leaf.grad) <= parity.FP32_TOL


def test_finite_differences():
    q, k, v = (torch.randn(1, 8, 5, 2, 2, device=DEVICE) for _ in range(3))
    fn = partial(attn_fn(2), backend="triton")
    directional_check(fn, partial(attn_fn(2), backend="reference"), [q, k, v])


@pytest.mark.parametrize("fmt", ["qkv_views_cl", "contiguous"])
def test_opcheck(fmt):
    """Schema, fake implementations and autograd registration of the custom ops."""
    parity.opcheck_attention(torch.ops.lddm_triton, fmt, DEVICE)


def test_default_training_call_takes_triton_on_cuda():
    assert ops.default_choice("temporal_attention", "cuda", torch.bfloat16, True) == "triton"
    assert ops.default_choice("group_norm", "cuda", torch.float32, True) == "triton"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("fmt", ["qkv_views", "qkv_views_cl"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "T,heads,d,hw", [(16, 5, 64, (32, 32)), (16, 8, 128, (8, 8)), (64, 8, 64, (16, 16))], ids=str
)
def test_full_size_grads(T, heads, d, hw, dtype, fmt):
    """The denoiser's shapes (head_dim 128, T = 64: 128-row tiles), autotuned configs."""
    q, k, v = attention_qkv(2, heads * d, T, hw, fmt, dtype, DEVICE)
    go = torch.randn(q.shape, device=DEVICE).to(dtype)
    check_grads(attn_fn(heads), [q, k, v], go)
