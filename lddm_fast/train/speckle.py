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
2. the kernel: the spatial filter whose log-intensity speckle has the spatial
   correlation of the standardised residual (the log intensity's correlation is
   ``Li2(|gamma|^2) / Li2(1)`` for a complex field correlated by gamma, which is
   inverted), within the ``SPECKLE_KERNEL`` square;
3. rho: the frame-to-frame correlation of the complex field, by bisection, so that
   rebuilt frames with speckle change from frame to frame as much as the clips do
   (mean absolute difference of consecutive frames; where no rho in [0, 1) can,
   it stays at the nearer end and the record says ``matched: false``).

Prints the fitted figures, which also go into the checkpoint's ``meta.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from lddm_fast.data.atomic import atomic_folder
from lddm_fast.models.autoencoder import VideoAutoencoder
from lddm_fast.models.checkpoint import LDDMModels, from_pretrained, save_pretrained
from lddm_fast.models.speckle import (
    SPECKLE_KERNEL,
    SPECKLE_LEVELS,
    SpeckleResidual,
    standard_log_speckle,
)
from lddm_fast.train.autoencoder import rebuild_batch

__all__ = ["field_correlation", "fit_speckle", "kernel_for", "with_speckle"]

# A std-table cell needs this many residual pixels; fewer take the frame's std.
MIN_PIXELS = 256
_RHO_ROUNDS = 14


@torch.no_grad()
def rebuild(
    autoencoder: VideoAutoencoder, clips, batch_size: int, progress: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames 1..T of ``clips`` (a dataset of ``(clip [C, T+1, H, W], label)``) and
    their reconstructions from the posterior means: two float32 ``[N, C, T, H, W]``."""
    from tqdm import tqdm

    device = next(autoencoder.parameters()).device
    real, rebuilt = [], []
    loader = DataLoader(clips, batch_size=batch_size)
    for clip, _ in tqdm(loader, desc="rebuild", disable=not progress):
        _, frames, _, out = rebuild_batch(autoencoder, clip.to(device))
        real.append(frames.float().cpu())
        rebuilt.append(out.cpu())
    return torch.cat(real), torch.cat(rebuilt)


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


def _dilog(x: torch.Tensor) -> torch.Tensor:
    """The dilogarithm Li2 on [0, 1] (float64): its series below 1/2, Euler's
    reflection ``Li2(x) = pi^2/6 - ln x ln(1-x) - Li2(1-x)`` above."""
    k = torch.arange(1, 80, dtype=torch.float64)

    def series(y: torch.Tensor) -> torch.Tensor:
        return (y[..., None] ** k / k**2).sum(-1)

    x = x.double()
    low = x <= 0.5
    y = torch.where(low, x, 1 - x)
    edge = torch.log(x.clamp_min(1e-300)) * torch.log1p(-x.clamp_max(1 - 1e-16))
    return torch.where(low, series(y), math.pi**2 / 6 - edge - series(y))


def field_correlation(log_correlation: torch.Tensor) -> torch.Tensor:
    """|gamma| of a circular complex Gaussian field whose log intensity has the
    correlation ``log_correlation`` (values in [0, 1]): for two exponential
    intensities correlated by g = |gamma|^2, ``corr(ln I1, ln I2) = Li2(g) / Li2(1)``,
    inverted here on a fine grid."""
    grid = torch.linspace(0, 1, 4097, dtype=torch.float64)
    values = _dilog(grid) / (math.pi**2 / 6)
    r = log_correlation.double().clamp(0, 1).contiguous()
    i = torch.searchsorted(values, r).clamp(1, grid.numel() - 1)
    lo, hi = values[i - 1], values[i]
    g = grid[i - 1] + (r - lo) / (hi - lo).clamp_min(1e-300) * (grid[i] - grid[i - 1])
    return g.clamp(0, 1).sqrt()


def _autocorrelation(x: torch.Tensor) -> torch.Tensor:
    """Mean circular spatial autocorrelation ``[H, W]`` of the frames of
    ``x [N, C, T, H, W]`` (float64, 1 at lag 0, lag (0, 0) at index (0, 0))."""
    power = torch.fft.fft2(x.double()).abs().square().mean(dim=(0, 1, 2))
    a = torch.fft.ifft2(power).real
    return a / a[0, 0]


def kernel_for(log_correlation: torch.Tensor) -> torch.Tensor:
    """The ``SPECKLE_KERNEL`` square kernel whose log-intensity speckle has the spatial
    correlation ``log_correlation`` ``[H, W]`` (circular lags, lag (0, 0) first),
    up to the lags a kernel of that size reaches; unit sum of squares."""
    h, w = log_correlation.shape
    reach = SPECKLE_KERNEL - 1
    dz = torch.fft.fftfreq(h, 1 / h).abs().view(-1, 1)
    dx = torch.fft.fftfreq(w, 1 / w).abs().view(1, -1)
    gamma = torch.where((dz <= reach) & (dx <= reach), field_correlation(log_correlation), 0.0)
    # The kernel is the square root of that correlation: its spectrum is the root of
    # the correlation's (a power spectrum, so made non-negative).
    amplitude = torch.fft.fft2(gamma).real.clamp_min(0).sqrt()
    full = torch.fft.fftshift(torch.fft.ifft2(amplitude).real)
    k = min(SPECKLE_KERNEL, h - (1 - h % 2), w - (1 - w % 2))
    top, left = h // 2 - k // 2, w // 2 - k // 2
    kernel = torch.zeros(SPECKLE_KERNEL, SPECKLE_KERNEL, dtype=torch.float64)
    pad = (SPECKLE_KERNEL - k) // 2
    kernel[pad : pad + k, pad : pad + k] = full[top : top + k, left : left + k]
    return (kernel / kernel.square().sum().sqrt()).float()


def _lags(h: int, w: int, reach: int) -> torch.Tensor:
    """Mask ``[H, W]`` of the circular lags with both offsets within ``reach`` but lag 0."""
    dz = torch.fft.fftfreq(h, 1 / h).abs().view(-1, 1)
    dx = torch.fft.fftfreq(w, 1 / w).abs().view(1, -1)
    near = (dz <= reach) & (dx <= reach)
    near[0, 0] = False
    return near


def _frame_change(frames: torch.Tensor) -> float:
    """Mean absolute difference of consecutive frames of ``[N, C, T, H, W]``."""
    return float((frames[:, :, 1:] - frames[:, :, :-1]).abs().mean())


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
        seed: seeds the noise of the kernel's check and of the rho fit.

    Returns:
        The fitted module (float32, CPU, ``speckle_frames`` = T) and a JSON-ready
        record of the fit: the table, rho, and the frame change and high-pass
        figures of the clips, of the rebuilt frames and of the rebuilt frames with
        speckle.
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
    standard = torch.where(scale > 0, residual / scale.clamp_min(1e-12), 0.0)

    # Kernel: from the standardised residual's spatial correlation.
    target = _autocorrelation(standard)
    module.kernel.copy_(kernel_for(target))
    generator = torch.Generator().manual_seed(seed)
    probe = torch.randn((min(n, 32), 2 * c, 2, h, w), generator=generator)
    made = _autocorrelation(standard_log_speckle(probe, module.kernel, 0.0))
    near = _lags(h, w, 2)

    # rho: the rebuilt frames with speckle change as much from frame to frame as the
    # clips (the change grows as rho falls); the same noise for every trial.
    noise = torch.randn((n, 2 * c, t, h, w), generator=generator)
    goal = _frame_change(real)

    def with_speckle_at(rho: float) -> torch.Tensor:
        return (rebuilt + scale * standard_log_speckle(noise, module.kernel, rho)).clamp(-1, 1)

    low, high = 0.0, 0.999
    for _ in range(_RHO_ROUNDS):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if _frame_change(with_speckle_at(mid)) > goal else (low, mid)
    module.rho.fill_(0.5 * (low + high))
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
        "correlation_at_lags_up_to_2": {
            "residual": target[near].tolist(),
            "speckle": made[near].tolist(),
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


def _high_pass_std(frames: torch.Tensor) -> float:
    """Std of each frame minus its 5 x 5 mean: the speckle contrast ([-1, 1] units)."""
    local = F.avg_pool3d(frames, (1, 5, 5), 1, (0, 2, 2), count_include_pad=False)
    return float((frames - local).std())


def with_speckle(models: LDDMModels, module: SpeckleResidual) -> LDDMModels:
    """``models`` with ``module`` as its autoencoder's speckle (config updated); the
    autoencoder's weights are shared, not copied."""
    frames = module.std.shape[1]
    config = dataclasses.replace(
        models.config,
        autoencoder=dataclasses.replace(models.config.autoencoder, speckle_frames=frames),
    )
    ae = models.autoencoder
    ae.config = config.autoencoder
    param = next(ae.parameters())
    ae.speckle = module.to(device=param.device, dtype=param.dtype)
    return LDDMModels(config, ae, models.denoiser, dict(models.meta))


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
    parser.add_argument("--clips", type=int, default=192, help="training clips (default 192)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--region", default="center", help="as in train-ae (default center)")
    parser.add_argument("--seed", type=int, default=0, help="noise of the fit (default 0)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.clips < 1:
        parser.error(f"--clips must be >= 1, got {args.clips}")

    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    models = from_pretrained(args.checkpoint)
    if models.autoencoder.speckle is not None:
        print(f"{args.checkpoint}: refitting its speckle", file=sys.stderr)
    config = models.config
    splits = model_splits(args.data, config, args.region)
    clips = eval_view(splits.train, args.clips)
    real, rebuilt = rebuild(models.autoencoder.eval(), clips, args.batch_size, not args.quiet)
    module, record = fit_speckle(models.autoencoder, real, rebuilt, seed=args.seed)
    if not record["frame_change"]["matched"]:
        change = record["frame_change"]
        print(
            f"warning: no rho makes the rebuilt frames with speckle change like the clips "
            f"({change['rebuilt_with_speckle']:.4f} at rho {record['rho']:.3f}, clips "
            f"{change['clips']:.4f}); is the autoencoder trained?",
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
    models = with_speckle(models, module)
    meta = {
        k: v
        for k, v in models.meta.items()
        if k not in ("format_version", "lddm_fast_version", "sha256")
    }
    meta["speckle"] = record
    with atomic_folder(args.out) as tmp:
        save_pretrained(tmp, models, meta=meta)
    print(json.dumps(record, indent=2))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
