"""The ``triton`` backend: the Triton kernels of :mod:`lddm_fast.kernels` behind the
reference signatures.

It runs on CUDA tensors; with ``TRITON_INTERPRET=1`` in the environment (set before
lddm_fast is imported) the same kernels run on CPU tensors through Triton's interpreter,
which is how the CPU-only CI tests them. Importing this module never imports triton:
a machine without it still imports :mod:`lddm_fast.ops`, and :func:`status` says why
the backend is unusable.
"""

from __future__ import annotations

import functools
import os
from types import ModuleType

import torch


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
    """See :func:`lddm_fast.ops.group_norm`; ``out`` optionally receives the result."""
    return _kernels().group_norm.group_norm(
        x, num_groups, weight, bias, eps, scale=scale, shift=shift, activation=activation, out=out
    )


def temporal_attention(q, k, v, *, num_heads, scale=None, out=None):
    """See :func:`lddm_fast.ops.temporal_attention`; ``out`` optionally receives the result."""
    attention = _kernels().temporal_attention.temporal_attention
    return attention(q, k, v, num_heads=num_heads, scale=scale, out=out)


OPS = {"group_norm": group_norm, "temporal_attention": temporal_attention}
