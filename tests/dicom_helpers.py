"""Tiny DICOM files built at test time with pydicom (never shipped): ultrasound
images and cines in any photometric interpretation and transfer syntax the tests
need, with an ultrasound region sequence and a recognisable patient in the header.

A module with its own name (not conftest) so tests in every folder import it the
same way; it skips the calling test when pydicom is not installed.
"""

from __future__ import annotations

import io

import numpy as np
import pytest

PATIENT = "Privacy^Probe-7Q3"  # recognisable in any byte of any output
INSTITUTION = "Hospital-Z9K4"
US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"
US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"


def pydicom():
    return pytest.importorskip("pydicom", reason="DICOM tests need the optional pydicom")


def dataset(pixels: np.ndarray, photometric: str = "MONOCHROME2", *, bits: int = 8):
    """A US dataset holding ``pixels``: ``[H, W]`` / ``[H, W, 3]`` (one frame) or
    ``[T, H, W]`` / ``[T, H, W, 3]`` (a cine, when ``photometric`` has one sample per
    pixel and the array is 3-D, or it is 4-D), uncompressed little endian."""
    pd = pydicom()
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    samples = 1 if photometric in ("MONOCHROME1", "MONOCHROME2", "PALETTE COLOR") else 3
    cine = pixels.ndim == (3 if samples == 1 else 4)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = US_MULTIFRAME if cine else US_IMAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pd.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, generate_uid()
    ds.Modality = "US"
    ds.PatientName, ds.PatientID = PATIENT, "ID-5F8W2"
    ds.PatientBirthDate, ds.StudyDate = "19010203", "20990405"
    ds.InstitutionName = INSTITUTION
    shape = pixels.shape[1:] if cine else pixels.shape
    ds.Rows, ds.Columns = shape[:2]
    if cine:
        ds.NumberOfFrames = len(pixels)
        ds.CineRate = 20
    ds.SamplesPerPixel, ds.PhotometricInterpretation = samples, photometric
    if samples == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = 8 if bits == 8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, 0
    ds.PixelData = pixels.astype(np.uint8 if bits == 8 else np.uint16).tobytes()
    return ds


def save(ds, path):
    ds.save_as(path, enforce_file_format=True)
    return path


def jpeg_baseline(ds, frames: np.ndarray, quality: int = 95):
    """Replace ``ds``'s pixels by ``frames`` (uint8 ``[T, H, W]``) as JPEG baseline,
    encoded by Pillow and encapsulated as a DICOM would carry them."""
    from PIL import Image
    from pydicom.uid import JPEGBaseline8Bit

    streams = []
    for frame in frames:
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="JPEG", quality=quality)
        streams.append(buffer.getvalue())
    return encapsulated(ds, streams, JPEGBaseline8Bit)


def encapsulated(ds, streams: list[bytes], syntax: str):
    """Replace ``ds``'s pixels by one compressed ``stream`` per frame in transfer
    syntax ``syntax`` (a UID), encapsulated as a DICOM would carry them."""
    from pydicom.encaps import encapsulate

    ds.PixelData = encapsulate(streams)
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = syntax
    return ds


def us_region(box, *, spatial=1, data_type=1, delta=(0.01, 0.02), units=3):
    """One item of SequenceOfUltrasoundRegions (0018,6011); ``box`` is half-open
    ``(x0, y0, x1, y1)`` (the DICOM maxima are inclusive)."""
    pd = pydicom()
    item = pd.Dataset()
    item.RegionSpatialFormat, item.RegionDataType, item.RegionFlags = spatial, data_type, 0
    item.RegionLocationMinX0, item.RegionLocationMinY0 = box[0], box[1]
    item.RegionLocationMaxX1, item.RegionLocationMaxY1 = box[2] - 1, box[3] - 1
    item.PhysicalUnitsXDirection = item.PhysicalUnitsYDirection = units
    item.PhysicalDeltaX, item.PhysicalDeltaY = delta
    return item


def speckle(height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint8 ``[H, W]`` B-mode-like speckle (Rayleigh amplitudes, log-compressed),
    all above the imaging-area threshold."""
    amplitude = np.random.default_rng(seed).rayleigh(1.0, (height, width))
    return np.clip(40 + 60 * np.log1p(3 * amplitude), 30, 250).astype(np.uint8)
