"""Image decoding: what is converted, what is refused, and that errors name the file."""

import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from lddm_fast.data.errors import BadInputError
from lddm_fast.data.images import image_info, read_image, write_png


def _png(tmp_path, name, image):
    path = tmp_path / name
    image.save(path)
    return path


def _gradient(height=24, width=32):
    return (np.arange(height * width).reshape(height, width) % 251).astype(np.uint8)


def _png_header_only(path, width, height):
    # A PNG whose IHDR claims a size but carries no pixel data.
    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def test_gray_png_is_read_exactly(tmp_path):
    pixels = _gradient()
    path = _png(tmp_path, "g.png", Image.fromarray(pixels))
    out = read_image(path)
    assert out.dtype == np.uint8 and out.shape == (24, 32)
    np.testing.assert_array_equal(out, pixels)
    assert out.flags.writeable
    rgb = read_image(path, channels=3)
    assert rgb.shape == (24, 32, 3)
    np.testing.assert_array_equal(rgb[..., 1], pixels)


def test_rgba_is_composited_on_black(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:2, :, 3] = 255  # opaque top half
    rgba[2:, :, 3] = 0  # transparent bottom half
    out = read_image(_png(tmp_path, "a.png", Image.fromarray(rgba)))
    assert (out[:2] == 200).all()
    assert (out[2:] == 0).all()


def test_palette_and_cmyk_become_luma(tmp_path):
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[:4] = (255, 0, 0)
    rgb[4:] = (0, 0, 255)
    palette = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    out = read_image(_png(tmp_path, "p.png", palette))
    # ITU-R 601 luma: red 0.299 * 255 = 76, blue 0.114 * 255 = 29.
    assert (out[:4] == 76).all() and (out[4:] == 29).all()
    cmyk = Image.fromarray(rgb).convert("CMYK")
    path = tmp_path / "c.tif"
    cmyk.save(path)
    np.testing.assert_array_equal(read_image(path), np.asarray(cmyk.convert("RGB").convert("L")))


@pytest.mark.parametrize(
    ("maximum", "full_scale"),
    [(4095, 4095), (65535, 65535), (200, 255), (1000, 1023)],
)
def test_16bit_png_scales_by_power_of_two_full_scale(tmp_path, maximum, full_scale):
    values = np.linspace(0, maximum, 64).round().astype(np.uint16).reshape(8, 8)
    path = _png(tmp_path, "d.png", Image.fromarray(values))
    with Image.open(path) as image:
        assert image.mode.startswith("I")
    out = read_image(path)
    expected = np.rint(values.astype(np.float64) * 255 / full_scale).astype(np.uint8)
    np.testing.assert_allclose(out, expected, atol=1)
    assert out.max() == round(maximum * 255 / full_scale)


def test_float_and_out_of_range_integer_images_are_refused(tmp_path):
    path = tmp_path / "f.tif"
    Image.fromarray(np.ones((4, 4), np.float32)).save(path)
    with pytest.raises(BadInputError, match="floating-point"):
        read_image(path)
    path = tmp_path / "i.tif"
    Image.fromarray(np.full((4, 4), -5, np.int32)).save(path)
    with pytest.raises(BadInputError, match="outside 0..65535"):
        read_image(path)


def test_bad_files_name_the_file_and_reason(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    junk = tmp_path / "junk.png"
    junk.write_bytes(os.urandom(300))
    good = _png(tmp_path, "good.png", Image.fromarray(_gradient(64, 64) * 0 + np.uint8(7)))
    data = good.read_bytes()
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(data[: len(data) // 2])
    cases = {
        empty: "empty file",
        junk: "not a recognised image",
        truncated: "cannot decode",
        tmp_path / "missing.png": "not found",
        tmp_path: "is a folder",
    }
    for path, reason in cases.items():
        with pytest.raises(BadInputError, match=reason) as info:
            read_image(path)
        assert info.value.path == os.fspath(path)
        assert isinstance(info.value, ValueError)
        assert str(path) in str(info.value)


def test_truncated_png_has_a_readable_header(tmp_path):
    data = _png(tmp_path, "t.png", Image.fromarray(_gradient(64, 64))).read_bytes()
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    assert image_info(path).width == 64  # header fine: only decoding finds the damage
    with pytest.raises(BadInputError, match="truncated|cannot decode"):
        read_image(path)


def test_huge_image_is_refused_before_decoding(tmp_path):
    # 8000 x 8000 pixels claimed by a 57-byte file: above MAX_PIXELS (2**25).
    path = _png_header_only(tmp_path / "big.png", 8000, 8000)
    assert path.stat().st_size < 100
    with pytest.raises(BadInputError, match="too large: 8000x8000 = 64000000 pixels"):
        image_info(path)
    with pytest.raises(BadInputError, match="too large: 8000x8000"):
        read_image(path)
    # 10^10 pixels: Pillow's own bomb guard answers first, still before decoding.
    path = _png_header_only(tmp_path / "huge.png", 100_000, 100_000)
    with pytest.raises(BadInputError, match="too large"):
        read_image(path)
    small = _png(tmp_path, "s.png", Image.fromarray(_gradient(40, 40)))
    with pytest.raises(BadInputError, match="exceeds the limit of 1000"):
        read_image(small, max_pixels=1000)


def test_tiny_image_is_refused_below_min_side(tmp_path):
    path = _png(tmp_path, "tiny.png", Image.fromarray(_gradient(8, 40)))
    assert read_image(path, min_side=8).shape == (8, 40)
    with pytest.raises(BadInputError, match="too small: 40x8"):
        read_image(path, min_side=64)


def test_write_png_is_atomic_and_leaves_no_temporaries(tmp_path, monkeypatch):
    path = tmp_path / "out" / "x.png"
    pixels = _gradient()
    write_png(path, pixels)
    np.testing.assert_array_equal(read_image(path), pixels)

    def failing_save(self, fp, *args, **kwargs):
        with open(fp, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        write_png(path, 255 - pixels)
    monkeypatch.undo()
    np.testing.assert_array_equal(read_image(path), pixels)  # the old file is intact
    assert os.listdir(tmp_path / "out") == ["x.png"]
