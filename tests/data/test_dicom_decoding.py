"""DICOM images and cines decode to the expected 8-bit luma in every photometric
interpretation and in the transfer syntaxes common in ultrasound; files no installed
decoder can read are refused naming the file and what is missing."""

import numpy as np
import pytest
from dicom_helpers import dataset, encapsulated, jpeg_baseline, pydicom, save
from lossless_jpeg import jpeg_lossless, jpeg_ls

from lddm_fast.data.errors import BadInputError
from lddm_fast.data.images import read_image
from lddm_fast.data.video_io import LUMA, read_video


def _luma(rgb):
    return np.rint(rgb.astype(np.float32) @ np.float32(LUMA))


def _palette(ds, tables, bits):
    """Give ``ds`` red/green/blue tables ``[3, N]`` of ``bits``-bit entries (stored in
    16-bit words, as the standard's OW data is)."""
    for name, table in zip(("Red", "Green", "Blue"), tables, strict=True):
        ds.add_new(f"{name}PaletteColorLookupTableDescriptor", "US", [len(table), 0, bits])
        setattr(ds, f"{name}PaletteColorLookupTableData", table.astype("<u2").tobytes())
    return ds


def test_palette_8_bit_entries_give_their_colours(tmp_path):
    rng = np.random.default_rng(1)
    indices = rng.integers(0, 256, (6, 9), dtype=np.uint8)
    tables = rng.integers(0, 256, (3, 256))
    path = save(_palette(dataset(indices, "PALETTE COLOR"), tables, 8), tmp_path / "p8.dcm")
    rgb = tables[:, indices].transpose(1, 2, 0)
    np.testing.assert_array_equal(read_image(path, channels=3), rgb)
    np.testing.assert_allclose(read_image(path), _luma(rgb), atol=1)


def test_palette_16_bit_indices_and_entries_are_scaled_to_8_bits(tmp_path):
    rng = np.random.default_rng(2)
    indices = rng.integers(0, 1000, (5, 7))
    tables = rng.integers(0, 65536, (3, 1000))
    ds = _palette(dataset(indices, "PALETTE COLOR", bits=16), tables, 16)
    path = save(ds, tmp_path / "p16.dcm")
    rgb = np.rint(tables[:, indices].transpose(1, 2, 0) * 255 / 65535)
    np.testing.assert_allclose(read_image(path, channels=3), rgb, atol=1)
    gray = read_image(path)
    np.testing.assert_allclose(gray, _luma(rgb), atol=1)
    assert np.abs(gray.astype(int) - indices % 256).max() > 50  # not the indices


def _segmented(*segments):
    """Segmented LUT data (PS3.3 C.7.9.2) of 16-bit words: ``("discrete", values)``
    or ``("linear", count, end)``, a ramp of ``count`` entries from the previous entry
    to ``end``."""
    words = []
    for kind, *args in segments:
        if kind == "discrete":
            words += [0, len(args[0]), *args[0]]
        else:
            words += [1, args[0], args[1]]
    return np.array(words, "<u2").tobytes()


def test_segmented_palette_gives_its_colours(tmp_path):
    """Segmented tables (as ALOKA scanners write them), 16-bit entries whose ramps
    fall on whole steps of 257, so every colour is exact in 8 bits."""
    indices = np.arange(256, dtype=np.uint8).reshape(16, 16)
    ds = dataset(indices, "PALETTE COLOR")
    tables = {
        "Red": _segmented(("discrete", [0]), ("linear", 255, 65535)),  # 257 i
        "Green": _segmented(("discrete", [65535]), ("linear", 255, 0)),  # 65535 - 257 i
        # 0x4040 (64 in 8 bits) up to index 127, then one step of 257 per index
        "Blue": _segmented(("discrete", [0x4040] * 128), ("linear", 128, 0xC0C0)),
    }
    for name, data in tables.items():
        ds.add_new(f"{name}PaletteColorLookupTableDescriptor", "US", [256, 0, 16])
        ds.add_new(f"Segmented{name}PaletteColorLookupTableData", "OW", data)
    path = save(ds, tmp_path / "segmented.dcm")
    i = indices.astype(np.int64)
    rgb = np.stack([i, 255 - i, np.where(i < 128, 64, i - 63)], axis=-1)
    np.testing.assert_array_equal(read_image(path, channels=3), rgb)
    np.testing.assert_allclose(read_image(path), _luma(rgb), atol=1)


def test_rgb_and_ybr_give_the_luma_of_their_colours(tmp_path):
    from pydicom.pixels import convert_color_space

    rgb = np.random.default_rng(3).integers(0, 256, (8, 10, 3), dtype=np.uint8)
    path = save(dataset(rgb, "RGB"), tmp_path / "rgb.dcm")
    np.testing.assert_array_equal(read_image(path, channels=3), rgb)
    np.testing.assert_allclose(read_image(path), _luma(rgb), atol=1)
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    path = save(dataset(ybr, "YBR_FULL"), tmp_path / "ybr.dcm")
    # YBR_FULL's Y is the same ITU-R 601 luma; the round trip costs at most rounding.
    np.testing.assert_allclose(read_image(path), _luma(rgb), atol=2)
    np.testing.assert_allclose(read_image(path, channels=3), rgb, atol=3)


def test_monochrome1_is_inverted_and_12_bit_scaled(tmp_path):
    gray = np.random.default_rng(4).integers(0, 256, (6, 8), dtype=np.uint8)
    path = save(dataset(255 - gray, "MONOCHROME1"), tmp_path / "m1.dcm")
    np.testing.assert_array_equal(read_image(path), gray)
    twelve = gray.astype(np.uint16) * 16
    path = save(dataset(twelve, bits=12), tmp_path / "m12.dcm")
    expected = np.rint(twelve.astype(np.float64) * 255 / 4095)
    np.testing.assert_allclose(read_image(path), expected, atol=1)


def test_a_cine_gives_the_frame_asked_for(tmp_path):
    frames = np.stack([np.full((6, 8), 30 * k, np.uint8) for k in range(4)])
    path = save(dataset(frames), tmp_path / "cine.dcm")
    np.testing.assert_array_equal(read_image(path), frames[0])
    np.testing.assert_array_equal(read_image(path, frame=3), frames[3])
    with pytest.raises(BadInputError, match=r"cine.dcm: frame 4 out of range: .* 4 frame"):
        read_image(path, frame=4)
    single = save(dataset(frames[2]), tmp_path / "single.dcm")
    np.testing.assert_array_equal(read_image(single, frame=3), frames[2])  # its one image
    with pytest.raises(BadInputError, match="image too small"):
        read_image(path, min_side=7)


@pytest.mark.parametrize("syntax", ["RLELossless", "JPEG2000Lossless"])
def test_lossless_compressed_syntaxes_decode_exactly(tmp_path, syntax):
    pydicom()
    from pydicom import uid

    frames = np.random.default_rng(5).integers(0, 256, (3, 40, 48), dtype=np.uint8)
    ds = dataset(frames)
    ds.compress(getattr(uid, syntax))  # pydicom's own RLE encoder, or openjpeg's
    path = save(ds, tmp_path / "lossless.dcm")
    assert pydicom().dcmread(path).file_meta.TransferSyntaxUID == getattr(uid, syntax)
    np.testing.assert_array_equal(read_video(path).frames, frames)
    np.testing.assert_array_equal(read_image(path, frame=1), frames[1])


def _ultrasound_like(frames: int, bits: int) -> np.ndarray:
    """uint16 ``[T, 40, 48]``: speckle of ``bits`` bits inside a sector-like area,
    black around it (long runs, which JPEG-LS codes in its run mode)."""
    rng = np.random.default_rng(bits)
    y, x = np.mgrid[0:40, 0:48]
    inside = np.abs(x - 24) < 4 + y * 0.5
    speckle = rng.integers(1 << (bits - 3), 1 << bits, (frames, 40, 48))
    return np.where(inside, speckle, 0).astype(np.uint16)


@pytest.mark.parametrize(
    ("syntax", "predictor", "bits"),
    [("JPEGLosslessSV1", 1, 8), ("JPEGLossless", 1, 12), ("JPEGLossless", 6, 8)],
)
def test_jpeg_lossless_process_14_decodes_exactly(tmp_path, syntax, predictor, bits):
    """.70 (first-order prediction) and .57 (any predictor); fixtures from the small
    encoder in tests/lossless_jpeg.py, as nothing installed encodes process 14."""
    pydicom()
    from pydicom import uid

    frames = _ultrasound_like(2, bits)
    streams = [jpeg_lossless(f, bits, predictor) for f in frames]
    ds = encapsulated(dataset(frames, bits=bits), streams, getattr(uid, syntax))
    path = save(ds, tmp_path / "lossless.dcm")
    expected = np.rint(frames * (255 / ((1 << bits) - 1)))  # 12 bits: scaled to 0..255
    np.testing.assert_array_equal(read_video(path).frames, expected)
    np.testing.assert_array_equal(read_image(path, frame=1), expected[1])


@pytest.mark.parametrize(
    ("syntax", "bits"),
    [("JPEGLSLossless", 8), ("JPEGLSLossless", 12), ("JPEGLSNearLossless", 8)],
)
def test_jpeg_ls_decodes_exactly(tmp_path, syntax, bits):
    """.80, and .81 carrying NEAR = 0 (near-lossless at its lossless setting); fixtures
    from tests/lossless_jpeg.py, as pydicom's JPEG-LS encoder needs pyjpegls, which
    would also take over decoding from the ``dicom`` extra's pylibjpeg-libjpeg."""
    pydicom()
    from pydicom import uid

    frames = _ultrasound_like(2, bits)
    streams = [jpeg_ls(f, bits) for f in frames]
    ds = encapsulated(dataset(frames, bits=bits), streams, getattr(uid, syntax))
    path = save(ds, tmp_path / "jpegls.dcm")
    expected = np.rint(frames * (255 / ((1 << bits) - 1)))
    np.testing.assert_array_equal(read_video(path).frames, expected)
    np.testing.assert_array_equal(read_image(path, frame=1), expected[1])


def test_jpeg_baseline_cine_decodes_like_pillow(tmp_path):
    from PIL import Image

    y, x = np.mgrid[0:32, 0:40]
    frames = np.stack([((x * 5 + y * 3 + 20 * k) % 256).astype(np.uint8) for k in range(3)])
    path = save(jpeg_baseline(dataset(frames), frames), tmp_path / "jpeg.dcm")
    ds = pydicom().dcmread(path)
    stream = next(pydicom().encaps.generate_fragmented_frames(ds.PixelData))[0]
    import io

    expected = np.asarray(Image.open(io.BytesIO(stream)))  # frame 0 as Pillow decodes it
    got = read_image(path)
    np.testing.assert_allclose(got, expected, atol=2)  # two IDCTs may differ by rounding
    assert np.abs(read_image(path, frame=2).astype(int) - frames[2]).mean() < 3


def test_decoders_for_ultrasound_syntaxes_are_installed():
    """The ``dicom`` extra covers the syntaxes ultrasound archives use (the lossless
    ones are also decoded from fixtures above; the lossy ones, bar baseline, only
    checked for a decoder)."""
    pydicom()
    from pydicom import uid
    from pydicom.pixels import get_decoder

    for name in (
        "JPEGBaseline8Bit",
        "JPEGExtended12Bit",
        "JPEGLossless",
        "JPEGLosslessSV1",
        "JPEGLSLossless",
        "JPEGLSNearLossless",
        "JPEG2000Lossless",
        "JPEG2000",
        "RLELossless",
    ):
        decoder = get_decoder(getattr(uid, name))
        assert decoder.is_available, (name, decoder.missing_dependencies)


def test_a_syntax_without_decoder_names_the_file_and_the_packages(tmp_path, monkeypatch):
    pydicom()
    from pydicom import uid
    from pydicom.pixels import get_decoder

    frames = np.zeros((2, 8, 8), np.uint8)
    path = save(jpeg_baseline(dataset(frames), frames), tmp_path / "scan.dcm")
    # As on a machine without the decoder packages (pydicom's own bookkeeping).
    decoder = get_decoder(uid.JPEGBaseline8Bit)
    monkeypatch.setattr(decoder, "_available", {})
    monkeypatch.setattr(
        decoder, "_unavailable", {"pylibjpeg": ("pylibjpeg>=2.0", "pylibjpeg-libjpeg>=2.1")}
    )
    with pytest.raises(BadInputError) as info:
        read_image(path)
    message = str(info.value)
    assert message.startswith(str(path))
    assert "no decoder installed for transfer syntax JPEG Baseline" in message
    assert "pylibjpeg-libjpeg" in message and "pip install lddm_fast[dicom]" in message

    ds = pydicom().dcmread(path)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG-2 video
    ds.save_as(tmp_path / "mpeg.dcm")
    with pytest.raises(BadInputError, match=r"mpeg.dcm: transfer syntax MPEG2 .* no DICOM pixel"):
        read_image(tmp_path / "mpeg.dcm")
