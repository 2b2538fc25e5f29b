"""Checkpoint directories: bit-exact round trip and one clear error per corruption."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import safetensors.torch
import torch

from lddm_fast.models import (
    CheckpointError,
    LDDMModels,
    VideoAutoencoder,
    build_models,
    from_pretrained,
    preset,
    save_pretrained,
)


@pytest.fixture
def saved(tmp_path, tiny_models) -> Path:
    return save_pretrained(tmp_path / "ckpt", tiny_models, meta={"steps": 12, "data": "phantom"})


def _resign(directory: Path, name: str) -> None:
    """Record the current sha256 of ``name`` in meta.json, as a checkpoint written by
    a different version of the model would have it: the content check must then
    catch what the hash cannot."""
    meta_path = directory / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["sha256"][name] = hashlib.sha256((directory / name).read_bytes()).hexdigest()
    meta_path.write_text(json.dumps(meta))


def _edit_state(directory: Path, name: str, edit) -> None:
    path = directory / name
    state = safetensors.torch.load_file(path)
    edit(state)
    safetensors.torch.save_file(state, path)
    _resign(directory, name)


def _edit_config(directory: Path, edit) -> None:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))
    _resign(directory, "config.json")


def test_round_trip_is_bit_exact(saved, tiny_models, make_inputs, tiny_config):
    loaded = from_pretrained(saved)
    assert loaded.config == tiny_models.config
    assert loaded.meta["steps"] == 12 and loaded.meta["format_version"] == 1
    assert set(loaded.meta["sha256"]) == {
        "config.json",
        "autoencoder.safetensors",
        "denoiser.safetensors",
    }
    for name in ("autoencoder", "denoiser"):
        before = getattr(tiny_models, name).state_dict()
        after = getattr(loaded, name).state_dict()
        assert before.keys() == after.keys()
        for key in before:
            assert torch.equal(before[key], after[key]), key
        assert not getattr(loaded, name).training
    x = make_inputs(tiny_config)
    with torch.no_grad():
        a = tiny_models.denoiser(x["z"], x["t"], x["x0"]).sample
        b = loaded.denoiser(x["z"], x["t"], x["x0"]).sample
    assert torch.equal(a, b)


def test_the_directory_holds_only_json_and_safetensors(saved):
    assert sorted(p.name for p in saved.iterdir()) == [
        "autoencoder.safetensors",
        "config.json",
        "denoiser.safetensors",
        "meta.json",
    ]


def test_load_with_dtype(saved):
    loaded = from_pretrained(saved, dtype=torch.bfloat16)
    assert {p.dtype for p in loaded.denoiser.parameters()} == {torch.bfloat16}


def test_channels_last_weights_save_as_row_major(tmp_path, tiny_models):
    conv = tiny_models.denoiser.conv_in
    conv.weight.data = conv.weight.data.contiguous(memory_format=torch.channels_last_3d)
    assert not conv.weight.is_contiguous()
    loaded = from_pretrained(save_pretrained(tmp_path / "cl", tiny_models))
    assert torch.equal(loaded.denoiser.conv_in.weight, conv.weight)


def test_reserved_meta_keys_are_refused(tmp_path, tiny_models):
    with pytest.raises(ValueError, match="reserved"):
        save_pretrained(tmp_path / "x", tiny_models, meta={"sha256": {}})


def test_mismatched_models_and_config_are_refused(tiny_models):
    other = VideoAutoencoder(preset("tiny", channels=3).autoencoder)
    with pytest.raises(ValueError, match="autoencoder.config differs"):
        LDDMModels(tiny_models.config, other, tiny_models.denoiser)


def _drop_key(state):
    del state["time_mlp.0.weight"]


def _add_key(state):
    state["extra.weight"] = torch.zeros(3)


def _reshape_key(state):
    state["conv_out.weight"] = torch.zeros(4, 16, 1, 3, 5)


def _unknown_field(config):
    config["denoiser"]["use_flash"] = True


def _unknown_top_field(config):
    config["sampler"] = "ddim"


def _bad_value(config):
    config["prediction_type"] = "x0"


def _flip_a_byte(directory):
    path = directory / "autoencoder.safetensors"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(directory):
    path = directory / "denoiser.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:-100])


def _truncate_header(directory):
    path = directory / "autoencoder.safetensors"
    path.write_bytes(path.read_bytes()[:40])


def _remove_file(directory):
    (directory / "denoiser.safetensors").unlink()


@pytest.mark.parametrize(
    "corrupt, file, key, match",
    [
        (
            lambda d: _edit_state(d, "denoiser.safetensors", _drop_key),
            "denoiser.safetensors",
            "time_mlp.0.weight",
            r"missing keys: time_mlp\.0\.weight",
        ),
        (
            lambda d: _edit_state(d, "denoiser.safetensors", _add_key),
            "denoiser.safetensors",
            "extra.weight",
            r"unexpected keys: extra\.weight",
        ),
        (
            lambda d: _edit_state(d, "denoiser.safetensors", _reshape_key),
            "denoiser.safetensors",
            "conv_out.weight",
            r"conv_out\.weight \(checkpoint \[4, 16, 1, 3, 5\], model \[4, 16, 1, 3, 3\]\)",
        ),
        (
            lambda d: _edit_config(d, _unknown_field),
            "config.json",
            "denoiser.use_flash",
            r"unknown config field 'denoiser\.use_flash'",
        ),
        (
            lambda d: _edit_config(d, _unknown_top_field),
            "config.json",
            "sampler",
            r"unknown config field 'sampler'",
        ),
        (
            lambda d: _edit_config(d, _bad_value),
            "config.json",
            None,
            r"invalid config: LDDMConfig\.prediction_type must be one of",
        ),
        (
            _flip_a_byte,
            "autoencoder.safetensors",
            "autoencoder.safetensors",
            r"sha256 mismatch: meta\.json records [0-9a-f]{64}",
        ),
        (_truncate, "denoiser.safetensors", None, r"truncated: tensor '.+' ends at byte"),
        (_truncate_header, "autoencoder.safetensors", None, r"truncated: the header needs"),
        (_remove_file, "denoiser.safetensors", None, "missing file"),
    ],
    ids=[
        "missing-key",
        "unexpected-key",
        "wrong-shape",
        "unknown-field",
        "unknown-top-field",
        "bad-value",
        "wrong-sha256",
        "truncated",
        "truncated-header",
        "missing-file",
    ],
)
def test_corruption_raises_a_named_error(saved, corrupt, file, key, match):
    corrupt(saved)
    with pytest.raises(CheckpointError, match=match) as info:
        from_pretrained(saved)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.path == saved / file and str(err).startswith(str(saved / file))
    if key is not None:
        assert err.key == key
    else:
        assert err.key is None or err.key in str(err)


def test_sha256_check_can_be_skipped_for_hand_edited_checkpoints(saved):
    config = json.loads((saved / "config.json").read_text())
    (saved / "config.json").write_text(json.dumps(config, indent=4))
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        from_pretrained(saved)
    assert from_pretrained(saved, verify_sha256=False).config == preset("tiny")


def test_a_checkpoint_of_another_preset_lists_the_mismatches(tmp_path, tiny_models):
    rgb = build_models(preset("tiny", channels=3))
    other = save_pretrained(tmp_path / "rgb", rgb)
    (other / "autoencoder.safetensors").write_bytes(
        (save_pretrained(tmp_path / "gray", tiny_models) / "autoencoder.safetensors").read_bytes()
    )
    _resign(other, "autoencoder.safetensors")
    with pytest.raises(
        CheckpointError,
        match=r"shape mismatches: encoder\.conv_in\.weight "
        r"\(checkpoint \[8, 1, 3, 3, 3\], model \[8, 3, 3, 3, 3\]\)",
    ):
        from_pretrained(other)
