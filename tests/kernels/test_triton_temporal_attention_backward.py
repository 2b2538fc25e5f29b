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

# (T, heads, head_dim, (H, W)): odd T and head_dim 24 | T = 1 | 1-pixel frames, head_dim
# 8 | T = 17 (3 positions per 64-row tile), head_dim 12, C = 36.
CASES = [
    (7, 2, 24, (3, 5)),
    (1, 1, 16, (2, 2)),
    (16, 4, 8, (1, 1)),
    (17, 3, 12, (2, 3)),
]
FORMATS = ["contiguous", "qkv_views", "qkv_views_cl", "mixed"]


def attn_fn(heads, scale=None):
    def fn(q, k, v, *, backend):
        return ops.temporal_attention(q, k, v, num_heads=heads, scale=scale, backend=backend)

    return fn


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("T,heads,d,hw", CASES, ids=str)
def test_grads_match_float64(T, heads, d, hw, fmt, dtype):
    B, C = 2, heads * d
    q, k, v = attention_qkv(B, C, T, hw, fmt, dtype, DEVICE)
    # The output gradient in yet another layout (channels-last), read through its strides.
    go = torch.randn(B, C, T, *hw, device=DEVICE).to(dtype)
    check_grads(attn_fn(heads), [q, k, v], go.contiguous(memory_format=torch.channels_last_3d))


@pytest.mark.parametrize("fmt", ["frames_cl", "transposed_hw", "misaligned"])
def test_other_layouts_and_explicit_scale(fmt):
    q, k, v = attention_qkv(2, 24, 7, (3, 4), fmt, torch.float32, DEVICE)
    check_grads(attn_fn(2, scale=0.3), [q, k, v], torch.randn(2, 24, 7, 3, 4, device=DEVICE))


def test_grad_through_one_qkv_leaf():
    """The model's case: q, k, v are channel slices of one channels-last qkv tensor that
    needs grad; autograd concatenates the three grads into its grad."""
    qkv = torch.randn(2, 48, 7, 3, 3, device=DEVICE)
    leaf = qkv.contiguous(memory_format=torch.channels_last_3d).requires_grad_()
    out = ops.temporal_attention(*leaf.chunk(3, dim=1), num_heads=2, backend="triton")
    out.square().sum().backward()
    ref = qkv.double().requires_grad_()
    out = ops.temporal_attention(*ref.chunk(3, dim=1), num_heads=2, backend="reference")
    out.square().sum().backward()
    assert rel(leaf.grad, ref.grad) <= parity.FP32_TOL


@pytest.mark.parametrize("fmt", ["qkv_views_cl", "mixed"])
def test_logsumexp_and_capped_grid(fmt):
    """The saved logsumexp against float64, and the backward with fewer programs than
    tiles (each program loops) still writing every element."""
    q, k, v = attention_qkv(2, 24, 7, (5, 5), fmt, torch.float32, DEVICE)
    B, C, T, H, W = q.shape
    lse = torch.full((B, 2, T, H, W), float("nan"), device=DEVICE)
    temporal_attention(q, k, v, num_heads=2, scale=0.3, lse=lse, max_programs=3)
    qs, ks = (t.double().reshape(B, 2, C // 2, T, H, W) for t in (q, k))
    logits = torch.einsum("bndiyx,bndjyx->bnijyx", qs, ks) * 0.3
    assert rel(lse, torch.logsumexp(logits, dim=3)) <= 1e-6

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
    qkv = attention_qkv(2, 8, 5, (3, 3), fmt, torch.float32, DEVICE)
    q, k, v = (t.requires_grad_() for t in qkv)
    torch.library.opcheck(torch.ops.lddm_triton.temporal_attention_lse.default, (q, k, v, 2, 0.25))
    with torch.no_grad():
        _, lse = torch.ops.lddm_triton.temporal_attention_lse(q, k, v, 2, 0.25)
    args = (torch.randn(q.shape, device=DEVICE), q.detach(), k.detach(), v.detach(), lse, 2, 0.25)
    torch.library.opcheck(
        torch.ops.lddm_triton.temporal_attention_backward.default,
        args,
        test_utils=("test_schema", "test_faketensor"),
    )


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
