"""Fit the speckle that generation draws over a trained autoencoder's frames.

    python -m lddm_fast.train.speckle --checkpoint runs/ldm/checkpoint --data data/phantom64 \\
        --out runs/ldm_speckle

writes the checkpoint again with ``AutoencoderConfig.speckle_frames`` set and the
:class:`~lddm_fast.models.speckle.SpeckleResidual` buffers fitted; every weight,
the latents and so the denoiser stay as they were. From ``--clips`` clips of the
training split (from frame 0, unaugmented), rebuilt from their posterior means
(residual = clip - rebuilt):

1. the std table: the residual's std per channel, frame index and gray-level bin of
   the rebuilt frame (a bin with too few pixels takes its frame's overall std);
2. the kernel: a separable Gaussian (axial and lateral widths, by alternating
   bisections) such that the rebuilt frames with speckle have the clips' correlation
   between neighbouring pixels, along depth and across, of each frame minus its 5 x 5
   mean (what sets the grain I3D sees: matching the residual's own correlation
   instead left the grain too fine);
3. rho: the frame-to-frame correlation of the complex field, by bisection, so that
   rebuilt frames with speckle change from frame to frame as much as the clips do
   (mean absolute difference of consecutive frames; where no rho in [0, 1) can,
   it stays at the nearer end and the record says ``matched: false``).

With ``--model scatterers`` (an autoencoder with ``warp``) it fits a
:class:`~lddm_fast.models.scatterers.ScattererSpeckle` instead, each figure by
bisection on up to 32 of the clips, the same noise for every trial:

1. the PSF's axial and lateral widths, so that the rebuilt frames with speckle have
   the clips' grain (the neighbour correlations above), twice, as each width moves
   the other axis' figure a little;
2. rho, so that they change from frame to frame as much as the clips (where even
   frozen scatterers change them more, rho stays near 1 and the record says
   ``matched: false``).

The blur of the mean (``--anatomy-sigma``) is not fitted: matching the clips'
high-pass std would ask for 0.58 pixels on the bundled model, and every blur measured
raised bar 1's FVD (docs/TRAINING.md), so it defaults to none. The display's range
(``--dynamic-range-db``) comes from the data's dataset.json when it records one.

Prints the fitted figures, which also go into the checkpoint's ``meta.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from lddm_fast.argtypes import non_negative_float, positive_float, positive_int
from lddm_fast.data.atomic import atomic_folder
from lddm_fast.models.autoencoder import VideoAutoencoder
from lddm_fast.models.checkpoint import (
    LDDMModels,
    carried_meta,
    from_pretrained,
    save_pretrained,
)
from lddm_fast.models.config import SCATTERER_SPECKLE_MODELS, SPECKLE_MODELS
from lddm_fast.models.scatterers import ScattererSpeckle
from lddm_fast.models.speckle import (
    SPECKLE_KERNEL,
    SPECKLE_LEVELS,
    SpeckleResidual,
    standard_log_speckle,
)
from lddm_fast.train.autoencoder import rebuild_batch

__all__ = [
    "fit_scatterers",
    "fit_speckle",
    "gaussian_kernel",
    "neighbour_correlation",
    "with_speckle",
]

# A std-table cell needs this many residual pixels; fewer take the frame's std.
MIN_PIXELS = 256
_BISECTION_ROUNDS = 14
# Kernel widths searched, pixels (standard deviations of the Gaussian).
_SIGMA_RANGE = (0.2, 3.0)


@torch.no_grad()
def rebuild(
    autoencoder: VideoAutoencoder, clips, batch_size: int, progress: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Frames 1..T of ``clips`` (a dataset of ``(clip [C, T+1, H, W], label)``), their
    reconstructions from the posterior means (two float32 ``[N, C, T, H, W]``) and the
    decoder's fields (float32 ``[N, 2, T, H, W]``; None without ``warp``)."""
    from tqdm import tqdm

    device = next(autoencoder.parameters()).device
    real, rebuilt, flows = [], [], []
    loader = DataLoader(clips, batch_size=batch_size)
    for clip, _ in tqdm(loader, desc="rebuild", disable=not progress):
        _, frames, _, out, flow = rebuild_batch(autoencoder, clip.to(device))
        real.append(frames.float().cpu())
        rebuilt.append(out.cpu())
        if flow is not None:
            flows.append(flow.float().cpu())
    return torch.cat(real), torch.cat(rebuilt), torch.cat(flows) if flows else None


def _std_table(module: SpeckleResidual, residual: torch.Tensor, rebuilt: torch.Tensor):
    """std ``[C, T, L]`` of ``residual`` by channel, frame and gray-level bin."""
    _, c, t, _, _ = residual.shape
    cell = module.level_index(rebuilt) + SPECKLE_LEVELS * (
        torch.arange(t).view(1, 1, t, 1, 1) + t * torch.arange(c).view(1, c, 1, 1, 1)
    )
    cells = c * t * SPECKLE_LEVELS
    r = residual.double().flatten()
    cell = cell.flatten()
    count = torch.zeros(cells, dtype=torch.float64).index_add_(0, cell, torch.ones_like(r))
    total = torch.zeros(cells, dtype=torch.float64).index_add_(0, cell, r)
    square = torch.zeros(cells, dtype=torch.float64).index_add_(0, cell, r * r)
    mean = total / count.clamp_min(1)
    std = (square / count.clamp_min(1) - mean**2).clamp_min(0).sqrt().view(c, t, -1)
    frame_std = residual.double().transpose(0, 1).reshape(c, t, -1).std(dim=-1)
    sparse = count.view(c, t, -1) < MIN_PIXELS
    return torch.where(sparse, frame_std[..., None], std).float()


def gaussian_kernel(sigma_z: float, sigma_x: float) -> torch.Tensor:
    """The ``SPECKLE_KERNEL`` square Gaussian of standard deviations ``sigma_z`` (rows,
    depth) and ``sigma_x`` (columns) pixels, scaled to a unit sum of squares."""
    r = torch.arange(SPECKLE_KERNEL, dtype=torch.float64) - SPECKLE_KERNEL // 2
    k = torch.exp(-(r[:, None] ** 2) / (2 * sigma_z**2) - r[None, :] ** 2 / (2 * sigma_x**2))
    return (k / k.square().sum().sqrt()).float()


def neighbour_correlation(frames: torch.Tensor) -> tuple[float, float]:
    """Correlation of neighbouring pixels along depth and across, of each frame of
    ``frames [N, C, T, H, W]`` minus its 5 x 5 mean (the grain, without the anatomy)."""
    d = (frames - F.avg_pool3d(frames, (1, 5, 5), 1, (0, 2, 2), count_include_pad=False)).double()

    def corr(a: torch.Tensor, b: torch.Tensor) -> float:
        a, b = a - a.mean(), b - b.mean()
        return float((a * b).sum() / (a.norm() * b.norm()).clamp_min(1e-300))

    return corr(d[..., :-1, :], d[..., 1:, :]), corr(d[..., :-1], d[..., 1:])


def _frame_change(frames: torch.Tensor) -> float:
    """Mean absolute difference of consecutive frames of ``[N, C, T, H, W]``."""
    return float((frames[:, :, 1:] - frames[:, :, :-1]).abs().mean())


def _bisect(figure, goal: float, low: float, high: float, increasing: bool) -> float:
    """The value in [low, high] where ``figure`` (monotonic) reaches ``goal``; an end if
    the goal lies beyond it."""
    for _ in range(_BISECTION_ROUNDS):
        mid = 0.5 * (low + high)
        below = figure(mid) < goal
        low, high = (mid, high) if below == increasing else (low, mid)
    return 0.5 * (low + high)


def fit_speckle(
    autoencoder: VideoAutoencoder,
    real: torch.Tensor,
    rebuilt: torch.Tensor,
    *,
    seed: int = 0,
) -> tuple[SpeckleResidual, dict[str, Any]]:
    """Fit a :class:`SpeckleResidual` to the residual ``real - rebuilt``.

    Args:
        autoencoder: the trained autoencoder (only its config is read).
        real: frames 1..T of training clips ``[N, C, T, H, W]`` in [-1, 1].
        rebuilt: their reconstructions from the posterior means, same shape.
        seed: seeds the noise of the kernel and rho fits.

    Returns:
        The fitted module (float32, CPU, ``speckle_frames`` = T) and a JSON-ready
        record of the fit: rho, the kernel's widths, the table's means by frame and
        level, and the grain, frame change and high-pass figures of the clips, of the
        rebuilt frames and of the rebuilt frames with speckle.
    """
    if real.shape != rebuilt.shape or real.dim() != 5:
        raise ValueError(
            f"real {tuple(real.shape)} and rebuilt {tuple(rebuilt.shape)} must be the same "
            "[N, C, T, H, W]"
        )
    n, c, t, h, w = real.shape
    if c != autoencoder.config.in_channels:
        want = autoencoder.config.in_channels
        raise ValueError(f"clips have {c} channels, the autoencoder expects {want}")
    if t < 2:
        raise ValueError(f"clips need at least 2 frames after x0 to fit rho, got {t}")
    module = SpeckleResidual(c, t)
    residual = real - rebuilt
    module.std.copy_(_std_table(module, residual, rebuilt))
    scale = module.scale(rebuilt)

    # Kernel: the rebuilt frames with speckle get the clips' grain. The correlation
    # along each axis grows with that axis' width; the other width moves it a little,
    # hence two rounds.
    generator = torch.Generator().manual_seed(seed)
    part = slice(0, min(n, 64))
    probe = torch.randn((part.stop, 2 * c, t, h, w), generator=generator)
    goal_grain = neighbour_correlation(real[part])

    def grain(sigmas: list[float]) -> tuple[float, float]:
        speckle = standard_log_speckle(probe, gaussian_kernel(*sigmas), 0.0)
        return neighbour_correlation((rebuilt[part] + scale[part] * speckle).clamp(-1, 1))

    sigmas = [1.0, 1.0]
    for _ in range(2):
        for axis in (0, 1):

            def along(value: float, axis: int = axis) -> float:
                sigmas[axis] = value
                return grain(sigmas)[axis]

            sigmas[axis] = _bisect(along, goal_grain[axis], *_SIGMA_RANGE, increasing=True)
    module.kernel.copy_(gaussian_kernel(*sigmas))

    # rho: the rebuilt frames with speckle change as much from frame to frame as the
    # clips (the change grows as rho falls); the same noise for every trial.
    noise = torch.randn((n, 2 * c, t, h, w), generator=generator)
    goal = _frame_change(real)

    def with_speckle_at(rho: float) -> torch.Tensor:
        return (rebuilt + scale * standard_log_speckle(noise, module.kernel, rho)).clamp(-1, 1)

    module.rho.fill_(
        _bisect(lambda v: _frame_change(with_speckle_at(v)), goal, 0.0, 0.999, increasing=False)
    )
    final = with_speckle_at(float(module.rho))
    # Unreachable when even a frozen speckle (rho near 1) changes the frames more than
    # the clips change, or fresh speckle every frame (rho 0) less: rho stays at that end.
    matched = abs(_frame_change(final) - goal) <= 0.01 * goal
    record = {
        "clips": n,
        "frames": t,
        "rho": float(module.rho),
        "kernel_size": SPECKLE_KERNEL,
        "levels": SPECKLE_LEVELS,
        "std_by_frame": module.std.mean(dim=(0, 2)).tolist(),
        "std_by_level": module.std.mean(dim=(0, 1)).tolist(),
        "kernel_sigma_px": {"axial": sigmas[0], "lateral": sigmas[1]},
        "neighbour_correlation_axial_lateral": {
            "clips": list(goal_grain),
            "rebuilt": list(neighbour_correlation(rebuilt)),
            "rebuilt_with_speckle": list(neighbour_correlation(final)),
        },
        "frame_change": {
            "clips": goal,
            "rebuilt": _frame_change(rebuilt),
            "rebuilt_with_speckle": _frame_change(final),
            "matched": matched,
        },
        "high_pass_std": {
            "clips": _high_pass_std(real),
            "rebuilt": _high_pass_std(rebuilt),
            "rebuilt_with_speckle": _high_pass_std(final),
        },
    }
    return module, record


def fit_scatterers(
    autoencoder: VideoAutoencoder,
    real: torch.Tensor,
    rebuilt: torch.Tensor,
    flows: torch.Tensor,
    *,
    dynamic_range_db: float = 60.0,
    anatomy_sigma: float = 0.0,
    seed: int = 0,
    clips: int = 32,
) -> tuple[ScattererSpeckle, dict[str, Any]]:
    """Fit a :class:`~lddm_fast.models.scatterers.ScattererSpeckle` to rebuilt clips.

    Args:
        autoencoder: the trained autoencoder (its config must have ``warp``).
        real: frames 1..T of training clips ``[N, C, T, H, W]`` in [-1, 1].
        rebuilt: their reconstructions from the posterior means, same shape.
        flows: the decoder's fields for them, ``[N, 2, T, H, W]``.
        dynamic_range_db: the display's log-compression range.
        anatomy_sigma: the blur of the mean (pixels), kept as given.
        seed: seeds the scatterers of every trial.
        clips: how many of the clips the bisections image (the first ones).

    Returns:
        The fitted module (float32, CPU) and a JSON-ready record of the fit: the PSF
        widths, anatomy_sigma, rho, and the grain, frame change and high-pass figures
        of the clips, of the rebuilt frames and of the rebuilt frames with speckle.
    """
    if not autoencoder.config.warp:
        raise ValueError(
            "scatterer speckle moves with the decoder's field: the autoencoder needs warp"
        )
    if real.shape != rebuilt.shape or real.dim() != 5:
        raise ValueError(
            f"real {tuple(real.shape)} and rebuilt {tuple(rebuilt.shape)} must be the same "
            "[N, C, T, H, W]"
        )
    n, _, t, h, w = real.shape
    if flows is None or tuple(flows.shape) != (n, 2, t, h, w):
        got = None if flows is None else tuple(flows.shape)
        raise ValueError(f"flows must be [N, 2, T, H, W] = {(n, 2, t, h, w)}, got {got}")
    if t < 2:
        raise ValueError(f"clips need at least 2 frames after x0 to fit rho, got {t}")
    if dynamic_range_db <= 0:
        raise ValueError(f"dynamic_range_db must be > 0, got {dynamic_range_db}")
    if anatomy_sigma < 0:
        raise ValueError(f"anatomy_sigma must be >= 0, got {anatomy_sigma}")
    module = ScattererSpeckle()
    module.dynamic_range_db.fill_(dynamic_range_db)
    module.rho.fill_(0.995)
    module.anatomy_sigma.fill_(anatomy_sigma)
    part = slice(0, min(n, clips))
    goal_real = real[part]

    def sample(**values: float) -> torch.Tensor:
        for name, value in values.items():
            getattr(module, name).fill_(value)
        frames = rebuilt[part]
        generator = torch.Generator().manual_seed(seed)
        noise = torch.randn(module.noise_shape(frames.shape), generator=generator)
        return module(frames, noise, flows[part]).clamp(-1, 1)

    goal_grain = neighbour_correlation(goal_real)
    goal_change = _frame_change(goal_real)
    for _ in range(2):
        for axis, name in enumerate(("axial_sigma", "lateral_sigma")):
            module.get_buffer(name).fill_(
                _bisect(
                    lambda v, a=axis, n=name: neighbour_correlation(sample(**{n: v}))[a],
                    goal_grain[axis],
                    *_SIGMA_RANGE,
                    increasing=True,
                )
            )
    module.rho.fill_(
        _bisect(lambda v: _frame_change(sample(rho=v)), goal_change, 0.0, 1.0, increasing=False)
    )
    final = sample()
    grain, high, change = neighbour_correlation(final), _high_pass_std(final), _frame_change(final)
    record = {
        "model": "scatterers",
        "clips": n,
        "clips_imaged": part.stop,
        "frames": t,
        "psf_sigma_px": {
            "axial": float(module.axial_sigma),
            "lateral": float(module.lateral_sigma),
        },
        "anatomy_sigma_px": float(module.anatomy_sigma),
        "rho": float(module.rho),
        "dynamic_range_db": dynamic_range_db,
        "neighbour_correlation_axial_lateral": {
            "clips": list(goal_grain),
            "rebuilt": list(neighbour_correlation(rebuilt[part])),
            "rebuilt_with_speckle": list(grain),
        },
        "frame_change": {
            "clips": goal_change,
            "rebuilt": _frame_change(rebuilt[part]),
            "rebuilt_with_speckle": change,
            "matched": abs(change - goal_change) <= 0.02 * goal_change,
        },
        "high_pass_std": {
            "clips": _high_pass_std(goal_real),
            "rebuilt": _high_pass_std(rebuilt[part]),
            "rebuilt_with_speckle": high,
        },
    }
    return module, record


def _high_pass_std(frames: torch.Tensor) -> float:
    """Std of each frame minus its 5 x 5 mean: the speckle contrast ([-1, 1] units)."""
    local = F.avg_pool3d(frames, (1, 5, 5), 1, (0, 2, 2), count_include_pad=False)
    return float((frames - local).std())


def with_speckle(
    models: LDDMModels, module: SpeckleResidual | ScattererSpeckle, frames: int | None = None
) -> LDDMModels:
    """``models`` with ``module`` as its autoencoder's speckle (config updated: the model,
    and ``speckle_frames``, the residual's table rows or ``frames``, the clip length a
    scatterer model was fitted at); the autoencoder's weights are shared, not copied."""
    scatterers = isinstance(module, ScattererSpeckle)
    if scatterers and not frames:
        raise ValueError("a scatterer speckle needs the clip length it was fitted at (frames)")
    frames = frames if scatterers else module.std.shape[1]
    config = dataclasses.replace(
        models.config,
        autoencoder=dataclasses.replace(
            models.config.autoencoder,
            speckle_frames=frames,
            speckle_model=(
                ("retrieved" if module.retrieve else "scatterers") if scatterers else "residual"
            ),
        ),
    )
    ae = models.autoencoder
    ae.config = config.autoencoder
    param = next(ae.parameters())
    ae.speckle = module.to(device=param.device, dtype=param.dtype)
    return LDDMModels(config, ae, models.denoiser, dict(models.meta))


def _data_dynamic_range(root: str) -> float:
    """The display range a phantom dataset records, else 60 dB (a common B-mode setting)."""
    manifest = Path(root) / "dataset.json"
    try:
        return float(json.loads(manifest.read_text())["config"]["dynamic_range_db"])
    except (OSError, ValueError, KeyError, TypeError):
        print(f"{manifest}: no config.dynamic_range_db; taking 60 dB", file=sys.stderr)
        return 60.0


def main(argv: list[str] | None = None) -> int:
    from lddm_fast.train.data import data_hash, eval_view, model_splits

    parser = argparse.ArgumentParser(
        prog="python -m lddm_fast.train.speckle",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, type=Path, help="trained checkpoint dir")
    parser.add_argument("--data", required=True, help="the training data (its train split)")
    parser.add_argument("--out", required=True, type=Path, help="checkpoint dir to write")
    parser.add_argument(
        "--clips", type=positive_int, default=192, help="training clips (default 192)"
    )
    parser.add_argument("--batch-size", type=positive_int, default=16)
    parser.add_argument("--region", default="center", help="as in train-ae (default center)")
    parser.add_argument("--seed", type=int, default=0, help="noise of the fit (default 0)")
    parser.add_argument(
        "--model",
        choices=SPECKLE_MODELS,
        default="residual",
        help="residual: log-speckle with a std table over the mean (default); scatterers: "
        "speckle imaged from scatterers moved by the decoder's field (needs warp); "
        "retrieved: the same fit, but generation moves x0's own scatterers, retrieved "
        "from its envelope, instead of fresh ones",
    )
    parser.add_argument(
        "--dynamic-range-db",
        type=positive_float,
        default=None,
        help="scatterers, retrieved: the display's log-compression range (default: the data's "
        "dataset.json config.dynamic_range_db, else 60)",
    )
    parser.add_argument(
        "--anatomy-sigma",
        type=non_negative_float,
        default=0.0,
        help="scatterers: blur (pixels) of the decoder's mean under the speckle (default 0)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    models = from_pretrained(args.checkpoint)
    if models.autoencoder.speckle is not None:
        print(f"{args.checkpoint}: refitting its speckle", file=sys.stderr)
    config = models.config
    splits = model_splits(args.data, config, args.region)
    clips = eval_view(splits.train, args.clips)
    scatterers = args.model in SCATTERER_SPECKLE_MODELS
    if scatterers and not config.autoencoder.warp:
        parser.error(
            f"--model {args.model}: {args.checkpoint} has no warp (AutoencoderConfig.warp)"
        )
    real, rebuilt, flows = rebuild(
        models.autoencoder.eval(), clips, args.batch_size, not args.quiet
    )
    if scatterers:
        db = args.dynamic_range_db or _data_dynamic_range(args.data)
        module, record = fit_scatterers(
            models.autoencoder,
            real,
            rebuilt,
            flows,
            dynamic_range_db=db,
            anatomy_sigma=args.anatomy_sigma,
            seed=args.seed,
        )
        # The PSF and rho fitted on free scatterers serve x0's retrieved ones as well.
        module.retrieve = args.model == "retrieved"
        record["model"] = args.model
    else:
        module, record = fit_speckle(models.autoencoder, real, rebuilt, seed=args.seed)
    if not record["frame_change"]["matched"]:
        change = record["frame_change"]
        why = (
            "scatterers that never change, moved by the decoder's field, already change "
            "the frames more than that (kept at rho 1)"
            if scatterers
            else "is the autoencoder trained?"
        )
        print(
            f"warning: no rho makes the rebuilt frames with speckle change like the clips "
            f"({change['rebuilt_with_speckle']:.4f} at rho {record['rho']:.3f}, clips "
            f"{change['clips']:.4f}); {why}",
            file=sys.stderr,
        )
    record.update(
        command="python -m lddm_fast.train.speckle " + " ".join(argv or sys.argv[1:]),
        checkpoint=str(args.checkpoint.resolve()),
        data=str(Path(args.data).resolve()),
        data_sha256=data_hash(args.data, clips),
        seed=args.seed,
        wall_time_s=round(time.perf_counter() - t0, 1),
    )
    models = with_speckle(models, module, real.shape[2])
    meta = {**carried_meta(models.meta), "speckle": record}
    with atomic_folder(args.out) as tmp:
        save_pretrained(tmp, models, meta=meta)
    print(json.dumps(record, indent=2))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
