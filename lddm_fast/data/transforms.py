"""Clip sampling and spatial transforms, identical for every frame of a clip.

A training clip is ``T + 1`` frames (the conditioning frame x0 and T to generate)
taken ``stride`` frames apart. Frames are resized keeping their aspect ratio and
either padded (``"pad"``: the whole frame is kept, black borders) or centre-cropped
(``"crop"``) to the model size, then scaled from 0..255 to [-1, 1].

Training augmentation draws one random crop (a window of 80-100 % of each side)
and one horizontal flip per clip and applies them to all its frames, so motion is
not corrupted. Vertical flips are never used: depth has a physical direction
(attenuation, shadows fall below lesions).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


def clip_span(length: int, stride: int) -> int:
    """Frames a clip of ``length`` frames at ``stride`` spans: ``(length - 1) * stride + 1``."""
    return (length - 1) * stride + 1


def clip_indices(
    n_frames: int, length: int, stride: int = 1, *, start: int | None = None, generator=None
) -> np.ndarray:
    """Frame indices of a clip: ``start + stride * k`` for k in 0..length-1.

    ``start`` None draws a random start (torch's generator, so DataLoader workers
    differ); a video shorter than the span raises ValueError.
    """
    span = clip_span(length, stride)
    if n_frames < span:
        raise ValueError(f"{n_frames} frames is shorter than a clip's span of {span}")
    if start is None:
        start = int(torch.randint(n_frames - span + 1, (1,), generator=generator))
    if not 0 <= start <= n_frames - span:
        raise ValueError(f"start {start} out of range for {n_frames} frames and span {span}")
    return start + stride * np.arange(length)


@dataclass(frozen=True)
class ClipTransform:
    """uint8 frames -> float32 tensor in [-1, 1] of the model size.

    ``size``: output ``(height, width)``. ``mode``: ``"pad"`` or ``"crop"``.
    ``train``: apply the random crop and flip.
    """

    size: tuple[int, int]
    mode: str = "pad"
    train: bool = False
    min_crop: float = 0.8

    def __post_init__(self):
        if self.mode not in ("pad", "crop"):
            raise ValueError(f"mode must be 'pad' or 'crop', got {self.mode!r}")

    def __call__(self, frames: np.ndarray, generator=None) -> torch.Tensor:
        """``frames``: uint8 ``[N, H, W]`` or ``[N, H, W, C]``. Returns ``[C, N, h, w]``."""
        # torch needs a writable, contiguous buffer; copy only if it is not.
        video = torch.from_numpy(np.require(frames, requirements=("C", "W")))
        if video.ndim == 3:
            video = video[..., None]
        video = video.permute(0, 3, 1, 2).float()  # [N, C, H, W]
        if self.train:
            video = self._random_crop_flip(video, generator)
        video = fit(video, self.size, self.mode)
        return (video / 127.5 - 1.0).clamp_(-1.0, 1.0).permute(1, 0, 2, 3).contiguous()

    def _random_crop_flip(self, video: torch.Tensor, generator) -> torch.Tensor:
        height, width = video.shape[-2:]
        u = torch.rand(5, generator=generator).tolist()
        crop_h = max(1, round(height * (self.min_crop + (1 - self.min_crop) * u[0])))
        crop_w = max(1, round(width * (self.min_crop + (1 - self.min_crop) * u[1])))
        top = int(u[2] * (height - crop_h + 1))
        left = int(u[3] * (width - crop_w + 1))
        video = video[..., top : top + crop_h, left : left + crop_w]
        return video.flip(-1) if u[4] < 0.5 else video


def fit(video: torch.Tensor, size: tuple[int, int], mode: str = "pad") -> torch.Tensor:
    """Resize ``video`` ``[N, C, H, W]`` (float, 0..255) to ``size`` keeping the aspect.

    ``"pad"`` scales the whole frame inside ``size`` and pads with 0 (black);
    ``"crop"`` scales it to cover ``size`` and crops the centre. Antialiased
    bilinear resampling.
    """
    height, width = video.shape[-2:]
    out_h, out_w = size
    ratios = (out_h / height, out_w / width)
    if mode == "pad":
        scale = min(ratios)
        new_h = max(1, min(out_h, round(height * scale)))
        new_w = max(1, min(out_w, round(width * scale)))
    else:
        scale = max(ratios)
        new_h, new_w = max(out_h, round(height * scale)), max(out_w, round(width * scale))
    if (new_h, new_w) != (height, width):
        video = F.interpolate(
            video, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False
        )
    if mode == "pad":
        top, left = (out_h - new_h) // 2, (out_w - new_w) // 2
        return F.pad(video, (left, out_w - new_w - left, top, out_h - new_h - top), value=0.0)
    top, left = (new_h - out_h) // 2, (new_w - out_w) // 2
    return video[..., top : top + out_h, left : left + out_w]


def fit_image(
    images: torch.Tensor, size: int, mode: str = "crop", *, fill: float = 0.0
) -> torch.Tensor:
    """The model's x0 from images of any shape: ``[..., C, H, W]`` -> ``[..., C, size,
    size]``, the one rule the pipeline, the batch engine and the training clips share.

    ``"crop"``: the shorter side is resized to ``size`` (antialiased bilinear; see
    :func:`fit`) and the centre cropped. ``"pad"`` (region mode ``none``): the longer
    side is resized to ``size`` and the rest padded black, so nothing is cut off.
    uint8 images come back as uint8 (rounded), so an image fitted once and an image
    fitted inside the pipeline are the same bytes; float images stay float, padded
    with ``fill`` (black: 0 on the 0..255 scale, -1 in [-1, 1]). Images that would
    have to be upscaled (a side below ``size`` for ``"crop"``, both sides for
    ``"pad"``) are refused: upscaling would invent the speckle the model then
    animates.

    Raises:
        ValueError: an image too small (the message gives both sizes), a bad mode.
    """
    if mode not in ("crop", "pad"):
        raise ValueError(f"mode must be 'crop' or 'pad', got {mode!r}")
    height, width = images.shape[-2:]
    if (min if mode == "crop" else max)(height, width) < size:
        side = "on both sides" if mode == "crop" else "on its longer side"
        raise ValueError(
            f"image is {width}x{height} pixels, smaller than the model's {size}x{size}; "
            f"use an image at least that large {side}"
        )
    if (height, width) == (size, size):
        return images
    lead = images.shape[:-3]
    flat = images.reshape(-1, *images.shape[-3:])
    if images.dtype == torch.uint8:
        out = fit(flat.float(), (size, size), mode).round().clamp(0, 255).to(torch.uint8)
    else:
        # fit pads with 0: shift so that the padding comes out as ``fill``.
        out = fit(flat - fill, (size, size), mode) + fill
    return out.reshape(*lead, *out.shape[-3:])
