"""`lddm-fast eval` on the project's own layouts: a BUSV root with split lists, a
synthesize output folder read through its manifest, a class-folder tree; per-class
FVD with N on every figure; pairs through the manifest's input paths."""

import json

import pytest
import torch
from PIL import Image

from lddm_fast.cli import main
from lddm_fast.data.video_io import write_video
from lddm_fast.eval.video_sets import open_video_set, pair_entries


def _write_frames(folder, video):
    folder.mkdir(parents=True)
    for t, frame in enumerate(video):
        Image.fromarray(frame).save(folder / f"{t:06d}.png")


@pytest.fixture
def busv(tmp_path, make_video):
    """A BUSV root: 3 benign + 3 malignant frame folders, test list of 2 + 2."""
    root = tmp_path / "busv"
    lines = {"train": [], "test": []}
    for i in range(6):
        label = ("benign", "malignant")[i % 2]
        name = f"{label}/{label}_{i:03d}"
        _write_frames(root / "rawframes" / name, make_video(i, frames=17))
        lines["test" if i < 4 else "train"].append(f"{name} 17 {i % 2}")
    for split, entries in lines.items():
        (root / f"{split}_list.txt").write_text("\n".join(entries) + "\n")
    return root


def _synthesized(out, busv, make_video, *, names):
    """A synthesize-style output folder: two videos per listed real video, made "from"
    its first frame, with the manifest lines the engine writes; plus a stray file the
    manifest does not list."""
    lines = []
    for j, name in enumerate(names):
        label = name.split("/")[0]
        source = busv / "rawframes" / name / "000000.png"
        for k in range(2):
            rel = f"{label}/{name.split('/')[1]}_frame_k{k}.npz"
            video = make_video(100 + 2 * j + k, frames=17)
            write_video(out / rel, video)
            lines.append(
                {
                    "class": label,
                    "finished": 1.0 + j,
                    "input": f"{name}/000000.png",
                    "k": k,
                    "outputs": [{"format": "npz", "path": rel, "sha256": "x", "size": 1}],
                    "path": str(source),
                    "seed": k,
                }
            )
    (out / "manifest.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    write_video(out / "benign" / "not_in_manifest.npz", make_video(999, frames=17))
    return out


def test_sets_are_found_in_each_layout(busv, tmp_path, make_video):
    everything = open_video_set(busv)
    assert everything.layout == "busv" and len(everything.entries) == 6
    test = open_video_set(busv, split="test")
    assert [e.name for e in test.entries] == [
        "benign/benign_000",
        "malignant/malignant_001",
        "benign/benign_002",
        "malignant/malignant_003",
    ]
    assert [e.label for e in test.entries] == ["benign", "malignant"] * 2
    tree = open_video_set(busv / "rawframes")
    assert tree.layout == "classes" and {e.label for e in tree.entries} == {"benign", "malignant"}
    with pytest.raises(ValueError, match="val_list.txt"):
        open_video_set(busv, split="val")
    with pytest.raises(ValueError, match="--split needs a BUSV root"):
        open_video_set(busv / "rawframes", split="test")

    fake = _synthesized(
        tmp_path / "fake", busv, make_video, names=["benign/benign_000", "malignant/malignant_001"]
    )
    synth = open_video_set(fake)
    assert synth.layout == "synthesize"
    assert [e.name for e in synth.entries] == [
        "benign/benign_000_frame_k0",
        "benign/benign_000_frame_k1",
        "malignant/malignant_001_frame_k0",
        "malignant/malignant_001_frame_k1",
    ]
    pairs = [(r.name, f.name) for r, f in pair_entries(test, synth)]
    assert pairs == [
        ("benign/benign_000", "benign/benign_000_frame_k0"),
        ("benign/benign_000", "benign/benign_000_frame_k1"),
        ("malignant/malignant_001", "malignant/malignant_001_frame_k0"),
        ("malignant/malignant_001", "malignant/malignant_001_frame_k1"),
    ]


def test_cli_on_busv_split_and_synthesize_output(busv, tmp_path, make_video, tiny_i3d, capsys):
    names = ["benign/benign_000", "malignant/malignant_001", "benign/benign_002"]
    fake = _synthesized(tmp_path / "fake", busv, make_video, names=names)
    out = tmp_path / "results.json"
    argv = ["eval", "--real", str(busv), "--split", "test", "--fake", str(fake)]
    argv += ["--i3d-weights", str(tiny_i3d), "--metrics", "fvd,psnr,ssim", "--out", str(out)]
    assert main([*argv, "--quiet"]) == 0
    captured = capsys.readouterr()
    record = json.loads(out.read_text())
    assert record["layouts"] == {"real": "busv", "fake": "synthesize"}
    assert (record["n_real"], record["n_fake"], record["pairs"]) == (4, 6, 6)
    assert record["n_per_class"] == {
        "real": {"benign": 2, "malignant": 2},
        "fake": {"benign": 4, "malignant": 2},
    }
    assert record["unpaired_real"] == ["malignant/malignant_003"]

    fvd = record["metrics"]["fvd"]
    assert (fvd["n_real"], fvd["n_fake"]) == (4, 6) and fvd["value"] > 0
    benign, malignant = fvd["per_class"]["benign"], fvd["per_class"]["malignant"]
    assert (benign["n_real"], benign["n_fake"]) == (2, 4) and benign["value"] >= 0
    assert (malignant["n_real"], malignant["n_fake"]) == (2, 2)
    assert "| FVD benign |" in captured.out and "2 real / 4 fake" in captured.out
    assert "warning: FVD benign: N <= 8" in captured.err  # tiny_i3d embeds in 8 dims

    psnr = record["metrics"]["psnr"]
    assert psnr["n"] == 6
    assert set(psnr["per_clip"]) == {f"{n}_frame_k{k}" for n in names for k in (0, 1)}
    assert "not_in_manifest" not in json.dumps(record)


def test_per_class_fvd_equals_fvd_of_the_class_alone(make_video, tiny_i3d):
    from lddm_fast.eval.metrics import compute_metrics

    real = [torch.from_numpy(make_video(i))[None] for i in range(6)]
    fake = [torch.from_numpy(make_video(50 + i))[None] for i in range(5)]
    labels = (["a", "b", "a", "b", "a", "b"], ["a", "a", "b", "b", None])
    both = compute_metrics(real, fake, ["fvd"], i3d_weights=tiny_i3d, classes=labels)["fvd"]
    only_a = compute_metrics([real[i] for i in (0, 2, 4)], fake[:2], ["fvd"], i3d_weights=tiny_i3d)[
        "fvd"
    ]
    assert both["per_class"]["a"]["value"] == pytest.approx(only_a["value"], rel=1e-9)
    assert set(both["per_class"]) == {"a", "b"}
    with pytest.raises(ValueError, match="labels"):
        compute_metrics(real, fake, ["fvd"], i3d_weights=tiny_i3d, classes=(["a"], ["b"]))
