"""Training data: the splits of a data folder, per-item seeded clips, and the batch order.

Every random choice a trainer makes for one training sample (temporal crop, spatial
augmentation, posterior draw, diffusion timestep and noise, condition dropout) comes
from one generator seeded by ``(seed, step, position in the global batch)``. The
batch order is a pure function of ``(seed, step)`` too. So a run resumed at step k
draws exactly what an uninterrupted run draws, whichever worker or rank loads an
item, and N ranks with B/N samples each see the global batch of one rank with B.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from lddm_fast.data.busv import VideoRecord
from lddm_fast.data.datasets import ClipDataset
from lddm_fast.data.errors import BadInputError
from lddm_fast.data.video_io import frame_files

if TYPE_CHECKING:
    from lddm_fast.models.config import LDDMConfig

log = logging.getLogger(__name__)

__all__ = [
    "DataSplits",
    "PhantomFlowClips",
    "SeededClips",
    "StepBatches",
    "collate",
    "data_hash",
    "eval_view",
    "item_seed",
    "model_splits",
    "open_splits",
]

# Plain folders (no split lists) keep this share of their videos for validation.
VAL_SHARE = 0.1
# How many following videos stand in for an unreadable one before the batch fails.
_MAX_SUBSTITUTES = 10


@dataclass
class DataSplits:
    """The train and val clip datasets of one data folder and how they were found.

    ``layout`` is ``"busv"`` (split lists), ``"phantom"`` (a phantom root holding
    ``busv/``) or ``"folder"`` (videos without lists; val is a hash-chosen share).
    """

    root: str
    layout: str
    train: ClipDataset
    val: ClipDataset

    def describe(self) -> dict:
        """A JSON summary for logs and meta.json."""
        found = {s.path: s.reason for part in (self.train, self.val) for s in part.scan.skipped}
        skipped = [{"path": path, "reason": reason} for path, reason in found.items()]
        return {
            "path": os.path.abspath(self.root),
            "layout": self.layout,
            "region": self.train.region,
            "train_videos": len(self.train),
            "val_videos": len(self.val),
            # Videos left out at the scan (too short, too small, unreadable header).
            "skipped_at_scan": skipped[:100],
            "skipped_at_scan_count": len(skipped),
        }


def _busv_root(path: str) -> str | None:
    """The folder holding ``train_list.txt`` for a BUSV or phantom root, else None."""
    for candidate in (path, os.path.join(path, "busv")):
        if os.path.isfile(os.path.join(candidate, "train_list.txt")):
            return candidate
    return None


def open_splits(
    path: str | os.PathLike,
    *,
    frames: int,
    size: int,
    channels: int,
    stride: int = 1,
    region: str = "center",
) -> DataSplits:
    """Find the training and validation videos under ``path``.

    Accepts a BUSV root (``train_list.txt`` and ``val_list.txt`` beside
    ``rawframes/``), a phantom root (``lddm-fast phantom`` output, the same under
    ``busv/``) or any folder of videos (frame folders, video files, DICOM), whose
    videos are split by a hash of their path (about 10% val). Clips are ``frames``
    frames (x0 plus T) at ``size`` x ``size``, cut to their imaging ``region`` first
    (see :class:`~lddm_fast.data.datasets.ClipDataset`); videos too short or too
    small are skipped at the scan and logged with the reason.

    Raises:
        BadInputError: ``path`` is missing, or a split has no usable video.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise BadInputError(path, "training data folder not found")
    common = dict(
        frames=frames, stride=stride, size=size, channels=channels, mode="crop", region=region
    )
    busv = _busv_root(path)
    if busv is not None:
        videos = os.path.join(busv, "rawframes")
        videos = videos if os.path.isdir(videos) else busv
        val_list = os.path.join(busv, "val_list.txt")
        if not os.path.isfile(val_list):
            raise BadInputError(busv, "has train_list.txt but no val_list.txt")
        train = ClipDataset(
            videos, labels=os.path.join(busv, "train_list.txt"), train=True, **common
        )
        val = ClipDataset(videos, labels=val_list, train=False, **common)
        layout = "phantom" if busv != path else "busv"
        return DataSplits(path, layout, train, val)
    every = ClipDataset(path, train=True, **common)
    is_val = [_hash_share(os.path.relpath(r.path, path)) < VAL_SHARE for r in every.records]
    if len(every.records) > 1 and not any(is_val):
        is_val[-1] = True  # a tiny folder still gets one held-out video
    if all(is_val):
        raise BadInputError(path, "needs at least 2 usable videos (one is held out for val)")
    train = _subset(every, [r for r, v in zip(every.records, is_val, strict=True) if not v])
    val = _subset(every, [r for r, v in zip(every.records, is_val, strict=True) if v], train=False)
    return DataSplits(path, "folder", train, val)


def model_splits(path: str | os.PathLike, config: LDDMConfig, region: str = "center") -> DataSplits:
    """:func:`open_splits` with clips the shape ``config``'s model takes: x0 plus
    ``num_frames`` frames of ``size`` x ``size`` pixels and ``channels`` channels."""
    return open_splits(
        path,
        frames=config.num_frames + 1,
        size=config.size,
        channels=config.channels,
        region=region,
    )


def _hash_share(name: str) -> float:
    digest = hashlib.sha256(name.encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64


def _subset(dataset: ClipDataset, records: list[VideoRecord], *, train: bool = True):
    part = copy.copy(dataset)
    part.records = records
    if not train:
        part.train = False
        part.transform = type(dataset.transform)(dataset.transform.size, dataset.transform.mode)
    return part


def eval_view(dataset: ClipDataset, limit: int | None = None) -> ClipDataset:
    """The first ``limit`` videos (None: all) of ``dataset`` as evaluation clips: from
    frame 0, without the training crop and flip (whose resize blurs the speckle)."""
    return _subset(dataset, dataset.records[:limit], train=False)


def _record_files(record: VideoRecord) -> list[str]:
    return frame_files(record.path) if record.kind == "frames" else [record.path]


def data_hash(root: str | os.PathLike, *datasets: ClipDataset) -> str:
    """sha256 over the bytes of every file of every video, in record order, each
    preceded by its path relative to ``root``: changes when any frame changes."""
    h = hashlib.sha256()
    for dataset in datasets:
        for record in dataset.records:
            for name in _record_files(record):
                h.update(os.path.relpath(name, root).encode() + b"\0")
                with open(name, "rb") as f:
                    for block in iter(lambda f=f: f.read(1 << 20), b""):
                        h.update(block)
    return h.hexdigest()


def item_seed(seed: int, step: int, position: int) -> int:
    """The seed of sample ``position`` of the global batch of ``step``."""
    state = np.random.SeedSequence([seed, step, position]).generate_state(2, np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


class StepBatches(Sampler):
    """Batch sampler: for each step from ``start_step`` on, this rank's share of the
    global batch as ``(video index, item seed)`` pairs.

    The global batch of step s holds positions ``s*B .. s*B + B - 1`` of an endless
    stream of epochs, each a permutation of the videos drawn from ``(seed, epoch)``;
    rank r of W takes positions ``r*B/W .. (r+1)*B/W - 1`` of it.
    """

    def __init__(
        self,
        num_items: int,
        global_batch: int,
        *,
        seed: int,
        start_step: int,
        stop_step: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if num_items < 1:
            raise ValueError("no training videos")
        if global_batch % world_size:
            raise ValueError(
                f"the batch size {global_batch} must be divisible by the {world_size} processes"
            )
        self.num_items, self.global_batch, self.seed = num_items, global_batch, seed
        self.start_step, self.stop_step = start_step, stop_step
        self.rank, self.world_size = rank, world_size
        self._perms: dict[int, np.ndarray] = {}

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {
                epoch: np.random.default_rng([self.seed, epoch]).permutation(self.num_items)
            }
        return self._perms[epoch]

    def batch(self, step: int) -> list[tuple[int, int]]:
        share = self.global_batch // self.world_size
        out = []
        for position in range(self.rank * share, (self.rank + 1) * share):
            flat = step * self.global_batch + position
            epoch, offset = divmod(flat, self.num_items)
            index = int(self._permutation(epoch)[offset])
            out.append((index, item_seed(self.seed, step, position)))
        return out

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start_step, self.stop_step):
            yield self.batch(step)

    def __len__(self) -> int:
        return max(0, self.stop_step - self.start_step)


class SeededClips(Dataset):
    """Clips keyed by ``(video index, item seed)``, as :class:`StepBatches` yields.

    Returns a dict: ``clip`` float32 ``[C, T+1, H, W]`` in [-1, 1], ``label`` int,
    ``seed`` the item seed (the trainer seeds the sample's noise with it) and
    ``skipped``: ``(path, reason)`` of each unreadable video that the next one stood in
    for, so the main process can name it in the log.
    """

    def __init__(self, clips: ClipDataset) -> None:
        self.clips = clips

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, seed = key
        skipped: list[tuple[str, str]] = []
        for attempt in range(min(len(self.clips), _MAX_SUBSTITUTES)):
            which = (index + attempt) % len(self.clips)
            generator = torch.Generator().manual_seed(seed)
            try:
                clip, label = self.clips.load(which, generator)
            except BadInputError as e:
                skipped.append((os.fspath(e.path), e.reason))
                continue
            return self._item(which, clip, label, seed, skipped)
        raise BadInputError(
            self.clips.records[index].path,
            f"this and the next {len(skipped) - 1} videos could not be read: "
            + "; ".join(f"{p}: {r}" for p, r in skipped),
        )

    def _item(self, index: int, clip: torch.Tensor, label: int, seed: int, skipped) -> dict:
        return {"clip": clip, "label": label, "seed": seed, "skipped": skipped}


class PhantomFlowClips(SeededClips):
    """:class:`SeededClips` of a phantom dataset, each with the tissue motion the
    phantom simulated: ``flow`` float32 ``[2, T, H, W]``, frame t + 1's displacement
    back to x0 (:func:`lddm_fast.data.phantom.true_flow`), recomputed from the clip's
    seed in ``dataset.json`` (about 10 ms a clip).

    The clips must be unaugmented views of whole frames from frame 0 at the phantom's
    own size (:func:`eval_view`, region ``center``): a crop, flip, resize or later
    start would move the frames away from the field.

    Raises:
        BadInputError: ``dataset.json`` is missing or lacks a clip, or the clips are
            augmented or not at the phantom's size.
    """

    def __init__(self, clips: ClipDataset, root: str | os.PathLike) -> None:
        from lddm_fast.data.phantom import PhantomConfig

        super().__init__(clips)
        manifest_path = os.path.join(os.fspath(root), "dataset.json")
        try:
            with open(manifest_path) as f:
                manifest = json.load(f)
            self.config = PhantomConfig(**manifest["config"])
            items = manifest["busv"]["items"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise BadInputError(
                manifest_path, f"the phantom's dataset.json is needed for its motion ({e})"
            ) from None
        if clips.train or clips.stride != 1 or clips.region != "center":
            raise BadInputError(
                root,
                "flow supervision needs unaugmented clips of consecutive whole frames "
                "(eval_view, region center)",
            )
        if clips.transform.size != (self.config.size, self.config.size):
            raise BadInputError(
                root,
                f"flow supervision needs clips at the phantom's {self.config.size} px, "
                f"not {clips.transform.size}",
            )
        rawframes = os.path.join(os.fspath(root), "busv", "rawframes")
        by_path = {os.path.normpath(os.path.join(rawframes, it["path"])): it for it in items}
        self.scenes = []
        for record in clips.records:
            item = by_path.get(os.path.normpath(record.path))
            if item is None:
                raise BadInputError(record.path, f"not a clip of {manifest_path}")
            self.scenes.append((item["class"], int(item["seed"])))

    def _item(self, index: int, clip: torch.Tensor, label: int, seed: int, skipped) -> dict:
        from lddm_fast.data.phantom import true_flow

        out = super()._item(index, clip, label, seed, skipped)
        flow = true_flow(*self.scenes[index], self.config)[1 : clip.shape[1]]
        out["flow"] = torch.from_numpy(flow).transpose(0, 1)
        return out


def collate(items: list[dict]) -> dict:
    """Stack :class:`SeededClips` items: ``clip [B, C, T+1, H, W]``, ``label [B]``,
    ``seed`` list, ``skipped`` list (and ``flow [B, 2, T, H, W]`` from
    :class:`PhantomFlowClips`)."""
    out = {
        "clip": torch.stack([it["clip"] for it in items]),
        "label": torch.tensor([it["label"] for it in items]),
        "seed": [it["seed"] for it in items],
        "skipped": [s for it in items for s in it["skipped"]],
    }
    if "flow" in items[0]:
        out["flow"] = torch.stack([it["flow"] for it in items])
    return out


def item_generators(seeds: list[int]) -> list[torch.Generator]:
    """One CPU generator per sample, offset from the data augmentation's stream."""
    return [torch.Generator().manual_seed(seed ^ 0x5EED) for seed in seeds]


def per_item_randn(
    generators: list[torch.Generator], shape: tuple[int, ...], device: torch.device
) -> torch.Tensor:
    """``[B, *shape]`` standard normal, row i from generator i (drawn on the CPU so
    the values do not depend on the device)."""
    rows = [torch.randn(shape, generator=g) for g in generators]
    return torch.stack(rows).to(device)
