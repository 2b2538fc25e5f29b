"""`lddm-fast study` end to end on a tiny set (tiny preset, 2 seeds, a few steps):
the report's structure, and a rerun that skips every finished run."""

import json

import pytest

from lddm_fast.cli import main
from lddm_fast.data.phantom import PhantomConfig
from lddm_fast.data.phantom_writer import write_phantom_dataset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def study_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    config = PhantomConfig(size=32, frames=9)
    counts = {"benign": 4, "malignant": 4, "normal": 0}
    write_phantom_dataset(
        root / "real", counts, config=config, layouts=("busv",), fractions=(0.5, 0.25, 0.25)
    )
    images = {"benign": 3, "malignant": 3, "normal": 1}  # normal images are left out
    write_phantom_dataset(root / "img", images, config=config, layouts=("busi",), seed=1)
    return root


def _study(data, out, *extra):
    return main(
        [
            "study",
            "--real-videos", str(data / "real"),
            "--images", str(data / "img" / "busi"),
            "--preset", "tiny",
            "--out", str(out),
            "--fractions", "0.5,1",
            "--seeds", "2",
            "--steps", "2",
            "--eval-every", "1",
            "--synth-steps", "2",
            "--quiet",
            *extra,
        ]
    )  # fmt: skip


def test_study_end_to_end_and_resume(study_data, tmp_path, capsys):
    out = tmp_path / "study"
    assert _study(study_data, out) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["arms"] == ["real", "real+lddm", "real+static", "real+warp"]
    assert len(results["runs"]) == 2 * 2 * 4 and results["runs_skipped_as_done"] == 0
    assert results["data"]["real"]["train"] == 4 and results["data"]["real"]["test"] == 2
    assert results["data"]["images"]["count"] == 6  # benign + malignant only
    for name in ("lddm", "static", "warp"):
        assert results["synthetic"][name]["videos"] == 6
        assert len(results["synthetic"][name]["sha256"]) == 64
    assert results["synthetic"]["lddm"]["engine"]["done"] == 6
    assert "I3D embedding takes 16" in results["fvd_note"]  # the tiny preset makes 5 frames
    for run in results["runs"]:
        assert set(run["test"]) == {"accuracy", "balanced_accuracy", "auc", "f1"}
        assert run["steps_run"] <= 2
    assert results["paired"]["real+lddm"]["0.5"]["auc"]["n"] == 2
    text = (out / "report.md").read_text()
    for part in ("## auc", "## Paired comparison with real only", "## Verdict", "## Settings"):
        assert part in text
    assert "| 0.5 (2 videos) |" in text and results["verdict"] in text
    assert (out / "auc_vs_fraction.png").stat().st_size > 1000

    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "runs").iterdir()}
    capsys.readouterr()
    assert _study(study_data, out) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["runs_skipped_as_done"] == 16
    assert {p.name: p.stat().st_mtime_ns for p in (out / "runs").iterdir()} == stamps
    assert again["synthetic"]["lddm"]["engine"]["skipped"] == 6  # the engine reused them
    assert [r["test"] for r in again["runs"]] == [r["test"] for r in results["runs"]]
    assert "16 runs (16 already done)" in capsys.readouterr().out

    # Other training settings are a different study: nothing is reused.
    assert _study(study_data, out, "--batch-size", "4") == 0
    assert json.loads((out / "results.json").read_text())["runs_skipped_as_done"] == 0


def test_study_names_a_missing_split_list(study_data, tmp_path, capsys):
    real = tmp_path / "real"
    real.mkdir()
    for name in ("train_list.txt", "test_list.txt"):
        (real / name).write_text((study_data / "real" / "busv" / name).read_text())
    (real / "rawframes").symlink_to(study_data / "real" / "busv" / "rawframes")
    code = main(
        [
            "study",
            "--real-videos", str(real),
            "--images", str(study_data / "img" / "busi"),
            "--preset", "tiny",
            "--out", str(tmp_path / "out"),
            "--quiet",
        ]
    )  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "val_list.txt" in err and "missing" in err
