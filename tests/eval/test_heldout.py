"""The held-out quality report end to end on a small phantom set and an untrained model
(the figures are meaningless; the test checks what is measured against what)."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from lddm_fast.eval.heldout import heldout_sets, main
from lddm_fast.eval.motion import intensity_motion
from lddm_fast.models import build_models, save_pretrained
from lddm_fast.models.config import preset


@pytest.fixture(scope="module")
def dataset(make_phantom):
    return make_phantom("heldout", size=32, frames=17, fractions=(0.0, 0.0, 1.0))


def test_heldout_sets_are_disjoint_class_balanced_and_carry_lesion_masks(dataset):
    a, b = heldout_sets(dataset, 4)
    assert {it["path"] for it in a}.isdisjoint(it["path"] for it in b)
    assert sorted(it["label"] for it in a) == [0, 0, 1, 1] == sorted(it["label"] for it in b)
    for it in a + b:
        assert it["video"].shape == (1, 17, 32, 32) and it["mask"].any()
    with pytest.raises(ValueError, match="test clips"):
        heldout_sets(dataset, 8)


@pytest.mark.slow
def test_report_measures_each_bar_against_its_reference(dataset, tmp_path):
    config = dataclasses.replace(
        preset("tiny"),
        num_frames=16,
        denoiser=dataclasses.replace(preset("tiny").denoiser, max_frames=16),
    )
    torch.manual_seed(0)
    save_pretrained(tmp_path / "ckpt", build_models(config))
    out = tmp_path / "report.json"
    assert (
        main(
            [
                "--data",
                str(dataset),
                "--checkpoint",
                str(tmp_path / "ckpt"),
                "--n",
                "4",
                "--fvd-n",
                "2",
                "--steps",
                "2",
                "--motion-draws",
                "2",
                "--out",
                str(out),
                "--cache",
                str(tmp_path / "cache"),
            ]
        )
        == 0
    )
    report = json.loads(out.read_text())
    assert report["n_per_set"] == 4 and report["n_per_set_fvd"] == 2
    for name in (
        "floor_real_a_vs_real_b",
        "lddm",
        "static",
        "random_warp",
        "reconstruction_b_vs_rebuilt_b",
    ):
        fvd = report["fvd"][name]
        assert math.isfinite(fvd["value"]) and fvd["n_real"] == fvd["n_fake"] == 2
    recon = report["reconstruction"]
    assert recon["psnr_gain"] == pytest.approx(recon["psnr"] - recon["psnr_x0_repeated"])
    _, b = heldout_sets(dataset, 4)
    real_change = np.mean([intensity_motion(it["video"])["x0_diff"] for it in b])
    warp = report["motion"]["random_warp"]
    warp_change = np.mean([warp[c]["x0_diff"] for c in ("benign", "malignant")])
    assert warp_change == pytest.approx(real_change, rel=0.2)  # calibrated amplitude
    assert set(report["bars"]) == {
        "1_reconstruction_psnr_gain_at_least_5db",
        "1_reconstruction_fvd_within_2x_floor",
        "2_motion_within_25pct",
        "2_strain_order_benign_above_malignant",
        "3_fvd_below_static_and_warp",
    }
    assert all(isinstance(v, bool) for v in report["bars"].values())
    # Bar 2 pools both draws of each first frame: twice the clips, the draws' mean.
    pooled, by_draw = report["motion"]["lddm"], report["motion"]["lddm_by_draw"]
    assert report["motion_draws"] == len(by_draw) == 2
    for name in ("benign", "malignant"):
        assert pooled[name]["n"] == 2 * by_draw[0][name]["n"] == 2 * by_draw[1][name]["n"] == 4
        for key in ("frame_diff", "x0_diff"):
            mean = (by_draw[0][name][key] + by_draw[1][name][key]) / 2
            assert pooled[name][key] == pytest.approx(mean)
        assert by_draw[0][name]["x0_diff"] != by_draw[1][name]["x0_diff"]  # different seeds
    assert sorted((tmp_path / "cache").iterdir())  # features cached for reruns


def test_report_refuses_zero_motion_draws(dataset, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--data", str(dataset), "--motion-draws", "0", "--out", str(tmp_path / "r.json")])
    assert "--motion-draws: must be at least 1, got 0" in capsys.readouterr().err
