"""Contact sheets: a grid of frames from several videos, one video per row, as PNG."""

from __future__ import annotations

import os

import numpy as np

from lddm_fast.data.video_io import to_uint8


def contact_sheet(
    videos, path: str | os.PathLike | None = None, *, columns: int = 8, gap: int = 2
) -> np.ndarray:
    """Lay out ``columns`` evenly spaced frames of each video in a row.

    ``videos``: a sequence of frame arrays (uint8 ``[T, H, W(, 3)]`` or floats in
    [-1, 1], see :func:`~lddm_fast.data.video_io.to_uint8`). Frames of other sizes
    are resized to the first video's frame size; if any video is RGB the sheet is
    RGB. Videos shorter than ``columns`` repeat frames. Returns the sheet, uint8
    ``[rows * (H + gap) - gap, columns * (W + gap) - gap(, 3)]``, gaps black, and
    writes it atomically as PNG to ``path`` when given.
    """
    from PIL import Image

    from lddm_fast.data.images import write_png

    if columns < 1:
        raise ValueError(f"columns must be at least 1, got {columns}")
    videos = [to_uint8(v) for v in videos]
    if not videos:
        raise ValueError("no videos for the contact sheet")
    height, width = videos[0].shape[1:3]
    rgb = any(v.ndim == 4 for v in videos)
    shape = (height, width, 3) if rgb else (height, width)
    sheet = np.zeros(
        (len(videos) * (height + gap) - gap, columns * (width + gap) - gap, *shape[2:]), np.uint8
    )
    for row, video in enumerate(videos):
        picks = np.rint(np.linspace(0, len(video) - 1, columns)).astype(int)
        for col, index in enumerate(picks):
            tile = video[index]
            if rgb and tile.ndim == 2:
                tile = np.repeat(tile[..., None], 3, axis=2)
            if tile.shape[:2] != (height, width):
                tile = np.asarray(Image.fromarray(tile).resize((width, height), Image.BILINEAR))
            top, left = row * (height + gap), col * (width + gap)
            sheet[top : top + height, left : left + width] = tile
    if path is not None:
        write_png(path, sheet)
    return sheet
