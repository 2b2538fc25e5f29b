"""FVD and DT-FVD: I3D embeddings of 16-frame clips and the Fréchet distance between
their Gaussian fits.

FVD (Unterthiner et al. 2018, google-research ``frechet_video_distance``): frames
resized to 224x224 with TF1's ``tf.image.resize_bilinear`` (no half-pixel offset,
corners not aligned: :data:`RESIZE_TF_LEGACY`), grayscale repeated to 3 channels,
values in [-1, 1], embedded by the Kinetics-400 I3D as its 400 logits averaged over
time. DT-FVD (Dorkenwald et al. 2021, cINN): the same pipeline with
``align_corners=True`` bilinear resizing (:data:`RESIZE_ALIGN_CORNERS`, as their
``DTFVD_Score.py``) and the 1024-d pooled features of an 18-class I3D trained on
dynamic textures (DTDB).

The Fréchet distance is computed in float64 with a PSD-safe matrix square root
(:func:`frechet_distance`). It is strongly biased at small N (the covariance of N
embeddings has rank N - 1 < 400 for tens of videos), so every result carries its N.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lddm_fast.eval.clips import signed_unit

__all__ = [
    "FVD_FRAMES",
    "FrechetResult",
    "RESIZE_ALIGN_CORNERS",
    "RESIZE_TF_LEGACY",
    "extract_features",
    "feature_statistics",
    "frechet_distance",
    "frechet_from_features",
    "preprocess_i3d",
    "resize_bilinear",
]

#: Frames per clip that FVD and DT-FVD are defined on.
FVD_FRAMES = 16
I3D_SIZE = 224
#: ``tf.compat.v1.image.resize_bilinear`` (align_corners=False, half_pixel_centers=False):
#: output pixel i samples input coordinate ``i * in / out``.
RESIZE_TF_LEGACY = "tf_legacy"
#: PyTorch ``interpolate(..., align_corners=True)``: ``i * (in - 1) / (out - 1)``.
RESIZE_ALIGN_CORNERS = "align_corners"


def _interp_matrix(n_in: int, n_out: int, convention: str) -> torch.Tensor:
    """``[n_out, n_in]`` linear-interpolation weights along one axis."""
    i = torch.arange(n_out, dtype=torch.float64)
    if convention == RESIZE_TF_LEGACY:
        src = i * (n_in / n_out)
    elif convention == RESIZE_ALIGN_CORNERS:
        src = i * ((n_in - 1) / (n_out - 1)) if n_out > 1 else torch.zeros(1, dtype=torch.float64)
    else:
        raise ValueError(f"unknown resize convention {convention!r}")
    lo = src.floor().clamp(max=n_in - 1)
    frac = src - lo
    lo = lo.long()
    hi = (lo + 1).clamp(max=n_in - 1)
    weights = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    weights.index_put_((rows, lo), 1.0 - frac, accumulate=True)
    weights.index_put_((rows, hi), frac, accumulate=True)
    return weights


def resize_bilinear(frames: torch.Tensor, size: tuple[int, int], convention: str) -> torch.Tensor:
    """Bilinear resize of ``[..., H, W]`` to ``[..., size[0], size[1]]``.

    ``convention`` is :data:`RESIZE_TF_LEGACY` or :data:`RESIZE_ALIGN_CORNERS`. Separable:
    one interpolation matrix per axis, in the frames' dtype.
    """
    h, w = frames.shape[-2:]
    rows = _interp_matrix(h, size[0], convention).to(frames)
    cols = _interp_matrix(w, size[1], convention).to(frames)
    return torch.einsum("oh,...hw,pw->...op", rows, frames, cols)


def preprocess_i3d(
    video: torch.Tensor, *, frames: int = FVD_FRAMES, convention: str = RESIZE_TF_LEGACY
) -> torch.Tensor:
    """One clip ``[C, T, H, W]`` (C = 1 or 3; uint8, or float in [-1, 1]) -> I3D input
    ``[3, frames, 224, 224]`` float32 in [-1, 1].

    Takes the first ``frames`` frames (raises ValueError when there are fewer),
    repeats grayscale to 3 channels and resizes each frame. Resizing the [-1, 1]
    values equals resizing 0..255 and rescaling after, as the reference does: the
    interpolation weights sum to one.
    """
    if video.ndim != 4 or video.shape[0] not in (1, 3):
        raise ValueError(f"expected a clip [C, T, H, W] with C = 1 or 3, got {tuple(video.shape)}")
    if video.shape[1] < frames:
        raise ValueError(f"clip has {video.shape[1]} frames, {frames} needed")
    x = signed_unit(video[:, :frames])
    x = resize_bilinear(x, (I3D_SIZE, I3D_SIZE), convention).clamp(-1.0, 1.0)
    return x.expand(3, -1, -1, -1).contiguous() if x.shape[0] == 1 else x


@torch.inference_mode()
def extract_features(
    embedder: nn.Module,
    clips: Sequence[torch.Tensor],
    *,
    convention: str,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    progress: bool = False,
    desc: str = "I3D",
) -> np.ndarray:
    """Embed clips (each ``[C, T, H, W]``, sizes may differ) -> float64 ``[N, D]``.

    Clips are preprocessed (:func:`preprocess_i3d`) batch by batch on ``device``, so
    memory holds one batch of 224x224 frames at a time.
    """
    from tqdm import tqdm

    embedder = embedder.to(device).eval()
    out = []
    starts = range(0, len(clips), batch_size)
    cudnn = torch.backends.cudnn
    # Full fp32 convolutions: cuDNN's default TF32 (Ampere and later GPUs) rounds every
    # convolution input to 10 mantissa bits, which would make the embeddings depend on
    # the GPU they ran on.
    with cudnn.flags(
        enabled=cudnn.enabled,
        benchmark=cudnn.benchmark,
        deterministic=cudnn.deterministic,
        allow_tf32=False,
    ):
        for start in tqdm(starts, desc=desc, unit="batch", disable=not progress):
            batch = torch.stack(
                [
                    preprocess_i3d(c.to(device), convention=convention)
                    for c in clips[start : start + batch_size]
                ]
            )
            out.append(embedder(batch).double().cpu())
    if not out:
        raise ValueError("no clips to embed")
    return torch.cat(out).numpy()


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[D]`` and unbiased covariance ``[D, D]`` (float64) of ``[N, D]`` features.

    N - 1 normalization, as TF-GAN's ``frechet_classifier_distance_from_activations``
    that the FVD reference calls. Needs N >= 2.
    """
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"need features [N, D] with N >= 2, got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False, ddof=1).reshape(
        features.shape[1], features.shape[1]
    )


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric PSD matrix; eigenvalues below zero (roundoff) are
    clipped to zero."""
    eigvals, eigvecs = np.linalg.eigh(matrix)
    return (eigvecs * np.sqrt(np.clip(eigvals, 0.0, None))) @ eigvecs.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    ``||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))`` in float64. The trace
    term uses ``S1^(1/2) S2 S1^(1/2)``, which is symmetric PSD with the eigenvalues of
    ``S1 S2``, so it needs only symmetric eigendecompositions: finite for
    rank-deficient covariances (N < D), no complex parts, no ``sqrtm`` iteration.
    Inputs: ``mu`` ``[D]``, ``sigma`` ``[D, D]`` (numpy or tensors). Roundoff below
    zero is returned as 0.
    """
    mu1, mu2 = (np.atleast_1d(np.asarray(m, dtype=np.float64)) for m in (mu1, mu2))
    s1, s2 = (np.atleast_2d(np.asarray(s, dtype=np.float64)) for s in (sigma1, sigma2))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(
            f"shapes do not fit: mu1 {mu1.shape}, sigma1 {s1.shape}, mu2 {mu2.shape}, "
            f"sigma2 {s2.shape}"
        )
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
    root1 = _psd_sqrt(s1)
    middle = root1 @ s2 @ root1
    eigvals = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_sqrt = np.sqrt(np.clip(eigvals, 0.0, None)).sum()
    diff = mu1 - mu2
    value = diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt
    return max(float(value), 0.0)


@dataclass(frozen=True)
class FrechetResult:
    """A Fréchet distance with the sample sizes and embedding width it came from."""

    value: float
    n_real: int
    n_fake: int
    dim: int

    def to_dict(self) -> dict:
        out = {"value": self.value, "n_real": self.n_real, "n_fake": self.n_fake, "dim": self.dim}
        if min(self.n_real, self.n_fake) <= self.dim:
            out["note"] = (
                f"N <= {self.dim}: the covariances are rank-deficient and the distance is "
                "strongly biased upward; compare only values computed with the same N"
            )
        return out


def frechet_from_features(real: np.ndarray, fake: np.ndarray) -> FrechetResult:
    """Fréchet distance between the Gaussian fits of ``[N1, D]`` and ``[N2, D]`` features."""
    mu1, s1 = feature_statistics(real)
    mu2, s2 = feature_statistics(fake)
    value = frechet_distance(mu1, s1, mu2, s2)
    if not math.isfinite(value):
        raise FloatingPointError("Fréchet distance is not finite: features hold inf or nan")
    return FrechetResult(value, real.shape[0], fake.shape[0], real.shape[1])
