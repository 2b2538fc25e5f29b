"""The study's video sets: real clips from a BUSV root, and the three synthetic sets
made from a BUSI-layout image folder (LDDM through the batch engine, "static" and
"random warp"), each held in memory as uint8 ``[N, T+1, S, S]`` with its labels."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

import numpy as np
import torch

from lddm_fast.data.errors import BadInputError
from lddm_fast.data.labels import CLASSES

__all__ = [
    "SPLITS",
    "VideoSet",
    "baseline_sets",
    "image_inputs",
    "lddm_set",
    "real_splits",
    "real_subset",
]

SPLITS = ("train", "val", "test")
# The study is benign vs malignant; "normal" clips and images are left out.
STUDY_CLASSES = tuple(name for name in CLASSES if name != "normal")


@dataclass
class VideoSet:
    """videos uint8 ``[N, T+1, S, S]`` (grayscale; x0 first), labels int64 ``[N]``
    (0 benign, 1 malignant), names: where each came from (for the report)."""

    videos: torch.Tensor
    labels: torch.Tensor
    names: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, indices) -> VideoSet:
        index = torch.as_tensor(indices, dtype=torch.long)
        return VideoSet(self.videos[index], self.labels[index], [self.names[i] for i in index])

    def digest(self) -> str:
        """sha256 of the pixels and labels: names a set's content in caches."""
        h = hashlib.sha256(self.videos.contiguous().numpy().tobytes())
        h.update(self.labels.numpy().tobytes())
        return h.hexdigest()

    def class_counts(self) -> dict[str, int]:
        return {name: int((self.labels == i).sum()) for i, name in enumerate(STUDY_CLASSES)}

    @staticmethod
    def concat(*sets: VideoSet) -> VideoSet:
        return VideoSet(
            torch.cat([s.videos for s in sets]),
            torch.cat([s.labels for s in sets]),
            [n for s in sets for n in s.names],
        )


def real_splits(root: str | os.PathLike, *, frames: int, size: int) -> dict[str, VideoSet]:
    """The train, val and test splits of a BUSV root (``rawframes/`` with
    ``train_list.txt``, ``val_list.txt`` and ``test_list.txt``; a ``lddm-fast phantom``
    root's ``busv/`` also works), each clip's first ``frames`` frames at ``size`` px.

    Raises:
        BadInputError: a list file is missing, or a split has no benign or no
            malignant clip.
    """
    from lddm_fast.data.datasets import ClipDataset

    root = os.fspath(root)
    if not os.path.isfile(os.path.join(root, "train_list.txt")) and os.path.isdir(
        os.path.join(root, "busv")
    ):
        root = os.path.join(root, "busv")
    videos_dir = os.path.join(root, "rawframes")
    videos_dir = videos_dir if os.path.isdir(videos_dir) else root
    out = {}
    for split in SPLITS:
        listing = os.path.join(root, f"{split}_list.txt")
        if not os.path.isfile(listing):
            raise BadInputError(listing, f"missing: the study needs the {split} split list")
        data = ClipDataset(
            videos_dir, frames=frames, size=size, mode="crop", labels=listing, train=False
        )
        clips, labels, names = [], [], []
        for index, record in enumerate(data.records):
            if record.label not in (0, 1):
                continue
            clip, label = data.load(index)
            clips.append(((clip[0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8))
            labels.append(label)
            names.append(os.path.relpath(record.path, videos_dir))
        split_set = VideoSet(
            torch.stack(clips) if clips else torch.empty(0, frames, size, size, dtype=torch.uint8),
            torch.tensor(labels, dtype=torch.long),
            names,
        )
        if min(split_set.class_counts().values()) == 0:
            raise BadInputError(
                listing, f"needs benign and malignant clips, has {split_set.class_counts()}"
            )
        out[split] = split_set
    return out


def real_subset(train: VideoSet, fraction: float, seed: int) -> list[int]:
    """Indices of a class-stratified ``fraction`` of ``train`` (at least one clip per
    class), the same for a given (fraction, seed) in every arm: the arms' pairing."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    rng = np.random.default_rng([seed, round(fraction * 1_000_000)])
    chosen = []
    for label in (0, 1):
        members = np.flatnonzero(train.labels.numpy() == label)
        keep = max(1, round(fraction * len(members)))
        chosen += sorted(rng.permutation(members)[:keep].tolist())
    return chosen


def image_inputs(images: str | os.PathLike) -> list:
    """The benign and malignant images of a BUSI-layout folder (masks left out), as
    the batch engine sees them, sorted by path."""
    from lddm_fast.synth.inputs import InputSet

    items = sorted(
        (it for it in InputSet(images) if it.label in STUDY_CLASSES), key=lambda it: it.rel
    )
    if not items:
        raise BadInputError(
            os.fspath(images), "no benign or malignant images (expected <class>/<image> folders)"
        )
    return items


def _linked_inputs(items: list, folder: str) -> str:
    """A folder of symbolic links ``<class>/<name>`` to the study's images, so the
    batch engine sees exactly them (no normal images, no masks) with their classes."""
    for item in items:
        link = os.path.join(folder, *item.rel.split("/"))
        os.makedirs(os.path.dirname(link), exist_ok=True)
        target = os.path.abspath(item.path)
        if os.path.islink(link) and os.readlink(link) == target:
            continue
        if os.path.lexists(link):
            os.remove(link)
        os.symlink(target, link)
    return folder


def lddm_set(
    items: list,
    out: str | os.PathLike,
    *,
    model_args: list[str],
    videos_per_image: int,
    steps: int,
    seed: int,
    device: str,
    batch_size: int,
    quiet: bool = True,
) -> tuple[VideoSet, dict]:
    """LDDM videos of every image of ``items`` (from :func:`image_inputs`), made by
    ``lddm-fast synthesize`` into ``out`` (npz, lossless; the inputs it reads are links
    in ``out/../inputs``): a rerun finishes what an interrupted one left and reuses
    what is done; bad images are reported by the engine in ``out/failed.jsonl`` and
    left out.

    ``model_args``: ``["--checkpoint", DIR]`` or ``["--preset", NAME]``.
    Returns the set (in manifest order: input path, then k) and the engine's summary.
    """
    from lddm_fast.synth import cli as synth_cli

    inputs = _linked_inputs(items, os.path.join(os.path.dirname(os.fspath(out)), "inputs"))
    argv = [
        "--input", inputs,
        "--out", os.fspath(out),
        *model_args,
        "--format", "npz",
        "--videos-per-image", str(videos_per_image),
        "--steps", str(steps),
        "--seed", str(seed),
        "--device", device,
        "--batch-size", str(batch_size),
        "--workers", "1",
        "--writers", "1",
    ]  # fmt: skip
    if quiet:
        argv.append("--quiet")
    code = synth_cli.main(argv)
    if code not in (0, 1):  # 1: some inputs failed, the rest is done
        raise RuntimeError(f"lddm-fast synthesize {' '.join(argv)} exited with status {code}")
    videos, labels, names = [], [], []
    with open(os.path.join(out, "manifest.jsonl"), "rb") as f:
        records = [json.loads(line) for line in f if line.strip()]
    for record in sorted(records, key=lambda r: (r["input"], r["k"])):
        if record.get("class") not in STUDY_CLASSES:
            continue
        path = next(o["path"] for o in record["outputs"] if o["format"] == "npz")
        with np.load(os.path.join(out, path)) as data:
            frames = data[data.files[0]]
        videos.append(torch.from_numpy(np.ascontiguousarray(frames)).reshape(frames.shape[:3]))
        labels.append(STUDY_CLASSES.index(record["class"]))
        names.append(f"{record['input']}#{record['k']}")
    if not videos:
        raise BadInputError(os.fspath(out), "the batch engine made no benign/malignant video")
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    return VideoSet(torch.stack(videos), torch.tensor(labels), names), summary


def baseline_sets(
    items: list, *, size: int, frames: int, videos_per_image: int, amplitude: float, seed: int
) -> tuple[VideoSet, VideoSet, list[dict]]:
    """The "static" (x0 repeated) and "random warp" videos of every image, ``frames``
    frames each (x0 included), ``videos_per_image`` per image (the warps differ, the
    static copies do not). Images that cannot be read are left out and returned as
    ``{"input", "reason"}`` records."""
    from lddm_fast.eval.motion import random_warp, static_video
    from lddm_fast.synth.engine import load_image

    static, warp, labels, names, bad = [], [], [], [], []
    g = torch.Generator().manual_seed(seed)
    for item in items:
        try:
            x0 = load_image(item.path, size, 1)
        except BadInputError as e:
            bad.append({"input": item.rel, "reason": str(e)})
            continue
        for k in range(videos_per_image):
            static.append(static_video(x0, frames - 1)[0])
            moved = random_warp(x0, frames - 1, amplitude, g)[0]
            warp.append(((moved + 1) * 127.5).round().clamp(0, 255).to(torch.uint8))
            labels.append(STUDY_CLASSES.index(item.label))
            names.append(f"{item.rel}#{k}")
    if not labels:
        raise BadInputError(items[0].path if items else "", "no image could be read")
    labels_t = torch.tensor(labels)
    return (
        VideoSet(torch.stack(static), labels_t, names),
        VideoSet(torch.stack(warp), labels_t.clone(), list(names)),
        bad,
    )
