"""``lddm_fast.accelerate``: our fused kernels inside diffusers video UNets.

>>> unet = lddm_fast.accelerate(pipe.unet)          # or accelerate(pipe): its .unet
>>> print(unet.lddm_fast_acceleration)              # what was replaced, what skipped, why
>>> lddm_fast.accelerate.undo(unet)                 # the original modules, bit for bit
>>> with lddm_fast.accelerate.accelerated(unet):    # or only inside a block
...     frames = pipe(image).frames

Supported: ``UNetSpatioTemporalConditionModel`` (Stable Video Diffusion),
``UNet3DConditionModel``, ``I2VGenXLUNet``, ``UNetMotionModel`` (AnimateDiff), and any
model built from the same blocks. Parameters, buffers and ``state_dict`` are untouched
(modules change class, attention modules change processor). Call it before enabling
CPU offload or other forward hooks: a module whose forward a hook already wraps is
skipped and reported. Works under ``torch.compile`` of the accelerated model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TypeVar

from torch import nn

from lddm_fast.integrations.diffusers.attention import TemporalAttnProcessor
from lddm_fast.integrations.diffusers.convert import (
    REPORT_ATTR,
    AccelerationReport,
    accelerate_module,
    undo_module,
)

__all__ = ["AccelerationReport", "TemporalAttnProcessor", "accelerate", "accelerated", "undo"]

M = TypeVar("M")


def _unet(model_or_pipeline) -> nn.Module:
    """The module to walk: a pipeline's ``unet``, a torch.compile wrapper's original."""
    target = getattr(model_or_pipeline, "unet", model_or_pipeline)
    target = getattr(target, "_orig_mod", target)
    if not isinstance(target, nn.Module):
        raise TypeError(
            "lddm_fast.accelerate takes a diffusers model (an nn.Module) or a pipeline with "
            f"a .unet, got {type(model_or_pipeline).__name__}"
        )
    return target


def accelerate(model_or_pipeline: M, *, backend: str | None = None) -> M:
    """Run the model's GroupNorm(+SiLU, +scale-shift) and temporal attention through
    :mod:`lddm_fast.ops`, in place, where the numerics are the same.

    Idempotent (a second call changes nothing but the backend). The report, an
    :class:`AccelerationReport`, is stored as the unet's ``lddm_fast_acceleration``.

    Args:
        model_or_pipeline: a diffusers model, a pipeline with a ``unet``, or a
            ``torch.compile`` wrapper of either model.
        backend: force one :mod:`lddm_fast.ops` backend for every replaced op (None: the
            fastest available for each call's device and dtype).

    Returns:
        ``model_or_pipeline`` itself.
    """
    unet = _unet(model_or_pipeline)
    setattr(unet, REPORT_ATTR, accelerate_module(unet, backend))
    return model_or_pipeline


def undo(model_or_pipeline: M) -> M:
    """Put back every original module class and attention processor (outputs are then
    bit-identical to before :func:`accelerate`). Returns ``model_or_pipeline``."""
    unet = _unet(model_or_pipeline)
    undo_module(unet)
    if hasattr(unet, REPORT_ATTR):
        delattr(unet, REPORT_ATTR)
    return model_or_pipeline


@contextlib.contextmanager
def accelerated(model_or_pipeline, *, backend: str | None = None) -> Iterator[AccelerationReport]:
    """Accelerate inside a ``with`` block, undo on leaving it; yields the report."""
    accelerate(model_or_pipeline, backend=backend)
    try:
        yield getattr(_unet(model_or_pipeline), REPORT_ATTR)
    finally:
        undo(model_or_pipeline)


# `lddm_fast.accelerate.undo(model)` and `lddm_fast.accelerate.accelerated(model)`.
accelerate.undo = undo
accelerate.accelerated = accelerated
