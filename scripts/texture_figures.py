"""Speckle figures of an autoencoder's rebuilt test clips, next to the real ones.

    python scripts/texture_figures.py --data data/phantom64 --checkpoint runs/aet/checkpoint

For the first N clips of the held-out set B (``lddm_fast.eval.heldout``): PSNR,
frame-to-frame change (``eval.motion.intensity_motion``, uint8 units), lag-1
correlation of consecutive frames (each frame's deviation from its mean) and the
high-pass std (frame minus its 5x5 mean, [-1, 1] units), for the real clips and for
the clips rebuilt from the posterior mean of z with the texture code's posterior mean,
a prior draw and the prior mean (zeros; the only row without a texture code). Also the
residual's correlation between frames t and t + lag. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
import torch.nn.functional as F

from lddm_fast.eval.heldout import heldout_sets
from lddm_fast.eval.motion import intensity_motion
from lddm_fast.eval.psnr_ssim import psnr_clip
from lddm_fast.models.checkpoint import from_pretrained


def _uint8(video: torch.Tensor) -> torch.Tensor:
    return ((video + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def _lag_correlation(frames: torch.Tensor, lag: int) -> float:
    """Mean correlation of frames t and t + lag of ``frames: [B, C, T, H, W]``."""
    a, b = frames[:, :, :-lag], frames[:, :, lag:]
    a = a - a.mean((-1, -2), keepdim=True)
    b = b - b.mean((-1, -2), keepdim=True)
    return float(((a * b).sum((-1, -2)) / (a.norm(dim=(-1, -2)) * b.norm(dim=(-1, -2)))).mean())


def _high_pass_std(frames: torch.Tensor) -> float:
    local = F.avg_pool3d(frames, (1, 5, 5), 1, (0, 2, 2), count_include_pad=False)
    return float((frames - local).std())


def _figures(clips: torch.Tensor, frames: torch.Tensor) -> dict[str, float]:
    """clips: x0 and frames ``[B, C, T+1, H, W]``; frames: their frames 1..T."""
    return {
        "frame_diff": float(np.mean([intensity_motion(_uint8(v))["frame_diff"] for v in clips])),
        "lag1": _lag_correlation(frames, 1),
        "high_pass_std": _high_pass_std(frames),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", required=True, help="the phantom data root (BUSV layout)")
    parser.add_argument("--checkpoint", required=True, help="a checkpoint folder")
    parser.add_argument("--n", type=int, default=64, help="clips of set B (default 64)")
    args = parser.parse_args(argv)

    _, set_b = heldout_sets(args.data, 256)
    real = torch.stack([item["video"] for item in set_b][: args.n]).float() / 127.5 - 1
    ae = from_pretrained(args.checkpoint).autoencoder.eval()
    generator = torch.Generator().manual_seed(0)
    rebuilt: dict[str, list[torch.Tensor]] = {}
    with torch.no_grad():
        for i in range(0, args.n, 16):
            x0, frames = real[i : i + 16, :, 0], real[i : i + 16, :, 1:]
            z = ae.encode(frames).latent_dist.mode()
            codes = {"prior_mean": None}
            if ae.texture_encoder is not None:
                codes["posterior"] = ae.encode_texture(frames, x0).mode()
                codes["prior_draw"] = torch.randn(ae.texture_shape(z), generator=generator)
            for name, code in codes.items():
                rebuilt.setdefault(name, []).append(ae.decode(z, x0, code).sample.clamp(-1, 1))
    frames = real[:, :, 1:]
    out = {"checkpoint": args.checkpoint, "clips": args.n, "real": _figures(real, frames)}
    for name, parts in rebuilt.items():
        video = torch.cat(parts)
        out[name] = {
            "psnr": float(psnr_clip(video, frames).mean()),
            **_figures(torch.cat([real[:, :, :1], video], dim=2), video),
        }
    residual = frames - torch.cat(rebuilt["posterior" if "posterior" in rebuilt else "prior_mean"])
    out["residual_lag_correlation"] = {
        lag: _lag_correlation(residual, lag) for lag in (1, 2, 4, 8, 15)
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
