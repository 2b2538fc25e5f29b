"""Value ranges of the clips the metrics take.

A clip is ``[C, T, H, W]`` (C = 1 or 3): uint8 with values 0..255 (what
:func:`lddm_fast.data.video_io.read_video` returns, moved channel-first), or floating
with values in [-1, 1] (what the models produce).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["clip_from_frames", "signed_unit", "unit_interval"]


def signed_unit(video: torch.Tensor) -> torch.Tensor:
    """float32 in [-1, 1]: uint8 maps by ``x / 127.5 - 1``; floats are taken as they are."""
    if video.dtype == torch.uint8:
        return video.float() / 127.5 - 1.0
    if not video.is_floating_point():
        raise ValueError(f"expected uint8 or floating videos, got {video.dtype}")
    return video.float()


def unit_interval(video: torch.Tensor) -> torch.Tensor:
    """float64 in [0, 1] (uint8 / 255, or (x + 1) / 2 for floats in [-1, 1])."""
    if video.dtype == torch.uint8:
        return video.double() / 255.0
    if not video.is_floating_point():
        raise ValueError(f"expected uint8 or floating videos, got {video.dtype}")
    return (video.double() + 1.0) / 2.0


def clip_from_frames(frames: np.ndarray) -> torch.Tensor:
    """uint8 frames ``[T, H, W]`` or ``[T, H, W, 3]`` -> uint8 clip ``[C, T, H, W]``."""
    x = torch.from_numpy(np.ascontiguousarray(frames))
    return x.unsqueeze(0) if x.ndim == 3 else x.permute(3, 0, 1, 2).contiguous()
