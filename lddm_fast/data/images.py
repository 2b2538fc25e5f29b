"""Safe image decoding: every bad file becomes a :class:`BadInputError`.

What is converted and what is refused (the model is grayscale or RGB, 8-bit):

converted
    * palette (``P``/``PA``), bilevel (``1``), ``LA``, ``RGB``, ``RGBA``, ``CMYK``
      and ``YCbCr`` to grayscale (ITU-R 601 luma) or RGB; an alpha channel is
      composited onto black, the background of an ultrasound frame.
    * 16-bit grayscale (``I;16*``, and ``I`` with values in 0..65535) to 8-bit by a
      linear scale with a power-of-two full scale: the smallest of 2**8 ... 2**16
      that holds the image maximum maps to 255. 12-bit data stored in 16-bit PNGs
      (common for medical exports) therefore uses the whole 8-bit range instead of
      coming out nearly black, and black stays 0 (no per-image stretching).

refused
    * empty, corrupt or truncated files, and formats Pillow cannot identify;
    * more than ``max_pixels`` pixels (default :data:`MAX_PIXELS`), checked from the
      header before any pixel is decoded, so a huge file cannot exhaust memory;
    * a shorter side below ``min_side`` (callers pass the model size: upscaling would
      invent detail);
    * floating-point images (``F``) and 32-bit integers outside 0..65535, whose
      intended display range is unknown, and modes Pillow cannot convert (``LAB``).

Multi-frame files (animated PNG/GIF, multi-page TIFF) give their first frame.

DICOM files (``.dcm``/``.dicom``, or the DICM preamble) are read by
:func:`lddm_fast.data.dicom.read_dicom_frame`: a single-frame image, or frame
``frame`` of a cine (palette, YBR, MONOCHROME1 and >8-bit data converted as that
module describes).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from lddm_fast.data.errors import BadInputError

#: Largest image accepted, in pixels (2**25 = 33.5 MP, e.g. 8192 x 4096; about
#: 100 MB as RGB). Ultrasound frames are far below this; larger files are refused
#: before decoding instead of exhausting memory.
MAX_PIXELS = 2**25

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")


@dataclass(frozen=True)
class ImageInfo:
    """Header facts of an image file: ``width``, ``height`` in pixels, Pillow ``mode``."""

    width: int
    height: int
    mode: str


def image_info(
    path: str | os.PathLike, *, min_side: int = 1, max_pixels: int = MAX_PIXELS
) -> ImageInfo:
    """Read only the header of ``path`` and check its size limits.

    Raises :class:`BadInputError` for an unreadable header, a shorter side below
    ``min_side`` or more than ``max_pixels`` pixels. No pixel data is decoded.
    """
    with open_image(path) as im:
        info = ImageInfo(im.width, im.height, im.mode)
    check_size(path, info, min_side, max_pixels)
    return info


def read_image(
    path: str | os.PathLike,
    *,
    channels: int = 1,
    min_side: int = 1,
    max_pixels: int = MAX_PIXELS,
    frame: int = 0,
) -> np.ndarray:
    """Decode ``path`` to 8-bit pixels, converting or refusing as the module describes.

    ``frame`` picks the frame of a multi-frame DICOM (other files give their first).
    Returns uint8 ``[H, W]`` (``channels=1``) or ``[H, W, 3]`` (``channels=3``),
    values 0..255. Raises :class:`BadInputError` naming the file and the reason.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    from PIL import Image

    from lddm_fast.data.dicom import is_dicom, read_dicom_frame

    if is_dicom(path):
        pixels, _ = read_dicom_frame(path, frame, channels=channels, max_pixels=max_pixels)
        info = ImageInfo(pixels.shape[1], pixels.shape[0], "DICOM")
        check_size(path, info, min_side, max_pixels)
        return pixels

    with open_image(path) as im:
        info = ImageInfo(im.width, im.height, im.mode)
        check_size(path, info, min_side, max_pixels)
        try:
            im.load()
            return _to_uint8(path, im, channels)
        except BadInputError:
            raise
        except (Image.DecompressionBombError, OSError, SyntaxError, ValueError, EOFError) as e:
            # Pillow reports truncation and corrupt streams with all of these types.
            raise BadInputError(path, f"cannot decode image ({e})") from e


def write_png(path: str | os.PathLike, pixels: np.ndarray) -> None:
    """Write uint8 ``[H, W]`` or ``[H, W, 3]`` pixels as a PNG, atomically."""
    from PIL import Image

    from lddm_fast.data.atomic import atomic_file

    pixels = np.ascontiguousarray(pixels)
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3):
        raise ValueError(f"expected uint8 [H, W] or [H, W, 3], got {pixels.dtype} {pixels.shape}")
    with atomic_file(path) as tmp:
        # A fixed compression level keeps the bytes reproducible across runs.
        Image.fromarray(pixels).save(tmp, format="PNG", compress_level=6)


def open_image(path: str | os.PathLike):
    """Open ``path`` with Pillow, reading only the header; errors become BadInputError.

    Use as a context manager so the file handle is closed (worker-safe).
    """
    from PIL import Image

    path = os.fspath(path)
    try:
        if os.path.getsize(path) == 0:
            raise BadInputError(path, "empty file (0 bytes)")
        return Image.open(path)
    except BadInputError:
        raise
    except FileNotFoundError as e:
        raise BadInputError(path, "file not found") from e
    except IsADirectoryError as e:
        raise BadInputError(path, "is a folder, not an image file") from e
    except Image.UnidentifiedImageError as e:
        raise BadInputError(path, "not a recognised image format (corrupt or wrong type)") from e
    except Image.DecompressionBombError as e:
        raise BadInputError(path, f"image too large ({e})") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise BadInputError(path, f"cannot read image header ({e})") from e


def check_size(path, info: ImageInfo, min_side: int, max_pixels: int) -> None:
    """Raise :class:`BadInputError` above ``max_pixels`` or with a side below ``min_side``."""
    pixels = info.width * info.height
    if pixels > max_pixels:
        raise BadInputError(
            path,
            f"image too large: {info.width}x{info.height} = {pixels} pixels "
            f"exceeds the limit of {max_pixels}",
        )
    if min(info.width, info.height) < min_side:
        raise BadInputError(
            path,
            f"image too small: {info.width}x{info.height}, shorter side below {min_side} px",
        )


def _to_uint8(path, im, channels: int) -> np.ndarray:
    from PIL import Image

    mode = im.mode
    if mode in _SIXTEEN_BIT or mode == "I":
        gray = _scale_16bit(path, np.asarray(im))
        return gray if channels == 1 else np.repeat(gray[..., None], 3, axis=2)
    if mode == "F":
        raise BadInputError(path, "floating-point image (mode F): display range unknown")
    if mode in _ALPHA:
        rgba = im.convert("RGBA")
        black = Image.new("RGBA", im.size, (0, 0, 0, 255))
        im = Image.alpha_composite(black, rgba)
    # np.array copies: Pillow's buffer would give a read-only array.
    return np.array(im.convert("L" if channels == 1 else "RGB"))


def _scale_16bit(path, values: np.ndarray) -> np.ndarray:
    values = values.astype(np.int64, copy=False)
    lo, hi = (int(values.min()), int(values.max())) if values.size else (0, 0)
    if lo < 0 or hi > 65535:
        raise BadInputError(path, f"32-bit integer pixels outside 0..65535 (range {lo}..{hi})")
    bits = min(16, max(8, hi.bit_length()))
    full_scale = (1 << bits) - 1
    return ((values * 255 + full_scale // 2) // full_scale).astype(np.uint8)
