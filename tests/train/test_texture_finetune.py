"""`train-ae --init --freeze-encoder` with a texture code, end to end on the tiny preset:
the z encoder stays bit-identical, the decoder and the code learn, the run records
where it started, and the pieces it needs are checked."""

import json

import pytest
import torch

from lddm_fast.cli import main
from lddm_fast.models import preset
from lddm_fast.models.checkpoint import from_pretrained

TINY = ["--workers", "0", "--quiet", "--warmup", "1", "--eval-clips", "2", "--batch-size", "2"]


def _config_file(tmp_path, texture_channels: int):
    config = preset("tiny").to_dict()
    config["autoencoder"].update(warp=True, texture_channels=texture_channels)
    path = tmp_path / f"tiny_texture{texture_channels}.json"
    path.write_text(json.dumps(config))
    return str(path)


def _train(data, out, *extra):
    argv = ["train-ae", "--data", str(data), "--out", str(out), *TINY, *extra]
    assert main(argv) == 0


def test_fine_tune_with_a_texture_code_keeps_z(phantom_root, tmp_path):
    base, tuned = tmp_path / "base", tmp_path / "tuned"
    _train(phantom_root, base, "--config", _config_file(tmp_path, 0), "--steps", "2")
    _train(
        phantom_root,
        tuned,
        "--config",
        _config_file(tmp_path, 2),
        "--init",
        str(base / "checkpoint"),
        "--freeze-encoder",
        "--texture-kl-warmup",
        "2",
        "--steps",
        "3",
    )
    before = from_pretrained(base / "checkpoint").autoencoder.state_dict()
    after = from_pretrained(tuned / "checkpoint")
    assert after.config.autoencoder.texture_channels == 2
    state = after.autoencoder.state_dict()
    encoder = [n for n in before if n.startswith("encoder.")]
    assert encoder and all(torch.equal(state[n], before[n]) for n in encoder)
    decoder = [n for n in before if n.startswith("decoder.conv_out")]
    assert any(not torch.equal(state[n], before[n]) for n in decoder), "the decoder did not move"
    head = after.autoencoder.decoder.texture_head[-1].weight
    assert head.abs().max() > 0, "the texture head never left its zero start"
    assert after.meta["init"] == {"checkpoint": str(base / "checkpoint"), "freeze_encoder": True}
    assert after.meta["losses"]["texture_kl_warmup"] == 2
    logged = [json.loads(line) for line in (tuned / "log.jsonl").read_text().splitlines()]
    assert [r["texture_kl"] > 0 for r in logged if "texture_kl" in r] == [True] * 3


def test_bad_starts_are_refused_with_the_reason(phantom_root, tmp_path):
    with pytest.raises(
        SystemExit, match=r"error: freezing the encoder needs an init checkpoint \(--init\)"
    ):
        _train(phantom_root, tmp_path / "run", "--preset", "tiny", "--freeze-encoder")
    plain = tmp_path / "plain"
    _train(phantom_root, plain, "--preset", "tiny", "--steps", "1")  # no warp head
    with pytest.raises(SystemExit, match=r"error: .*plain/checkpoint.*has shape"):
        _train(
            phantom_root,
            tmp_path / "run2",
            "--config",
            _config_file(tmp_path, 2),
            "--init",
            str(plain / "checkpoint"),
            "--steps",
            "1",
        )
    with pytest.raises(SystemExit, match=r"error: .*missing"):
        _train(
            phantom_root,
            tmp_path / "run3",
            "--config",
            _config_file(tmp_path, 2),
            "--init",
            str(tmp_path / "missing"),
            "--steps",
            "1",
        )
