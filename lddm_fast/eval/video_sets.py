"""The sets of videos `lddm-fast eval` compares, found in the layouts the project uses.

:func:`open_video_set` reads a path as, in this order:

* a ``synthesize`` output folder (it holds ``manifest.jsonl``): the finished videos
  its manifest lists (one file per video, mp4 first), with their class and the input
  image each was made from; files that are not in the manifest do not count;
* a BUSV root (it holds ``rawframes/``): every ``rawframes/<class>/<video>/`` folder,
  or with ``split`` the videos of ``<split>_list.txt``;
* a class-folder tree (subfolders named benign, malignant, normal, in any case),
  each holding videos, e.g. a BUSV ``rawframes/`` folder;
* a flat folder of videos (no class).

A video is a file read_video opens (mp4, gif, npz, DICOM...) or a folder of frames.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from lddm_fast.data.dicom import DICOM_SUFFIXES
from lddm_fast.data.labels import CLASSES, read_mmaction_list
from lddm_fast.data.video_io import VIDEO_FILE_SUFFIXES, natural_key

__all__ = ["VideoEntry", "VideoSet", "open_video_set", "pair_entries"]

_SUFFIXES = (*VIDEO_FILE_SUFFIXES, *DICOM_SUFFIXES)
# The file a synthesize record is read from, best first (mp4 is what users watch and
# keeps every frame; a gif's palette changes the pixels).
_FORMAT_ORDER = ("npz", "mp4", "webm", "gif")


@dataclass(frozen=True)
class VideoEntry:
    """One video of a set.

    Attributes:
        path: the file or frame folder to read.
        name: its name in the set (unique within it), e.g. ``benign/v01``.
        label: class name or None.
        source: for a synthesized video, the absolute path of the input image it was
            made from (used to pair it with the real video that image came from).
    """

    path: str
    name: str
    label: str | None = None
    source: str | None = None


@dataclass
class VideoSet:
    """The videos found under ``root`` in ``layout`` and what was passed over."""

    root: str
    layout: str
    entries: list[VideoEntry] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)

    def describe(self) -> str:
        return f"{self.root} ({self.layout}, {len(self.entries)} videos)"


def open_video_set(path: str | os.PathLike, *, split: str | None = None) -> VideoSet:
    """The set of videos under ``path`` (see the module docstring for the layouts).

    Args:
        split: a BUSV split name (``train``, ``val``, ``test``): only the videos of
            ``<path>/<split>_list.txt``. Refused for the other layouts.

    Raises:
        ValueError: ``path`` is not a folder, or ``split`` is given where there are no
            split lists (the message names the file looked for).
    """
    root = os.path.abspath(os.fspath(path))
    if not os.path.isdir(root):
        raise ValueError(f"{root}: not a folder")
    if os.path.isfile(os.path.join(root, "manifest.jsonl")):
        layout = "synthesize"
    elif os.path.isdir(os.path.join(root, "rawframes")):
        layout = "busv"
    elif _class_folders(root):
        layout = "classes"
    else:
        layout = "flat"
    if split is not None and layout != "busv":
        raise ValueError(f"{root}: --split needs a BUSV root with split lists, this is {layout}")
    videos = VideoSet(root, layout)
    if layout == "synthesize":
        _from_manifest(videos)
    elif layout == "busv":
        _from_busv(videos, split)
    elif layout == "classes":
        for label, folder in _class_folders(root):
            for entry in _folder_entries(folder):
                rel = os.path.relpath(entry, root).replace(os.sep, "/")
                videos.entries.append(VideoEntry(entry, _strip(rel), label))
    else:
        for entry in _folder_entries(root):
            videos.entries.append(VideoEntry(entry, _strip(os.path.basename(entry))))
    return videos


def pair_entries(real: VideoSet, fake: VideoSet) -> list[tuple[VideoEntry, VideoEntry]]:
    """(real, generated) pairs for the paired metrics.

    A generated video with a ``source`` pairs with the real video that image belongs
    to: the real frame folder that holds it, or the real video of the same stem. Any
    other pairs with the real video of the same name. Several generated videos may
    pair with one real video (``--videos-per-image``)."""
    by_name = {e.name: e for e in real.entries}
    by_path = {os.path.abspath(e.path): e for e in real.entries}
    by_stem: dict[str, VideoEntry | None] = {}
    for e in real.entries:
        stem = e.name.rsplit("/", 1)[-1]
        by_stem[stem] = None if stem in by_stem else e  # ambiguous stems pair nothing
    pairs = []
    for f in fake.entries:
        match = None
        if f.source is not None:
            match = by_path.get(os.path.dirname(f.source)) or by_path.get(f.source)
            if match is None:
                match = by_stem.get(_strip(os.path.basename(f.source)))
        else:
            match = by_name.get(f.name)
        if match is not None:
            pairs.append((match, f))
    return pairs


def _strip(name: str) -> str:
    """A name without its video suffix (frame folders keep theirs)."""
    stem, suffix = os.path.splitext(name)
    return stem if suffix.lower() in (*_SUFFIXES, ".png", ".jpg", ".jpeg") else name


def _class_folders(root: str) -> list[tuple[str, str]]:
    out = []
    for name in sorted(os.listdir(root), key=natural_key):
        path = os.path.join(root, name)
        if name.lower() in CLASSES and os.path.isdir(path):
            out.append((name.lower(), path))
    return out


def _folder_entries(folder: str) -> list[str]:
    """Videos directly in ``folder``: files by suffix, and sub-folders (frame folders)."""
    out = []
    for name in sorted(os.listdir(folder), key=natural_key):
        path = os.path.join(folder, name)
        if name.startswith("."):
            continue
        if os.path.isdir(path) or name.lower().endswith(_SUFFIXES):
            out.append(path)
    return out


def _from_busv(videos: VideoSet, split: str | None) -> None:
    rawframes = os.path.join(videos.root, "rawframes")
    if split is None:
        for label, folder in _class_folders(rawframes):
            for entry in _folder_entries(folder):
                rel = os.path.relpath(entry, rawframes).replace(os.sep, "/")
                videos.entries.append(VideoEntry(entry, rel, label))
        return
    list_path = os.path.join(videos.root, f"{split}_list.txt")
    if not os.path.isfile(list_path):
        raise ValueError(f"{list_path}: no such split list (--split {split})")
    scan = read_mmaction_list(list_path, rawframes)
    for record in scan.records:
        rel = os.path.relpath(record.path, rawframes).replace(os.sep, "/")
        videos.entries.append(VideoEntry(record.path, rel, CLASSES[record.label]))
    videos.skipped += [{"path": s.path, "reason": s.reason} for s in scan.skipped]


def _from_manifest(videos: VideoSet) -> None:
    from lddm_fast.synth.manifest import ManifestIndex

    index = ManifestIndex(videos.root)
    try:
        for key in sorted(index.keys(), key=lambda k: (natural_key(k[0]), k[1])):
            line = index.line(key)
            record = json.loads(line) if line else None
            outputs = {o.get("format"): o.get("path") for o in (record or {}).get("outputs", ())}
            best = next((outputs[f] for f in _FORMAT_ORDER if outputs.get(f)), None)
            if best is None:
                videos.skipped.append(
                    {"path": f"{key[0]} (k={key[1]})", "reason": "no video file in its record"}
                )
                continue
            name = _strip(best)
            videos.entries.append(
                VideoEntry(
                    os.path.join(videos.root, best),
                    name,
                    record.get("class"),
                    record.get("path"),
                )
            )
    finally:
        index.close()
    if index.unreadable:
        videos.skipped.append(
            {
                "path": os.path.join(videos.root, "manifest.jsonl"),
                "reason": f"{index.unreadable} unreadable manifest line(s)",
            }
        )
