"""Fully developed speckle drawn over the decoder's frames
(``AutoencoderConfig.speckle_frames`` with ``speckle_model="residual"``, the bundled
model's; :mod:`.scatterers` images speckle from moving scatterers instead).

The decoder predicts each frame's mean given z and x0. How the speckle re-forms from
frame to frame (scatterers moving relative to each other under the pulse as the
tissue strains, and fresh ones drifting into the beam) is something its warp of x0
cannot draw, so the mean smooths it away: rebuilt frames have two thirds of the real
speckle contrast and change half as much from frame to frame. A mild blur of real
clips alone moves their FVD from 33 to 565 (docs/TRAINING.md): I3D sees the texture.

On a log-compressed B-mode image speckle is additive: the log intensity of a
circular complex Gaussian field (the echo of many unresolved scatterers) has a
fixed, skewed distribution whatever the tissue's echogenicity. This module draws
that field: complex white noise filtered by a spatial kernel (the pulse's footprint),
correlated from one frame to the next by ``c_t = rho c_(t-1) + sqrt(1 - rho^2) w_t``
(how an elevation drift mixes fresh scatterers into the beam), its log intensity
standardised (for ``|c|^2`` exponential with mean 2: mean ``ln 2 - gamma``, std
``pi / sqrt 6``), times a std that depends on the frame index and on the mean's
gray level (the residual grows along the clip as x0's speckle decorrelates, and
shrinks where the display clips). ``lddm_fast.train.speckle`` fits the buffers to a
trained decoder's residuals; with all-zero stds (a fresh module) it adds nothing.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SPECKLE_KERNEL", "SPECKLE_LEVELS", "SpeckleResidual", "standard_log_speckle"]

#: Gray-level bins of the std table, equal widths over [-1, 1].
SPECKLE_LEVELS = 8
#: Side of the spatial kernel that colours the complex noise (pixels, odd).
SPECKLE_KERNEL = 9

# ln|c|^2 for c with independent N(0, 1) real and imaginary parts: ln of an
# exponential variable of mean 2.
_LOG_MEAN = math.log(2.0) - 0.5772156649015329
_LOG_STD = math.pi / math.sqrt(6.0)


def standard_log_speckle(noise: torch.Tensor, kernel: torch.Tensor, rho: float) -> torch.Tensor:
    """Standardised log-intensity speckle from white noise.

    Args:
        noise: ``[B, 2C, T, H, W]`` N(0, 1), real parts in the first C channels,
            imaginary parts in the last C.
        kernel: ``[k, k]`` spatial filter with unit sum of squares (so the filtered
            noise keeps unit variance); applied circularly, as the noise is stationary.
        rho: frame-to-frame correlation of the complex field, in [0, 1).

    Returns:
        float32 ``[B, C, T, H, W]``, mean 0 and std 1 per pixel (exactly, in
        expectation), skewed towards dark like log-compressed speckle.
    """
    b, c2, t, h, w = noise.shape
    k = kernel.shape[-1]
    images = noise.float().reshape(b * c2 * t, 1, h, w)
    pad = k // 2
    images = F.pad(images, (pad, pad, pad, pad), mode="circular")
    field = F.conv2d(images, kernel.float()[None, None]).reshape(b, c2, t, h, w)
    keep, fresh = rho, math.sqrt(max(1.0 - rho * rho, 0.0))
    frames = [field[:, :, 0]]
    for i in range(1, t):
        frames.append(keep * frames[-1] + fresh * field[:, :, i])
    field = torch.stack(frames, dim=2)
    re, im = field.chunk(2, dim=1)
    intensity = (re * re + im * im).clamp_min(1e-30)
    return (intensity.log() - _LOG_MEAN) / _LOG_STD


class SpeckleResidual(nn.Module):
    """Adds fitted speckle to decoded frames.

    Buffers (all fitted by :func:`lddm_fast.train.speckle.fit_speckle`):
        kernel: ``[k, k]`` spatial filter of the complex field, unit sum of squares.
        rho: ``[]`` frame-to-frame correlation of the complex field.
        std: ``[C, frames, levels]`` std of the speckle by channel, frame index (frames
            past the table use its last row) and gray-level bin of the mean.
    """

    def __init__(self, channels: int, frames: int) -> None:
        super().__init__()
        self.register_buffer("kernel", torch.zeros(SPECKLE_KERNEL, SPECKLE_KERNEL))
        self.kernel[SPECKLE_KERNEL // 2, SPECKLE_KERNEL // 2] = 1.0
        self.register_buffer("rho", torch.zeros(()))
        self.register_buffer("std", torch.zeros(channels, frames, SPECKLE_LEVELS))

    def noise_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of the white noise :meth:`forward` takes for frames of ``shape``
        ``(B, C, T, H, W)``."""
        b, c, t, h, w = shape
        return (b, 2 * c, t, h, w)

    def level_index(self, frames: torch.Tensor) -> torch.Tensor:
        """The std table's gray-level bin of each value of ``frames`` (int64, same shape)."""
        edges = torch.linspace(-1.0, 1.0, SPECKLE_LEVELS + 1, device=frames.device)[1:-1]
        return torch.bucketize(frames.detach().float().contiguous(), edges)

    def scale(self, frames: torch.Tensor) -> torch.Tensor:
        """The speckle std at each value of ``frames [B, C, T, H, W]`` (float32, same shape)."""
        _, c, t, _, _ = frames.shape
        rows = torch.arange(t, device=frames.device).clamp(max=self.std.shape[1] - 1)
        channel = torch.arange(c, device=frames.device).view(1, c, 1, 1, 1)
        return self.std.float()[channel, rows.view(1, 1, t, 1, 1), self.level_index(frames)]

    def forward(
        self,
        frames: torch.Tensor,
        noise: torch.Tensor,
        flow: torch.Tensor | None = None,
        x0: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """frames: decoded means ``[B, C, T, H, W]``; noise: N(0, 1) of
        :meth:`noise_shape` -> frames with speckle, same shape and dtype. ``flow`` (the
        decoder's field) and ``x0`` are not used: this speckle does not follow the
        tissue."""
        want = self.noise_shape(frames.shape)
        if tuple(noise.shape) != want:
            raise ValueError(
                f"speckle noise has shape {tuple(noise.shape)}, frames {tuple(frames.shape)} "
                f"need {want} [B, 2C, T, H, W]"
            )
        speckle = standard_log_speckle(noise, self.kernel, float(self.rho))
        return frames + (self.scale(frames) * speckle).to(frames.dtype)
