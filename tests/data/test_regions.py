"""Imaging regions: the DICOM ultrasound region sequence (tissue views kept, Doppler
dropped, spacing recorded), the detected sector of a frame with burned-in text, and
the region modes' fit to the model."""

import numpy as np
import pytest
import torch
from dicom_helpers import dataset, save, speckle, us_region
from PIL import Image, ImageDraw

from lddm_fast.data.errors import BadInputError
from lddm_fast.data.regions import find_imaging_area, image_views, read_views
from lddm_fast.data.transforms import fit_image

TEXT = 255  # burned-in text and markers; the speckle stays at or below 250


def _sector_frame(height=200, width=240):
    """A fan-shaped sector of speckle (apex at the top centre) on black, with text in
    the frame's corner, text and a marker inside the sector's bounding box but outside
    the fan, and a grey calibration bar at the right edge. Returns (frame, fan mask)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    dx, dy = x - width / 2, y - 10
    radius, angle = np.hypot(dx, dy), np.degrees(np.arctan2(dx, dy))
    fan = (radius >= 30) & (radius <= 185) & (np.abs(angle) <= 35)
    frame = np.where(fan, speckle(height, width, seed=7), 0).astype(np.uint8)
    im = Image.fromarray(frame)
    draw = ImageDraw.Draw(im)
    draw.text((4, 2), "DOE^JANE 1234567", fill=TEXT)  # outside the fan's box
    draw.text((18, 40), "L12-5 14cm", fill=TEXT)  # in the box, outside the fan
    draw.rectangle((200, 180, 205, 185), fill=TEXT)  # a body marker, same
    frame = np.array(im)
    frame[40:160, 232:238] = np.linspace(0, 250, 120, dtype=np.uint8)[:, None]
    return frame, fan


def _bbox(mask):
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return cols[0], rows[0], cols[-1] + 1, rows[-1] + 1


def test_auto_crops_to_the_sector_and_blacks_out_the_text(tmp_path):
    frame, fan = _sector_frame()
    path = tmp_path / "scan.png"
    Image.fromarray(frame).save(path)
    (view,) = read_views(path, mode="auto")
    assert view.region.source == "detected"
    x0, y0, x1, y1 = view.region.box
    np.testing.assert_allclose(view.region.box, _bbox(fan), atol=2)
    assert (frame[y0:y1, x0:x1] == TEXT).any()  # text was in the box ...
    assert not (view.pixels == TEXT).any()  # ... and is gone
    kept = view.pixels[fan[y0:y1, x0:x1]] == frame[y0:y1, x0:x1][fan[y0:y1, x0:x1]]
    assert kept.mean() > 0.99  # the tissue itself is untouched
    # center and none keep the whole frame, text and all (today's behaviour).
    for mode in ("center", "none"):
        (whole,) = read_views(path, mode=mode)
        assert whole.region.box == (0, 0, 240, 200) and whole.region.source == "frame"
        np.testing.assert_array_equal(whole.pixels, frame)


def test_auto_keeps_the_whole_frame_when_no_imaging_area_is_found():
    blank = np.zeros((50, 60), np.uint8)
    blank[5:12, 5:40] = TEXT  # only a label
    assert find_imaging_area(blank) is None
    (view,) = image_views(blank, "auto")
    assert view.region.source == "frame" and view.region.box == (0, 0, 60, 50)


def _dual_view_dicom(tmp_path, with_doppler=True):
    frame = np.zeros((120, 200), np.uint8)
    frame[10:100, 5:95] = speckle(90, 90, seed=1)
    frame[10:100, 105:195] = speckle(90, 90, seed=2)
    frame[100:118, 5:195] = 200  # a Doppler strip
    ds = dataset(frame)
    regions = [
        us_region((105, 10, 195, 100), delta=(0.02, 0.02)),
        us_region((5, 10, 95, 100), delta=(0.01, 0.015)),
    ]
    if with_doppler:
        regions.append(us_region((5, 100, 195, 118), spatial=3, data_type=3, units=4))
    ds.SequenceOfUltrasoundRegions = regions
    return save(ds, tmp_path / "dual.dcm"), frame


def test_dicom_tissue_regions_become_views_and_doppler_is_dropped(tmp_path):
    path, frame = _dual_view_dicom(tmp_path)
    views = read_views(path, mode="auto")
    assert [v.region.box for v in views] == [(5, 10, 95, 100), (105, 10, 195, 100)]  # left first
    assert [v.region.source for v in views] == ["dicom", "dicom"]
    assert views[0].region.to_dict() == {
        "box": [5, 10, 95, 100],
        "source": "dicom",
        "spacing": [0.01, 0.015],
        "unit": "cm",
    }
    np.testing.assert_array_equal(views[0].pixels, frame[10:100, 5:95])
    np.testing.assert_array_equal(views[1].pixels, frame[10:100, 105:195])
    (whole,) = read_views(path, mode="center")  # regions only count for auto
    assert whole.region.box == (0, 0, 200, 120)


def test_a_region_sequence_without_tissue_is_refused_by_auto(tmp_path):
    ds = dataset(speckle(40, 50))
    ds.SequenceOfUltrasoundRegions = [us_region((0, 0, 50, 40), spatial=3, data_type=3)]
    path = save(ds, tmp_path / "doppler.dcm")
    with pytest.raises(BadInputError, match=r"doppler.dcm: its ultrasound regions .* no 2-D"):
        read_views(path, mode="auto")
    assert read_views(path, mode="center")[0].pixels.shape == (40, 50)


def test_a_dicom_without_regions_is_detected_like_a_png(tmp_path):
    frame, _ = _sector_frame()
    path = save(dataset(frame), tmp_path / "noregions.dcm")
    png = tmp_path / "same.png"
    Image.fromarray(frame).save(png)
    (from_dicom,) = read_views(path, mode="auto")
    (from_png,) = read_views(png, mode="auto")
    assert from_dicom.region == from_png.region
    np.testing.assert_array_equal(from_dicom.pixels, from_png.pixels)


def test_fit_image_pad_letterboxes_and_refuses_upscaling():
    image = torch.full((1, 40, 80), 200, dtype=torch.uint8)
    padded = fit_image(image, 32, "pad")
    assert padded.shape == (1, 32, 32)
    assert (padded[:, :8] == 0).all() and (padded[:, 24:] == 0).all()  # black bars
    assert (padded[:, 8:24] == 200).all()
    floats = fit_image(image.float() / 127.5 - 1, 32, "pad", fill=-1.0)
    assert floats[:, :8].eq(-1).all()
    with pytest.raises(ValueError, match="on its longer side"):
        fit_image(image, 96, "pad")
    with pytest.raises(ValueError, match="on both sides"):
        fit_image(image, 64)


def test_training_clips_are_cut_to_their_imaging_region(tmp_path):
    """A frame-folder video with burned-in text and a dual-view DICOM cine: with
    region="auto" every frame of a clip is cut to the same region, the text is gone,
    and a DICOM gives its left tissue region."""
    from lddm_fast.data.datasets import ClipDataset
    from lddm_fast.data.regions import clip_region

    frame, fan = _sector_frame()
    video = tmp_path / "videos" / "v1"
    video.mkdir(parents=True)
    frames = []
    for t in range(6):
        moved = np.roll(frame, t, axis=0)  # tissue and text move; the text stays outside
        moved[:14] = np.where(frame[:14] == TEXT, TEXT, 0)  # the label row stays put
        Image.fromarray(moved).save(video / f"{t:06d}.png")
        frames.append(moved)
    frames = np.stack(frames)
    cut, region = clip_region(frames, "auto")
    assert region.source == "detected"
    np.testing.assert_allclose(region.box, _bbox(fan), atol=3)
    x0, y0, x1, y1 = region.box
    assert cut.shape == (6, y1 - y0, x1 - x0) and not (cut == TEXT).any()
    same, whole = clip_region(frames, "center")
    assert same is frames and whole.source == "frame"

    cine = np.stack([_dual_view_frames(seed) for seed in range(6)])
    ds = dataset(cine)
    ds.SequenceOfUltrasoundRegions = [
        us_region((105, 10, 195, 100)),
        us_region((5, 10, 95, 100)),
        us_region((5, 100, 195, 118), spatial=3, data_type=3, units=4),
    ]
    save(ds, tmp_path / "videos" / "dual.dcm")

    kw = dict(frames=5, size=32, mode="crop", min_side=32)
    auto = ClipDataset(tmp_path / "videos", region="auto", **kw)
    center = ClipDataset(tmp_path / "videos", **kw)
    by_name = {r.path.rsplit("/", 1)[-1]: i for i, r in enumerate(auto.records)}
    clip, _ = auto[by_name["dual.dcm"]]
    expected = auto.transform(cine[:5, 10:100, 5:95])  # the left view's first 5 frames
    torch.testing.assert_close(clip, expected)
    assert not torch.equal(clip, center[by_name["dual.dcm"]][0])
    clip, _ = auto[by_name["v1"]]
    torch.testing.assert_close(clip, auto.transform(cut[:5]))
    with pytest.raises(ValueError, match="region must be one of"):
        ClipDataset(tmp_path / "videos", region="sector", **kw)


def _dual_view_frames(seed):
    frame = np.zeros((120, 200), np.uint8)
    frame[10:100, 5:95] = speckle(90, 90, seed=10 + seed)
    frame[10:100, 105:195] = speckle(90, 90, seed=20 + seed)
    frame[100:118, 5:195] = 200
    return frame
