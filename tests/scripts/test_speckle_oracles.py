"""scripts/speckle_oracles.py re-runs the phantom's imaging chain; its ``phantom`` model
must give the clip's own bytes, or its other models measure a different chain."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from lddm_fast.data.phantom import PhantomConfig, simulate_clip

_PATH = Path(__file__).resolve().parents[2] / "scripts" / "speckle_oracles.py"
_spec = importlib.util.spec_from_file_location("speckle_oracles", _PATH)
oracles = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(oracles)

CONFIG = PhantomConfig(size=24, frames=4)


@pytest.mark.parametrize("label,seed", [("benign", 3), ("malignant", 11), ("normal", 5)])
def test_phantom_model_gives_the_clips_own_frames(label, seed):
    frames = oracles.reimage_clip(label, seed, CONFIG, "phantom", fresh_seed=99)
    np.testing.assert_array_equal(frames, simulate_clip(label, seed, CONFIG).frames)


def test_frozen_elevation_keeps_frame_0_and_the_speckle_of_a_still_clip():
    frozen = oracles.reimage_clip("benign", 3, CONFIG, "frozen_elevation", fresh_seed=99)
    real = simulate_clip("benign", 3, CONFIG).frames
    np.testing.assert_array_equal(frozen[0], real[0])
    assert (frozen[1:] != real[1:]).any()  # the elevation drift is gone from frames 1..


@pytest.mark.parametrize("model", ["fresh", "before_psf", "after_psf"])
def test_other_models_keep_the_anatomy_and_change_the_speckle(model):
    real = simulate_clip("benign", 3, CONFIG).frames.astype(float)
    other = oracles.reimage_clip("benign", 3, CONFIG, model, fresh_seed=99).astype(float)
    again = oracles.reimage_clip("benign", 3, CONFIG, model, fresh_seed=99)
    np.testing.assert_array_equal(again, other.astype(np.uint8))  # seeded
    # Speckle differs pixel by pixel, but the same scene at the same gain: the frames'
    # mean gray levels agree within a few levels, their pixels correlate only weakly.
    assert abs(other.mean() - real.mean()) < 8
    corr = np.corrcoef(other.ravel(), real.ravel())[0, 1]
    assert corr < 0.8, corr


def test_unknown_model_is_refused():
    with pytest.raises(ValueError, match="model must be one of"):
        oracles.reimage_clip("benign", 3, CONFIG, "warp", fresh_seed=1)
