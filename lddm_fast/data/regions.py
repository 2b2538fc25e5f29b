"""The imaging region of an ultrasound frame: the tissue image without the burned-in
text, calibration bars, body markers and Doppler strips around it.

Modes (``--region`` of ``synthesize``, ``region=`` of the pipeline):

``center`` (the default)
    The whole frame; the model's fit (:func:`lddm_fast.data.transforms.fit_image`)
    then takes the centre square. The behaviour from before regions existed, kept as
    the default so existing outputs and seeds do not change.
``auto``
    A DICOM file with ``SequenceOfUltrasoundRegions`` (0018,6011): each 2-D tissue
    region (``RegionSpatialFormat`` 1, ``RegionDataType`` 1) is a view of its own, in
    left-to-right order (dual views give two); Doppler, M-mode, spectral and
    waveform regions are dropped; the physical pixel spacing is kept. Any other image
    (PNG/JPEG, a DICOM without the sequence): the imaging area found in the pixels
    (:func:`find_imaging_area`), cropped to its bounding box, with the pixels of the
    box outside the area (burned-in text in the corners of a sector) set to black.
    Text drawn over the tissue itself cannot be told from it and stays.
``none``
    The whole frame, nothing cut off: fitted by letterboxing (scaled into the
    square, black bars).

A box is ``(x0, y0, x1, y1)`` in pixels of the frame, half-open (``x1``, ``y1``
excluded), what :class:`Region` records for the manifest.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from lddm_fast.data.errors import BadInputError

#: Region mode -> how :func:`lddm_fast.data.transforms.fit_image` fits its views.
FIT_MODE = {"auto": "crop", "center": "crop", "none": "pad"}
REGION_MODES = tuple(FIT_MODE)

# Pixels above this are signal; below it, the black around an imaging area (JPEG
# noise around burned-in text stays under it too).
SIGNAL_LEVEL = 12
# An imaging area smaller than this fraction of the frame is not trusted (a frame
# of text, or a blank one): the whole frame is used instead.
MIN_AREA_FRACTION = 0.1

# DICOM PS3.3 C.8.5.5.1: RegionSpatialFormat 1 = 2-D, RegionDataType 1 = tissue.
_SPATIAL_2D = 1
_TISSUE = 1
_UNITS = {3: "cm", 4: "s", 5: "Hz", 12: "deg"}


@dataclass(frozen=True)
class Region:
    """Where a view was taken from.

    Attributes:
        box: ``(x0, y0, x1, y1)``, half-open pixel box in the frame.
        source: ``"dicom"`` (the file's ultrasound regions), ``"detected"``
            (:func:`find_imaging_area`) or ``"frame"`` (the whole frame).
        spacing: physical size of a pixel ``(dx, dy)`` in ``unit``, when the file
            gives it.
        unit: the unit of ``spacing`` (``"cm"`` for tissue regions).
    """

    box: tuple[int, int, int, int]
    source: str
    spacing: tuple[float, float] | None = None
    unit: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The manifest's record of the region (no header value but geometry)."""
        data: dict[str, Any] = {"box": list(self.box), "source": self.source}
        if self.spacing is not None:
            data["spacing"] = list(self.spacing)
            data["unit"] = self.unit
        return data


@dataclass(frozen=True)
class View:
    """One image to animate: uint8 ``[h, w]`` or ``[h, w, 3]`` pixels cut from the
    frame at ``region.box``."""

    pixels: np.ndarray
    region: Region


def check_mode(mode: str) -> str:
    if mode not in REGION_MODES:
        raise ValueError(f"region must be one of {', '.join(REGION_MODES)}, got {mode!r}")
    return mode


def dicom_regions(ds, path: str | os.PathLike) -> list[Region] | None:
    """The 2-D tissue regions of a pydicom dataset's ``SequenceOfUltrasoundRegions``,
    left to right, clipped to the frame; None when the file has no such sequence.

    Raises :class:`BadInputError` when the sequence holds no usable tissue region
    (only Doppler or other data, or boxes outside the frame): such a file has no
    B-mode image to animate.
    """
    sequence = getattr(ds, "SequenceOfUltrasoundRegions", None)
    if not sequence:
        return None
    width, height = int(ds.Columns), int(ds.Rows)
    regions = []
    for item in sequence:
        if int(getattr(item, "RegionSpatialFormat", -1)) != _SPATIAL_2D:
            continue
        if int(getattr(item, "RegionDataType", -1)) != _TISSUE:
            continue
        try:
            # The region's Max X1/Y1 are inclusive pixel coordinates.
            x0 = max(0, int(item.RegionLocationMinX0))
            y0 = max(0, int(item.RegionLocationMinY0))
            x1 = min(width, int(item.RegionLocationMaxX1) + 1)
            y1 = min(height, int(item.RegionLocationMaxY1) + 1)
        except (AttributeError, TypeError, ValueError):
            continue  # a region without its location cannot be cut out
        if x1 <= x0 or y1 <= y0:
            continue
        regions.append(Region((x0, y0, x1, y1), "dicom", *_spacing(item)))
    if not regions:
        raise BadInputError(
            path,
            f"its ultrasound regions (0018,6011) hold no 2-D tissue image "
            f"({len(sequence)} region(s), all Doppler, M-mode, spectral or outside the frame)",
        )
    return sorted(regions, key=lambda r: (r.box[0], r.box[1]))


def _spacing(item) -> tuple[tuple[float, float] | None, str | None]:
    try:
        dx, dy = float(item.PhysicalDeltaX), float(item.PhysicalDeltaY)
        units = int(item.PhysicalUnitsXDirection), int(item.PhysicalUnitsYDirection)
    except (AttributeError, TypeError, ValueError):
        return None, None
    if dx <= 0 or dy <= 0 or units[0] != units[1] or units[0] not in _UNITS:
        return None, None
    return (dx, dy), _UNITS[units[0]]


def find_imaging_area(gray: np.ndarray) -> tuple[tuple[int, int, int, int], np.ndarray] | None:
    """The imaging area (sector or rectangle of speckle) of a frame.

    Args:
        gray: uint8 ``[H, W]``.

    Returns:
        ``(box, mask)``: the area's bounding box and a bool ``[H, W]`` mask of it; None
        when no area covers :data:`MIN_AREA_FRACTION` of the frame.

    The signal (pixels above :data:`SIGNAL_LEVEL`) is closed then opened with a
    square of about 1/80 of the shorter side: closing fills the dark grains of
    speckle, opening removes strokes thinner than the square (text, tick marks,
    thin markers). The largest piece left, holes filled (anechoic cysts), is the
    area; calibration bars and markers are smaller pieces of their own.
    """
    from scipy import ndimage

    height, width = gray.shape
    side = max(3, round(min(height, width) / 80))
    square = np.ones((side, side), dtype=bool)
    signal = gray > SIGNAL_LEVEL
    # Padding keeps the closing from eroding an area that touches the frame's edge.
    padded = np.pad(signal, side)
    solid = ndimage.binary_opening(ndimage.binary_closing(padded, square), square)
    solid = solid[side:-side, side:-side]
    labels, count = ndimage.label(solid)
    if count == 0:
        return None
    sizes = np.bincount(labels.ravel())[1:]
    if sizes.max() < MIN_AREA_FRACTION * height * width:
        return None
    mask = ndimage.binary_fill_holes(labels == 1 + int(sizes.argmax()))
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    box = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
    return box, mask


def image_views(pixels: np.ndarray, mode: str, regions: list[Region] | None = None) -> list[View]:
    """The views of a frame for region ``mode`` (see the module docstring).

    Args:
        pixels: uint8 ``[H, W]`` or ``[H, W, 3]``.
        mode: ``"auto"``, ``"center"`` or ``"none"``.
        regions: the file's DICOM tissue regions (:func:`dicom_regions`), used by
            ``"auto"`` instead of detection.

    Returns:
        One view per region (``"auto"`` with several DICOM regions), else one.
    """
    check_mode(mode)
    if mode == "auto" and regions:
        return [View(pixels[r.box[1] : r.box[3], r.box[0] : r.box[2]], r) for r in regions]
    cut, region = clip_region(pixels[None], mode)
    return [View(cut[0], region)]


def clip_region(
    frames: np.ndarray, mode: str, regions: list[Region] | None = None
) -> tuple[np.ndarray, Region]:
    """A clip's imaging region, for the training and evaluation datasets.

    Args:
        frames: uint8 ``[N, H, W]`` or ``[N, H, W, 3]``.
        mode: ``"auto"``, ``"center"`` or ``"none"``; only ``"auto"`` cuts.
        regions: the file's DICOM tissue regions; a clip keeps the first (leftmost)
            one, the view a single-view training set is made of.

    Returns:
        The frames cut to the region (for a detected area, every frame masked with
        the area found on frame 0: a probe's imaging area does not move within a
        clip) and the :class:`Region`.
    """
    check_mode(mode)
    height, width = frames.shape[1:3]
    whole = Region((0, 0, width, height), "frame")
    if mode != "auto":
        return frames, whole
    if regions:
        x0, y0, x1, y1 = regions[0].box
        return frames[:, y0:y1, x0:x1], regions[0]
    first = frames[0] if frames.ndim == 3 else _luma(frames[0])
    found = find_imaging_area(first)
    if found is None:
        return frames, whole
    (x0, y0, x1, y1), mask = found
    cut = frames[:, y0:y1, x0:x1].copy()
    cut[:, ~mask[y0:y1, x0:x1]] = 0
    return cut, Region((x0, y0, x1, y1), "detected")


def read_views(
    path: str | os.PathLike,
    *,
    channels: int = 1,
    mode: str = "center",
    frame: int = 0,
    min_side: int = 1,
) -> list[View]:
    """Read an image or DICOM file (frame ``frame`` of a cine) and cut its views.

    ``min_side`` applies to the whole frame. Raises :class:`BadInputError` naming the
    file and the reason.
    """
    from lddm_fast.data.dicom import is_dicom, read_dicom_frame
    from lddm_fast.data.images import MAX_PIXELS, ImageInfo, check_size, read_image

    check_mode(mode)
    if is_dicom(path):
        pixels, ds = read_dicom_frame(path, frame, channels=channels)
        info = ImageInfo(pixels.shape[1], pixels.shape[0], "DICOM")
        check_size(path, info, min_side, MAX_PIXELS)
        regions = dicom_regions(ds, path) if mode == "auto" else None
    else:
        pixels = read_image(path, channels=channels, min_side=min_side)
        regions = None
    return image_views(pixels, mode, regions)


def _luma(rgb: np.ndarray) -> np.ndarray:
    from lddm_fast.data.video_io import LUMA

    return np.rint(rgb.astype(np.float32) @ np.float32(LUMA)).astype(np.uint8)
