"""Video dataset scans in every layout and label source, and every bad-input case."""

import os
import sys

import numpy as np
import pytest

from lddm_fast.data.busv import read_clip, scan_videos
from lddm_fast.data.errors import BadInputError
from lddm_fast.data.video_io import write_video


def _frames(n, height=24, width=32, value=None):
    # Frame k is filled with 8 * k (or ``value``) so reads can be checked exactly.
    return np.stack(
        [np.full((height, width), 8 * k if value is None else value, np.uint8) for k in range(n)]
    )


def _rawframes(folder, n, **kwargs):
    write_video(folder, _frames(n, **kwargs), fps=10)
    return folder


def _reasons(scan, root):
    return {os.path.relpath(s.path, root): s.reason for s in scan.skipped}


def test_class_folders_with_frame_folders_and_video_files(tmp_path):
    _rawframes(tmp_path / "benign" / "v1", 5)
    _rawframes(tmp_path / "benign" / "nested" / "v2", 6)
    write_video(tmp_path / "malignant" / "v3.npz", _frames(7), fps=10)
    write_video(tmp_path / "malignant" / "v4.gif", _frames(4), fps=10)
    write_video(tmp_path / "malignant" / "v5.mp4", _frames(8), fps=10)
    scan = scan_videos(tmp_path)
    assert not scan.skipped
    found = {os.path.relpath(r.path, tmp_path): (r.kind, r.n_frames, r.label) for r in scan.records}
    assert found == {
        "benign/v1": ("frames", 5, 0),
        "benign/nested/v2": ("frames", 6, 0),
        "malignant/v3.npz": ("file", 7, 1),
        "malignant/v4.gif": ("file", 4, 1),
        "malignant/v5.mp4": ("file", 8, 1),
    }
    assert {(r.width, r.height) for r in scan.records} == {(32, 24)}


def test_read_clip_returns_the_asked_frames_from_every_kind(tmp_path):
    _rawframes(tmp_path / "v1", 9)
    write_video(tmp_path / "v2.npz", _frames(9), fps=10)
    write_video(tmp_path / "v3.mp4", _frames(9), fps=10)
    for record in scan_videos(tmp_path).records:
        clip = read_clip(record, [1, 3, 5, 7])
        assert clip.shape == (4, 24, 32) and record.label == -1
        np.testing.assert_allclose(clip.mean(axis=(1, 2)), [8, 24, 40, 56], atol=2)
        assert read_clip(record, [0, 2], channels=3).shape == (2, 24, 32, 3)
        with pytest.raises(BadInputError, match="frame 9 was asked for"):
            read_clip(record, [8, 9])


def test_mmaction_list_labels(tmp_path):
    root = tmp_path / "rawframes"
    _rawframes(root / "video one", 5)  # a space in the name
    _rawframes(root / "b", 5)
    write_video(root / "c.mp4", _frames(6), fps=10)
    listing = tmp_path / "train_list.txt"
    listing.write_text(
        "# comment\n"
        "video one 5 0\n"
        "b 5 malignant\n"
        "c.mp4 1\n"
        "\n"
        "missing 5 1\n"
        "b 5 7\n"
        "b 5 cyst\n"
        "justonefield\n"
    )
    scan = scan_videos(root, labels=listing)
    found = {os.path.basename(r.path): r.label for r in scan.records}
    assert found == {"video one": 0, "b": 1, "c.mp4": 1}
    reasons = {s.path: s.reason for s in scan.skipped}
    assert "does not exist" in reasons[f"{listing}:6"]
    assert "unknown label '7'" in reasons[f"{listing}:7"]
    assert "unknown label 'cyst'" in reasons[f"{listing}:8"]
    assert "expected" in reasons[f"{listing}:9"]


def test_csv_labels(tmp_path):
    _rawframes(tmp_path / "a", 5)
    write_video(tmp_path / "b.npz", _frames(5), fps=10)
    table = tmp_path / "labels.csv"
    table.write_text("Video,Label\na,benign\nb.npz,1\nghost,0\n,1\n")
    scan = scan_videos(tmp_path, labels=table)
    assert sorted((os.path.basename(r.path), r.label) for r in scan.records) == [
        ("a", 0),
        ("b.npz", 1),
    ]
    assert len(scan.skipped) == 2
    bad = tmp_path / "bad.csv"
    bad.write_text("file,class\na,0\n")
    with pytest.raises(BadInputError, match="needs 'video'"):
        scan_videos(tmp_path, labels=bad)
    with pytest.raises(BadInputError, match="label file not found"):
        scan_videos(tmp_path, labels=tmp_path / "nope.txt")


def test_bad_entries_are_skipped_with_reasons_and_the_scan_goes_on(tmp_path):
    _rawframes(tmp_path / "benign" / "good", 17)
    _rawframes(tmp_path / "benign" / "short", 10)
    (tmp_path / "benign" / "empty").mkdir()
    (tmp_path / "malignant").mkdir()
    (tmp_path / "malignant" / "zero.mp4").write_bytes(b"")
    (tmp_path / "malignant" / "junk.avi").write_bytes(os.urandom(500))
    _rawframes(tmp_path / "malignant" / "tiny", 17, height=8, width=8)
    _rawframes(tmp_path / "cysts" / "v", 17)
    broken = _rawframes(tmp_path / "malignant" / "brokenfirst", 17)
    (broken / "000000.png").write_bytes(b"\x89PNG garbage")
    (tmp_path / "stray.png").write_bytes(b"x")
    scan = scan_videos(tmp_path, min_frames=17, min_side=16)
    assert [os.path.basename(r.path) for r in scan.records] == ["good"]
    reasons = _reasons(scan, tmp_path)
    assert "video too short: 10 frames, a clip needs 17" in reasons["benign/short"]
    assert "empty folder" in reasons["benign/empty"]
    assert "empty file" in reasons["malignant/zero.mp4"]
    assert "cannot read video" in reasons["malignant/junk.avi"]
    assert "too small: 8x8" in reasons["malignant/tiny/000000.png"]
    assert "unknown label 'cysts'" in reasons["cysts"]
    assert "not a recognised image" in reasons["malignant/brokenfirst/000000.png"]
    assert "not inside a class folder" in reasons["stray.png"]
    assert len(reasons) == 8
    assert "1 usable, 8 skipped" in scan.summary(limit=3)


def test_verify_finds_a_corrupt_frame_in_the_middle(tmp_path):
    folder = _rawframes(tmp_path / "v", 6)
    data = (folder / "000003.png").read_bytes()
    (folder / "000003.png").write_bytes(data[: len(data) // 2])
    assert len(scan_videos(tmp_path).records) == 1  # the header check passes
    scan = scan_videos(tmp_path, verify=True)
    assert not scan.records
    assert scan.skipped[0].path.endswith("000003.png")
    record = scan_videos(tmp_path).records[0]
    with pytest.raises(BadInputError, match="000003.png"):
        read_clip(record, range(6))


def test_missing_or_empty_root_raises(tmp_path):
    with pytest.raises(BadInputError, match="not found"):
        scan_videos(tmp_path / "absent")
    with pytest.raises(BadInputError, match="no videos found"):
        scan_videos(tmp_path)
    (tmp_path / "benign" / "empty").mkdir(parents=True)
    with pytest.raises(BadInputError, match="no videos found(.|\n)*empty folder"):
        scan_videos(tmp_path)


def _write_dicom(path, frames, photometric="MONOCHROME2", bits=8):
    pydicom = pytest.importorskip("pydicom", reason="DICOM tests need the optional pydicom")
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"  # US multi-frame
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = (
        meta.MediaStorageSOPClassUID,
        meta.MediaStorageSOPInstanceUID,
    )
    ds.Modality = "US"
    ds.Rows, ds.Columns = frames.shape[1:]
    ds.NumberOfFrames = len(frames)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated = 8 if bits == 8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, 0
    ds.CineRate = 25
    ds.PixelData = frames.astype(np.uint8 if bits == 8 else np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_dicom_cine_loops(tmp_path):
    frames = _frames(6)
    (tmp_path / "benign").mkdir()
    (tmp_path / "malignant").mkdir()
    _write_dicom(tmp_path / "benign" / "cine.dcm", frames)
    _write_dicom(tmp_path / "malignant" / "IM_0001", 255 - frames, photometric="MONOCHROME1")
    twelve_bit = frames.astype(np.uint16) * 16
    _write_dicom(tmp_path / "malignant" / "deep.dcm", twelve_bit, bits=12)
    scan = scan_videos(tmp_path)
    assert not scan.skipped
    by_name = {os.path.basename(r.path): r for r in scan.records}
    assert by_name["cine.dcm"].kind == "dicom" and by_name["cine.dcm"].n_frames == 6
    for name in ("cine.dcm", "IM_0001"):  # MONOCHROME1 is inverted back
        np.testing.assert_array_equal(read_clip(by_name[name], range(6)), frames)
    np.testing.assert_allclose(read_clip(by_name["deep.dcm"], [5]), 40 * 16 * 255 / 4095, atol=1)
    whole = (tmp_path / "benign" / "cine.dcm").read_bytes()
    (tmp_path / "malignant" / "header.dcm").write_bytes(whole[:200])
    (tmp_path / "malignant" / "pixels.dcm").write_bytes(whole[: len(whole) - 500])
    reasons = _reasons(scan_videos(tmp_path, verify=True), tmp_path)
    # pydicom reads a cut header leniently; what is left has no image in it.
    assert "not an image" in reasons["malignant/header.dcm"]
    assert "cannot decode DICOM pixel data" in reasons["malignant/pixels.dcm"]


def test_missing_pydicom_is_reported_with_the_extra_to_install(tmp_path, monkeypatch):
    (tmp_path / "cine.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
    monkeypatch.setitem(sys.modules, "pydicom", None)  # makes "import pydicom" fail
    scan = scan_videos(tmp_path)
    assert not scan.records
    assert "pip install lddm_fast[dicom]" in scan.skipped[0].reason


def test_dicom_palette_color_gives_colours_not_indices(tmp_path):
    """A PALETTE COLOR file stores indices into its colour tables: read_dicom returns
    the colours (16-bit table entries scaled to 8 bits), and their luma for gray."""
    pydicom = pytest.importorskip("pydicom", reason="DICOM tests need the optional pydicom")
    from lddm_fast.data.dicom import read_dicom
    from lddm_fast.data.video_io import LUMA

    rng = np.random.default_rng()
    frames = rng.integers(0, 256, (3, 5, 7), dtype=np.uint8)
    tables = rng.integers(0, 65536, (3, 256), dtype=np.uint16)
    path = _write_dicom(tmp_path / "palette.dcm", frames, photometric="PALETTE COLOR")
    ds = pydicom.dcmread(path)
    for name, table in zip(("Red", "Green", "Blue"), tables, strict=True):
        descriptor = f"{name}PaletteColorLookupTableDescriptor"
        ds.add_new(descriptor, "US", [256, 0, 16])  # US: the first entry is unsigned
        setattr(ds, f"{name}PaletteColorLookupTableData", table.tobytes())
    ds.save_as(path)
    expected = np.rint(tables[:, frames].transpose(1, 2, 3, 0).astype(np.float64) * 255 / 65535)
    rgb = read_dicom(path, channels=3).frames
    assert rgb.shape == (3, 5, 7, 3)
    np.testing.assert_allclose(rgb, expected, atol=1)
    gray = read_dicom(path, channels=1).frames
    np.testing.assert_allclose(gray, np.rint(rgb.astype(np.float32) @ np.float32(LUMA)), atol=1)
    assert not np.array_equal(gray, frames)  # the indices themselves were the old output


def test_read_video_reads_dicom_like_read_dicom(tmp_path):
    pytest.importorskip("pydicom", reason="DICOM tests need the optional pydicom")
    from lddm_fast.data.dicom import read_dicom
    from lddm_fast.data.video_io import probe_video, read_video, write_video

    frames = _frames(5)
    for name in ("cine.dcm", "IM_0002"):  # by suffix, and by the DICM preamble
        path = _write_dicom(tmp_path / name, frames)
        np.testing.assert_array_equal(read_video(path).frames, read_dicom(path).frames)
        np.testing.assert_array_equal(read_video(path, start=1, stop=3).frames, frames[1:3])
        assert probe_video(path)[:3] == (5, frames.shape[2], frames.shape[1])
    with pytest.raises(ValueError, match="writing DICOM is not supported"):
        write_video(tmp_path / "out.dcm", frames)
