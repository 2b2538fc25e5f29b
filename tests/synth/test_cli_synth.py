"""The ``synthesize`` command: registration, help, argument errors, the model sources
(bundled, --checkpoint, --preset) and the pipeline adapter's NaN report."""

import json

import pytest
import torch
from synth_helpers import failed, make_corpus, manifest

from lddm_fast import cli as top_cli
from lddm_fast.synth import cli
from lddm_fast.synth.adapter import DTYPES, checkpoint_sha256, load_sampler


def _options(parser):
    return sorted(o for action in parser._actions for o in action.option_strings)


def test_synthesize_subcommand_help(capsys):
    assert top_cli.COMMANDS["synthesize"] == "lddm_fast.synth.cli"
    with pytest.raises(SystemExit) as info:
        top_cli.main(["synthesize", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for flag in (
        "--input",
        "--out",
        "--checkpoint",
        "--preset",
        "--videos-per-image",
        "--steps",
        "--sampler",
        "--guidance",
        "--batch-size",
        "--format",
        "--seed",
        "--device",
        "--dtype",
        "--force",
        "--region",
        "--frame",
    ):
        assert flag in text
    assert "torchrun --nproc-per-node" in text and "Exit status" in text
    # `python -m lddm_fast.synth` (what torchrun runs) takes exactly the same options.
    sub = top_cli.build_parser()._subparsers._group_actions[0].choices["synthesize"]
    standalone = cli.argparse.ArgumentParser()
    cli.add_arguments(standalone)
    assert _options(sub) == _options(standalone)


def test_bad_arguments_exit_2(tmp_path, capsys):
    base = ["--input", str(tmp_path), "--out", str(tmp_path / "o")]
    for extra, message in (
        (["--format", "mp4,avi"], "unknown format avi"),
        (["--videos-per-image", "0"], "must be at least 1"),
        (["--preset", "tiny", "--checkpoint", str(tmp_path)], "not allowed with"),
    ):
        with pytest.raises(SystemExit) as info:
            cli.main(base + extra)
        assert info.value.code == 2
        assert message in capsys.readouterr().err


def test_a_missing_bundled_model_file_is_named(tmp_path, capsys, monkeypatch):
    from lddm_fast.models import bundled

    monkeypatch.setattr(bundled, "BUNDLED_MODEL_DIR", tmp_path / "nothing")
    monkeypatch.setattr(bundled, "BUNDLED_SHA256", {"config.json": "ab" * 32})
    images = make_corpus(tmp_path / "in", bad=False, height=40, width=40)
    assert cli.main(["--input", str(images), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "nothing" / "config.json") in err and "ab" * 32 in err


def test_checkpoint_directory_is_identified_by_its_sha256(tmp_path):
    from lddm_fast.diffusion import LDDMPipeline
    from lddm_fast.models import save_pretrained

    ckpt = save_pretrained(tmp_path / "ckpt", LDDMPipeline.from_preset("tiny").models)
    images = make_corpus(tmp_path / "in", bad=False, good=("benign/b1.png",), height=32, width=32)
    out = tmp_path / "out"
    argv = ["--input", str(images), "--out", str(out), "--checkpoint", str(ckpt)]
    assert cli.main([*argv, "--steps", "1", "--format", "npz", "--quiet"]) == 0
    (record,) = manifest(out)
    digest = checkpoint_sha256(ckpt)
    assert record["settings"]["model"] == f"sha256:{digest}"
    assert record["model"] == {
        "id": f"sha256:{digest}",
        "checkpoint": str(ckpt),
        "preset": None,
        "sha256": digest,
    }
    run_json = json.loads((out / "run.json").read_text())
    assert run_json["arguments"]["model"] == f"sha256:{digest}"


def test_pipeline_nan_videos_go_to_failed_jsonl(tmp_path, monkeypatch):
    sampler = load_sampler(
        checkpoint=None,
        preset="tiny",
        device=torch.device("cpu"),
        dtype=DTYPES["float32"],
        num_frames=None,
        steps=1,
        sampler="ddim",
        guidance=1.0,
    )
    denoise = sampler.pipe.denoise

    def nan_in_first_video(*args, **kwargs):
        z = denoise(*args, **kwargs)
        z[0, 0, 0, 0, 0] = float("nan")
        return z

    monkeypatch.setattr(sampler.pipe, "denoise", nan_in_first_video)
    images = make_corpus(tmp_path / "in", bad=False, good=("a.png", "b.png"), height=32, width=32)
    out = tmp_path / "out"
    argv = ["--input", str(images), "--out", str(out), "--format", "npz", "--quiet"]
    # Batch size 1: every video is the first of its batch, so nothing can be made.
    assert cli.main([*argv, "--batch-size", "1"], make_sampler=lambda *_: sampler) == 1
    assert [(f["input"], f["k"], f["stage"]) for f in failed(out)] == [
        ("a.png", 0, "sample"),
        ("b.png", 0, "sample"),
    ]
    assert not list(out.glob("*.npz"))
