"""The pipeline takes file paths (DICOM too) and ``region=`` exactly as ``synthesize``
fits the same file: one fitting rule for both entry points."""

import numpy as np
import pytest
import torch
from dicom_helpers import dataset, save, speckle, us_region

from lddm_fast import LDDMPipeline
from lddm_fast.diffusion.noise import video_seed
from lddm_fast.synth.engine import load_views


@pytest.fixture(scope="module")
def pipe():
    return LDDMPipeline.from_preset("tiny", device="cpu")


def _dual(tmp_path):
    frame = np.zeros((60, 100), np.uint8)
    frame[5:45, 5:45], frame[5:45, 55:95] = speckle(40, 40, seed=1), speckle(40, 40, seed=2)
    ds = dataset(np.stack([frame, 255 - frame]))  # a two-frame cine
    ds.SequenceOfUltrasoundRegions = [us_region((55, 5, 95, 45)), us_region((5, 5, 45, 45))]
    return str(save(ds, tmp_path / "dual.dcm"))


@pytest.mark.parametrize("region", ["auto", "center", "none"])
def test_a_dicom_path_is_fitted_like_synthesize_fits_it(pipe, tmp_path, region):
    path = _dual(tmp_path)
    x0 = pipe.preprocess([path], region=region, frame=1)
    views = load_views(path, 32, 1, region=region, frame=1)
    assert x0.shape == (len(views), 1, 32, 32)
    for row, (image, _) in zip(x0, views, strict=True):
        torch.testing.assert_close(row, image.float() / 127.5 - 1)
    if region == "auto":  # both tissue views of the dual view, left to right
        assert [list(box.box) for _, box in views] == [[5, 5, 45, 45], [55, 5, 95, 45]]
    else:
        assert len(views) == 1


def test_each_view_of_a_dual_view_is_a_video_of_its_own(pipe, tmp_path):
    """[image, dual view, image] under auto: four videos, in order, each x0 the view
    synthesize would animate, and ``sources`` saying which image and view."""
    dual = _dual(tmp_path)
    single = speckle(40, 48, seed=5)
    images = [single, dual, single[:, ::-1].copy()]
    out = pipe(images, num_frames=2, steps=1, region="auto", seed=3)
    assert out.videos.shape == (4, 1, 3, 32, 32)
    assert out.sources == [(0, 0), (1, 0), (1, 1), (2, 0)]
    views = [view for view, _ in load_views(dual, 32, 1, region="auto")]
    torch.testing.assert_close(out.videos[1:3, :, 0], torch.stack(views))
    # The views' videos are those of the file alone, given the same seeds.
    seeds = [video_seed(3, 1), video_seed(3, 2)]
    alone = pipe([dual], num_frames=2, steps=1, region="auto", seed=seeds)
    assert alone.sources == [(0, 0), (0, 1)]
    torch.testing.assert_close(alone.videos, out.videos[1:3])
    with pytest.raises(
        ValueError, match=r"seed has 3 entries for 4 videos \(the views of 3 images\)"
    ):
        pipe(images, num_frames=2, steps=1, region="auto", seed=[1, 2, 3])
    center = pipe(images, num_frames=2, steps=1, seed=3)  # center: one video per image
    assert center.videos.shape[0] == 3 and center.sources == [(0, 0), (1, 0), (2, 0)]


def test_region_auto_on_arrays_and_tensors(pipe):
    frame = np.zeros((80, 90), np.uint8)
    frame[10:70, 20:80] = speckle(60, 60, seed=3)
    frame[0:6, 0:40] = 255  # a label outside the image area
    from_list = pipe.preprocess([frame], region="auto")
    from_tensor = pipe.preprocess(torch.from_numpy(frame)[None, None], region="auto")
    torch.testing.assert_close(from_list, from_tensor)
    expected = pipe.preprocess([frame[10:70, 20:80]])
    torch.testing.assert_close(from_list, expected)
    with pytest.raises(ValueError, match="region='auto' finds the imaging area in 8-bit"):
        pipe.preprocess(torch.zeros(1, 1, 40, 40), region="auto")
    with pytest.raises(ValueError, match="region must be one of"):
        pipe.preprocess([frame], region="sector")
