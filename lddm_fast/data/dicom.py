"""Multi-frame DICOM (ultrasound cine loops) through pydicom, an optional extra.

Install with ``pip install lddm_fast[dicom]``; without it, DICOM files raise
ImportError with that hint (dataset scans record them as skipped with the hint).

Conversion: ``MONOCHROME1`` is inverted so that bright means echogenic; more than
8 stored bits are scaled linearly from the stored range (``BitsStored``) to 0..255;
colour (``RGB``, and ``YBR_*``, which pydicom converts to RGB) is kept or reduced to
ITU-R 601 luma. Signed pixel data is refused.

Compressed transfer syntaxes: the ``dicom`` extra installs decoders for those common
in ultrasound (``pylibjpeg`` with ``pylibjpeg-libjpeg``: JPEG baseline, extended,
lossless process 14 and JPEG-LS; ``pylibjpeg-openjpeg``: JPEG 2000; RLE is decoded
by pydicom itself). A file whose syntax has no decoder installed is refused before
decoding, naming the syntax and the packages pydicom would need.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from lddm_fast.data.errors import BadInputError
from lddm_fast.data.images import MAX_PIXELS
from lddm_fast.data.video_io import MAX_VIDEO_PIXELS, Video, VideoInfo, convert_channels

DICOM_SUFFIXES = (".dcm", ".dicom")
INSTALL_HINT = "reading DICOM needs pydicom: pip install lddm_fast[dicom]"


def is_dicom(path: str | os.PathLike) -> bool:
    """True for a ``.dcm``/``.dicom`` file, or a suffix-less file with the DICM preamble."""
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix in DICOM_SUFFIXES:
        return True
    if suffix or not os.path.isfile(path):
        return False
    with open(path, "rb") as f:
        head = f.read(132)
    return len(head) == 132 and head[128:] == b"DICM"


def read_dicom_header(path: str | os.PathLike):
    """The pydicom dataset without its pixel data (for the ultrasound regions, say).
    Raises :class:`BadInputError` naming the file when it cannot be read."""
    return _read(path, header_only=True)


def probe_dicom(path: str | os.PathLike) -> VideoInfo:
    """Frame count, size and rate from the header, without decoding pixels."""
    ds = _read(path, header_only=True)
    rows, cols = int(getattr(ds, "Rows", 0)), int(getattr(ds, "Columns", 0))
    if rows <= 0 or cols <= 0:
        raise BadInputError(path, "DICOM without image rows/columns (not an image)")
    return VideoInfo(int(getattr(ds, "NumberOfFrames", 1) or 1), cols, rows, _fps(ds))


def read_dicom(
    path: str | os.PathLike,
    *,
    channels: int = 1,
    max_pixels: int = MAX_PIXELS,
    max_total_pixels: int = MAX_VIDEO_PIXELS,
) -> Video:
    """Decode all frames: uint8 ``[T, H, W]`` (``channels=1``) or ``[T, H, W, 3]``.

    The size limits are checked from the header before any pixel is decoded.
    Raises :class:`BadInputError` naming the file and the reason.
    """
    info = probe_dicom(path)
    _check_limits(path, info, max_pixels)
    if info.frames * info.width * info.height > max_total_pixels:
        raise BadInputError(
            path, f"cine too large: {info.frames} frames of {info.width}x{info.height}"
        )
    ds = _read(path, header_only=False)
    return Video(_decode(path, ds, None, info.frames, channels), info.fps)


def read_dicom_frame(
    path: str | os.PathLike,
    frame: int = 0,
    *,
    channels: int = 1,
    max_pixels: int = MAX_PIXELS,
) -> tuple[np.ndarray, Any]:
    """Decode one frame without decoding the others: frame ``frame`` of a cine, or
    the image of a single-frame file (whatever ``frame``, so one ``--frame`` serves
    a folder that mixes both).

    Returns uint8 ``[H, W]`` (``channels=1``) or ``[H, W, 3]``, and the pydicom
    dataset (header only: its pixel data is not kept), e.g. for
    :func:`lddm_fast.data.regions.dicom_regions`. Raises :class:`BadInputError`
    naming the file and the reason, also for a frame past the last one.
    """
    info = probe_dicom(path)
    _check_limits(path, info, max_pixels)
    if info.frames == 1:
        frame = 0
    if not 0 <= frame < info.frames:
        raise BadInputError(
            path, f"frame {frame} out of range: the file has {info.frames} frame(s) (0..)"
        )
    ds = _read(path, header_only=False)
    pixels = _decode(path, ds, frame, info.frames, channels)[0]
    del ds.PixelData  # the caller keeps the header; the compressed cine can go
    return pixels, ds


def _check_limits(path, info: VideoInfo, max_pixels: int) -> None:
    if info.width * info.height > max_pixels:
        raise BadInputError(path, f"frames too large: {info.width}x{info.height} pixels")


def _decode(path, ds, index: int | None, frames: int, channels: int) -> np.ndarray:
    """Frame ``index`` (None: all) as uint8 ``[T, H, W]`` or ``[T, H, W, 3]``."""
    if int(getattr(ds, "PixelRepresentation", 0)) != 0:
        raise BadInputError(path, "signed pixel data is not supported")
    _check_decoder(path, ds)
    from pydicom.pixels import pixel_array

    try:
        pixels = np.asarray(pixel_array(ds, index=index))
    except Exception as e:  # pydicom's decoders raise many types; all mean "unreadable"
        raise BadInputError(path, f"cannot decode DICOM pixel data ({e})") from e
    samples = int(getattr(ds, "SamplesPerPixel", 1))
    if (index is not None or frames == 1) and pixels.ndim == (2 if samples == 1 else 3):
        pixels = pixels[None]
    if str(getattr(ds, "PhotometricInterpretation", "")) == "PALETTE COLOR":
        pixels = _palette_to_rgb(path, ds, pixels)
    else:
        pixels = _to_uint8(path, ds, pixels)
    return convert_channels(pixels, channels)


def _check_decoder(path, ds) -> None:
    """Refuse a transfer syntax no installed plugin decodes, naming what is missing
    (pydicom's own error would come only after reading all the pixel data)."""
    from pydicom.pixels import get_decoder

    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is None:
        return  # pydicom guesses the syntax of a file without meta; decoding tells
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise BadInputError(
            path, f"transfer syntax {syntax.name} ({syntax}) has no DICOM pixel decoder"
        ) from None
    if not decoder.is_available:
        needs = "; ".join(decoder.missing_dependencies) or "a decoding plugin"
        raise BadInputError(
            path,
            f"no decoder installed for transfer syntax {syntax.name} ({syntax}): {needs}. "
            "Install the decoders with: pip install lddm_fast[dicom]",
        )


def _palette_to_rgb(path, ds, indices: np.ndarray) -> np.ndarray:
    """PALETTE COLOR pixels are indices into the file's red/green/blue lookup tables:
    uint8 ``[..., 3]`` colours through the tables, each scaled from the tables' bits."""
    from pydicom.pixels import apply_color_lut

    try:
        rgb = np.asarray(apply_color_lut(indices, ds))
        bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
    except Exception as e:  # missing or malformed tables
        raise BadInputError(path, f"cannot apply the DICOM palette ({e})") from e
    if bits > 8 or rgb.dtype != np.uint8:
        full_scale = (1 << bits) - 1
        values = np.clip(rgb.astype(np.int64), 0, full_scale)
        rgb = (values * 255 + full_scale // 2) // full_scale
    return rgb.astype(np.uint8)


def _pydicom():
    try:
        import pydicom
    except ImportError as e:
        raise ImportError(INSTALL_HINT) from e
    return pydicom


def _read(path, header_only: bool):
    pydicom = _pydicom()
    path = os.fspath(path)
    if not os.path.exists(path):
        raise BadInputError(path, "file not found")
    if os.path.getsize(path) == 0:
        raise BadInputError(path, "empty file (0 bytes)")
    try:
        return pydicom.dcmread(path, stop_before_pixels=header_only)
    except Exception as e:  # InvalidDicomError, EOFError, struct errors on truncation
        raise BadInputError(path, f"cannot read DICOM ({e})") from e


def _to_uint8(path, ds, pixels: np.ndarray) -> np.ndarray:
    if pixels.dtype != np.uint8:
        bits = int(getattr(ds, "BitsStored", 8 * pixels.dtype.itemsize))
        full_scale = (1 << bits) - 1
        values = np.clip(pixels.astype(np.int64), 0, full_scale)
        pixels = ((values * 255 + full_scale // 2) // full_scale).astype(np.uint8)
    if str(getattr(ds, "PhotometricInterpretation", "")) == "MONOCHROME1":
        pixels = 255 - pixels
    if pixels.ndim not in (3, 4):
        raise BadInputError(path, f"unexpected pixel array shape {pixels.shape}")
    return pixels


def _fps(ds) -> float | None:
    for key in ("CineRate", "RecommendedDisplayFrameRate"):
        value = getattr(ds, key, None)
        if value:
            return float(value)
    frame_time = getattr(ds, "FrameTime", None)  # milliseconds
    return 1000.0 / float(frame_time) if frame_time else None
