"""Write phantom datasets in the BUSV and BUSI layouts, with a ``dataset.json``.

Layout under ``out``::

    busv/rawframes/<class>/<class>_<n>/000000.png ...   one folder per clip
    busv/{train,val,test}_list.txt                        MMAction2 rawframe lists:
                                                          "<class>/<video> <frames> <label>"
    busi/<class>/<class> (<n>).png                        one image per scene, with
    busi/<class>/<class> (<n>)_mask.png                   its lesion mask (0 / 255)
    dataset.json                                          classes, splits, parameters,
                                                          and every item with its seed

Labels: benign 0, malignant 1 (as in BUSV's lists), normal 2. Every item has its own
seed derived from ``(seed, layout, class, index)``, so an item's bytes do not depend
on how many others are written, in which order, or by how many workers; splits are
stratified per class. Clip folders are written atomically, so an interrupted run
leaves no half-written clip.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict

import numpy as np

from lddm_fast.data.phantom import CLASSES, PhantomConfig, simulate_clip

LABELS = {name: index for index, name in enumerate(CLASSES)}
LAYOUTS = ("busv", "busi")
SPLITS = ("train", "val", "test")


def item_seed(seed: int, layout: str, label: str, index: int) -> int:
    """The simulation seed of item ``index`` of class ``label`` in ``layout``."""
    entropy = [seed, LAYOUTS.index(layout), LABELS[label], index]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> 1)


def split_assignment(
    seed: int, layout: str, label: str, count: int, fractions: tuple[float, float, float]
) -> list[str]:
    """Split name of each of ``count`` items of one class (train/val/test shares)."""
    n_train = min(count, round(count * fractions[0]))
    n_val = min(count - n_train, round(count * fractions[1]))
    names = ["train"] * n_train + ["val"] * n_val + ["test"] * (count - n_train - n_val)
    entropy = [seed, LAYOUTS.index(layout), LABELS[label], 2**31 - 1]
    order = np.random.default_rng(np.random.SeedSequence(entropy)).permutation(count)
    return [names[k] for k in np.argsort(order)]


def write_phantom_dataset(
    out: str | os.PathLike,
    counts: dict[str, int],
    *,
    config: PhantomConfig | None = None,
    layouts: tuple[str, ...] = LAYOUTS,
    seed: int = 0,
    fps: float = 10.0,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    workers: int = 1,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Simulate and write ``counts[class]`` items per class for each of ``layouts``.

    ``config`` defaults to :class:`PhantomConfig` (64 px, 17 frames); BUSI images
    are single frames of the same config. ``progress`` is called with the layout
    name after each finished item. Returns the content of ``dataset.json``.
    """
    config = config or PhantomConfig()
    unknown = set(counts) - set(CLASSES)
    if unknown:
        raise ValueError(f"unknown classes {sorted(unknown)}; expected {CLASSES}")
    if not all(layout in LAYOUTS for layout in layouts):
        raise ValueError(f"layouts must be among {LAYOUTS}, got {layouts}")
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"split fractions must be three shares summing to 1, got {fractions}")
    out = os.fspath(out)
    manifest = {
        "format": "lddm_fast phantom dataset",
        "version": 1,
        "seed": seed,
        "classes": LABELS,
        "config": asdict(config),
        "fps": fps,
        "split_fractions": dict(zip(SPLITS, fractions, strict=True)),
    }
    for layout in layouts:
        jobs = []
        for label in CLASSES:
            n = counts.get(label, 0)
            splits = split_assignment(seed, layout, label, n, fractions)
            for index in range(n):
                jobs.append((out, layout, label, index, seed, config, fps, splits[index]))
        records = _run(jobs, workers, progress)
        manifest[layout] = _layout_manifest(out, layout, records)
    with open(os.path.join(out, "dataset.json"), "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write("\n")
    return manifest


def _run(jobs, workers, progress) -> list[dict]:
    if workers <= 1:
        results = map(_write_item, jobs)
        records = []
        for record in results:
            records.append(record)
            if progress:
                progress(record["layout"])
        return records
    with ProcessPoolExecutor(workers) as pool:
        records = []
        for record in pool.map(_write_item, jobs, chunksize=4):
            records.append(record)
            if progress:
                progress(record["layout"])
        return records


def _write_item(job) -> dict:
    from lddm_fast.data.images import write_png
    from lddm_fast.data.video_io import write_video

    out, layout, label, index, seed, config, fps, split = job
    item = item_seed(seed, layout, label, index)
    record = dict(layout=layout, split=split, seed=item, label=LABELS[label], **{"class": label})
    if layout == "busv":
        clip = simulate_clip(label, item, config)
        relative = f"{label}/{label}_{index:05d}"
        write_video(os.path.join(out, "busv", "rawframes", relative), clip.frames, fps)
        record.update(path=relative, frames=int(clip.frames.shape[0]))
    else:
        clip = simulate_clip(label, item, PhantomConfig(**{**asdict(config), "frames": 1}))
        name = f"{label}/{label} ({index + 1})"
        write_png(os.path.join(out, "busi", f"{name}.png"), clip.frames[0])
        mask = clip.masks[0].astype(np.uint8) * 255
        write_png(os.path.join(out, "busi", f"{name}_mask.png"), mask)
        record.update(path=f"{name}.png", mask=f"{name}_mask.png")
    scene = clip.describe()
    del scene["label"], scene["seed"]
    if layout == "busi":
        del scene["motion"]  # a single frame has no motion
    record["scene"] = scene
    return record


def _layout_manifest(out: str, layout: str, records: list[dict]) -> dict:
    items = [{k: v for k, v in r.items() if k != "layout"} for r in records]
    entry = {
        "root": f"{layout}/rawframes" if layout == "busv" else layout,
        "counts": {c: sum(r["class"] == c for r in records) for c in CLASSES},
        "splits": {s: sum(r["split"] == s for r in records) for s in SPLITS},
        "items": items,
    }
    if layout == "busv":
        entry["lists"] = {}
        os.makedirs(os.path.join(out, "busv"), exist_ok=True)
        for split in SPLITS:
            relative = f"busv/{split}_list.txt"
            with open(os.path.join(out, relative), "w") as f:
                for r in records:
                    if r["split"] == split:
                        f.write(f"{r['path']} {r['frames']} {r['label']}\n")
            entry["lists"][split] = relative
    return entry
