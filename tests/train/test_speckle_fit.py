"""`python -m lddm_fast.train.speckle` end to end: a checkpoint comes back with fitted
speckle, every weight unchanged, and the pipeline draws it."""

import json

import pytest
import safetensors.torch
import torch

from lddm_fast.diffusion import LDDMPipeline
from lddm_fast.models import build_models, preset, save_pretrained
from lddm_fast.models.checkpoint import from_pretrained
from lddm_fast.train.speckle import main


def test_fit_writes_a_checkpoint_with_speckle(phantom_root, tmp_path, capsys):
    torch.manual_seed(0)
    save_pretrained(tmp_path / "ckpt", build_models(preset("tiny")))
    args = ["--checkpoint", str(tmp_path / "ckpt"), "--data", str(phantom_root)]
    assert main([*args, "--out", str(tmp_path / "out"), "--clips", "4", "--quiet"]) == 0
    captured = capsys.readouterr()
    record = json.loads(captured.out)
    fitted = from_pretrained(tmp_path / "out")
    speckle = fitted.autoencoder.speckle
    assert fitted.config.autoencoder.speckle_frames == preset("tiny").num_frames
    assert record["clips"] == 4 and 0 < record["rho"] < 1
    assert fitted.meta["speckle"]["rho"] == pytest.approx(float(speckle.rho))
    assert float(speckle.std.min()) > 0 and torch.isfinite(speckle.kernel).all()
    # Untrained, the decoder's residual is so large that even frozen speckle changes
    # the frames more than the clips change: the fit says so and keeps rho at its top.
    change = record["frame_change"]
    assert change["matched"] is False and record["rho"] > 0.99
    assert change["rebuilt_with_speckle"] > change["clips"]
    assert "no rho makes the rebuilt frames with speckle change like the clips" in captured.err
    for name in ("autoencoder.safetensors", "denoiser.safetensors"):
        old = safetensors.torch.load_file(tmp_path / "ckpt" / name)
        new = safetensors.torch.load_file(tmp_path / "out" / name)
        added = sorted(set(new) - set(old))
        assert added == (["speckle.kernel", "speckle.rho", "speckle.std"] if "auto" in name else [])
        assert all(torch.equal(old[k], new[k]) for k in old)
    videos = LDDMPipeline.from_pretrained(tmp_path / "out")(
        torch.rand(2, 1, 32, 32), steps=2, seed=0, output="float"
    ).videos
    assert videos.shape == (2, 1, preset("tiny").num_frames + 1, 32, 32)
    assert torch.isfinite(videos).all()


@pytest.mark.parametrize(
    "bad,message",
    [
        (["--clips", "0"], "must be at least 1"),
        (["--dynamic-range-db", "0"], "must be positive"),
        (["--anatomy-sigma", "-0.5"], "must be a finite number >= 0"),
        (["--anatomy-sigma", "nan"], "must be a finite number >= 0"),
        (["--model", "gaussian"], "invalid choice"),
    ],
)
def test_bad_arguments_are_named(phantom_root, capsys, bad, message):
    with pytest.raises(SystemExit):
        main(["--checkpoint", "x", "--data", str(phantom_root), "--out", "y", *bad])
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("model", ["scatterers", "retrieved"])
def test_fit_scatterers_writes_a_checkpoint_the_pipeline_draws(
    phantom_root, tmp_path, capsys, model
):
    import dataclasses

    config = preset("tiny")
    config = dataclasses.replace(
        config, autoencoder=dataclasses.replace(config.autoencoder, warp=True)
    )
    torch.manual_seed(0)
    save_pretrained(tmp_path / "ckpt", build_models(config))
    args = ["--checkpoint", str(tmp_path / "ckpt"), "--data", str(phantom_root)]
    out = ["--out", str(tmp_path / "out"), "--clips", "4", "--quiet", "--model", model]
    assert main([*args, *out]) == 0
    record = json.loads(capsys.readouterr().out)
    fitted = from_pretrained(tmp_path / "out")
    assert fitted.config.autoencoder.speckle_model == model
    assert fitted.autoencoder.speckle.retrieve == (model == "retrieved")
    assert fitted.config.autoencoder.speckle_frames == config.num_frames
    speckle = fitted.autoencoder.speckle
    # The display range is the phantom's, read from its dataset.json.
    manifest = json.loads((phantom_root / "dataset.json").read_text())
    assert float(speckle.dynamic_range_db) == manifest["config"]["dynamic_range_db"]
    assert record["model"] == model and record["clips"] == 4
    assert fitted.meta["speckle"]["rho"] == pytest.approx(float(speckle.rho))
    assert 0.2 < float(speckle.axial_sigma) < 3 and 0.2 < float(speckle.lateral_sigma) < 3
    old = safetensors.torch.load_file(tmp_path / "ckpt" / "autoencoder.safetensors")
    new = safetensors.torch.load_file(tmp_path / "out" / "autoencoder.safetensors")
    assert sorted(set(new) - set(old)) == [
        f"speckle.{n}"
        for n in ("anatomy_sigma", "axial_sigma", "dynamic_range_db", "lateral_sigma", "rho")
    ]
    assert all(torch.equal(old[k], new[k]) for k in old)
    videos = LDDMPipeline.from_pretrained(tmp_path / "out")(
        torch.rand(2, 1, 32, 32), steps=2, seed=0, output="float"
    ).videos
    assert videos.shape == (2, 1, config.num_frames + 1, 32, 32)
    assert torch.isfinite(videos).all()


@pytest.mark.parametrize("model", ["scatterers", "retrieved"])
def test_fit_scatterers_needs_a_warping_decoder(phantom_root, tmp_path, capsys, model):
    torch.manual_seed(0)
    save_pretrained(tmp_path / "ckpt", build_models(preset("tiny")))
    args = ["--checkpoint", str(tmp_path / "ckpt"), "--data", str(phantom_root)]
    with pytest.raises(SystemExit):
        main([*args, "--out", str(tmp_path / "out"), "--model", model, "--quiet"])
    err = capsys.readouterr().err
    assert f"--model {model}:" in err and "has no warp" in err
