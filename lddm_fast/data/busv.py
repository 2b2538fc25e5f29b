"""Video datasets on disk: BUSV-style frame folders, video files, DICOM cine loops.

A video is any of

* a folder of frames, e.g. BUSV's ``rawframes/<video>/000000.png`` (any image
  suffix, natural order, ``*_mask*`` files ignored);
* a video file read by :func:`~lddm_fast.data.video_io.read_video` (mp4, avi, mov,
  mkv, webm, gif, npz);
* a multi-frame DICOM file (optional pydicom, see :mod:`~lddm_fast.data.dicom`).

Labels come from one of: class subfolders (``<root>/<class>/...``), an MMAction2
list (``<video_dir> <n_frames> <label>`` or ``<video_file> <label>``), a CSV with
``video`` and ``label`` columns, or none (label -1). A scan never stops at a bad
entry: each unusable video, folder or line is recorded in ``Scan.skipped`` with
the reason, and the scan goes on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from lddm_fast.data.dicom import is_dicom, probe_dicom, read_dicom
from lddm_fast.data.errors import BadInputError, Scan, Skipped
from lddm_fast.data.images import MAX_PIXELS, ImageInfo, check_size, image_info, read_image
from lddm_fast.data.labels import (
    CLASSES,
    UNLABELED,
    LabeledPath,
    read_label_csv,
    read_mmaction_list,
)
from lddm_fast.data.video_io import (
    VIDEO_FILE_SUFFIXES,
    frame_files,
    natural_key,
    probe_video,
    read_video,
)

# Files that sit beside the videos in real datasets and are not videos.
_SIDE_FILES = (".txt", ".csv", ".json", ".xml", ".md", ".lst", ".yaml", ".yml")


@dataclass(frozen=True)
class VideoRecord:
    """A usable video: ``kind`` is ``"frames"`` (a folder), ``"file"`` or ``"dicom"``."""

    path: str
    kind: str
    n_frames: int
    width: int
    height: int
    label: int


def scan_videos(
    root: str | os.PathLike,
    *,
    labels: str | os.PathLike | None = None,
    classes: tuple[str, ...] = CLASSES,
    min_frames: int = 1,
    min_side: int = 1,
    max_pixels: int = MAX_PIXELS,
    verify: bool = False,
) -> Scan[VideoRecord]:
    """Find the videos under ``root`` and check each from its header.

    ``labels``: None (class folders if ``root`` has any, else unlabeled),
    ``"folders"``, or the path of an MMAction2 list (``.txt``/``.lst``) or a CSV
    (``.csv``) whose paths are relative to ``root``; GIFs count as videos, not
    frames. Videos with fewer than
    ``min_frames`` frames (a clip needs T+1), a shorter side below ``min_side`` or
    frames above ``max_pixels`` are skipped. ``verify`` decodes every frame, which
    also catches corrupt frames in the middle of a video. Raises
    :class:`BadInputError` only when ``root`` is missing or nothing in it looks like
    a video (every candidate failing its checks gives a scan with no records).
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise BadInputError(root, "dataset folder not found")
    candidates, scan = _candidates(root, labels, classes)
    if not candidates:
        raise BadInputError(root, "no videos found\n" + scan.summary())
    for entry in candidates:
        try:
            scan.records.append(_inspect(entry, min_frames, min_side, max_pixels, verify))
        except BadInputError as e:
            scan.skipped.append(Skipped.from_error(e))
        except ImportError as e:  # pydicom or PyAV missing: skip with the install hint
            scan.skipped.append(Skipped(entry.path, str(e)))
    return scan


def read_clip(
    record: VideoRecord,
    indices,
    *,
    channels: int = 1,
    max_pixels: int = MAX_PIXELS,
) -> np.ndarray:
    """Frames ``indices`` of ``record``: uint8 ``[N, H, W]`` or ``[N, H, W, 3]``.

    Opens and closes its files on every call (safe in DataLoader workers). Raises
    :class:`BadInputError` naming the file for unreadable frames or indices past
    the end.
    """
    indices = np.asarray(indices, dtype=np.int64)
    first, last = int(indices.min()), int(indices.max())
    if record.kind == "frames":
        files = frame_files(record.path)
        if last >= len(files):
            raise BadInputError(record.path, f"has {len(files)} frames, frame {last} was asked for")
        frames = [read_image(files[i], channels=channels, max_pixels=max_pixels) for i in indices]
        for index, pixels in zip(indices, frames, strict=True):
            if pixels.shape != frames[0].shape:
                raise BadInputError(
                    files[index],
                    f"frame size {pixels.shape[:2]} differs from {frames[0].shape[:2]}",
                )
        return np.stack(frames)
    if record.kind == "dicom":
        video = read_dicom(record.path, channels=channels, max_pixels=max_pixels).frames
        if last >= len(video):
            raise BadInputError(record.path, f"has {len(video)} frames, frame {last} was asked for")
        return video[indices]
    video = read_video(
        record.path, channels=channels, start=first, stop=last + 1, max_pixels=max_pixels
    )
    return video.frames[indices - first]


def _candidates(root, labels, classes) -> tuple[list[LabeledPath], Scan]:
    if labels is None:
        has_classes = any(
            os.path.isdir(os.path.join(root, name)) and name.lower() in classes
            for name in os.listdir(root)
        )
        labels = "folders" if has_classes else ""
    if labels == "folders":
        return _class_folders(root, classes)
    if labels == "":
        scan: Scan = Scan()
        return [LabeledPath(p, UNLABELED) for p in _discover(root, scan)], scan
    labels = os.fspath(labels)
    if labels.lower().endswith(".csv"):
        listed = read_label_csv(labels, root, classes)
    else:
        listed = read_mmaction_list(labels, root, classes)
    return listed.records, Scan(skipped=listed.skipped)


def _class_folders(root, classes) -> tuple[list[LabeledPath], Scan]:
    scan: Scan = Scan()
    found = []
    for name in sorted(os.listdir(root), key=natural_key):
        path = os.path.join(root, name)
        if name.startswith(".") or name.lower().endswith(_SIDE_FILES):
            continue
        if not os.path.isdir(path):
            scan.skipped.append(Skipped(path, "not inside a class folder"))
        elif name.lower() not in classes:
            scan.skipped.append(
                Skipped(path, f"unknown label {name!r} (class folders: {', '.join(classes)})")
            )
        else:
            label = classes.index(name.lower())
            found += [LabeledPath(p, label) for p in _discover(path, scan)]
    return found, scan


def _discover(folder: str, scan: Scan) -> list[str]:
    # A folder holding images is one video (its frames); files with a video or
    # DICOM suffix are videos; a leaf folder with neither is reported as empty.
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted((d for d in dirnames if not d.startswith(".")), key=natural_key)
        if frame_files(dirpath):
            found.append(dirpath)
            dirnames[:] = []
            continue
        videos = [
            os.path.join(dirpath, f)
            for f in sorted(filenames, key=natural_key)
            if not f.startswith(".")
            and (f.lower().endswith(VIDEO_FILE_SUFFIXES) or _dicom(dirpath, f))
        ]
        found += videos
        if not videos and not dirnames:
            scan.skipped.append(Skipped(dirpath, "empty folder: no frames or videos"))
    return found


def _dicom(dirpath: str, name: str) -> bool:
    try:
        return is_dicom(os.path.join(dirpath, name))
    except OSError:
        return False


def _inspect(entry: LabeledPath, min_frames, min_side, max_pixels, verify) -> VideoRecord:
    path = entry.path
    if os.path.isdir(path):
        files = frame_files(path)
        if not files:
            raise BadInputError(path, "no frames in folder")
        info = image_info(files[0], min_side=min_side, max_pixels=max_pixels)
        kind, n_frames, width, height = "frames", len(files), info.width, info.height
        if verify:
            for f in files:
                pixels = read_image(f, max_pixels=max_pixels)
                if pixels.shape != (height, width):
                    raise BadInputError(f, f"frame size {pixels.shape} differs from frame 0's")
    elif is_dicom(path):
        info = probe_dicom(path)
        kind, n_frames, width, height = "dicom", info.frames, info.width, info.height
        check_size(path, ImageInfo(width, height, ""), min_side, max_pixels)
        if verify:
            n_frames = len(read_dicom(path, max_pixels=max_pixels).frames)
    elif path.lower().endswith(VIDEO_FILE_SUFFIXES):
        info = probe_video(path)
        kind, n_frames, width, height = "file", info.frames, info.width, info.height
        check_size(path, ImageInfo(width, height, ""), min_side, max_pixels)
        if verify:
            n_frames = len(read_video(path, max_pixels=max_pixels).frames)
    else:
        raise BadInputError(path, "not a video, frame folder or DICOM file")
    if n_frames < min_frames:
        raise BadInputError(path, f"video too short: {n_frames} frames, a clip needs {min_frames}")
    return VideoRecord(path, kind, n_frames, width, height, entry.label)
