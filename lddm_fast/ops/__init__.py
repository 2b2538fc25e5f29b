"""Fused ops of the LDDM denoiser, each dispatched to the fastest available backend.

Backends: ``reference`` (plain PyTorch, differentiable, always there), ``cpp`` (the
C++ extension on CPU tensors), ``cuda`` (the extension's CUDA kernels), ``triton``
(Triton kernels on CUDA tensors; on CPU through the interpreter when
``TRITON_INTERPRET=1`` is set before import). On CUDA the default is triton, then
cuda, then reference, per op (until benchmarks on a GPU say otherwise). See
:func:`available_backends` for what works here and :func:`use_backend` /
``LDDM_BACKEND`` to force one. Arguments are validated here once, with errors that
name the argument, before any backend runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lddm_fast.ops import extension, reference, triton_backend
from lddm_fast.ops.dispatch import (
    Backend,
    BackendError,
    available_backends,
    default_choice,
    prefer,
    register,
    select,
    use_backend,
)

__all__ = [
    "BackendError",
    "available_backends",
    "default_choice",
    "group_norm",
    "sampler_step",
    "silu",
    "temporal_attention",
    "use_backend",
]

_FLOATS = (torch.float32, torch.bfloat16, torch.float16)

register(
    Backend(
        name="reference",
        ops={
            "group_norm": reference.group_norm,
            "temporal_attention": reference.temporal_attention,
            "sampler_step": reference.sampler_step,
        },
        devices=("cpu", "cuda"),
        dtypes=(*_FLOATS, torch.float64),
        status=lambda: "ok",
        differentiable=True,
    )
)
register(
    Backend(
        name="cpp",
        ops=extension.CPP_OPS,
        devices=("cpu",),
        dtypes=(torch.float32, torch.bfloat16),
        status=extension.cpp_status,
        differentiable=extension.CPP_BACKWARD_OPS,
        grad_default=extension.CPP_GRAD_DEFAULT_OPS,
    ),
    default_for={"cpu": 0},
)
register(
    Backend(
        name="cuda",
        ops=extension.CUDA_OPS,
        devices=("cuda",),
        dtypes=_FLOATS,
        status=extension.cuda_status,
        limits=extension.cuda_limits,
        differentiable=extension.CUDA_BACKWARD_OPS,
        grad_default=extension.CUDA_GRAD_DEFAULT_OPS,
    ),
    default_for={"cuda": 0},
)
register(
    Backend(
        name="triton",
        ops=triton_backend.OPS,
        devices=triton_backend.devices(),
        dtypes=_FLOATS,
        status=triton_backend.status,
        limits=triton_backend.limits,
        differentiable=triton_backend.BACKWARD_OPS,
        grad_default=triton_backend.GRAD_DEFAULT_OPS,
    ),
    default_for={"cuda": 0},
)
# Measured on an H200 in bf16 (benchmarks/RESULTS.md, 2026-12-04): the CUDA
# group_norm is fastest at 3 of the 5 model shapes (the Triton one takes ~0.1 ms at
# every shape, a fixed per-call cost above the CUDA kernel's time at batch 1-8); the
# Triton attention at 3 of 4 (up to 7x the CUDA one; at batch 1 within 10%). Float32
# and float16 were not timed on the GPU and follow the bf16 ranking.
prefer("cuda", "group_norm", ["cuda", "triton"])
prefer("cuda", "temporal_attention", ["triton", "cuda"])


def _check_tensor(name: str, t: torch.Tensor, device: torch.device | None = None) -> None:
    """t is a floating-point tensor, on ``device`` unless that is None (the input's own
    check). Callers read the input's device once: each ``.device`` builds an object."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} is on {t.device} but the input is on {device}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")


def _check_modulation(name: str, t: torch.Tensor, x: torch.Tensor) -> None:
    """A group_norm ``scale``/``shift`` is per-sample FiLM ``[N, C]`` or spatial (x's
    dims, broadcastable to x); any other shape is a ValueError."""
    n, c = x.shape[:2]
    if t.shape == (n, c):
        return
    if t.dim() == x.dim() and all(s in (1, xs) for s, xs in zip(t.shape, x.shape, strict=True)):
        return
    raise ValueError(
        f"{name} must have shape ({n}, {c}) = [N, C] (FiLM) or x's {x.dim()} dims "
        f"broadcastable to {tuple(x.shape)} (spatial, e.g. [N, C, 1, H, W]), "
        f"got {tuple(t.shape)}"
    )


def group_norm(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
    *,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    activation: str | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """GroupNorm with the affine, FiLM and activation fused into one pass.

    ``y = act((xhat * weight + bias) * (1 + scale) + shift)`` where ``xhat`` is x
    normalised over (C / num_groups, *spatial) per sample and group, with statistics
    accumulated in float32.

    Args:
        x: ``[N, C, H, W]`` or ``[N, C, T, H, W]``; contiguous or channels_last(_3d);
            float32, bfloat16 or float16.
        num_groups: G, a divisor of C.
        weight, bias: ``[C]`` or None.
        eps: added to the variance.
        scale, shift: per-sample FiLM ``[N, C]``; or a spatial modulation with x's
            number of dims, broadcastable to x, any strides: ``[N, C, 1, H, W]`` for
            5-D x (SPADE: one map per sample broadcast over T), ``[N, C, H, W]`` for
            4-D x; or None. The two may take different forms.
        activation: None or ``"silu"``.
        backend: force one backend for this call (see :func:`available_backends`).

    Returns:
        ``[N, C, *spatial]`` in x's dtype and memory format.
    """
    _check_tensor("x", x)
    if x.dim() not in (4, 5):
        raise ValueError(
            f"x must be 4-D [N, C, H, W] or 5-D [N, C, T, H, W], got shape {tuple(x.shape)}"
        )
    n, c = x.shape[:2]
    if not isinstance(num_groups, int) or num_groups <= 0 or c % num_groups:
        raise ValueError(f"num_groups={num_groups} must be a positive divisor of C={c}")
    device = x.device
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None:
            _check_tensor(name, t, device)
            if t.shape != (c,):
                raise ValueError(f"{name} must have shape ({c},), got {tuple(t.shape)}")
    for name, t in (("scale", scale), ("shift", shift)):
        if t is not None:
            _check_tensor(name, t, device)
            _check_modulation(name, t, x)
    if activation not in (None, "silu"):
        raise ValueError(f"activation must be None or 'silu', got {activation!r}")
    impl = select("group_norm", backend, x, weight, bias, scale, shift)
    return impl(x, num_groups, weight, bias, eps, scale=scale, shift=shift, activation=activation)


def silu(x: torch.Tensor, *, inplace: bool = False) -> torch.Tensor:
    """SiLU where no norm comes before it (after a norm it is
    ``group_norm(..., activation="silu")``, one fused pass).

    Every backend runs torch's own elementwise kernel: it is one pass over x already,
    so there is nothing to fuse and no backend to choose. The models call it here so
    that every norm and activation goes through :mod:`lddm_fast.ops`.

    Args:
        x: any shape, floating point.
        inplace: overwrite x.

    Returns:
        x's shape, dtype and memory format.
    """
    _check_tensor("x", x)
    return F.silu(x, inplace=inplace)


def temporal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    num_heads: int,
    scale: float | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Multi-head softmax attention over the T frames at every spatial position.

    Args:
        q, k, v: ``[B, C, T, H, W]`` with ``C = num_heads * head_dim``, any strides
            (views of one ``[B, 3C, T, H, W]`` qkv tensor are the normal case).
        num_heads: number of heads.
        scale: logit scale, default ``head_dim ** -0.5``.
        backend: force one backend for this call.

    Returns:
        ``[B, C, T, H, W]`` in q's dtype; channels_last_3d when q's channel stride is 1,
        else contiguous. Softmax is computed in float32.
    """
    _check_tensor("q", q)
    device = q.device
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t is not q:
            _check_tensor(name, t, device)
        if t.dim() != 5:
            raise ValueError(f"{name} must be 5-D [B, C, T, H, W], got shape {tuple(t.shape)}")
        if t.shape != q.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)} but q has {tuple(q.shape)}")
        if t.dtype != q.dtype:
            raise ValueError(f"{name} is {t.dtype} but q is {q.dtype}")
    c = q.shape[1]
    if not isinstance(num_heads, int) or num_heads <= 0 or c % num_heads:
        raise ValueError(f"num_heads={num_heads} must be a positive divisor of C={c}")
    impl = select("temporal_attention", backend, q, k, v, params={"num_heads": num_heads})
    return impl(q, k, v, num_heads=num_heads, scale=scale)


def sampler_step(
    x: torch.Tensor,
    eps: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    noise: torch.Tensor | None = None,
    c: torch.Tensor | None = None,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """The per-element update of a DDIM / DPM-Solver step, fused into one pass:
    ``x_next = a * x + b * eps (+ c * noise)`` in float32.

    Args:
        x, eps, noise: ``[B, ...]`` of one shape and dtype.
        a, b, c: per-sample coefficients ``[B]`` (float32 on x's device, so a captured
            CUDA graph can update them without a host sync).

    Returns:
        ``[B, ...]`` in x's dtype and memory format.
    """
    _check_tensor("x", x)
    if x.dim() < 1:
        raise ValueError("x must have a batch dimension [B, ...]")
    bsz, device = x.shape[0], x.device
    for name, t in (("eps", eps), ("noise", noise)):
        if t is not None:
            _check_tensor(name, t, device)
            if t.shape != x.shape or t.dtype != x.dtype:
                raise ValueError(
                    f"{name} must match x ({tuple(x.shape)}, {x.dtype}), "
                    f"got {tuple(t.shape)}, {t.dtype}"
                )
    if (noise is None) != (c is None):
        raise ValueError("noise and c must be given together")
    for name, t in (("a", a), ("b", b), ("c", c)):
        if t is not None:
            _check_tensor(name, t, device)
            if t.shape != (bsz,):
                raise ValueError(f"{name} must have shape ({bsz},) = [B], got {tuple(t.shape)}")
    impl = select("sampler_step", backend, x, eps, noise)
    return impl(x, eps, a, b, noise, c)
