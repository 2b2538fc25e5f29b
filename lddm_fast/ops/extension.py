"""The ``cpp`` and ``cuda`` backends: thin wrappers over the ``torch.ops.lddm`` custom
ops of the compiled extension. Both call the same op names; the dispatcher picks the
CPU or CUDA kernel from the tensors' device."""

from __future__ import annotations

import torch

from lddm_fast import _ext

_CUDA_OPS = ("group_norm", "temporal_attention", "sampler_step")  # the CUDA kernels (csrc/cuda)


def cpp_status() -> str:
    return _ext.EXTENSION_STATUS


def cuda_status() -> str:
    if _ext.EXTENSION is None:
        return _ext.EXTENSION_STATUS
    if not _ext.CUDA_BUILD.startswith("built"):
        return f"CUDA kernels {_ext.CUDA_BUILD}"
    if not torch.cuda.is_available():
        return "no CUDA device visible to torch"
    return "ok"


# The CUDA attention keeps one position's q, k, v and logits in shared memory; the
# issue's supported range (T <= 64, head_dim <= 128: 116 KB) fits every sm_80+ GPU.
CUDA_MAX_FRAMES, CUDA_MAX_HEAD_DIM = 64, 128


def cuda_limits(op: str, main: torch.Tensor, params: dict) -> str | None:
    """Why the CUDA kernels cannot take this shape, or None."""
    if op != "temporal_attention":
        return None
    frames, head_dim = main.shape[2], main.shape[1] // params.get("num_heads", 1)
    if frames > CUDA_MAX_FRAMES:
        return f"T={frames} exceeds its limit of {CUDA_MAX_FRAMES} frames"
    if head_dim > CUDA_MAX_HEAD_DIM:
        return f"head_dim={head_dim} exceeds its limit of {CUDA_MAX_HEAD_DIM}"
    return None


def group_norm(
    x, num_groups, weight=None, bias=None, eps=1e-5, *, scale=None, shift=None, activation=None
):
    return torch.ops.lddm.group_norm(
        x, num_groups, weight, bias, float(eps), scale, shift, activation == "silu"
    )


def temporal_attention(q, k, v, *, num_heads, scale=None):
    if scale is None:
        scale = (q.shape[1] // num_heads) ** -0.5
    return torch.ops.lddm.temporal_attention(q, k, v, num_heads, float(scale))


def sampler_step(x, eps, a, b, noise=None, c=None):
    return torch.ops.lddm.sampler_step(x, eps, a, b, noise, c)


CPP_OPS = {
    "group_norm": group_norm,
    "temporal_attention": temporal_attention,
    "sampler_step": sampler_step,
}
CUDA_OPS = {name: CPP_OPS[name] for name in _CUDA_OPS}
