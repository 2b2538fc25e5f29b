"""The cuda backend's temporal_attention backward (csrc/cuda/temporal_attention_backward.cu,
through ``lddm::temporal_attention_lse`` and ``lddm::temporal_attention_backward``) against
autograd through the float64 reference: fresh random inputs and output gradients every
run, outputs (o, the logsumexps, dq, dk, dv) poisoned with NaN before every launch,
every dtype, q/k/v as channel views of one qkv tensor (contiguous and channels_last_3d)
and as unrelated strided tensors, odd T and head_dim, 1-pixel frames, T = 1, more tiles
than the grid cap. Tolerances: ``parity.check``. The same kernels run on the CPU in
test_cuda_emulated.py."""

from __future__ import annotations

from functools import partial

import parity
import pytest
import torch
from parity import CUDA_TEST_MARKS, attention_qkv, directional_check

pytestmark = CUDA_TEST_MARKS

DEV = "cuda"
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
check_grads = partial(parity.check_grads, backend="cuda")

CASES, FORMATS, attn_fn = parity.ATTN_GRAD_CASES, parity.ATTN_GRAD_FORMATS, parity.attention_fn


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("T,heads,d,hw", CASES, ids=str)
def test_grads_match_float64(T, heads, d, hw, fmt, dtype):
    parity.check_attention_grads("cuda", DEV, T, heads, d, hw, fmt, dtype)


def test_grad_through_one_qkv_leaf():
    parity.check_attention_grad_through_one_qkv_leaf("cuda", DEV)


def test_logsumexp():
    q, k, v = attention_qkv(2, 24, 7, (5, 5), "qkv_views_cl", torch.float32, DEV)
    parity.check_logsumexp(torch.ops.lddm.temporal_attention_lse(q, k, v, 2, 0.3)[1], q, k, 2, 0.3)


@pytest.mark.parametrize("fmt", ["qkv_views", "qkv_views_cl"])
def test_more_tiles_than_the_grid_cap(fmt):
    """16 * 520^2 positions in tiles of at most 64: more tiles than 65,535 blocks."""
    q, k, v = attention_qkv(1, 16, 2, (520, 520), fmt, torch.float32, DEV)
    check_grads(attn_fn(16), [q, k, v], torch.randn(q.shape, device=DEV))


def test_finite_differences():
    q, k, v = (torch.randn(1, 8, 5, 2, 2, device=DEV) for _ in range(3))
    directional_check(
        partial(attn_fn(2), backend="cuda"), partial(attn_fn(2), backend="reference"), [q, k, v]
    )


@pytest.mark.parametrize("fmt", ["qkv_views_cl", "contiguous"])
def test_opcheck(fmt):
    """Schema, fake implementations and autograd registration of the custom ops."""
    parity.opcheck_attention(torch.ops.lddm, fmt, DEV)


def test_launcher_rejects_bad_backward_calls():
    q, k, v = (torch.randn(1, 8, 5, 2, 2, device=DEV) for _ in range(3))
    _, lse = torch.ops.lddm.temporal_attention_lse(q, k, v, 2, 0.25)
    with pytest.raises(ValueError, match="grad_out has shape"):
        torch.ops.lddm.temporal_attention_backward(q[:, :4], q, k, v, lse, 2, 0.25)
    with pytest.raises(ValueError, match="lse must be"):
        torch.ops.lddm.temporal_attention_backward(q, q, k, v, lse.double(), 2, 0.25)
    with pytest.raises(ValueError, match="num_heads"):
        torch.ops.lddm.temporal_attention_backward(q, q, k, v, lse, 3, 0.25)


def test_default_training_call_does_not_take_the_unmeasured_cuda_backward():
    """Until a GPU run ranks it against the Triton backward, a default call that needs
    grad leaves the cuda attention backward alone (extension.CUDA_GRAD_DEFAULT_OPS)."""
    from lddm_fast.ops import dispatch
    from lddm_fast.ops.extension import CUDA_GRAD_DEFAULT_OPS

    q = torch.randn(1, 8, 5, 2, 2, device=DEV).requires_grad_()
    chosen = dispatch.select("temporal_attention", None, q, params={"num_heads": 2})
    cuda_fn = dispatch.backends()["cuda"].ops["temporal_attention"]
    assert (chosen is cuda_fn) == ("temporal_attention" in CUDA_GRAD_DEFAULT_OPS)


@pytest.mark.parametrize("fmt", ["qkv_views", "qkv_views_cl"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("T,heads,d,hw", [(16, 5, 64, (32, 32)), (16, 8, 128, (8, 8))], ids=str)
def test_full_size_grads(T, heads, d, hw, dtype, fmt):
    """The denoiser's shapes: head_dim 64 and 128, one or two positions a tile."""
    q, k, v = attention_qkv(2, heads * d, T, hw, fmt, dtype, DEV)
    check_grads(attn_fn(heads), [q, k, v], torch.randn(q.shape, device=DEV).to(dtype))
