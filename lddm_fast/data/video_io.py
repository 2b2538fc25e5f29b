"""Read and write short videos: H.264 mp4 (PyAV), GIF (Pillow), npz, PNG sequences.

The format follows the path: ``.mp4``/``.mov``/``.mkv`` (H.264 through PyAV; ``.avi``,
``.m4v`` and ``.webm`` are also read), ``.gif``, ``.npz``, and a path with no suffix
(or an existing folder) is a PNG sequence ``%06d.png``. Frames are uint8
``[T, H, W]`` (grayscale) or ``[T, H, W, 3]`` (RGB), values 0..255.

Every write goes to a temporary file (or folder) in the destination's folder and is
moved into place with ``os.replace``, so a reader never sees a partial video.

Lossiness: mp4 is lossy (H.264 4:2:0, ``crf`` 18 by default: about one gray level of
mean error on smooth content); npz and PNG are exact; GIF is exact for grayscale
(a 256-gray palette) and quantized to 256 colours for RGB.
"""

from __future__ import annotations

import contextlib
import os
import re
import zipfile
from fractions import Fraction
from typing import NamedTuple

import numpy as np

from lddm_fast.data.errors import BadInputError
from lddm_fast.data.images import IMAGE_SUFFIXES, MAX_PIXELS

#: Container suffixes read through PyAV.
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".m4v", ".webm")
#: Every video file read_video opens by its suffix (DICOM aside: by suffix or preamble).
VIDEO_FILE_SUFFIXES = (*VIDEO_SUFFIXES, ".gif", ".npz")
#: ITU-R 601 luma weights (R, G, B), the ones Pillow and PyAV use for gray.
LUMA = (0.299, 0.587, 0.114)
_H264_SUFFIXES = (".mp4", ".mov", ".mkv")
_FRAME_SUFFIXES = tuple(s for s in IMAGE_SUFFIXES if s != ".gif")

#: Largest video accepted by :func:`read_video`, in pixels over all decoded frames
#: (2**31: about 2 GB of grayscale frames, e.g. 32,000 frames of 256x256).
MAX_VIDEO_PIXELS = 2**31

# Written into GIFs so read_video can restore the frame rate and the frames that
# Pillow merges when consecutive frames are identical.
_GIF_COMMENT = "lddm_fast fps="


class Video(NamedTuple):
    """Decoded frames (uint8 ``[T, H, W]`` or ``[T, H, W, 3]``) and frames per second.

    ``fps`` is None for PNG sequences, which do not store a rate.
    """

    frames: np.ndarray
    fps: float | None


class VideoInfo(NamedTuple):
    """Header facts: frame count, ``width``, ``height`` in pixels, ``fps`` (None if unknown)."""

    frames: int
    width: int
    height: int
    fps: float | None


def video_format(path: str | os.PathLike) -> str:
    """The format :func:`read_video`/:func:`write_video` use for ``path``.

    One of ``"av"`` (a PyAV container), ``"gif"``, ``"npz"``, ``"png"`` (a folder),
    ``"dicom"`` (read only, through :mod:`lddm_fast.data.dicom`).
    """
    from lddm_fast.data.dicom import is_dicom  # dicom builds on this module

    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix in VIDEO_SUFFIXES:
        return "av"
    if suffix in (".gif", ".npz"):
        return suffix[1:]
    if is_dicom(path):
        return "dicom"
    if suffix == "" or os.path.isdir(path):
        return "png"
    raise ValueError(f"{path}: unknown video format {suffix!r}")


def to_uint8(frames) -> np.ndarray:
    """Frames as uint8, channel-last: ``[T, H, W]`` or ``[T, H, W, 3]``.

    Accepts uint8 values 0..255 or floating values in [-1, 1] (the model's range,
    clipped, mapped linearly to 0..255); ``[T, H, W, 1]`` loses its channel axis.
    Torch tensors are accepted through ``numpy.asarray``.
    """
    frames = np.asarray(frames)
    if frames.ndim == 4 and frames.shape[-1] == 1:
        frames = frames[..., 0]
    if frames.ndim not in (3, 4) or (frames.ndim == 4 and frames.shape[-1] != 3):
        raise ValueError(f"expected frames [T, H, W] or [T, H, W, 3], got shape {frames.shape}")
    if frames.shape[0] == 0:
        raise ValueError("a video needs at least one frame")
    if frames.dtype == np.uint8:
        return np.ascontiguousarray(frames)
    if np.issubdtype(frames.dtype, np.floating):
        scaled = np.rint((np.clip(frames, -1.0, 1.0) + 1.0) * 127.5)
        return scaled.astype(np.uint8)
    raise ValueError(f"expected uint8 or floating frames in [-1, 1], got {frames.dtype}")


def tensor_to_frames(video) -> np.ndarray:
    """A model output ``[C, T, H, W]`` (C = 1 or 3, values in [-1, 1]) as uint8 frames.

    Returns ``[T, H, W]`` for C = 1 and ``[T, H, W, 3]`` for C = 3.
    """
    if hasattr(video, "detach"):
        video = video.detach().float().cpu().numpy()
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[0] not in (1, 3):
        raise ValueError(f"expected [C, T, H, W] with C = 1 or 3, got shape {video.shape}")
    return to_uint8(np.moveaxis(video, 0, -1))


def write_video(path: str | os.PathLike, frames, fps: float = 10.0, *, crf: int = 18) -> None:
    """Write ``frames`` (see :func:`to_uint8`) to ``path`` atomically.

    ``crf`` is the H.264 quality for mp4/mov/mkv (0 best .. 51 worst). H.264 4:2:0,
    the profile players accept, needs even width and height: odd sizes raise
    ValueError rather than being padded behind the caller's back.
    """
    from lddm_fast.data.atomic import atomic_file, atomic_folder

    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    frames = to_uint8(frames)
    kind = video_format(path)
    if kind == "dicom":
        raise ValueError(f"{path}: writing DICOM is not supported (read only)")
    if kind == "png":
        with atomic_folder(path) as tmp:
            _write_png_sequence(tmp, frames)
        return
    with atomic_file(path) as tmp:
        if kind == "av":
            if os.path.splitext(os.fspath(path))[1].lower() not in _H264_SUFFIXES:
                raise ValueError(f"{path}: writing supports {', '.join(_H264_SUFFIXES)} only")
            _write_h264(tmp, frames, fps, crf)
        elif kind == "gif":
            _write_gif(tmp, frames, fps)
        else:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, frames=frames, fps=np.float64(fps))


def read_video(
    path: str | os.PathLike,
    *,
    channels: int = 1,
    start: int = 0,
    stop: int | None = None,
    max_pixels: int = MAX_PIXELS,
    max_total_pixels: int = MAX_VIDEO_PIXELS,
) -> Video:
    """Decode frames ``start`` .. ``stop - 1`` of ``path`` (all frames by default).

    Returns uint8 ``[T, H, W]`` for ``channels=1`` (grayscale, ITU-R 601 luma) or
    ``[T, H, W, 3]`` for ``channels=3``. Decoding stops at ``stop``, so reading a
    clip from the start of a long video does not decode the rest. Frames larger than
    ``max_pixels`` or more than ``max_total_pixels`` pixels in all are refused.
    Raises :class:`BadInputError` (naming the file and the reason) for empty,
    corrupt or truncated files and for a range past the end of the video.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if start < 0 or (stop is not None and stop <= start):
        raise ValueError(f"bad frame range start={start} stop={stop}")
    path = os.fspath(path)
    kind = video_format(path)
    if kind != "png":
        _check_nonempty_file(path)
    limits = (max_pixels, max_total_pixels)
    if kind == "dicom":  # one decoder for DICOM, whichever entry point is used
        from lddm_fast.data.dicom import read_dicom

        whole = read_dicom(
            path, channels=channels, max_pixels=max_pixels, max_total_pixels=max_total_pixels
        )
        video = Video(whole.frames[start:stop], whole.fps)
    elif kind == "av":
        video = _read_av(path, channels, start, stop, limits)
    elif kind == "gif":
        video = _read_gif(path, channels, start, stop, limits)
    elif kind == "npz":
        video = _read_npz(path, channels, start, stop, limits)
    else:
        video = _read_png_sequence(path, channels, start, stop, limits)
    if stop is not None and len(video.frames) < stop - start:
        raise BadInputError(
            path, f"video has {start + len(video.frames)} frames, frame {stop - 1} was asked for"
        )
    return video


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Frame count, size and rate of ``path`` from its header (PNG: the file list).

    Decodes no pixels except for GIF, whose frame count needs a pass over the file.
    Raises :class:`BadInputError` for unreadable files.
    """
    path = os.fspath(path)
    kind = video_format(path)
    if kind == "png":
        from lddm_fast.data.images import image_info

        files = frame_files(path)
        if not files:
            raise BadInputError(path, "no image frames in folder")
        info = image_info(files[0])
        return VideoInfo(len(files), info.width, info.height, None)
    _check_nonempty_file(path)
    if kind == "dicom":
        from lddm_fast.data.dicom import probe_dicom

        return probe_dicom(path)
    if kind == "av":
        return _probe_av(path)
    if kind == "npz":
        shape = _npz_frames_header(path)[0]
        with _npz_errors(path), np.load(path, allow_pickle=False) as data:
            fps = float(data["fps"]) if "fps" in data.files else None
        return VideoInfo(shape[0], shape[2], shape[1], fps)
    video = _read_gif(path, 1, 0, None, (MAX_PIXELS, MAX_VIDEO_PIXELS))
    return VideoInfo(len(video.frames), video.frames.shape[2], video.frames.shape[1], video.fps)


def frame_files(folder: str | os.PathLike) -> list[str]:
    """Still-image files in ``folder`` in natural order (``frame2`` before ``frame10``).

    GIFs are videos, not frames; files whose name contains ``_mask`` are left out
    (BUSI-style annotations).
    """
    folder = os.fspath(folder)
    names = [
        n
        for n in os.listdir(folder)
        if n.lower().endswith(_FRAME_SUFFIXES)
        and "_mask" not in n.lower()
        and not n.startswith(".")
    ]
    return [os.path.join(folder, n) for n in sorted(names, key=natural_key)]


def natural_key(name: str) -> tuple:
    """Sort key that orders embedded numbers by value (``a2`` < ``a10``)."""
    return tuple(int(p) if p.isdigit() else p.lower() for p in re.split(r"(\d+)", name))


def _check_nonempty_file(path: str) -> None:
    if not os.path.exists(path):
        raise BadInputError(path, "file not found")
    if os.path.isdir(path):
        raise BadInputError(path, "is a folder, expected a video file")
    if os.path.getsize(path) == 0:
        raise BadInputError(path, "empty file (0 bytes)")


def _check_frame_limits(path, width, height, n_frames, limits) -> None:
    max_pixels, max_total = limits
    if width * height > max_pixels:
        raise BadInputError(
            path, f"frames too large: {width}x{height} exceeds the limit of {max_pixels} pixels"
        )
    if n_frames * width * height > max_total:
        raise BadInputError(
            path,
            f"video too large: {n_frames} frames of {width}x{height} exceed "
            f"the limit of {max_total} pixels",
        )


# --- PyAV containers -------------------------------------------------------------


def _import_av():
    try:
        import av
    except ImportError as e:
        raise ImportError("mp4/avi/mov/mkv video I/O needs PyAV: pip install av") from e
    return av


def _av_errors():
    av = _import_av()
    # InvalidDataError and friends derive from FFmpegError; OSError covers I/O.
    return (av.FFmpegError, OSError, EOFError)


def _write_h264(tmp: str, frames: np.ndarray, fps: float, crf: int) -> None:
    av = _import_av()

    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(
            f"H.264 4:2:0 needs even width and height, got {width}x{height}: "
            "crop or pad the frames, or write .png/.npz instead"
        )
    pixel_format = "gray" if frames.ndim == 3 else "rgb24"
    with av.open(tmp, mode="w", format=_container_format(tmp)) as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(int(crf))}
        for frame in frames:
            packets = stream.encode(av.VideoFrame.from_ndarray(frame, format=pixel_format))
            container.mux(packets)
        container.mux(stream.encode())


def _container_format(tmp: str) -> str:
    suffix = os.path.splitext(tmp)[1].lower()
    return {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska"}[suffix]


def _probe_av(path: str) -> VideoInfo:
    av = _import_av()

    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise BadInputError(path, "no video stream")
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            rate = stream.average_rate or stream.guessed_rate
            n_frames = stream.frames
            if n_frames <= 0:
                # Some containers (avi, mkv) have no frame count: count packets,
                # which demuxes without decoding.
                n_frames = sum(1 for p in container.demux(stream) if p.size)
    except _av_errors() as e:
        raise BadInputError(path, f"cannot read video ({e})") from e
    return VideoInfo(n_frames, width, height, float(rate) if rate else None)


def _read_av(path, channels, start, stop, limits) -> Video:
    av = _import_av()

    pixel_format = "gray" if channels == 1 else "rgb24"
    frames = []
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise BadInputError(path, "no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            width, height = stream.codec_context.width, stream.codec_context.height
            wanted = (stop if stop is not None else max(stream.frames, 1)) - start
            _check_frame_limits(path, width, height, max(wanted, 1), limits)
            for index, frame in enumerate(container.decode(stream)):
                if stop is not None and index >= stop:
                    break
                if index >= start:
                    frames.append(frame.to_ndarray(format=pixel_format))
                    _check_frame_limits(path, width, height, len(frames), limits)
    except BadInputError:
        raise
    except _av_errors() as e:
        raise BadInputError(path, f"cannot decode video ({e})") from e
    if not frames:
        raise BadInputError(path, f"no frames decoded from frame {start} on")
    return Video(np.stack(frames), float(rate) if rate else None)


# --- GIF ---------------------------------------------------------------------------


def _write_gif(tmp: str, frames: np.ndarray, fps: float) -> None:
    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    images[0].save(
        tmp,
        format="GIF",
        save_all=True,
        append_images=images[1:],
        duration=round(1000 / fps),
        loop=0,
        comment=f"{_GIF_COMMENT}{fps!r}",
    )


def _read_gif(path, channels, start, stop, limits) -> Video:
    from PIL import Image, ImageSequence

    from lddm_fast.data.images import ImageInfo, check_size, open_image

    frames = []
    try:
        with open_image(path) as im:
            check_size(path, ImageInfo(im.width, im.height, im.mode), 1, limits[0])
            fps = _gif_fps(im.info.get("comment", b""))
            merged = fps is not None
            if fps is None and im.info.get("duration"):
                fps = 1000.0 / im.info["duration"]
            for frame in ImageSequence.Iterator(im):
                pixels = np.asarray(frame.convert("L" if channels == 1 else "RGB"))
                repeats = 1
                if merged:
                    # Pillow merges identical consecutive frames into one with a
                    # longer duration; undo that for GIFs this module wrote.
                    repeats = max(1, round(frame.info.get("duration", 0) * fps / 1000))
                frames.extend([pixels] * repeats)
                _check_frame_limits(path, im.width, im.height, len(frames), limits)
                if stop is not None and len(frames) >= stop:
                    break
    except BadInputError:
        raise
    except (Image.DecompressionBombError, OSError, SyntaxError, ValueError, EOFError) as e:
        raise BadInputError(path, f"cannot decode GIF ({e})") from e
    frames = frames[start:stop]
    if not frames:
        raise BadInputError(path, f"no frames decoded from frame {start} on")
    return Video(np.stack(frames), fps)


def _gif_fps(comment: bytes) -> float | None:
    text = comment.decode("latin-1") if isinstance(comment, bytes) else str(comment)
    if text.startswith(_GIF_COMMENT):
        try:
            return float(text[len(_GIF_COMMENT) :])
        except ValueError:
            return None
    return None


# --- npz ---------------------------------------------------------------------------


@contextlib.contextmanager
def _npz_errors(path: str):
    try:
        yield
    except BadInputError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, KeyError, EOFError) as e:
        raise BadInputError(path, f"cannot read npz ({e})") from e


def _npz_frames_header(path: str) -> tuple[tuple[int, ...], np.dtype]:
    # Read the array header inside the zip so the size check happens before the
    # pixels are inflated into memory.
    with _npz_errors(path), zipfile.ZipFile(path) as archive:
        if "frames.npy" not in archive.namelist():
            raise BadInputError(path, "npz has no 'frames' array")
        with archive.open("frames.npy") as member:
            version = np.lib.format.read_magic(member)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(member)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(member)
    rgb_ok = len(shape) != 4 or shape[3] in (1, 3)
    if dtype != np.uint8 or len(shape) not in (3, 4) or not rgb_ok:
        raise BadInputError(
            path, f"npz 'frames' must be uint8 [T, H, W(, 3)], got {dtype} {tuple(shape)}"
        )
    return tuple(shape), dtype


def _read_npz(path, channels, start, stop, limits) -> Video:
    shape, _ = _npz_frames_header(path)
    _check_frame_limits(path, shape[2], shape[1], shape[0], limits)
    with _npz_errors(path), np.load(path, allow_pickle=False) as data:
        frames = data["frames"][start:stop]
        fps = float(data["fps"]) if "fps" in data.files else None
    if len(frames) == 0:
        raise BadInputError(path, f"no frames from frame {start} on (video has {shape[0]})")
    return Video(convert_channels(frames, channels), fps)


def convert_channels(frames: np.ndarray, channels: int) -> np.ndarray:
    """uint8 frames ``[T, H, W(, 1 or 3)]`` as ``[T, H, W]`` (1) or ``[T, H, W, 3]`` (3)."""
    if frames.ndim == 4 and frames.shape[3] == 1:
        frames = frames[..., 0]
    if channels == 3 and frames.ndim == 3:
        return np.repeat(frames[..., None], 3, axis=3)
    if channels == 1 and frames.ndim == 4:
        luma = frames.astype(np.float32) @ np.array(LUMA, np.float32)
        return np.rint(luma).astype(np.uint8)
    return frames


# --- PNG sequence ----------------------------------------------------------------


def _write_png_sequence(folder: str, frames: np.ndarray) -> None:
    from PIL import Image

    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(
            os.path.join(folder, f"{index:06d}.png"), format="PNG", compress_level=6
        )


def _read_png_sequence(path, channels, start, stop, limits) -> Video:
    from lddm_fast.data.images import image_info, read_image

    if not os.path.isdir(path):
        raise BadInputError(path, "PNG sequence folder not found")
    files = frame_files(path)
    if not files:
        raise BadInputError(path, "no image frames in folder")
    selected = files[start:stop]
    if not selected:
        raise BadInputError(path, f"folder has {len(files)} frames, frame {start} was asked for")
    first = image_info(selected[0], max_pixels=limits[0])
    width, height = first.width, first.height
    _check_frame_limits(path, width, height, len(selected), limits)
    frames = [read_image(f, channels=channels, max_pixels=limits[0]) for f in selected]
    for f, pixels in zip(selected, frames, strict=True):
        if pixels.shape[:2] != (height, width):
            raise BadInputError(
                f,
                f"frame size {pixels.shape[1]}x{pixels.shape[0]} differs from the first "
                f"frame's {width}x{height}",
            )
    return Video(np.stack(frames), None)
