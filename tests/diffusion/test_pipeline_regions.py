"""The pipeline takes file paths (DICOM too) and ``region=`` exactly as ``synthesize``
fits the same file: one fitting rule for both entry points."""

import numpy as np
import pytest
import torch
from dicom_helpers import dataset, save, speckle, us_region

from lddm_fast import LDDMPipeline
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
    (image, box), *_ = load_views(path, 32, 1, region=region, frame=1)
    torch.testing.assert_close(x0[0], image.float() / 127.5 - 1)
    if region == "auto":  # the left tissue view of the dual view
        assert list(box.box) == [5, 5, 45, 45]


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
