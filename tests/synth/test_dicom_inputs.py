"""``synthesize`` on clinical inputs: DICOM mixed with PNG in one folder, cine frames,
dual views cut by their ultrasound regions, unreadable files reported while the rest
goes on, and no DICOM header value in anything a run writes."""

import json
import os
import zipfile

import numpy as np
import torch
from dicom_helpers import INSTITUTION, PATIENT, dataset, save, speckle, us_region
from synth_helpers import failed, manifest, summary, synth, write_png
from synth_standin import StandInSampler

from lddm_fast.data.video_io import read_video
from lddm_fast.synth import cli
from lddm_fast.synth.engine import SynthEngine, load_views
from lddm_fast.synth.inputs import InputItem, InputSet
from lddm_fast.synth.manifest import merge_logs


def _clinical_folder(root):
    """Two PNGs and five DICOM files (one unreadable) under root/."""
    write_png(root / "busi" / "a.png", seed=1)
    write_png(root / "busi" / "b.png", seed=2)
    scans = root / "scans"
    scans.mkdir()
    rgb = np.stack([speckle(24, 28, seed=s) for s in (3, 4, 5)], axis=-1)
    save(dataset(rgb, "RGB"), scans / "rgb.dcm")
    cine = np.stack([speckle(20, 24, seed=10 + k) for k in range(4)])
    save(dataset(cine), scans / "cine.dcm")
    save(dataset(speckle(20, 20, seed=6)), scans / "IM_0001")  # no suffix: DICM preamble
    frame = np.zeros((60, 100), np.uint8)
    frame[5:45, 5:45], frame[5:45, 55:95] = speckle(40, 40, seed=8), speckle(40, 40, seed=9)
    dual = dataset(frame)
    dual.SequenceOfUltrasoundRegions = [
        us_region((5, 5, 45, 45)),
        us_region((55, 5, 95, 45)),
        us_region((5, 45, 95, 60), spatial=3, data_type=3, units=4),  # Doppler strip
    ]
    save(dual, scans / "dual.dcm")
    (scans / "corrupt.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"not a dataset" * 5)
    return root


def test_mixed_folder_with_regions_frames_and_a_corrupt_file(tmp_path):
    images = _clinical_folder(tmp_path / "in")
    out = tmp_path / "out"
    status, sampler = synth(images, out, "--region", "auto", "--frame", "2")
    assert status == 0
    records = {r["input"]: r for r in manifest(out)}
    assert sorted(records) == [
        "busi/a.png",
        "busi/b.png",
        "scans/IM_0001",
        "scans/cine.dcm",
        "scans/dual_r0.dcm",
        "scans/dual_r1.dcm",
        "scans/rgb.dcm",
    ]
    assert records["scans/dual_r0.dcm"]["region"] == {
        "box": [5, 5, 45, 45],
        "source": "dicom",
        "spacing": [0.01, 0.02],
        "unit": "cm",
    }
    assert records["scans/dual_r1.dcm"]["region"]["box"] == [55, 5, 95, 45]
    assert records["scans/dual_r1.dcm"]["view_of"] == "scans/dual.dcm"
    assert records["busi/a.png"]["region"]["source"] == "detected"
    assert records["busi/a.png"]["settings"]["region"] == "auto"
    assert (out / "scans" / "dual_r0_k0.npz").is_file()
    # Frame 0 of each video is the image the engine fitted: cine frame 2 here.
    cine = read_video(out / records["scans/cine.dcm"]["outputs"][0]["path"]).frames[0]
    ((expected, _),) = load_views(str(images / "scans/cine.dcm"), 16, 1, region="auto", frame=2)
    np.testing.assert_array_equal(cine, expected[0].numpy())
    (bad,) = failed(out)
    assert bad["input"] == "scans/corrupt.dcm" and bad["k"] is None
    assert "DICOM without image rows/columns" in bad["reason"]
    counts = summary(out)
    assert (counts["done"], counts["failed"], counts["bad_inputs"]) == (7, 1, 1)
    assert counts["videos"] == 8  # the dual view's second video is counted when found

    status, _ = synth(images, out, "--region", "auto", "--frame", "2")  # resume
    assert status == 0
    assert (summary(out)["done"], summary(out)["skipped"]) == (0, 7)


def _dual_view(path, seed=8):
    """A 60x100 DICOM with two tissue regions side by side."""
    frame = np.zeros((60, 100), np.uint8)
    frame[5:45, 5:45] = speckle(40, 40, seed=seed)
    frame[5:45, 55:95] = speckle(40, 40, seed=seed + 1)
    dual = dataset(frame)
    dual.SequenceOfUltrasoundRegions = [us_region((5, 5, 45, 45)), us_region((55, 5, 95, 45))]
    return save(dual, path)


def test_view_names_step_around_the_stems_of_other_inputs():
    item = InputItem.make("/in/x.dcm", "x.dcm")
    assert item.view(0).rel == "x_r0.dcm" and item.view(1, {"x_r0"}).rel == "x_r1.dcm"
    view = item.view(0, {"x", "x_r0", "x_r0-1"})
    assert (view.rel, view.view_of, view.view_index, view.path) == (
        "x_r0-2.dcm",
        "x.dcm",
        0,
        "/in/x.dcm",
    )
    # A view can never take another view's name, whatever that file is called.
    names = {
        InputItem.make("", rel).view(i, {"x_r0"}).rel
        for rel in ("x.dcm", "x_r0.dcm")
        for i in (0, 1)
    }
    assert names == {"x_r0-1.dcm", "x_r1.dcm", "x_r0_r0.dcm", "x_r0_r1.dcm"}


def test_a_dual_view_next_to_a_file_named_like_its_view_gets_its_own_names(tmp_path):
    """x.dcm (two views) beside x_r0.png: three inputs, three sets of outputs, and the
    same names on a rerun and on every rank."""
    images = tmp_path / "in"
    write_png(images / "x_r0.png", seed=1)
    _dual_view(images / "x.dcm")
    out = tmp_path / "out"
    status, _ = synth(images, out, "--region", "auto", "--workers", "1")
    assert status == 0
    records = {r["input"]: r for r in manifest(out)}
    assert sorted(records) == ["x_r0-1.dcm", "x_r0.png", "x_r1.dcm"]
    assert "view_of" not in records["x_r0.png"]
    assert records["x_r0.png"]["path"] == str(images / "x_r0.png")
    for rel, index, box in (("x_r0-1.dcm", 0, [5, 5, 45, 45]), ("x_r1.dcm", 1, [55, 5, 95, 45])):
        assert (records[rel]["view_of"], records[rel]["view"]) == ("x.dcm", index)
        assert records[rel]["path"] == str(images / "x.dcm")
        assert records[rel]["region"]["box"] == box
    outputs = [r["outputs"][0]["path"] for r in records.values()]
    assert sorted(outputs) == ["x_r0-1_k0.npz", "x_r0_k0.npz", "x_r1_k0.npz"]
    assert all((out / name).is_file() for name in outputs)
    assert summary(out)["done"] == 3 and not failed(out)
    status, _ = synth(images, out, "--region", "auto")  # resume: the same names
    assert (summary(out)["done"], summary(out)["skipped"]) == (0, 3)
    shards = tmp_path / "shards"
    settings = {
        k: v for k, v in records["x_r0.png"]["settings"].items() if k not in ("seed", "fps")
    }
    for rank in (0, 1):  # what two torchrun ranks do: each sees every name
        engine = SynthEngine(
            StandInSampler(),
            shards,
            settings=settings,
            formats=["npz"],
            region="auto",
            rank=rank,
            world_size=2,
            progress=False,
        )
        engine.run(InputSet(images))
    merge_logs(str(shards), 1)
    assert sorted(r["input"] for r in manifest(shards)) == sorted(records)


def test_center_is_the_default_and_a_short_cine_is_reported(tmp_path):
    images = _clinical_folder(tmp_path / "in")
    out = tmp_path / "out"
    status, _ = synth(images, out, "--frame", "3")
    assert status == 0
    records = {r["input"]: r for r in manifest(out)}
    assert "scans/dual.dcm" in records  # one input: regions are not used by center
    assert records["scans/dual.dcm"]["region"] == {"box": [0, 0, 100, 60], "source": "frame"}
    assert "region" not in records["busi/a.png"]["settings"]  # old folders still resume
    reasons = {f["input"]: f["reason"] for f in failed(out)}
    assert sorted(reasons) == ["scans/corrupt.dcm"]  # single-frame files ignore --frame
    status, _ = synth(images, tmp_path / "out2", "--frame", "4")
    assert status == 0
    reasons = {f["input"]: f["reason"] for f in failed(tmp_path / "out2")}
    assert "frame 4 out of range" in reasons["scans/cine.dcm"]


def _written_bytes(out):
    """Every file under out, zip members (npz) decompressed too."""
    for dirpath, _, files in os.walk(out):
        for name in files:
            path = os.path.join(dirpath, name)
            yield path, open(path, "rb").read()
            if zipfile.is_zipfile(path):
                with zipfile.ZipFile(path) as z:
                    for member in z.namelist():
                        yield f"{path}:{member}", z.read(member)


def test_no_dicom_header_value_reaches_any_output(tmp_path, capfd):
    torch.set_num_threads(1)
    images = tmp_path / "in"
    images.mkdir()
    save(dataset(speckle(40, 48, seed=1)), images / "study.dcm")
    signed = dataset(speckle(40, 48, seed=2))
    signed.PixelRepresentation = 1  # refused: its failure is logged too
    save(signed, images / "signed.dcm")
    out = tmp_path / "out"
    argv = ["--input", str(images), "--out", str(out), "--preset", "tiny", "--steps", "1"]
    argv += ["--format", "mp4,gif,npz,png", "--device", "cpu", "--region", "auto"]
    assert cli.main(argv) == 0
    printed = capfd.readouterr()
    (record,) = manifest(out)
    assert record["path"] == str(images / "study.dcm")
    assert "signed pixel data" in failed(out)[0]["reason"]
    secrets = [PATIENT, INSTITUTION, "ID-5F8W2", "19010203", "20990405"]
    sources = [("stdout", printed.out.encode()), ("stderr", printed.err.encode())]
    checked = 0
    for where, data in [*sources, *_written_bytes(out)]:
        checked += 1
        for secret in secrets:
            for form in (secret, secret.replace("^", " ")):
                assert form.encode() not in data, f"{form!r} written to {where}"
    assert checked > 10  # videos in four formats, PNG frames, the books
    assert json.loads((out / "run.json").read_text())["arguments"]["region"] == "auto"
