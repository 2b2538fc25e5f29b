"""The same image file and seed give the same video through the API
(``LDDMPipeline``) and the batch engine (``lddm-fast synthesize``): one rule fits an
image to the model, including non-square and larger-than-model images, and one rule
refuses images smaller than the model."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from lddm_fast import LDDMPipeline
from lddm_fast.synth.cli import main as synthesize

SIZE = 32  # the tiny preset


@pytest.mark.parametrize("shape", [(32, 32), (37, 50), (80, 45)], ids=str)
def test_pipeline_and_synthesize_make_the_same_video(tmp_path, shape):
    rng = np.random.default_rng()
    pixels = rng.integers(0, 256, shape, dtype=np.uint8)
    images = tmp_path / "images" / "benign"
    images.mkdir(parents=True)
    Image.fromarray(pixels).save(images / "scan.png")
    out = tmp_path / "out"
    args = ["--input", str(tmp_path / "images"), "--out", str(out), "--preset", "tiny"]
    args += ["--format", "npz", "--steps", "3", "--batch-size", "1", "--seed", "5", "--quiet"]
    assert synthesize(args) == 0
    record = json.loads((out / "manifest.jsonl").read_text().splitlines()[0])
    with np.load(out / record["outputs"][0]["path"]) as data:
        engine_video = data[data.files[0]]

    pipe = LDDMPipeline.from_preset("tiny", seed=0, device="cpu")
    api = pipe(
        [Image.open(images / "scan.png")], steps=3, sampler="ddim", seed=[record["seed"]],
        output="uint8",
    ).videos  # fmt: skip
    np.testing.assert_array_equal(api[0, 0].numpy(), engine_video)


def test_an_image_smaller_than_the_model_is_refused_by_both(tmp_path):
    small = np.full((20, 40), 128, dtype=np.uint8)
    pipe = LDDMPipeline.from_preset("tiny", seed=0, device="cpu")
    with pytest.raises(ValueError, match=r"images\[0\]: image is 40x20 pixels, smaller than"):
        pipe([small], steps=2)
    with pytest.raises(ValueError, match="images: image is 40x20 pixels"):
        pipe.preprocess(torch.from_numpy(small)[None, None])
    folder = tmp_path / "images" / "benign"
    folder.mkdir(parents=True)
    Image.fromarray(small).save(folder / "small.png")
    out = tmp_path / "out"
    code = synthesize(
        ["--input", str(tmp_path / "images"), "--out", str(out), "--preset", "tiny", "--quiet"]
    )
    assert code == 1
    failed = json.loads((out / "failed.jsonl").read_text().splitlines()[0])
    assert failed["input"] == "benign/small.png" and "40x20" in failed["reason"]


def test_synthesize_draws_one_progress_bar(tmp_path, capsys):
    folder = tmp_path / "images" / "benign"
    folder.mkdir(parents=True)
    for i in range(2):
        Image.fromarray(np.full((32, 32), 60 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    args = ["--input", str(tmp_path / "images"), "--out", str(tmp_path / "out")]
    assert synthesize([*args, "--preset", "tiny", "--steps", "2"]) == 0
    err = capsys.readouterr().err
    assert "2/2" in err
    assert "0video [" not in err  # no total-less bar drawn before the inputs are counted


def test_synthesize_leaves_the_process_warning_filters_alone(tmp_path):
    import warnings

    folder = tmp_path / "images" / "benign"
    folder.mkdir(parents=True)
    Image.fromarray(np.full((32, 32), 90, dtype=np.uint8)).save(folder / "a.png")
    before = list(warnings.filters)
    args = ["--input", str(tmp_path / "images"), "--out", str(tmp_path / "out")]
    assert synthesize([*args, "--preset", "tiny", "--steps", "2", "--quiet"]) == 0
    assert warnings.filters == before


def test_synthesize_and_the_pipeline_refuse_too_many_frames_alike(tmp_path, capsys):
    folder = tmp_path / "images" / "benign"
    folder.mkdir(parents=True)
    Image.fromarray(np.full((32, 32), 90, dtype=np.uint8)).save(folder / "a.png")
    args = ["--input", str(tmp_path / "images"), "--out", str(tmp_path / "out")]
    assert synthesize([*args, "--preset", "tiny", "--num-frames", "9", "--quiet"]) == 2
    message = "num_frames=9 exceeds this model's max_frames=8"
    assert f"--num-frames: {message}" in capsys.readouterr().err
    with pytest.raises(ValueError, match=message):
        LDDMPipeline.from_preset("tiny", device="cpu")([np.zeros((32, 32), np.uint8)], num_frames=9)
