"""Data: the seeded ultrasound phantom, BUSV/BUSI loaders, video and image I/O.

Names are imported on first use, so ``import lddm_fast.data`` (and the CLI, which
imports it to build its parser) stays cheap:

* bad input: :class:`BadInputError`, :class:`Scan`, :class:`Skipped`
* images: :func:`read_image`, :func:`image_info`, :func:`write_png`, :data:`MAX_PIXELS`
* videos: :func:`read_video`, :func:`write_video`, :func:`probe_video`,
  :func:`to_uint8`, :func:`tensor_to_frames`, :func:`contact_sheet`,
  :func:`read_dicom`, :func:`read_dicom_frame`
* imaging regions: :func:`read_views`, :func:`image_views`, :func:`find_imaging_area`,
  :class:`Region`, :class:`View`
* loaders: :func:`scan_videos`, :func:`read_clip`, :func:`scan_images`,
  :class:`ClipDataset`, :class:`ImageDataset`, :class:`ClipTransform`
* phantom: :class:`PhantomConfig`, :func:`simulate_clip`,
  :func:`write_phantom_dataset`
"""

from __future__ import annotations

from lddm_fast._lazy import lazy_exports

_EXPORTS = {
    "BadInputError": "errors",
    "Scan": "errors",
    "Skipped": "errors",
    "MAX_PIXELS": "images",
    "image_info": "images",
    "read_image": "images",
    "write_png": "images",
    "Video": "video_io",
    "probe_video": "video_io",
    "read_video": "video_io",
    "tensor_to_frames": "video_io",
    "to_uint8": "video_io",
    "write_video": "video_io",
    "contact_sheet": "contact_sheet",
    "read_dicom": "dicom",
    "read_dicom_frame": "dicom",
    "Region": "regions",
    "View": "regions",
    "find_imaging_area": "regions",
    "image_views": "regions",
    "read_views": "regions",
    "CLASSES": "labels",
    "VideoRecord": "busv",
    "read_clip": "busv",
    "scan_videos": "busv",
    "ImageRecord": "busi",
    "scan_images": "busi",
    "ClipTransform": "transforms",
    "ClipDataset": "datasets",
    "ImageDataset": "datasets",
    "PhantomClip": "phantom",
    "PhantomConfig": "phantom",
    "simulate_clip": "phantom",
    "write_phantom_dataset": "phantom_writer",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
