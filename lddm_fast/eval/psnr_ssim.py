"""PSNR and SSIM between paired clips, per frame and per clip.

Clips are ``[N, C, T, H, W]`` (uint8 0..255, or floats in [-1, 1]; see
:mod:`lddm_fast.eval.clips`) and are compared in float64 on a [0, 1] scale, so the
values do not depend on which of the two encodings a clip came in.

PSNR: ``10 log10(1 / MSE)``; per frame over that frame's pixels, per clip over all
the clip's pixels (not the mean of the per-frame values, which a single near-perfect
frame would dominate). Identical inputs give ``inf``.

SSIM (Wang et al. 2004): 11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03,
population (co)variances, averaged over the window positions that fit inside the
frame ("valid"; as the reference MATLAB code and scikit-image's
``gaussian_weights=True``), then over channels. Per clip: the mean of its frames.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lddm_fast.eval.clips import unit_interval

__all__ = [
    "mse_frames",
    "psnr_clip",
    "psnr_frames",
    "psnr_from_mse",
    "ssim_clip",
    "ssim_frames",
    "ssim_images",
]

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _pair(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if x.shape != y.shape or x.ndim != 5:
        raise ValueError(
            f"expected two clips batches [N, C, T, H, W] of one shape, got "
            f"{tuple(x.shape)} and {tuple(y.shape)}"
        )
    return unit_interval(x), unit_interval(y)


def psnr_from_mse(mse: torch.Tensor) -> torch.Tensor:
    """``10 log10(1 / mse)`` for errors on the [0, 1] scale; 0 gives +inf, the
    conventional PSNR of identical images."""
    return 10.0 * torch.log10(1.0 / mse)


def mse_frames(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error of every frame on the [0, 1] scale: -> float64 ``[N, T]``."""
    x, y = _pair(x, y)
    return (x - y).square().mean(dim=(1, 3, 4))


def psnr_frames(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of every frame: ``[N, C, T, H, W]`` x2 -> float64 ``[N, T]``."""
    return psnr_from_mse(mse_frames(x, y))


def psnr_clip(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of every clip from its whole-clip MSE: -> float64 ``[N]``."""
    # Every frame has as many pixels, so the clip's MSE is the mean of its frames'.
    return psnr_from_mse(mse_frames(x, y).mean(dim=1))


def _gaussian_window(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    coords = torch.arange(SSIM_WINDOW, dtype=dtype, device=device) - (SSIM_WINDOW - 1) / 2
    g = torch.exp(-coords.square() / (2 * SSIM_SIGMA**2))
    return g / g.sum()


def ssim_images(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SSIM of single-channel images on the [0, 1] scale, in their own floating dtype
    and differentiable (the trainers use it as a loss): ``[M, 1, H, W]`` x2 -> ``[M]``.

    Images must be at least 11x11 pixels (the window); raises ValueError otherwise.
    """
    h, w = x.shape[-2:]
    if h < SSIM_WINDOW or w < SSIM_WINDOW:
        raise ValueError(f"SSIM needs frames of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {h}x{w}")
    g = _gaussian_window(x.dtype, x.device)

    def blur(z: torch.Tensor) -> torch.Tensor:  # the 2-D Gaussian is separable
        z = F.conv2d(z, g.view(1, 1, -1, 1))
        return F.conv2d(z, g.view(1, 1, 1, -1))

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x.square()
    var_y = blur(y * y) - mu_y.square()
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = SSIM_K1**2, SSIM_K2**2  # data range 1
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x.square() + mu_y.square() + c1) * (var_x + var_y + c2)
    )
    return ssim_map.mean(dim=(1, 2, 3))


def ssim_frames(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SSIM of every frame (mean over channels): -> float64 ``[N, T]``.

    Frames must be at least 11x11 pixels (the window); raises ValueError otherwise.
    """
    x, y = _pair(x, y)
    n, c, t, h, w = x.shape
    # [N, C, T, H, W] -> [N*C*T, 1, H, W]
    ssim = ssim_images(x.reshape(-1, 1, h, w), y.reshape(-1, 1, h, w))
    return ssim.view(n, c, t).mean(dim=1)


def ssim_clip(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SSIM of every clip, the mean over its frames: -> float64 ``[N]``."""
    return ssim_frames(x, y).mean(dim=1)
