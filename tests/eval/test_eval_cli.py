"""compute_metrics and `lddm-fast eval` on tiny generated folders of videos."""

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from lddm_fast.cli import main
from lddm_fast.data.video_io import write_video
from lddm_fast.eval.metrics import compute_metrics


@pytest.fixture
def folders(tmp_path, make_video):
    real, fake = tmp_path / "real", tmp_path / "fake"
    for i in range(4):
        video = make_video(i)
        write_video(real / f"v{i}.npz", video)
        noise = np.random.default_rng(10 + i).integers(-9, 10, video.shape)
        write_video(fake / f"v{i}.npz", np.clip(video + noise, 0, 255).astype(np.uint8))
    write_video(fake / "only_fake.npz", make_video(9))
    write_video(real / "short.npz", make_video(5, frames=8))  # fewer than 16 frames
    (real / "broken.npz").write_bytes(b"not a zip file")
    (real / "notes.txt").write_text("not a video")
    return real, fake


def test_cli_end_to_end(folders, tiny_i3d, tmp_path, capsys):
    real, fake = folders
    out = tmp_path / "results" / "eval.json"
    code = main(
        [
            "eval",
            "--real",
            str(real),
            "--fake",
            str(fake),
            "--i3d-weights",
            str(tiny_i3d),
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    captured = capsys.readouterr()
    record = json.loads(out.read_text())
    assert (record["n_real"], record["n_fake"], record["pairs"]) == (4, 5, 4)
    skipped = {s["path"].split("/")[-1]: s["reason"] for s in record["skipped"]}
    assert set(skipped) == {"short.npz", "broken.npz"}
    assert "8 frames" in skipped["short.npz"] and "npz" in skipped["broken.npz"]
    assert "skipped" in captured.err and "short.npz" in captured.err
    assert record["unpaired_fake"] == ["only_fake"]

    metrics = record["metrics"]
    fvd = metrics["fvd"]
    assert fvd["value"] > 0 and (fvd["n_real"], fvd["n_fake"], fvd["dim"]) == (4, 5, 8)
    sha = hashlib.sha256(tiny_i3d.read_bytes()).hexdigest()
    assert fvd["weights"][0]["sha256"] == sha and record["weights"][str(tiny_i3d)] == sha
    assert metrics["dtfvd"]["available"] is False
    assert "--dtfvd-weights" in metrics["dtfvd"]["reason"]
    assert metrics["lpips"]["available"] is False
    assert "--lpips-backbone" in metrics["lpips"]["reason"]
    assert set(metrics["psnr"]["per_clip"]) == {"v0", "v1", "v2", "v3"}
    assert 25 < metrics["psnr"]["value"] < 40 and metrics["psnr"]["n"] == 4
    assert len(metrics["psnr"]["per_frame"]) == 16 == len(metrics["ssim"]["per_frame"])
    assert 0 < metrics["ssim"]["value"] < 1
    table = (tmp_path / "results" / "eval.md").read_text()
    assert "| FVD |" in table and "4 real / 5 fake" in table and "unavailable" in table
    assert "| FVD |" in captured.out


def test_cli_identical_folders_write_inf_psnr_as_a_string(folders, tmp_path):
    real, _ = folders
    code = main(
        [
            "eval",
            "--real",
            str(real),
            "--fake",
            str(real),
            "--metrics",
            "psnr,ssim",
            "--out",
            str(tmp_path / "same"),
            "--quiet",
        ]
    )
    assert code == 0
    record = json.loads((tmp_path / "same" / "results.json").read_text())
    assert record["metrics"]["psnr"]["value"] == "inf"
    assert record["metrics"]["ssim"]["value"] == pytest.approx(1.0)
    assert "fvd" not in record["metrics"]


def test_cli_exits_non_zero_when_nothing_is_measured(tmp_path, capsys, make_video):
    real, fake = tmp_path / "real", tmp_path / "fake"
    real.mkdir(), fake.mkdir()
    (real / "broken.npz").write_bytes(b"")
    write_video(fake / "a.npz", make_video(0))
    assert main(["eval", "--real", str(real), "--fake", str(fake), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "empty file" in err and "no metric could be measured" in err


def test_compute_metrics_on_tensors_reports_unavailable_reasons():
    gen = torch.Generator().manual_seed(0)
    real = torch.rand(3, 1, 16, 20, 20, generator=gen) * 2 - 1
    fake = (real + 0.05 * torch.randn(real.shape, generator=gen)).clamp(-1, 1)
    out = compute_metrics(real, fake, ["dtfvd", "lpips", "psnr", "ssim"])
    assert list(out) == ["dtfvd", "lpips", "psnr", "ssim"]
    assert "no other network is substituted" in out["dtfvd"]["reason"]
    assert "--lpips-backbone" in out["lpips"]["reason"]
    assert out["psnr"]["n"] == 3 and len(out["psnr"]["per_clip"]) == 3
    # Noise of std 0.05 on [-1, 1] is 0.025 on [0, 1]: about 32 dB.
    assert 30 < out["psnr"]["value"] < 34
    # One identical pair: its PSNR is inf, so is the mean (no std); the per-frame
    # curve pools squared errors over pairs and stays finite.
    same_first = torch.cat([real[:1], fake[1:]])
    psnr = compute_metrics(real, same_first, ["psnr"])["psnr"]
    assert psnr["per_clip"][0] == float("inf") and psnr["value"] == float("inf")
    assert psnr["std"] is None and np.isfinite(psnr["per_frame"]).all()
    short = compute_metrics(real[:, :, :8], fake[:, :, :8], ["fvd", "psnr"])
    assert "16-frame clips; the shortest clip has 8" in short["fvd"]["reason"]
    unpaired = compute_metrics(real, fake[:2], ["ssim"])
    assert "as many real as fake clips (3 vs 2)" in unpaired["ssim"]["reason"]
    with pytest.raises(ValueError, match="unknown metrics"):
        compute_metrics(real, fake, ["fid"])


def test_fvd_needs_two_clips_per_side():
    clips = torch.zeros(1, 1, 16, 8, 8, dtype=torch.uint8)
    out = compute_metrics(clips, torch.cat([clips, clips]), ["fvd"])
    assert "at least 2 clips per side (1 real, 2 fake)" in out["fvd"]["reason"]


def test_public_names_resolve_and_the_parser_stays_light():
    import lddm_fast.eval as ev

    for name in ev.__all__:
        assert getattr(ev, name) is not None, name
    # Building the CLI parser imports lddm_fast.eval.cli, which must leave the
    # networks and video decoding to run().
    code = (
        "import sys; from lddm_fast.cli import build_parser; build_parser(); "
        "heavy = [m for m in ('lddm_fast.eval.i3d', 'lddm_fast.eval.metrics', 'av') "
        "if m in sys.modules]; print(heavy); sys.exit(bool(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dtfvd_with_an_18_class_state_dict(tmp_path):
    # The DT-FVD path end to end with random weights in the layout of the cINN
    # checkpoint; the same file is refused for FVD (not the 400 Kinetics logits).
    from lddm_fast.eval.i3d import I3D

    torch.manual_seed(0)
    path = tmp_path / "I3D_16.pth.tar"
    torch.save({"state_dict": I3D(num_classes=18, bn_eps=1e-5, bn_scale=True).state_dict()}, path)
    gen = torch.Generator().manual_seed(1)
    real = torch.randint(0, 256, (2, 1, 16, 20, 24), generator=gen, dtype=torch.uint8)
    fake = torch.randint(0, 256, (2, 1, 16, 20, 24), generator=gen, dtype=torch.uint8)
    out = compute_metrics(real, fake, ["fvd", "dtfvd"], i3d_weights=path, dtfvd_weights=path)
    assert "400 Kinetics logits; this I3D has 18 classes" in out["fvd"]["reason"]
    dtfvd = out["dtfvd"]
    assert (dtfvd["n_real"], dtfvd["n_fake"], dtfvd["dim"]) == (2, 2, 1024)
    assert np.isfinite(dtfvd["value"]) and dtfvd["value"] > 0
    assert dtfvd["weights"][0]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
