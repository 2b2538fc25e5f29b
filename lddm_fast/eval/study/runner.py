"""Run the augmentation study's grid: arms x fractions of the real training videos x
seeds, one classifier each, resumable (each finished run is a JSON file under
``OUT/runs``, skipped on a rerun with the same settings and data)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lddm_fast.data.atomic import atomic_file, write_json
from lddm_fast.data.digest import sha256_file
from lddm_fast.eval.study import report as report_mod
from lddm_fast.eval.study.classifier import ClassifierConfig
from lddm_fast.eval.study.fit import FitSettings, fit_and_test
from lddm_fast.eval.study.videos import (
    VideoSet,
    baseline_sets,
    image_inputs,
    lddm_set,
    real_splits,
    real_subset,
)

__all__ = ["ARMS", "StudySettings", "run_study"]

ARMS = ("real", "real+lddm", "real+static", "real+warp")


@dataclass
class StudySettings:
    """Everything that shapes the study's figures (recorded in results.json).

    model_args: how the batch engine gets the model (``--checkpoint DIR``, ``--preset
    NAME`` or nothing: the bundled model); fvd_n: videos per synthetic set embedded for
    its FVD against the real test split (0: no FVD)."""

    fractions: tuple[float, ...] = (0.1, 0.25, 1.0)
    seeds: int = 3
    videos_per_image: int = 1
    synth_steps: int = 25
    synth_seed: int = 0
    fvd_n: int = 64
    fit: FitSettings = field(default_factory=FitSettings)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    model_args: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {
            "fractions": list(self.fractions),
            "seeds": self.seeds,
            "videos_per_image": self.videos_per_image,
            "synthesis": {"sampler": "ddim", "steps": self.synth_steps, "seed": self.synth_seed},
            "fvd_n": self.fvd_n,
            "fit": self.fit.to_dict(),
            "classifier": self.classifier.to_dict(),
            "model": list(self.model_args) or ["bundled"],
        }


def _model_config(model_args: tuple[str, ...]):
    from lddm_fast.models import LDDMConfig, preset
    from lddm_fast.models.bundled import bundled_checkpoint
    from lddm_fast.models.checkpoint import CONFIG_FILE

    if model_args and model_args[0] == "--preset":
        return preset(model_args[1])
    folder = model_args[1] if model_args else bundled_checkpoint()
    with open(os.path.join(folder, CONFIG_FILE)) as f:
        return LDDMConfig.from_dict(json.load(f))


def _files_digest(paths: list[str]) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(os.path.basename(path).encode() + b"\0")
        h.update(bytes.fromhex(sha256_file(path)))
    return h.hexdigest()


def _verdict(agg: dict, fraction: float) -> str:
    key = str(fraction)
    auc = {arm: agg[arm][key]["auc"]["mean"] for arm in ARMS}
    others = {arm: v for arm, v in auc.items() if arm != "real+lddm"}
    shown = ", ".join(f"{arm} {v:.3f}" for arm, v in auc.items())
    if not all(math.isfinite(v) for v in auc.values()):
        return f"At fraction {fraction:g} some AUCs are undefined ({shown})."
    best_other = max(others, key=others.get)
    if auc["real+lddm"] > others[best_other]:
        return (
            f"At fraction {fraction:g}, real+lddm has the highest mean test AUC: {shown}; "
            f"it beats real only and both synthetic baselines."
        )
    return (
        f"At fraction {fraction:g}, real+lddm does NOT have the highest mean test AUC: "
        f"{shown}; the best is {best_other}."
    )


def run_study(
    real_videos: str,
    images: str,
    out: str,
    settings: StudySettings,
    *,
    device: str = "cpu",
    batch_size: int = 8,
    progress: bool = True,
    command: str = "",
) -> dict:
    """Run (or finish) the study into ``out`` and return the content of results.json.

    Writes ``out/synthetic/lddm`` (the batch engine's folder), ``out/runs/*.json`` (one
    per finished classifier), ``out/features`` (I3D features), ``results.json``,
    ``report.md`` and ``auc_vs_fraction.png``.
    """
    from tqdm.auto import tqdm

    from lddm_fast.eval.heldout import calibrate_warp
    from lddm_fast.eval.motion import intensity_motion

    t0 = time.perf_counter()
    os.makedirs(os.path.join(out, "runs"), exist_ok=True)
    config = _model_config(settings.model_args)
    frames, size = config.num_frames + 1, config.size

    real = real_splits(real_videos, frames=frames, size=size)
    items = image_inputs(images)
    lddm, engine = lddm_set(
        items,
        os.path.join(out, "synthetic", "lddm"),
        model_args=list(settings.model_args),
        videos_per_image=settings.videos_per_image,
        steps=settings.synth_steps,
        seed=settings.synth_seed,
        device=device,
        batch_size=batch_size,
        quiet=not progress,
    )
    train_videos = [v[None] for v in real["train"].videos]
    target = float(np.mean([intensity_motion(v)["x0_diff"] for v in train_videos]))
    amplitude = calibrate_warp(
        [v[:, 0] for v in train_videos[:32]], frames - 1, target, settings.synth_seed
    )
    static, warp, bad_images = baseline_sets(
        items,
        size=size,
        frames=frames,
        videos_per_image=settings.videos_per_image,
        amplitude=amplitude,
        seed=settings.synth_seed,
    )
    synthetic = {"real+lddm": lddm, "real+static": static, "real+warp": warp}

    synthetic_info = {
        name.removeprefix("real+"): {
            "videos": len(videos),
            "classes": videos.class_counts(),
            "sha256": videos.digest(),
        }
        for name, videos in synthetic.items()
    }
    synthetic_info["lddm"]["engine"] = engine
    synthetic_info["warp"]["amplitude_px"] = amplitude
    synthetic_info["warp"]["target_x0_diff"] = target
    from lddm_fast.eval.fvd import FVD_FRAMES

    fvd_note = "FVD not measured (--fvd-n 0)."
    if settings.fvd_n > 0 and frames < FVD_FRAMES:
        fvd_note = (
            f"FVD not measured: the model's videos have {frames} frames, the I3D embedding "
            f"takes {FVD_FRAMES}."
        )
    elif settings.fvd_n > 0:
        from lddm_fast.eval.heldout import FeatureCache, balanced_first, fvd_of

        features = FeatureCache(Path(out) / "features", device, progress)
        test = real["test"]
        keep = balanced_first(test.labels.tolist(), settings.fvd_n)
        real_f = features("real_test", [test.videos[i][None] for i in keep])
        for name, videos in synthetic.items():
            chosen = balanced_first(videos.labels.tolist(), settings.fvd_n)
            fake_f = features(name, [videos.videos[i][None] for i in chosen])
            synthetic_info[name.removeprefix("real+")]["fvd"] = fvd_of(real_f, fake_f)
        fvd_note = (
            f"FVD: Kinetics-400 I3D logits, at most {settings.fvd_n} class-balanced videos per "
            "set against as many of the real test split; values are comparable only at the "
            "same N."
        )

    fit_key = {
        "fit": settings.fit.to_dict(),
        "classifier": settings.classifier.to_dict(),
        "real": {split: s.digest() for split, s in real.items()},
        "synthetic": {name: s.digest() for name, s in synthetic.items()},
    }
    key = hashlib.sha256(json.dumps(fit_key, sort_keys=True).encode()).hexdigest()[:16]
    grid = [
        (fraction, seed, arm)
        for fraction in settings.fractions
        for seed in range(settings.seeds)
        for arm in ARMS
    ]
    runs, skipped = [], 0
    bar = tqdm(grid, desc="study", unit="run", disable=not progress, dynamic_ncols=True)
    for fraction, seed, arm in bar:
        name = f"{arm.replace('+', '_')}__f{fraction:g}__s{seed}.json"
        path = os.path.join(out, "runs", name)
        if os.path.isfile(path):
            with open(path) as f:
                done = json.load(f)
            if done.get("key") == key:
                runs.append(done)
                skipped += 1
                continue
        bar.set_postfix_str(f"{arm} f={fraction:g} seed={seed}")
        subset = real["train"].take(real_subset(real["train"], fraction, seed))
        train = subset if arm == "real" else VideoSet.concat(subset, synthetic[arm])
        record = fit_and_test(
            train,
            real["val"],
            real["test"],
            settings=settings.fit,
            seed=1000 * seed + 17,
            config=settings.classifier,
            device=device,
        )
        record.update(arm=arm, fraction=fraction, seed=seed, real_train=len(subset), key=key)
        write_json(path, record)
        runs.append(record)
    bar.close()

    arms, fractions = list(ARMS), list(settings.fractions)
    agg = report_mod.aggregate(runs, arms, fractions)
    results = {
        "command": command,
        "arms": arms,
        "fractions": fractions,
        "settings": settings.to_dict(),
        "data": {
            "real": {
                "root": os.path.abspath(real_videos),
                **{split: len(s) for split, s in real.items()},
                "classes": {split: s.class_counts() for split, s in real.items()},
                "sha256": {split: s.digest() for split, s in real.items()},
                "frames": frames,
                "size": size,
            },
            "images": {
                "root": os.path.abspath(images),
                "count": len(items),
                "sha256": _files_digest([it.path for it in items]),
                "unreadable": bad_images,
            },
        },
        "real_train_counts": {
            str(f): len(real_subset(real["train"], f, 0)) for f in settings.fractions
        },
        "synthetic": synthetic_info,
        "fvd_note": fvd_note,
        "runs": sorted(runs, key=lambda r: (r["fraction"], r["seed"], arms.index(r["arm"]))),
        "runs_skipped_as_done": skipped,
        "aggregate": agg,
        "paired": report_mod.paired(runs, arms, fractions),
        "verdict": _verdict(agg, min(fractions)),
        "plot": "auc_vs_fraction.png",
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "wall_time_s": round(time.perf_counter() - t0, 1),
    }
    write_json(os.path.join(out, "results.json"), results)
    report_mod.plot(results, os.path.join(out, results["plot"]))
    with atomic_file(os.path.join(out, "report.md")) as tmp:
        with open(tmp, "w") as f:
            f.write(report_mod.render_markdown(results))
    return results
