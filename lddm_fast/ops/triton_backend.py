"""The ``triton`` backend: the Triton kernels of :mod:`lddm_fast.kernels` behind the
reference signatures.

It runs on CUDA tensors; with ``TRITON_INTERPRET=1`` in the environment (set before
lddm_fast is imported) the same kernels run on CPU tensors through Triton's interpreter,
which is how the CPU-only CI tests them. Importing this module never imports triton:
a machine without it still imports :mod:`lddm_fast.ops`, and :func:`status` says why
the backend is unusable.

Calls that need grad go through the ``torch.ops.lddm_triton`` custom ops registered
here (``torch.library.custom_op`` with fake implementations and ``register_autograd``),
so torch.compile(fullgraph=True) traces them and autograd runs the Triton backward
kernels; the forward op also returns what its backward reads (group statistics, the
attention logsumexp). Inference calls launch the forward kernels directly.
"""

from __future__ import annotations

import functools
import os
from types import ModuleType

import torch

from lddm_fast.layout import attention_output_format, memory_format_of


def interpreter_requested() -> bool:
    """Whether ``TRITON_INTERPRET`` asks for Triton's CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "on", "yes")


# The registered device list is fixed when lddm_fast.ops imports this module.
_INTERPRET_AT_IMPORT = interpreter_requested()


def devices() -> tuple[str, ...]:
    """Device types the backend accepts: CUDA, plus CPU under the interpreter."""
    return ("cuda", "cpu") if _INTERPRET_AT_IMPORT else ("cuda",)


@functools.cache
def _load() -> tuple[ModuleType | None, str]:
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        return None, f"triton not importable: {exc}"
    try:
        from lddm_fast import kernels
    except ImportError as exc:
        return None, f"lddm_fast.kernels not importable: {exc}"
    return kernels, "ok"


# A constant to torch.compile: the dispatcher calls this while tracing a model, and
# loading triton is no part of the graph.
@torch.compiler.assume_constant_result
def status() -> str:
    """``"ok"`` on a CUDA machine, ``"ok (interpreter)"`` under ``TRITON_INTERPRET=1``,
    else why the backend cannot run here."""
    kernels, why = _load()
    if kernels is None:
        return why
    if kernels.INTERPRET != _INTERPRET_AT_IMPORT:
        # The kernels, loaded after the backend was registered, were wrapped for the
        # other mode than its device list.
        return (
            "TRITON_INTERPRET changed after lddm_fast.ops was imported: set it before "
            "importing lddm_fast"
        )
    if kernels.INTERPRET:
        return "ok (interpreter)"
    if not torch.cuda.is_available():
        return (
            "no CUDA device visible to torch (set TRITON_INTERPRET=1 before importing "
            "lddm_fast to run the kernels on CPU through Triton's interpreter)"
        )
    return "ok"


def limits(op: str, main: torch.Tensor, params: dict) -> str | None:
    """Why the kernels cannot take this shape (the dispatcher then picks another
    backend by default), or None."""
    if op != "temporal_attention":
        return None
    from lddm_fast.kernels.temporal_attention import MAX_FRAMES, MAX_HEAD_DIM

    frames, head_dim = main.shape[2], main.shape[1] // params.get("num_heads", 1)
    if frames > MAX_FRAMES:
        return f"T={frames} exceeds its limit of {MAX_FRAMES} frames"
    if head_dim > MAX_HEAD_DIM:
        return f"head_dim={head_dim} exceeds its limit of {MAX_HEAD_DIM}"
    return None


def _kernels() -> ModuleType:
    kernels, why = _load()
    if kernels is None:
        raise RuntimeError(f"triton backend unusable: {why}")
    return kernels


def _needs_grad(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _no_out_with_grad(out: torch.Tensor | None) -> None:
    if out is not None:
        raise ValueError("out= is for inference: a call that needs grad allocates its output")


# ---- group_norm ---------------------------------------------------------------------


@torch.library.custom_op("lddm_triton::group_norm", mutates_args=())
def _group_norm_op(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    scale: torch.Tensor | None,
    shift: torch.Tensor | None,
    silu: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward of a call that needs grad: ``(y, stats)``, stats ``[N, G, 2]`` float32
    (each group's mean of ``x - k`` and rstd) for the backward."""
    kernels = _kernels()
    out = torch.empty_like(x, memory_format=memory_format_of(x))
    stats = x.new_empty((x.shape[0], num_groups, 2), dtype=torch.float32)
    kernels.utils.poison_if_requested(out, stats)
    kernels.group_norm.group_norm(
        x,
        num_groups,
        weight,
        bias,
        eps,
        scale=scale,
        shift=shift,
        activation="silu" if silu else None,
        out=out,
        stats=stats,
    )
    return out, stats


@_group_norm_op.register_fake
def _(x, num_groups, weight, bias, eps, scale, shift, silu):
    stats = x.new_empty((x.shape[0], num_groups, 2), dtype=torch.float32)
    return torch.empty_like(x, memory_format=memory_format_of(x)), stats


@torch.library.custom_op("lddm_triton::group_norm_backward", mutates_args=())
def _group_norm_backward_op(
    grad_y: torch.Tensor,
    x: torch.Tensor,
    stats: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    scale: torch.Tensor | None,
    shift: torch.Tensor | None,
    silu: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dx, dweight, dbias, dscale, dshift)``; an absent argument's grad is an empty
    float32 tensor (an op returns no None)."""
    grads = _kernels().group_norm.group_norm_backward(
        grad_y,
        x,
        stats,
        num_groups,
        weight,
        bias,
        scale=scale,
        shift=shift,
        activation="silu" if silu else None,
    )
    return tuple(_absent(x) if g is None else g for g in grads)


@_group_norm_backward_op.register_fake
def _(grad_y, x, stats, num_groups, weight, bias, scale, shift, silu):
    dx = torch.empty_like(x, memory_format=memory_format_of(x))
    params = (weight, bias, scale, shift)
    contiguous = torch.contiguous_format
    return dx, *(
        _absent(x) if t is None else torch.empty_like(t, memory_format=contiguous) for t in params
    )


def _absent(x: torch.Tensor) -> torch.Tensor:
    return x.new_empty((0,), dtype=torch.float32)


def _group_norm_setup(ctx, inputs, output):
    x, num_groups, weight, bias, _eps, scale, shift, silu = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(x, output[1], weight, bias, scale, shift)
    ctx.args = (num_groups, silu)


def _group_norm_backward(ctx, grad_y, _grad_stats):
    x, stats, weight, bias, scale, shift = ctx.saved_tensors
    num_groups, silu = ctx.args
    grads = torch.ops.lddm_triton.group_norm_backward(
        grad_y, x, stats, num_groups, weight, bias, scale, shift, silu
    )
    need = ctx.needs_input_grad
    wanted = (need[0], need[2], need[3], need[5], need[6])  # x, weight, bias, scale, shift
    dx, dw, db, ds, dh = (g if w else None for g, w in zip(grads, wanted, strict=True))
    return dx, None, dw, db, None, ds, dh, None


_group_norm_op.register_autograd(_group_norm_backward, setup_context=_group_norm_setup)


def group_norm(
    x,
    num_groups,
    weight=None,
    bias=None,
    eps=1e-5,
    *,
    scale=None,
    shift=None,
    activation=None,
    out=None,
):
    """See :func:`lddm_fast.ops.group_norm`; ``out`` optionally receives the result of
    an inference call."""
    if _needs_grad(x, weight, bias, scale, shift):
        _no_out_with_grad(out)
        silu = activation == "silu"
        return _group_norm_op(x, num_groups, weight, bias, float(eps), scale, shift, silu)[0]
    return _kernels().group_norm.group_norm(
        x, num_groups, weight, bias, eps, scale=scale, shift=shift, activation=activation, out=out
    )


# ---- temporal_attention ----------------------------------------------------------------


@torch.library.custom_op("lddm_triton::temporal_attention_lse", mutates_args=())
def _attention_lse_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward of a call that needs grad: ``(out, lse)``, lse ``[B, heads, T, H, W]``
    float32, the logsumexp of each query's scaled logits, from which the backward
    recomputes the probabilities (FlashAttention-style: not the [T, T] matrices)."""
    kernels = _kernels()
    out, lse = _attention_lse_like(q, num_heads)
    kernels.utils.poison_if_requested(out, lse)
    kernels.temporal_attention.temporal_attention(
        q, k, v, num_heads=num_heads, scale=scale, out=out, lse=lse
    )
    return out, lse


@_attention_lse_op.register_fake
def _(q, k, v, num_heads, scale):
    return _attention_lse_like(q, num_heads)


def _attention_lse_like(q: torch.Tensor, num_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    b, _, t, h, w = q.shape
    out = torch.empty(
        q.shape, dtype=q.dtype, device=q.device, memory_format=attention_output_format(q)
    )
    return out, q.new_empty((b, num_heads, t, h, w), dtype=torch.float32)


@torch.library.custom_op("lddm_triton::temporal_attention_backward", mutates_args=())
def _attention_backward_op(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lse: torch.Tensor,
    num_heads: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dq, dk, dv)``, each in the layout the forward gives its input."""
    return _kernels().temporal_attention.temporal_attention_backward(
        grad_out, q, k, v, lse, num_heads=num_heads, scale=scale
    )


@_attention_backward_op.register_fake
def _(grad_out, q, k, v, lse, num_heads, scale):
    return tuple(
        torch.empty(
            t.shape, dtype=t.dtype, device=t.device, memory_format=attention_output_format(t)
        )
        for t in (q, k, v)
    )


def _attention_setup(ctx, inputs, output):
    q, k, v, num_heads, scale = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(q, k, v, output[1])
    ctx.args = (num_heads, scale)


def _attention_backward(ctx, grad_out, _grad_lse):
    q, k, v, lse = ctx.saved_tensors
    grads = torch.ops.lddm_triton.temporal_attention_backward(grad_out, q, k, v, lse, *ctx.args)
    dq, dk, dv = (g if w else None for g, w in zip(grads, ctx.needs_input_grad[:3], strict=True))
    return dq, dk, dv, None, None


_attention_lse_op.register_autograd(_attention_backward, setup_context=_attention_setup)


def temporal_attention(q, k, v, *, num_heads, scale=None, out=None):
    """See :func:`lddm_fast.ops.temporal_attention`; ``out`` optionally receives the
    result of an inference call."""
    if _needs_grad(q, k, v):
        _no_out_with_grad(out)
        if scale is None:
            scale = (q.shape[1] // num_heads) ** -0.5
        return _attention_lse_op(q, k, v, num_heads, float(scale))[0]
    attention = _kernels().temporal_attention.temporal_attention
    return attention(q, k, v, num_heads=num_heads, scale=scale, out=out)


OPS = {"group_norm": group_norm, "temporal_attention": temporal_attention}
# Both ops have a backward (the custom ops above). A default training call takes them:
# not yet timed on a GPU (benchmarks/suites/kernels.py, fwd+bwd cases, has a triton
# provider for that); narrow this tuple if the timing says eager autograd wins.
BACKWARD_OPS = ("group_norm", "temporal_attention")
GRAD_DEFAULT_OPS = BACKWARD_OPS
