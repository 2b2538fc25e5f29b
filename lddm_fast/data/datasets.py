"""Torch datasets: training clips ``[C, T+1, H, W]`` and conditioning images ``[C, H, W]``.

Both scan their folder once at construction (see :func:`~lddm_fast.data.busv.scan_videos`
and :func:`~lddm_fast.data.busi.scan_images`; skipped inputs are in ``.scan.skipped``
and logged) and keep only paths, so they pickle cheaply into DataLoader workers and
open each file inside ``__getitem__``. Random augmentation uses torch's generator,
which DataLoader seeds differently in every worker.

A file that turns out to be unreadable in ``__getitem__`` (truncated after the
scan, say) raises :class:`~lddm_fast.data.errors.BadInputError` naming it, or with
``skip_bad=True`` is reported with a warning and the next item is returned instead,
so one bad file does not end a training run.
"""

from __future__ import annotations

import logging
import os
import warnings

import torch
from torch.utils.data import Dataset

from lddm_fast.data.busi import ImageRecord, scan_images
from lddm_fast.data.busv import VideoRecord, read_clip, scan_videos
from lddm_fast.data.dicom import read_dicom_header
from lddm_fast.data.errors import BadInputError, Scan
from lddm_fast.data.images import MAX_PIXELS, read_image
from lddm_fast.data.labels import CLASSES
from lddm_fast.data.regions import check_mode, clip_region, dicom_regions
from lddm_fast.data.transforms import ClipTransform, clip_indices, clip_span

log = logging.getLogger(__name__)

# How many following items __getitem__ tries before giving up with skip_bad.
_MAX_SUBSTITUTES = 10


class ClipDataset(Dataset):
    """Clips of ``frames`` frames (x0 plus T) from the videos under ``root``.

    Item ``i``: ``(clip, label)``, ``clip`` float32 ``[C, frames, H, W]`` in
    [-1, 1] (C = ``channels``, 1 or 3; ``(H, W)`` = ``size``), ``label`` the class
    id (-1 unlabeled). Clips start at frame 0 for evaluation (x0 is the first
    frame, as in the LDDM data preparation) and at a random frame with ``train``.
    Videos shorter than the clip's span or smaller than the model size (unless
    ``min_side`` says otherwise) are skipped at the scan. ``labels``, ``classes``
    and ``verify`` are passed to :func:`scan_videos`. ``region`` (see
    :mod:`lddm_fast.data.regions`): ``"center"`` fits whole frames by ``mode``,
    ``"none"`` letterboxes them, ``"auto"`` first cuts every clip to its imaging
    region (a DICOM's first tissue region, else the area found on the clip's first
    frame, text around it blacked out).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        frames: int = 17,
        stride: int = 1,
        size: int | tuple[int, int] = 64,
        mode: str = "pad",
        channels: int = 1,
        train: bool = False,
        labels: str | os.PathLike | None = None,
        classes: tuple[str, ...] = CLASSES,
        min_side: int | None = None,
        max_pixels: int = MAX_PIXELS,
        verify: bool = False,
        skip_bad: bool = False,
        region: str = "center",
    ):
        if frames < 1 or stride < 1 or channels not in (1, 3):
            raise ValueError(f"bad frames={frames}, stride={stride} or channels={channels}")
        size = (size, size) if isinstance(size, int) else tuple(size)
        self.frames, self.stride, self.channels = frames, stride, channels
        self.train, self.skip_bad, self.max_pixels = train, skip_bad, max_pixels
        self.region = check_mode(region)
        self._dicom_regions: dict[str, list | None] = {}
        self.transform = ClipTransform(size, "pad" if region == "none" else mode, train)
        self.scan: Scan[VideoRecord] = scan_videos(
            root,
            labels=labels,
            classes=classes,
            min_frames=clip_span(frames, stride),
            min_side=min(size) if min_side is None else min_side,
            max_pixels=max_pixels,
            verify=verify,
        )
        self.records = self.scan.records
        _report(root, self.scan)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return _with_substitutes(self, index, self._load)

    def _load(self, index: int) -> tuple[torch.Tensor, int]:
        return self.load(index)

    def load(
        self, index: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, int]:
        """Item ``index`` without substitutes; with ``train``, the temporal crop and the
        augmentation draw from ``generator`` (None: torch's global generator), so a
        trainer that seeds it per item gets the same clip whatever worker loads it.
        Raises :class:`BadInputError` naming the file when it cannot be read."""
        record = self.records[index]
        start = None if self.train else 0
        indices = clip_indices(
            record.n_frames, self.frames, self.stride, start=start, generator=generator
        )
        pixels = read_clip(record, indices, channels=self.channels, max_pixels=self.max_pixels)
        if self.region == "auto":
            regions = None
            if record.kind == "dicom":
                # A file's regions do not change: read its header once per process.
                if record.path not in self._dicom_regions:
                    header = read_dicom_header(record.path)
                    self._dicom_regions[record.path] = dicom_regions(header, record.path)
                regions = self._dicom_regions[record.path]
            pixels, _ = clip_region(pixels, "auto", regions)
        return self.transform(pixels, generator=generator), record.label


class ImageDataset(Dataset):
    """Conditioning images (x0) under ``root``, BUSI layout or a plain folder.

    Item ``i``: ``(image, label)``, ``image`` float32 ``[C, H, W]`` in [-1, 1],
    resized like the clips' frames (same ``size`` and ``mode``). Images smaller than
    the model size are skipped unless ``min_side`` says otherwise.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        size: int | tuple[int, int] = 64,
        mode: str = "pad",
        channels: int = 1,
        train: bool = False,
        labels: str | None = None,
        classes: tuple[str, ...] = CLASSES,
        min_side: int | None = None,
        max_pixels: int = MAX_PIXELS,
        verify: bool = False,
        skip_bad: bool = False,
    ):
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        size = (size, size) if isinstance(size, int) else tuple(size)
        self.channels, self.skip_bad, self.max_pixels = channels, skip_bad, max_pixels
        self.transform = ClipTransform(size, mode, train)
        self.scan: Scan[ImageRecord] = scan_images(
            root,
            labels=labels,
            classes=classes,
            min_side=min(size) if min_side is None else min_side,
            max_pixels=max_pixels,
            verify=verify,
        )
        self.records = self.scan.records
        _report(root, self.scan)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return _with_substitutes(self, index, self._load)

    def _load(self, index: int) -> tuple[torch.Tensor, int]:
        record = self.records[index]
        pixels = read_image(record.path, channels=self.channels, max_pixels=self.max_pixels)
        return self.transform(pixels[None])[:, 0], record.label


def _with_substitutes(dataset, index: int, load):
    if not dataset.skip_bad:
        return load(index)
    tries = min(len(dataset), _MAX_SUBSTITUTES)
    for attempt in range(tries):
        try:
            return load((index + attempt) % len(dataset))
        except BadInputError as e:
            warnings.warn(f"skipping unreadable item: {e}", stacklevel=3)
    raise BadInputError(
        dataset.records[index].path, f"this and the next {tries - 1} items could not be read"
    )


def _report(root, scan: Scan) -> None:
    if not scan.records:
        raise BadInputError(root, "no usable items:\n" + scan.summary())
    if scan.skipped:
        log.warning("%s: %s", os.fspath(root), scan.summary())
