"""Image datasets on disk: BUSI's ``{benign,malignant,normal}/*.png`` or a plain folder.

Mask files (a name ending in ``_mask`` or ``_mask_<n>`` before the suffix, as BUSI
has them) are not images to learn from: they are attached to their image's record
instead. A scan never stops at a bad file: each is recorded in ``Scan.skipped``
with the reason.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from lddm_fast.data.errors import BadInputError, Scan, Skipped
from lddm_fast.data.images import IMAGE_SUFFIXES, MAX_PIXELS, image_info, read_image
from lddm_fast.data.labels import CLASSES, UNLABELED
from lddm_fast.data.video_io import natural_key

#: BUSI's mask files: "<stem>_mask" or "<stem>_mask_<n>" before the suffix (match the
#: stem without its suffix; group ``stem`` is the image's).
MASK_NAME = re.compile(r"^(?P<stem>.*)_mask(_\d+)?$", re.IGNORECASE)
_SIDE_FILES = (".txt", ".csv", ".json", ".xml", ".md", ".yaml", ".yml")


@dataclass(frozen=True)
class ImageRecord:
    """A usable image: ``path``, size in pixels, class id ``label``, mask paths."""

    path: str
    width: int
    height: int
    label: int
    masks: tuple[str, ...] = ()


def scan_images(
    root: str | os.PathLike,
    *,
    labels: str | None = None,
    classes: tuple[str, ...] = CLASSES,
    min_side: int = 1,
    max_pixels: int = MAX_PIXELS,
    verify: bool = False,
) -> Scan[ImageRecord]:
    """Find the images under ``root`` and check each from its header.

    ``labels``: None (class folders if ``root`` has any, else every image under
    ``root``, unlabeled) or ``"folders"``. Images with a shorter side below
    ``min_side`` or above ``max_pixels`` pixels are skipped; ``verify`` decodes every
    image, which also catches truncated files. Raises :class:`BadInputError` only
    when ``root`` is missing or holds no image files at all.
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise BadInputError(root, "dataset folder not found")
    if labels not in (None, "folders"):
        raise ValueError(f"labels must be None or 'folders', got {labels!r}")
    names = sorted(os.listdir(root), key=natural_key)
    if labels is None:
        labels = "folders" if any(_is_class_dir(root, n, classes) for n in names) else None
    scan: Scan[ImageRecord] = Scan()
    groups: list[tuple[str, int]] = []
    if labels == "folders":
        for name in names:
            path = os.path.join(root, name)
            if name.startswith(".") or name.lower().endswith(_SIDE_FILES):
                continue
            if _is_class_dir(root, name, classes):
                groups.append((path, classes.index(name.lower())))
            elif os.path.isdir(path):
                scan.skipped.append(
                    Skipped(path, f"unknown label {name!r} (class folders: {', '.join(classes)})")
                )
            else:
                scan.skipped.append(Skipped(path, "not inside a class folder"))
    else:
        groups.append((root, UNLABELED))
    found = 0
    for folder, label in groups:
        recursive = label == UNLABELED
        found += _scan_folder(scan, folder, label, min_side, max_pixels, verify, recursive)
    if not found:
        raise BadInputError(root, "no images found\n" + scan.summary())
    return scan


def _is_class_dir(root, name, classes) -> bool:
    return name.lower() in classes and os.path.isdir(os.path.join(root, name))


def _scan_folder(scan, folder, label, min_side, max_pixels, verify, recursive) -> int:
    # Returns how many image files (not masks) it found, usable or not.
    walk = os.walk(folder) if recursive else [(folder, [], os.listdir(folder))]
    found = 0
    for dirpath, dirnames, filenames in walk:
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        masks: dict[str, list[str]] = {}
        images = []
        for name in sorted(filenames, key=natural_key):
            path = os.path.join(dirpath, name)
            stem, suffix = os.path.splitext(name)
            if name.startswith(".") or name.lower().endswith(_SIDE_FILES):
                continue
            if suffix.lower() not in IMAGE_SUFFIXES:
                scan.skipped.append(Skipped(path, f"not an image file (suffix {suffix!r})"))
                continue
            match = MASK_NAME.match(stem)
            if match:
                masks.setdefault(match["stem"], []).append(path)
            else:
                images.append(path)
        for path in images:
            found += 1
            stem = os.path.splitext(os.path.basename(path))[0]
            try:
                if verify:
                    height, width = read_image(path, min_side=min_side, max_pixels=max_pixels).shape
                else:
                    info = image_info(path, min_side=min_side, max_pixels=max_pixels)
                    width, height = info.width, info.height
            except BadInputError as e:
                scan.skipped.append(Skipped.from_error(e))
                continue
            scan.records.append(ImageRecord(path, width, height, label, tuple(masks.get(stem, ()))))
    if not found:
        scan.skipped.append(Skipped(folder, "empty folder: no images"))
    return found
