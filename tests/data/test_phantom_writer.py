"""Phantom dataset writer and the ``lddm-fast phantom`` command."""

import json
import os

import numpy as np
import pytest

from lddm_fast.data.images import read_image
from lddm_fast.data.phantom import PhantomConfig
from lddm_fast.data.phantom_writer import split_assignment, write_phantom_dataset

TINY = PhantomConfig(size=32, frames=3)


def _tree(root):
    files = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, root)] = f.read()
    return files


def test_same_arguments_give_the_same_bytes_with_any_worker_count(tmp_path):
    counts = {"benign": 2, "malignant": 1, "normal": 1}
    write_phantom_dataset(tmp_path / "a", counts, config=TINY, seed=3)
    write_phantom_dataset(tmp_path / "b", counts, config=TINY, seed=3, workers=2)
    a, b = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    assert sorted(a) == sorted(b) and a == b
    write_phantom_dataset(tmp_path / "c", counts, config=TINY, seed=4)
    c = _tree(tmp_path / "c")
    frame = os.path.join("busv", "rawframes", "benign", "benign_00000", "000000.png")
    assert c[frame] != a[frame]


def test_an_items_bytes_do_not_depend_on_how_many_are_written(tmp_path):
    write_phantom_dataset(tmp_path / "few", {"malignant": 1}, config=TINY, layouts=("busv",))
    write_phantom_dataset(
        tmp_path / "many", {"benign": 3, "malignant": 2}, config=TINY, layouts=("busv",)
    )
    clip = os.path.join("busv", "rawframes", "malignant", "malignant_00000")
    few, many = _tree(tmp_path / "few"), _tree(tmp_path / "many")
    for name in ("000000.png", "000002.png"):
        assert few[os.path.join(clip, name)] == many[os.path.join(clip, name)]


def test_busv_layout_lists_and_manifest(tmp_path):
    counts = {"benign": 4, "malignant": 3, "normal": 0}
    manifest = write_phantom_dataset(tmp_path, counts, config=TINY, layouts=("busv",), fps=8)
    lines = []
    for split in ("train", "val", "test"):
        lines += [
            (split, line.split()) for line in (tmp_path / "busv" / f"{split}_list.txt").open()
        ]
    assert len(lines) == 7
    for _, (video, frames, label) in lines:
        folder = tmp_path / "busv" / "rawframes" / video
        assert sorted(os.listdir(folder)) == ["000000.png", "000001.png", "000002.png"]
        assert frames == "3" and label == {"benign": "0", "malignant": "1"}[video.split("/")[0]]
    on_disk = json.loads((tmp_path / "dataset.json").read_text())
    assert on_disk == manifest
    assert on_disk["classes"] == {"benign": 0, "malignant": 1, "normal": 2}
    assert on_disk["config"]["size"] == 32 and on_disk["fps"] == 8
    assert on_disk["busv"]["counts"] == counts
    items = on_disk["busv"]["items"]
    assert {i["split"] for i in items} <= {"train", "val", "test"}
    assert all(i["scene"]["lesion"]["compliance"] > 2 for i in items if i["class"] == "benign")
    assert not (tmp_path / "busi").exists()


def test_busi_layout_images_and_masks(tmp_path):
    write_phantom_dataset(
        tmp_path, {"benign": 2, "malignant": 1, "normal": 1}, config=TINY, layouts=("busi",)
    )
    names = sorted(os.listdir(tmp_path / "busi" / "benign"))
    assert names == [
        "benign (1).png",
        "benign (1)_mask.png",
        "benign (2).png",
        "benign (2)_mask.png",
    ]
    image = read_image(tmp_path / "busi" / "malignant" / "malignant (1).png")
    mask = read_image(tmp_path / "busi" / "malignant" / "malignant (1)_mask.png")
    assert image.shape == mask.shape == (32, 32)
    assert set(np.unique(mask)) == {0, 255}
    assert image[mask > 0].mean() < image[mask == 0].mean() - 20  # the lesion is dark
    assert not read_image(tmp_path / "busi" / "normal" / "normal (1)_mask.png").any()


def test_splits_are_stratified_and_follow_the_fractions():
    names = split_assignment(0, "busv", "benign", 20, (0.7, 0.15, 0.15))
    assert (names.count("train"), names.count("val"), names.count("test")) == (14, 3, 3)
    assert names != sorted(names)  # shuffled, not in index order
    assert split_assignment(0, "busv", "benign", 20, (0.7, 0.15, 0.15)) == names
    assert split_assignment(0, "busv", "benign", 1, (0.7, 0.15, 0.15)) == ["train"]


def test_bad_writer_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown classes"):
        write_phantom_dataset(tmp_path, {"cyst": 1}, config=TINY)
    with pytest.raises(ValueError, match="summing to 1"):
        write_phantom_dataset(tmp_path, {"benign": 1}, config=TINY, fractions=(0.5, 0.2, 0.2))


def _run_cli(argv):
    from lddm_fast.cli import main

    return main(argv)


def test_cli_writes_a_dataset_and_reports_the_rate(tmp_path, capsys):
    out = tmp_path / "phantom"
    argv = ["phantom", str(out), "--benign", "2", "--malignant", "1", "--normal", "1"]
    argv += ["--size", "32", "--frames", "3", "--seed", "5", "--quiet"]
    assert _run_cli(argv) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "4 clips in" in last and "clips/s" in last and "4 images" in last
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["seed"] == 5 and manifest["busv"]["counts"]["benign"] == 2
    assert (out / "busi" / "normal" / "normal (1).png").exists()
    # A second run into the same (now non-empty) folder needs --force.
    assert _run_cli(argv) == 2
    assert "not empty" in capsys.readouterr().err


def test_cli_help_describes_the_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _run_cli(["phantom", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--benign", "--malignant", "--normal", "--size", "--frames", "--seed"):
        assert option in text
    assert "busv" in text and "busi" in text and "dataset.json" in text


def test_cli_refuses_bad_values(capsys):
    for argv in (["--size", "8"], ["--splits", "0.5,0.5"], ["--benign", "-1"]):
        with pytest.raises(SystemExit):
            _run_cli(["phantom", "out", *argv])
        assert "error" in capsys.readouterr().err
