"""Configs: presets are valid, bad values and combinations fail early, JSON round trip."""

from __future__ import annotations

import dataclasses
import json

import pytest

from lddm_fast.models import (
    PRESETS,
    AutoencoderConfig,
    ConfigFieldError,
    DenoiserConfig,
    LDDMConfig,
    preset,
)


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("channels", [1, 3])
def test_presets_are_consistent(name, channels):
    config = preset(name, channels=channels)
    assert config.channels == config.autoencoder.in_channels == config.denoiser.image_channels
    assert config.autoencoder.downsample_factor == 8
    c_z, t, h, w = config.latent_shape
    assert (c_z, t, h, w) == (4, config.num_frames, config.size // 8, config.size // 8)


def test_preset_sizes_match_the_issue():
    assert (preset("phantom64").size, preset("phantom64").num_frames) == (64, 16)
    assert (preset("busv128").size, preset("busv128").num_frames) == (128, 16)


def test_unknown_preset_lists_known_ones():
    with pytest.raises(ValueError, match="unknown preset 'huge'.*tiny"):
        preset("huge")


def test_json_round_trip_is_exact():
    config = preset("busv128", channels=3)
    text = json.dumps(config.to_dict())
    assert LDDMConfig.from_dict(json.loads(text)) == config


def test_from_dict_names_an_unknown_nested_field():
    data = preset("tiny").to_dict()
    data["denoiser"]["attention_heads"] = 4
    with pytest.raises(ConfigFieldError, match="'denoiser.attention_heads'") as info:
        LDDMConfig.from_dict(data)
    assert info.value.path == "denoiser.attention_heads"


def test_from_dict_fills_missing_fields_with_defaults():
    data = preset("tiny").to_dict()
    del data["latent_scale"]
    assert LDDMConfig.from_dict(data).latent_scale == 1.0


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: AutoencoderConfig(in_channels=2), "in_channels must be 1 or 3"),
        (
            lambda: AutoencoderConfig(block_channels=(32, 60), cond_block_channels=(8, 8)),
            r"block_channels = \(32, 60\).*norm_groups=8 \(not \[60\]\)",
        ),
        (lambda: AutoencoderConfig(cond_block_channels=(16, 16)), "must match"),
        (lambda: DenoiserConfig(spatial_attention=(True,)), "one flag per level"),
        (
            lambda: DenoiserConfig(block_channels=(64, 96, 128), attention_head_dim=64),
            "level 1 has width 96.*attention_head_dim=64",
        ),
        (lambda: DenoiserConfig(frame_embedding="rope"), "frame_embedding must be one of"),
        (lambda: DenoiserConfig(layers_per_block=0), "layers_per_block must be a positive int"),
        (lambda: LDDMConfig(prediction_type="x0"), "prediction_type must be one of"),
        (lambda: LDDMConfig(beta_schedule="sqrt"), "beta_schedule must be one of"),
        (lambda: LDDMConfig(size=60), "size=60 must be divisible by 32"),
        (lambda: LDDMConfig(channels=3), "channels=3 must equal autoencoder.in_channels=1"),
        (lambda: LDDMConfig(num_frames=40), "num_frames=40 exceeds denoiser.max_frames=32"),
        (
            lambda: LDDMConfig(denoiser=DenoiserConfig(latent_channels=8)),
            "latent_channels=4 != denoiser.latent_channels=8",
        ),
        (
            lambda: LDDMConfig(denoiser=DenoiserConfig(cond_encoder_channels=(32, 32, 64))),
            "shrinks frames by 8 but the denoiser's x0 encoder by 4",
        ),
    ],
)
def test_bad_values_raise_early(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_configs_are_frozen_and_lists_become_tuples():
    config = DenoiserConfig(
        block_channels=[32, 64],
        spatial_attention=[False, True],
        temporal_attention=[True, True],
        cond_encoder_channels=[32, 32, 64, 64],
    )
    assert config.block_channels == (32, 64)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.norm_groups = 8
