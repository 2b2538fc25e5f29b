"""What I3D sees in rebuilt clips: FVD(B, variant) for variants of the held-out set B.

    python scripts/speckle_figures.py --data data/phantom64 --checkpoint runs/ldm_speckle \\
        --cache runs/i3d

For the 256 clips of set B (``lddm_fast.eval.heldout``), frames 1..T of:

- ``mean``: the autoencoder's rebuild from the posterior mean of z;
- ``blurred_real``: the real frames through a 3 x 3 binomial blur;
- ``mean_gaussian`` (residual speckle model only): the mean plus a Gaussian field with
  the residual's std table, spatial spectrum and lag-1 correlation (an AR(1) over frames);
- ``mean_speckle``: the mean with the checkpoint's fitted speckle
  (``AutoencoderConfig.speckle_model``), as generation draws it;
- ``mean_other_residual``: the mean plus the true residual of another clip of B;
- ``true_motion``: x0 moved by the phantom's true motion (``true_flow``, warped as the
  decoder warps): exact motion, x0's speckle carried along;
- ``phantom_redrawn``: the phantom's own clip with what frame 0 leaves open redrawn
  (``simulate_clip(..., redraw_speckle=1)``: the out-of-plane speckle and the receiver
  noise of frames 1..T).

Prints FVD(B, variant) next to the floor FVD(A, B), with the frame-to-frame change,
lag-1 correlation and high-pass std of each (``scripts/texture_figures.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from texture_figures import _figures, _uint8  # noqa: E402

from lddm_fast.data.phantom import PhantomConfig, simulate_clip, true_flow  # noqa: E402
from lddm_fast.eval.heldout import FeatureCache, fvd_of, heldout_sets  # noqa: E402
from lddm_fast.eval.psnr_ssim import psnr_clip  # noqa: E402
from lddm_fast.models.autoencoder import warp_image  # noqa: E402
from lddm_fast.models.checkpoint import from_pretrained  # noqa: E402


def gaussian_residual(mean, residual, scale, generator):
    """A Gaussian field like ``residual`` (std ``scale``, its mean spectrum and lag-1
    correlation) added to ``mean``; all ``[N, C, T, H, W]``."""
    standard = residual / scale.clamp_min(1e-6)
    amplitude = torch.fft.fft2(standard).abs().square().mean(dim=(0, 1, 2)).sqrt()
    amplitude = amplitude / amplitude.square().mean().sqrt()
    a, b = standard[:, :, :-1], standard[:, :, 1:]
    rho = float((a * b).mean() / (a.square().mean() * b.square().mean()).sqrt())
    field, frames = None, []
    for t in range(mean.shape[2]):
        white = torch.randn(mean[:, :, t].shape, generator=generator)
        fresh = torch.fft.ifft2(torch.fft.fft2(white) * amplitude).real
        field = fresh if field is None else rho * field + (1 - rho**2) ** 0.5 * fresh
        frames.append(field)
    return (mean + scale * torch.stack(frames, dim=2)).clamp(-1, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", required=True, help="the phantom data root (BUSV layout)")
    parser.add_argument("--checkpoint", required=True, help="a checkpoint with fitted speckle")
    parser.add_argument("--cache", default=None, help="folder for cached I3D features")
    args = parser.parse_args(argv)

    set_a, set_b = heldout_sets(args.data, 256)
    real = torch.stack([item["video"] for item in set_b]).float() / 127.5 - 1
    ae = from_pretrained(args.checkpoint).autoencoder.eval()
    if ae.speckle is None:
        parser.error(f"{args.checkpoint} has no fitted speckle (python -m lddm_fast.train.speckle)")
    generator = torch.Generator().manual_seed(0)
    x0, frames = real[:, :, 0], real[:, :, 1:]
    means, speckled = [], []
    with torch.no_grad():
        for i in range(0, len(real), 16):
            z = ae.encode(frames[i : i + 16]).latent_dist.mode()
            out = ae.decode(z, x0[i : i + 16])
            mean = out.sample.clamp(-1, 1)
            noise = torch.randn(ae.speckle_shape(z), generator=generator)
            means.append(mean)
            speckled.append(ae.add_speckle(mean, noise, out.flow, x0[i : i + 16]).clamp(-1, 1))
    mean, speckled = torch.cat(means), torch.cat(speckled)
    residual = frames - mean
    manifest = json.loads((Path(args.data) / "dataset.json").read_text())
    config = PhantomConfig(**manifest["config"])
    scenes = {it["path"]: (it["class"], int(it["seed"])) for it in manifest["busv"]["items"]}
    flows = torch.from_numpy(
        np.stack([true_flow(*scenes[it["path"]], config)[1:] for it in set_b])
    ).transpose(1, 2)
    redrawn = (
        torch.from_numpy(
            np.stack(
                [
                    simulate_clip(*scenes[it["path"]], config, redraw_speckle=1).frames[1:]
                    for it in set_b
                ]
            )
        )[:, None].float()
        / 127.5
        - 1
    )
    k = torch.tensor([0.25, 0.5, 0.25])
    blur = (k[:, None] * k[None, :]).view(1, 1, 1, 3, 3)
    variants = {
        "mean": mean,
        "blurred_real": F.conv3d(F.pad(frames, (1, 1, 1, 1, 0, 0), mode="replicate"), blur),
        "mean_speckle": speckled,
        "mean_other_residual": (mean + residual.roll(2, dims=0)).clamp(-1, 1),
        "true_motion": warp_image(x0, flows.contiguous()).clamp(-1, 1),
        "phantom_redrawn": redrawn,
    }
    if hasattr(ae.speckle, "scale"):  # the residual model's std table
        variants["mean_gaussian"] = gaussian_residual(
            mean, residual, ae.speckle.scale(mean), generator
        )
    features = FeatureCache(Path(args.cache) if args.cache else None, "cpu", progress=False)
    f_a = features("real_a", [item["video"] for item in set_a])
    f_b = features("real_b", [item["video"] for item in set_b])
    out = {"checkpoint": args.checkpoint, "clips": len(real), "floor": fvd_of(f_a, f_b)["value"]}
    out["real"] = _figures(real, frames)
    for name, video in variants.items():
        clips = torch.cat([real[:, :, :1], video], dim=2)
        f = features(f"speckle_figures_{name}", [_uint8(v) for v in clips])
        out[name] = {
            "fvd": fvd_of(f_b, f)["value"],
            "psnr": float(psnr_clip(video, frames).mean()),
            **_figures(clips, video),
        }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
