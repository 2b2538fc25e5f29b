"""How far can a speckle model get with the phantom's exact anatomy and motion?

    python scripts/speckle_oracles.py --data data/phantom64 --cache runs/i3d

For each clip of the held-out set B (``lddm_fast.eval.heldout``) the phantom's own
imaging chain runs again from the clip's seed (same anatomy, motion, gain, TGC error),
with only the speckle's formation changed; frame 0 stays the real one. Models:

- ``phantom``: nothing changed (the clip's own frames; a check on this script);
- ``frozen_elevation``: the clip's own scatterers, with the probe's elevation held at
  frame 0's (no out-of-plane decorrelation: frame t is x0's scatterers moved in plane);
- ``fresh``: every scatterer drawn again (positions, thinning, amplitudes) from another
  seed, as the phantom draws them;
- ``before_psf``: fresh scatterers on the full lattice, none thinned out, each amplitude
  scaled by the tissue's echo level where it sits, then the PSF (fully developed
  speckle everywhere, echogenicity applied before the PSF);
- ``after_psf``: the exact speckle-free mean intensity (echo power of the tissue
  convolved with the PSF's squared modulus, attenuated, plus the receiver noise's
  power) times the intensity of unit speckle from fresh uniform scatterers: the
  multiplicative (log-additive) model of ``lddm_fast.models.speckle`` and
  ``lddm_fast.models.scatterers``, given the true anatomy instead of a decoder's mean.

Prints one JSON object: FVD of each model's clips against set B (I3D features cached
in ``--cache``), with the real-vs-real floor (set A vs B), and the frame-to-frame change
and bar 2's lesion strain ratio (median per class) of each. About 2 minutes a model at
two threads for 256 clips.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import scipy.fft
import torch

import lddm_fast.data.phantom as phantom
from lddm_fast.data.phantom_bmode import log_compress
from lddm_fast.eval.heldout import CLASS_NAMES, FeatureCache, fvd_of, heldout_sets
from lddm_fast.eval.motion import intensity_motion, strain_ratio

MODELS = ("phantom", "frozen_elevation", "fresh", "before_psf", "after_psf")


def reimage_clip(
    label: str, seed: int, config: phantom.PhantomConfig, model: str, fresh_seed: int
) -> np.ndarray:
    """The clip ``simulate_clip(label, seed, config)`` with its speckle formed by
    ``model`` (one of :data:`MODELS`) from scatterers drawn with ``fresh_seed``.
    Returns uint8 ``[frames, size, size]``; frame 0 is formed the same way (the caller
    puts back the real one)."""
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    # The clip's generator makes the same draws as simulate_clip, in its order, so
    # gain and TGC error match; the fresh generator draws the new speckle.
    rng = np.random.default_rng(seed)
    fresh = np.random.default_rng(fresh_seed)
    anatomy, motion, imager, domain, deformation = phantom._scene(rng, label, config)
    x, z = phantom._scatterers(rng, config.pulse, config.scatterer_spacing, domain)
    keep = rng.random(x.size) < anatomy.density(x, z)
    amplitudes = rng.standard_normal((2, int(keep.sum())))
    if model in ("phantom", "frozen_elevation"):
        x, z, density = x[keep], z[keep], anatomy.density(x[keep], z[keep])
    elif model == "fresh":
        x, z = phantom._scatterers(fresh, config.pulse, config.scatterer_spacing, domain)
        keep = fresh.random(x.size) < anatomy.density(x, z)
        x, z, density = x[keep], z[keep], anatomy.density(x[keep], z[keep])
        amplitudes = fresh.standard_normal((2, x.size))
    else:
        x, z = phantom._scatterers(fresh, config.pulse, config.scatterer_spacing, domain)
        density = np.ones(x.size)
        amplitudes = fresh.standard_normal((2, x.size))
    level = 10.0 ** (anatomy.echo_db(x, z) / 20.0) / np.sqrt(density)
    power = level**2
    unit = amplitudes  # after_psf's unit speckle: the same scatterers, no echogenicity
    a, b = amplitudes * level
    n = a.size
    x, z, a, b = phantom._add_calcifications(rng, anatomy, x, z, a, b)
    calcification = a[n:]
    points = deformation.carry(x, z)
    outline = deformation.carry(*anatomy.lesion.outline()) if anatomy.lesion else None

    gain_db = float(rng.normal(0.0, 1.5))
    tgc_error = float(rng.uniform(-0.1, 0.1))
    size = config.size
    alpha = phantom._ATTENUATION_NP_PER_MM * config.px_mm
    depth = np.arange(size, dtype=np.float64)[:, None]
    tgc = np.exp(alpha * (1.0 + tgc_error) * depth)
    reference = phantom._reference_level(config)
    noise_std = reference * 10 ** (phantom._NOISE_DB / 20) / math.sqrt(2)
    pixel_z, pixel_x = np.mgrid[0:size, 0:size].astype(np.float64)
    # |PSF|^2 as a spectrum: the speckle-free mean intensity is the echo power map
    # convolved with it.
    psf_power = scipy.fft.fft2(np.abs(scipy.fft.ifft2(imager.spectrum)) ** 2)

    frames = np.empty((config.frames, size, size), np.uint8)
    for t in range(config.frames):
        pose = motion.at(t / max(config.frames - 1, 1))
        xi, zi = deformation.forward(points, pose)
        mix = (motion.at(0.0) if model == "frozen_elevation" else pose).elevation / math.sqrt(2.0)
        path = np.full((size, size), alpha)
        if outline is not None:
            box = phantom._bounding_box(*deformation.forward(outline, pose), size)
            inside = anatomy.lesion.excess(*deformation.inverse(pixel_x[box], pixel_z[box], pose))
            path[box] += anatomy.lesion.attenuation * phantom.soft_step(inside, 0.05)
        attenuation = np.exp(-(np.cumsum(path, axis=0) - path))
        if model == "after_psf":
            # Bilinear splatting loses part of an echo's power between RF samples (the
            # carrier's phase turns from one to the next), so the PSF-spread power maps
            # are calibrated by the unit speckle drawn on the same scatterers.
            weights = np.concatenate((power, (calcification * math.cos(mix)) ** 2))
            ones = np.concatenate((np.ones(n), np.zeros(weights.size - n)))
            spread, unit_spread = (
                np.maximum(imager.crop(_spread(imager, zi, xi, w, psf_power)), 1e-30)
                for w in (weights, ones)
            )
            u = unit[0] * math.cos(mix) + unit[1] * math.sin(mix)
            speckle = np.abs(imager.crop(imager.analytic(imager.splat(zi[:n], xi[:n], u)))) ** 2
            # Unit speckle's expected intensity is `scale` times its spread power map;
            # the tissue's echo, `scale` times its own.
            scale = float((speckle / unit_spread).mean())
            mean = scale * spread * attenuation**2 + 2 * noise_std**2
            envelope = np.sqrt(mean * speckle / (scale * unit_spread))
        else:
            weight = a * math.cos(mix) + b * math.sin(mix)
            echo = imager.crop(imager.analytic(imager.splat(zi, xi, weight)))
            noise = (rng if model in ("phantom", "frozen_elevation") else fresh).normal(
                0.0, noise_std, (2, size, size)
            )
            envelope = np.abs(echo * attenuation + (noise[0] + 1j * noise[1]))
        frames[t] = log_compress(
            envelope * tgc, reference, dynamic_range_db=config.dynamic_range_db, gain_db=gain_db
        )
    return frames


def _spread(imager, z, x, weights, psf_power) -> np.ndarray:
    # Power weights at the scatterers, spread by the PSF's squared modulus (RF grid).
    return scipy.fft.ifft2(scipy.fft.fft2(imager.splat(z, x, weights)) * psf_power).real


def _strain(clips: list[torch.Tensor], items: list[dict]) -> dict[str, float]:
    # Bar 2's lesion strain ratio, median per class.
    ratios: dict[str, list[float]] = {}
    for video, item in zip(clips, items, strict=True):
        ratios.setdefault(CLASS_NAMES[item["label"]], []).append(strain_ratio(video, item["mask"]))
    return {name: float(np.nanmedian(r)) for name, r in ratios.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", required=True, help="the phantom data root (BUSV layout)")
    parser.add_argument("--cache", type=Path, default=None, help="I3D feature cache folder")
    parser.add_argument("--n", type=int, default=256, help="clips per set (default 256)")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset")
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    for m in models:
        if m not in MODELS:
            parser.error(f"--models: unknown model {m!r} (choose from {', '.join(MODELS)})")

    manifest = json.loads((Path(args.data) / "dataset.json").read_text())
    config = phantom.PhantomConfig(**manifest["config"])
    scenes = {it["path"]: (it["class"], int(it["seed"])) for it in manifest["busv"]["items"]}
    set_a, set_b = heldout_sets(args.data, args.n)
    feats = FeatureCache(args.cache, "cpu", progress=False)
    f_b = feats("real_b", [it["video"] for it in set_b])
    f_a = feats("real_a", [it["video"] for it in set_a])
    out = {
        "n": args.n,
        "floor": fvd_of(f_a, f_b)["value"],
        "real_strain_ratio": _strain([it["video"] for it in set_b], set_b),
    }
    for model in models:
        clips = []
        for k, item in enumerate(set_b):
            label, seed = scenes[item["path"]]
            video = torch.from_numpy(reimage_clip(label, seed, config, model, 10**6 + k))[None]
            video[:, 0] = item["video"][:, 0]
            clips.append(video)
        change = float(np.mean([intensity_motion(v)["frame_diff"] for v in clips]))
        fvd = fvd_of(f_b, feats(f"oracle_{model}", clips))["value"]
        out[model] = {"fvd": fvd, "frame_diff": change, "strain_ratio": _strain(clips, set_b)}
        print(model, json.dumps(out[model]), flush=True)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
