"""Held-out quality report of a trained checkpoint on a phantom dataset.

The bundled model's quality bars, measured on the test split of a ``lddm-fast
phantom`` dataset (clips no training step saw), split into two disjoint, class-
balanced sets A and B of ``n`` clips each:

1. reconstruction: the autoencoder rebuilds B's clips (posterior mean); PSNR/SSIM
   next to "x0 repeated", and FVD(B, rebuilt B) next to the real-vs-real floor
   FVD(A, B). With fitted speckle (:mod:`lddm_fast.models.speckle`) the FVD's rebuilt
   clips are decoder samples, the mean plus a speckle draw, as generated videos are
   (PSNR/SSIM of those too, as ``psnr_with_speckle``/``ssim_with_speckle``);
2. motion: videos synthesized from B's first frames against B's real clips, per
   class: mean frame-to-frame change, mean change from x0, and the lesion strain
   ratio (:mod:`lddm_fast.eval.motion`; lesion masks from ``dataset.json``). The
   synthesized side pools ``motion_draws`` videos per first frame (draw k is the video
   the report at seed ``seed + k`` makes): a median over 128 clips moves by about 0.05
   from one sampling seed to the next, as much as the 25% margin of a malignant lesion's
   ratio, and the draws narrow that. Each draw's own figures are reported too;
3. FVD against A of the LDDM videos and of the "static" and "random warp"
   baselines made from B's first frames, next to the floor FVD(A, B).

Run: ``python -m lddm_fast.eval.heldout --data DIR --checkpoint CKPT --out report.json``.
I3D features of each set are cached under ``--cache`` (keyed by the set's content),
so a rerun with another checkpoint embeds only its own videos.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lddm_fast.argtypes import positive_int
from lddm_fast.data.images import read_image
from lddm_fast.data.video_io import frame_files
from lddm_fast.eval.motion import (
    ellipse_mask,
    intensity_motion,
    random_warp,
    static_video,
    strain_ratio,
)

__all__ = [
    "FeatureCache",
    "balanced_first",
    "calibrate_warp",
    "fvd_of",
    "heldout_sets",
    "main",
    "report",
]

CLASS_NAMES = {0: "benign", 1: "malignant"}


def heldout_sets(root: str | os.PathLike, n: int) -> tuple[list[dict], list[dict]]:
    """Two disjoint class-balanced sets of ``n`` test clips of a phantom dataset.

    Each item: ``video`` uint8 ``[1, T+1, H, W]``, ``label``, ``mask`` bool ``[H, W]``
    (the lesion in x0, from the ellipse recorded in dataset.json), ``path``.
    """
    root = Path(root)
    meta = json.loads((root / "dataset.json").read_text())
    px = meta["config"]["fov_mm"] / meta["config"]["size"]
    size = meta["config"]["size"]
    by_class: dict[int, list[dict]] = {0: [], 1: []}
    for item in meta["busv"]["items"]:
        if item["split"] == "test" and item["label"] in by_class:
            by_class[item["label"]].append(item)
    half = n // 2
    for label, items in by_class.items():
        if len(items) < 2 * half:
            raise ValueError(
                f"{root}: {len(items)} {CLASS_NAMES[label]} test clips, {2 * half} needed for "
                f"two sets of {n}"
            )

    def load(item: dict) -> dict:
        files = frame_files(root / "busv" / "rawframes" / item["path"])
        video = torch.from_numpy(np.stack([read_image(f, channels=1) for f in files]))[None]
        lesion = item["scene"]["lesion"]
        mask = ellipse_mask(
            size,
            (lesion["center_mm"][0] / px, lesion["center_mm"][1] / px),
            (lesion["width_mm"] / 2 / px, lesion["height_mm"] / 2 / px),
        )
        return {"video": video, "label": item["label"], "mask": mask, "path": item["path"]}

    sets = []
    for part in range(2):
        chosen = [it for label in (0, 1) for it in by_class[label][part * half : (part + 1) * half]]
        sets.append([load(it) for it in chosen])
    return sets[0], sets[1]


def _digest(videos: list[torch.Tensor]) -> str:
    h = hashlib.sha256()
    for v in videos:
        h.update(v.contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


class FeatureCache:
    """I3D logits of video sets, cached on disk by content (in ``cache``, None: no
    cache). Call with a set's name and its videos, each uint8 ``[C, T, H, W]``; returns
    float ``[N, 400]``."""

    def __init__(self, cache: Path | None, device: str, progress: bool) -> None:
        from lddm_fast.eval.i3d_weights import I3DEmbedding, load_kinetics_i3d

        model, self.weights = load_kinetics_i3d()
        self.embedder = I3DEmbedding(model, "logits")
        self.cache, self.device, self.progress = cache, device, progress

    def __call__(self, name: str, videos: list[torch.Tensor]) -> np.ndarray:
        from lddm_fast.eval.fvd import RESIZE_TF_LEGACY, extract_features

        path = None
        if self.cache is not None:
            path = self.cache / f"{name}-{_digest(videos)}.npy"
            if path.is_file():
                return np.load(path)
        feats = extract_features(
            self.embedder,
            videos,
            convention=RESIZE_TF_LEGACY,
            device=self.device,
            progress=self.progress,
            desc=f"I3D {name}",
        )
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, feats)
        return feats


def fvd_of(a: np.ndarray, b: np.ndarray) -> dict:
    """FVD between two feature sets ``[N, D]`` as a JSON-ready dict (value, N, ...)."""
    from lddm_fast.eval.fvd import frechet_from_features

    return frechet_from_features(a, b).to_dict()


def _clip_motion(videos: list[torch.Tensor], items: list[dict]) -> list[dict]:
    """Each video's motion figures, with the label of the item it pairs with."""
    rows = []
    for video, item in zip(videos, items, strict=True):
        stats = intensity_motion(video)
        rows.append(
            {
                "label": item["label"],
                "frame_diff": stats["frame_diff"],
                "x0_diff": stats["x0_diff"],
                "strain_ratio": strain_ratio(video, item["mask"]),
            }
        )
    return rows


def _by_class(rows: list[dict]) -> dict:
    out = {}
    for label, name in CLASS_NAMES.items():
        mine = [r for r in rows if r["label"] == label]
        ratios = np.array([r["strain_ratio"] for r in mine])
        out[name] = {
            "n": len(mine),
            "frame_diff": float(np.mean([r["frame_diff"] for r in mine])),
            "x0_diff": float(np.mean([r["x0_diff"] for r in mine])),
            "strain_ratio_median": float(np.nanmedian(ratios)),
            "strain_ratio_mean": float(np.nanmean(ratios)),
        }
    return out


def calibrate_warp(x0s: list[torch.Tensor], frames: int, target: float, seed: int) -> float:
    """The warp amplitude (pixels) whose mean change from x0 equals ``target``."""
    lo, hi = 0.0, 16.0
    for _ in range(12):
        mid = 0.5 * (lo + hi)
        g = torch.Generator().manual_seed(seed)
        diff = np.mean([intensity_motion(random_warp(x, frames, mid, g))["x0_diff"] for x in x0s])
        lo, hi = (mid, hi) if diff < target else (lo, mid)
    return 0.5 * (lo + hi)


def baseline_sets(
    set_b: list[dict], frames: int, seed: int
) -> tuple[dict[str, list[torch.Tensor]], float]:
    """The "static" and "random warp" videos from B's first frames, and the warp
    amplitude (pixels) that matches B's mean change from x0."""
    real_b = [it["video"] for it in set_b]
    x0_b = [v[:, 0] for v in real_b]
    target = float(np.mean([intensity_motion(v)["x0_diff"] for v in real_b]))
    amplitude = calibrate_warp(x0_b[:32], frames, target, seed)
    g = torch.Generator().manual_seed(seed)
    warp = [random_warp(x, frames, amplitude, g) for x in x0_b]
    static = [static_video(x, frames) for x in x0_b]
    return {"static_b": static, "warp_b": warp}, amplitude


def balanced_first(labels: list[int], count: int) -> list[int]:
    """Indices of the first ``count / 2`` items of each class (0 benign, 1 malignant)."""
    out = []
    for label in CLASS_NAMES:
        out += [i for i, y in enumerate(labels) if y == label][: count // 2]
    return out


def _within(real: float, fake: float, tolerance: float = 0.25) -> bool:
    return math.isfinite(real) and abs(fake - real) <= tolerance * abs(real)


@torch.no_grad()
def report(
    checkpoint: str | os.PathLike | None,
    data: str | os.PathLike,
    *,
    n: int = 256,
    steps: int = 25,
    seed: int = 0,
    batch_size: int = 16,
    device: str = "cpu",
    cache: Path | None = None,
    progress: bool = True,
    fvd_n: int | None = None,
    motion_draws: int = 4,
) -> dict:
    """Measure the three quality bars (see the module docstring). ``checkpoint`` None:
    the bundled model. ``fvd_n``: embed only this many (class-balanced) clips of each
    set for the FVDs (I3D at 224 px costs seconds per clip on a CPU); default ``n``.
    ``motion_draws``: LDDM videos per first frame pooled by bar 2 (at least 1)."""
    if isinstance(motion_draws, bool) or not isinstance(motion_draws, int) or motion_draws < 1:
        raise ValueError(f"motion_draws must be an integer >= 1, got {motion_draws!r}")
    from lddm_fast.diffusion.pipeline import LDDMPipeline
    from lddm_fast.train.autoencoder import reconstruction_metrics

    t0 = time.perf_counter()
    set_a, set_b = heldout_sets(data, n)
    pipe = LDDMPipeline.from_pretrained(checkpoint, device=device, dtype=torch.float32)
    frames = pipe.config.num_frames
    real_a = [it["video"] for it in set_a]
    real_b = [it["video"] for it in set_b]
    if real_b[0].shape[1] != frames + 1 or real_b[0].shape[-1] != pipe.config.size:
        raise ValueError(
            f"test clips are {tuple(real_b[0].shape)}, the model makes "
            f"[1, {frames + 1}, {pipe.config.size}, {pipe.config.size}]"
        )
    x0_b = [v[:, 0] for v in real_b]

    # Bar 1: reconstruction of B through the autoencoder.
    rebuilt_float: list[torch.Tensor] = []
    recon = reconstruction_metrics(
        pipe.models.autoencoder,
        [(v.float() / 127.5 - 1.0, 0) for v in real_b],
        torch.device(device),
        batch_size=batch_size,
        rebuilt=rebuilt_float,
        speckle=(
            torch.Generator(device=device).manual_seed(seed)
            if pipe.models.autoencoder.speckle is not None
            else None
        ),
    )
    rebuilt = [((v + 1) * 127.5).round().clamp(0, 255).to(torch.uint8) for v in rebuilt_float]

    # LDDM videos (motion_draws per first frame; the first draw is the FVD's set) and
    # the two baselines from B's first frames.
    draws = []
    for draw in range(motion_draws):
        videos = []
        for start in range(0, n, batch_size):
            images = torch.stack(x0_b[start : start + batch_size])
            seeds = [(seed + draw) * 1_000_003 + start + i for i in range(len(images))]
            videos += list(pipe(images, steps=steps, seed=seeds, output="uint8").videos.cpu())
        draws.append(videos)
    lddm = draws[0]
    real_motion = _by_class(_clip_motion(real_b, set_b))
    baselines, amplitude = baseline_sets(set_b, frames, seed)
    static, warp = baselines["static_b"], baselines["warp_b"]

    features = FeatureCache(cache, device, progress)
    keep = balanced_first([it["label"] for it in set_b], fvd_n or n)
    f = {
        name: features(name, [videos[i] for i in keep])
        for name, videos in (
            ("real_a", real_a),
            ("real_b", real_b),
            ("rebuilt_b", rebuilt),
            ("lddm_b", lddm),
            ("static_b", static),
            ("warp_b", warp),
        )
    }
    floor = fvd_of(f["real_a"], f["real_b"])
    fvd = {
        "floor_real_a_vs_real_b": floor,
        "lddm": fvd_of(f["real_a"], f["lddm_b"]),
        "static": fvd_of(f["real_a"], f["static_b"]),
        "random_warp": fvd_of(f["real_a"], f["warp_b"]),
        "reconstruction_b_vs_rebuilt_b": fvd_of(f["real_b"], f["rebuilt_b"]),
    }
    # Block matching is the slow part: each video's figures once, then pooled and per draw.
    draw_rows = [_clip_motion(videos, set_b) for videos in draws]
    lddm_motion = _by_class([row for rows in draw_rows for row in rows])
    draw_motion = [_by_class(rows) for rows in draw_rows]
    warp_motion = _by_class(_clip_motion(warp, set_b))

    motion_ok = {}
    for name in CLASS_NAMES.values():
        r, s = real_motion[name], lddm_motion[name]
        motion_ok[name] = {
            k: _within(r[k], s[k]) for k in ("frame_diff", "x0_diff", "strain_ratio_median")
        }
    order_real = (
        real_motion["benign"]["strain_ratio_median"]
        > real_motion["malignant"]["strain_ratio_median"]
    )
    order_lddm = (
        lddm_motion["benign"]["strain_ratio_median"]
        > lddm_motion["malignant"]["strain_ratio_median"]
    )
    bars = {
        "1_reconstruction_psnr_gain_at_least_5db": recon["psnr_gain"] >= 5.0,
        "1_reconstruction_fvd_within_2x_floor": fvd["reconstruction_b_vs_rebuilt_b"]["value"]
        <= 2 * floor["value"],
        "2_motion_within_25pct": all(all(v.values()) for v in motion_ok.values()),
        "2_strain_order_benign_above_malignant": order_real == order_lddm,
        "3_fvd_below_static_and_warp": fvd["lddm"]["value"]
        < min(fvd["static"]["value"], fvd["random_warp"]["value"]),
    }
    return {
        "checkpoint": str(checkpoint) if checkpoint else "bundled",
        "data": os.path.abspath(data),
        "n_per_set": n,
        "n_per_set_fvd": len(keep),
        "sampler": {"name": "ddim", "steps": steps, "seed": seed},
        "motion_draws": motion_draws,
        "reconstruction": recon,
        "motion": {
            "real": real_motion,
            "lddm": lddm_motion,
            "lddm_by_draw": draw_motion,
            "random_warp": warp_motion,
            "within_25pct": motion_ok,
        },
        "random_warp_amplitude_px": amplitude,
        "fvd": fvd,
        "i3d_weights": features.weights.to_dict(),
        "bars": bars,
        "wall_time_s": round(time.perf_counter() - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lddm_fast.eval.heldout",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", required=True, help="a lddm-fast phantom dataset root")
    parser.add_argument("--checkpoint", default=None, help="checkpoint dir (default: bundled)")
    parser.add_argument("--n", type=int, default=256, help="clips per set (default 256)")
    parser.add_argument(
        "--fvd-n", type=int, default=None, help="clips per set embedded for the FVDs (default --n)"
    )
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps (default 25)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--motion-draws",
        type=positive_int,
        default=4,
        help="LDDM videos per first frame pooled by the motion bar (default 4; the first "
        "draw is also the FVD's set)",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--cache", default=None, help="folder for cached I3D features")
    parser.add_argument("--out", required=True, help="report JSON")
    args = parser.parse_args(argv)
    result = report(
        args.checkpoint,
        args.data,
        n=args.n,
        steps=args.steps,
        seed=args.seed,
        device=args.device,
        cache=Path(args.cache) if args.cache else None,
        fvd_n=args.fvd_n,
        motion_draws=args.motion_draws,
    )
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    json.dump(result["bars"], sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
