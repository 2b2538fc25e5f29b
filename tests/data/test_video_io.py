"""Video read/write round trips, atomic writes, bad video files, contact sheets."""

import os

import numpy as np
import pytest
import torch

from lddm_fast.data.contact_sheet import contact_sheet
from lddm_fast.data.errors import BadInputError
from lddm_fast.data.images import read_image
from lddm_fast.data.video_io import (
    probe_video,
    read_video,
    tensor_to_frames,
    to_uint8,
    write_video,
)

av = pytest.importorskip("av", reason="PyAV (the 'av' package) is needed for mp4 I/O")


def _moving_pattern(frames=9, height=32, width=48, rgb=False):
    # Smooth content moving one pixel per frame: what H.264 is built for.
    yy, xx = np.mgrid[0:height, 0:width]
    video = np.stack(
        [(np.sin((xx + 2 * t) / 5) * np.cos(yy / 7) * 90 + 128) for t in range(frames)]
    ).astype(np.uint8)
    if rgb:
        video = np.stack((video, 255 - video, video // 2), axis=-1)
    return video


@pytest.mark.parametrize("name", ["clip.gif", "clip.npz", "clip_frames"])
def test_lossless_formats_round_trip_exactly(tmp_path, name):
    frames = _moving_pattern()
    frames[4] = frames[3]  # GIF writers merge identical frames; the count must survive
    path = tmp_path / name
    write_video(path, frames, fps=12.5)
    video = read_video(path)
    np.testing.assert_array_equal(video.frames, frames)
    assert video.fps == (None if name == "clip_frames" else 12.5)
    assert probe_video(path)[:3] == (9, 48, 32)


@pytest.mark.parametrize("name", ["clip.mp4", "clip.mov", "clip.mkv"])
def test_h264_round_trip_is_close(tmp_path, name):
    frames = _moving_pattern()
    write_video(tmp_path / name, frames, fps=10)
    video = read_video(tmp_path / name)
    assert video.frames.shape == frames.shape and video.fps == 10
    error = np.abs(video.frames.astype(int) - frames)
    assert error.mean() < 2.0 and error.max() < 16
    with av.open(str(tmp_path / name)) as container:
        assert container.streams.video[0].codec_context.name == "h264"


@pytest.mark.parametrize("name", ["c.mp4", "c.npz", "c_frames", "c.gif"])
def test_rgb_round_trip_and_channel_conversion(tmp_path, name):
    frames = _moving_pattern(rgb=True)
    write_video(tmp_path / name, frames, fps=10)
    rgb = read_video(tmp_path / name, channels=3).frames
    gray = read_video(tmp_path / name, channels=1).frames
    assert rgb.shape == frames.shape and gray.shape == frames.shape[:3]
    # H.264 4:2:0 halves the colour resolution; GIF quantizes to 256 colours.
    tolerance = {"c.mp4": 6.0, "c.gif": 12.0}.get(name, 0.0)
    assert np.abs(rgb.astype(int) - frames).mean() <= tolerance
    luma = frames.astype(np.float64) @ [0.299, 0.587, 0.114]
    assert np.abs(gray - luma).mean() <= tolerance + 1.0


@pytest.mark.parametrize("name", ["p.mp4", "p.npz", "p_frames", "p.gif"])
def test_partial_read_returns_the_asked_range(tmp_path, name):
    frames = _moving_pattern(frames=12)
    write_video(tmp_path / name, frames, fps=10)
    part = read_video(tmp_path / name, start=3, stop=7).frames
    full = read_video(tmp_path / name).frames
    np.testing.assert_array_equal(part, full[3:7])
    with pytest.raises(BadInputError, match="frame 19 was asked for"):
        read_video(tmp_path / name, start=3, stop=20)


def test_avi_from_another_encoder_is_read(tmp_path):
    frames = _moving_pattern()
    path = tmp_path / "other.avi"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="gray")))
        container.mux(stream.encode())
    assert probe_video(path).frames == 9
    video = read_video(path)
    assert video.frames.shape == frames.shape and video.fps == 25
    assert np.abs(video.frames.astype(int) - frames).mean() < 6


def test_odd_size_mp4_is_refused_and_leaves_the_old_file(tmp_path):
    path = tmp_path / "v.mp4"
    write_video(path, _moving_pattern(), fps=10)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="even width and height, got 47x32"):
        write_video(path, _moving_pattern(width=47), fps=10)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["v.mp4"]


def test_png_sequence_overwrite_replaces_the_whole_folder(tmp_path):
    path = tmp_path / "seq"
    write_video(path, _moving_pattern(frames=9), fps=10)
    write_video(path, _moving_pattern(frames=4), fps=10)
    assert sorted(os.listdir(path)) == [f"{i:06d}.png" for i in range(4)]
    assert os.listdir(tmp_path) == ["seq"]  # no temporary or old folder left


@pytest.mark.parametrize("name", ["v.mp4", "v.gif", "v.npz", "v.avi"])
def test_empty_junk_and_truncated_videos_raise_with_the_path(tmp_path, name):
    good = tmp_path / f"good{os.path.splitext(name)[1]}"
    if name.endswith(".avi"):
        good = tmp_path / "good.mp4"
    write_video(good, _moving_pattern(frames=12), fps=10)
    data = good.read_bytes()
    cases = {
        b"": "empty file",
        os.urandom(2000): "cannot|not a recognised",
        data[: len(data) // 3]: "cannot|frames",
    }
    for content, reason in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(BadInputError, match=reason) as info:
            read_video(path)
        assert info.value.path == os.fspath(path)


def test_npz_without_uint8_frames_is_refused(tmp_path):
    np.savez(tmp_path / "a.npz", video=np.zeros((3, 4, 4), np.uint8))
    with pytest.raises(BadInputError, match="no 'frames' array"):
        read_video(tmp_path / "a.npz")
    np.savez(tmp_path / "b.npz", frames=np.zeros((3, 4, 4), np.float32))
    with pytest.raises(BadInputError, match="must be uint8"):
        read_video(tmp_path / "b.npz")


def test_png_sequence_problems_name_the_frame(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BadInputError, match="no image frames"):
        read_video(empty)
    seq = tmp_path / "seq"
    write_video(seq, _moving_pattern(frames=5), fps=10)
    (seq / "000002.png").write_bytes(b"not a png")
    with pytest.raises(BadInputError, match="000002.png"):
        read_video(seq)
    write_video(seq, _moving_pattern(frames=5), fps=10)
    from PIL import Image

    Image.fromarray(np.zeros((10, 10), np.uint8)).save(seq / "000003.png")
    with pytest.raises(BadInputError, match="000003.png: frame size 10x10 differs"):
        read_video(seq)


def test_size_limits_refuse_before_decoding(tmp_path):
    path = tmp_path / "v.mp4"
    write_video(path, _moving_pattern(frames=12), fps=10)
    with pytest.raises(BadInputError, match="frames too large"):
        read_video(path, max_pixels=1000)
    with pytest.raises(BadInputError, match="video too large"):
        read_video(path, max_total_pixels=5 * 48 * 32)
    assert len(read_video(path, stop=4, max_total_pixels=5 * 48 * 32).frames) == 4


def test_float_frames_and_model_tensors_convert_to_uint8():
    frames = np.array([[[-1.0, 0.0, 1.0, 2.0]]], np.float32)
    np.testing.assert_array_equal(to_uint8(frames), [[[0, 128, 255, 255]]])
    video = torch.linspace(-1, 1, 3 * 5 * 4 * 6).reshape(3, 5, 4, 6)
    out = tensor_to_frames(video)
    assert out.shape == (5, 4, 6, 3) and out.dtype == np.uint8
    assert out[0, 0, 0, 0] == 0 and out[-1, -1, -1, -1] == 255
    with pytest.raises(ValueError, match="expected uint8 or floating"):
        to_uint8(np.zeros((2, 4, 4), np.int32))
    with pytest.raises(ValueError, match="shape"):
        to_uint8(np.zeros((4, 4), np.uint8))


def test_contact_sheet_lays_out_frames_by_row(tmp_path):
    a = np.stack([np.full((8, 10), 10 * t, np.uint8) for t in range(5)])
    b = np.stack([np.full((16, 20), 200, np.uint8)] * 3)  # other size: resized
    sheet = contact_sheet([a, b], tmp_path / "sheet.png", columns=3, gap=2)
    assert sheet.shape == (2 * 8 + 2, 3 * 10 + 2 * 2)
    assert [sheet[0, col * 12] for col in range(3)] == [0, 20, 40]  # frames 0, 2, 4
    assert (sheet[10:, :10] == 200).all()
    assert (sheet[8:10] == 0).all()  # the gap row
    np.testing.assert_array_equal(read_image(tmp_path / "sheet.png"), sheet)
