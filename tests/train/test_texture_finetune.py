"""`train-ae --init --freeze-encoder` with a texture code, end to end on the tiny preset:
the z encoder stays bit-identical, the decoder and the code learn, the run records
where it started, and the pieces it needs are checked."""

import json

import pytest
import torch
from fine_tune_helpers import config_file, fine_tune, train


def test_fine_tune_with_a_texture_code_keeps_z(phantom_root, tmp_path):
    before, after = fine_tune(
        phantom_root,
        tmp_path,
        config_file(tmp_path, warp=True, texture_channels=0),
        config_file(tmp_path, warp=True, texture_channels=2),
        "--texture-kl-warmup",
        "2",
        "--steps",
        "3",
        base_steps=2,
    )
    base, tuned = tmp_path / "base", tmp_path / "tuned"
    assert after.config.autoencoder.texture_channels == 2
    state = after.autoencoder.state_dict()
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
        train(phantom_root, tmp_path / "run", "--preset", "tiny", "--freeze-encoder")
    plain = tmp_path / "plain"
    train(phantom_root, plain, "--preset", "tiny", "--steps", "1")  # no warp head
    with pytest.raises(SystemExit, match=r"error: .*plain/checkpoint.*has shape"):
        train(
            phantom_root,
            tmp_path / "run2",
            "--config",
            config_file(tmp_path, warp=True, texture_channels=2),
            "--init",
            str(plain / "checkpoint"),
            "--steps",
            "1",
        )
    with pytest.raises(SystemExit, match=r"error: .*missing"):
        train(
            phantom_root,
            tmp_path / "run3",
            "--config",
            config_file(tmp_path, warp=True, texture_channels=2),
            "--init",
            str(tmp_path / "missing"),
            "--steps",
            "1",
        )
