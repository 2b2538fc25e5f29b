"""How a video moves: intensity change statistics, lesion strain by block matching,
and the "static" and "random warp" baselines a generator must beat.

Videos are ``[C, T+1, H, W]`` with x0 first (uint8 0..255, or float in [-1, 1]);
statistics are on the 0..255 gray scale of channel-mean frames.

Lesion strain ratio (as in quasi-static elastography): the axial displacement of
every frame relative to x0 is estimated by block matching (normalised
cross-correlation over a window, integer search plus parabolic sub-pixel
refinement), its depth derivative is the axial strain, and the ratio is the
least-squares slope of the mean strain inside the lesion against the mean strain of
the tissue around it over the frames. A lesion softer than its surroundings
(compressible, benign in the phantom) has a ratio above the stiff (malignant) one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "ellipse_mask",
    "gray255",
    "intensity_motion",
    "random_warp",
    "static_video",
    "strain_ratio",
]


def gray255(video: torch.Tensor) -> torch.Tensor:
    """``[C, T, H, W]`` uint8 or [-1, 1] float -> float32 ``[T, H, W]`` on 0..255."""
    x = video.float() if video.dtype == torch.uint8 else (video.float() + 1.0) * 127.5
    return x.mean(dim=0)


def intensity_motion(video: torch.Tensor) -> dict[str, float]:
    """``frame_diff``: mean |f_t - f_{t-1}|; ``x0_diff``: mean |f_t - x0| over t >= 1
    (gray levels)."""
    g = gray255(video)
    return {
        "frame_diff": float((g[1:] - g[:-1]).abs().mean()),
        "x0_diff": float((g[1:] - g[:1]).abs().mean()),
    }


def ellipse_mask(
    size: int, center: tuple[float, float], half_axes: tuple[float, float]
) -> torch.Tensor:
    """bool ``[size, size]``: pixels inside the axis-aligned ellipse of ``center`` (x, z)
    and ``half_axes`` (x, z), in pixels."""
    z, x = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    cx, cz = center
    ax, az = half_axes
    return ((x - cx) / ax) ** 2 + ((z - cz) / az) ** 2 <= 1.0


def _box(x: torch.Tensor, k: int) -> torch.Tensor:
    """Mean over the k x k window inside the image, as two 1-D passes."""
    x = F.avg_pool2d(x, (k, 1), stride=1, padding=(k // 2, 0), count_include_pad=False)
    return F.avg_pool2d(x, (1, k), stride=1, padding=(0, k // 2), count_include_pad=False)


def axial_displacement(
    ref: torch.Tensor, frames: torch.Tensor, *, max_z: int = 6, max_x: int = 1, window: int = 9
) -> torch.Tensor:
    """Axial displacement (pixels, + = deeper) of every pixel of each frame relative to
    ``ref``: ``ref [H, W]``, ``frames [T, H, W]`` -> ``[T, H, W]``.

    Normalised cross-correlation of ``window`` x ``window`` blocks over integer shifts
    ``|dz| <= max_z``, ``|dx| <= max_x``, the best axial shift refined by a parabola
    through its neighbours.
    """
    t, h, w = frames.shape
    r = ref[None, None] - _box(ref[None, None], window)
    r_norm = _box(r * r, window).clamp_min(1e-6).sqrt()
    f = frames[:, None]
    f = f - _box(f, window)
    pad = (max_x, max_x, max_z, max_z)
    fp = F.pad(f, pad, mode="replicate")
    scores = torch.full((2 * max_z + 1, t, h, w), -2.0)
    for iz, dz in enumerate(range(-max_z, max_z + 1)):
        best = torch.full((t, 1, h, w), -2.0)
        for dx in range(-max_x, max_x + 1):
            moved = fp[:, :, max_z + dz : max_z + dz + h, max_x + dx : max_x + dx + w]
            ncc = _box(moved * r, window) / (
                _box(moved * moved, window).clamp_min(1e-6).sqrt() * r_norm
            )
            best = torch.maximum(best, ncc)
        scores[iz] = best[:, 0]
    index = scores.argmax(dim=0)
    lo = scores.gather(0, (index - 1).clamp(0, 2 * max_z)[None])[0]
    mid = scores.gather(0, index[None])[0]
    hi = scores.gather(0, (index + 1).clamp(0, 2 * max_z)[None])[0]
    denom = lo - 2 * mid + hi
    sub = torch.where(denom.abs() > 1e-6, 0.5 * (lo - hi) / denom, torch.zeros_like(denom))
    inner = (index > 0) & (index < 2 * max_z)
    return index.float() - max_z + torch.where(inner, sub.clamp(-0.5, 0.5), 0.0)


def strain_ratio(video: torch.Tensor, lesion: torch.Tensor, *, ring: int = 6) -> float:
    """Lesion-to-surroundings axial strain ratio of one video (see the module docstring).

    Args:
        video: ``[C, T+1, H, W]``, x0 first.
        lesion: bool ``[H, W]`` lesion mask in x0.
        ring: width in pixels of the surrounding tissue band the lesion is compared with.

    Returns:
        The ratio, or NaN when the lesion or its ring is empty or nothing compresses.
    """
    g = gray255(video)
    # Sub-pixel refinement is biased where a block's correlation peak is asymmetric;
    # the bias of matching x0 with itself is removed from every frame.
    disp = axial_displacement(g[0], g)
    disp = disp[1:] - disp[:1]
    # d(disp)/dz by central differences, smoothed over the block size.
    strain = (disp[:, 2:, :] - disp[:, :-2, :]) / 2.0
    strain = F.pad(strain, (0, 0, 1, 1), mode="replicate")
    strain = _box(strain[:, None], 5)[:, 0]
    grown = F.max_pool2d(lesion[None, None].float(), 2 * ring + 1, 1, ring)[0, 0] > 0
    around = grown & ~lesion
    if not lesion.any() or not around.any():
        return math.nan
    inside = strain[:, lesion].mean(dim=1)
    outside = strain[:, around].mean(dim=1)
    energy = float((outside * outside).sum())
    if energy < 1e-8:
        return math.nan
    return float((inside * outside).sum()) / energy


def static_video(x0: torch.Tensor, frames: int) -> torch.Tensor:
    """The "x0 repeated" baseline: ``[C, H, W]`` -> ``[C, frames + 1, H, W]``."""
    return x0[:, None].expand(-1, frames + 1, -1, -1).clone()


def random_warp(
    x0: torch.Tensor, frames: int, amplitude: float, generator: torch.Generator
) -> torch.Tensor:
    """The "random warp" baseline: x0 animated by a random smooth deformation.

    A displacement field drawn on a 4x4 grid (pixels, standard deviation
    ``amplitude``) and upsampled bicubically is scaled over time by a random-phase
    cosine cycle from 0 (x0 itself) through 1; every frame warps x0 by it (bilinear,
    border padding).

    Args:
        x0: ``[C, H, W]`` float in [-1, 1] (or uint8).
        frames: T, frames after x0.
        amplitude: displacement scale in pixels.

    Returns:
        ``[C, frames + 1, H, W]`` in x0's value range (float32).
    """
    was_uint8 = x0.dtype == torch.uint8
    image = (x0.float() / 127.5 - 1.0) if was_uint8 else x0.float()
    c, h, w = image.shape
    field = torch.randn(1, 2, 4, 4, generator=generator) * amplitude
    field = F.interpolate(field, size=(h, w), mode="bicubic", align_corners=True)
    cycles = 0.75 + 0.5 * float(torch.rand((), generator=generator))
    tau = torch.arange(frames + 1, dtype=torch.float32) / max(1, frames)
    profile = 0.5 * (1 - torch.cos(2 * math.pi * cycles * tau))
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    base = torch.stack([xs, ys], dim=-1)  # grid_sample wants (x, y)
    scale = torch.tensor([2.0 / max(1, w - 1), 2.0 / max(1, h - 1)])
    offset = field[0].permute(1, 2, 0) * scale
    grid = base[None] + profile.view(-1, 1, 1, 1) * offset[None]
    warped = F.grid_sample(
        image[None].expand(frames + 1, -1, -1, -1),
        grid,
        mode="bilinear",
        padding_mode="border",
        align_corners=True,
    )
    video = warped.permute(1, 0, 2, 3).contiguous()
    return ((video + 1) * 127.5).round().clamp(0, 255).to(torch.uint8) if was_uint8 else video
