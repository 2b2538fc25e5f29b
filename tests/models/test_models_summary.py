"""``describe``: parameter counts and denoiser FLOPs of a preset."""

from __future__ import annotations

import pytest
import torch

from lddm_fast.models import build_models, preset
from lddm_fast.models.summary import denoiser_flops, describe


def test_describe_reports_counts_and_flops():
    with torch.device("meta"):
        models = build_models(preset("tiny"))
    n_ae = sum(p.numel() for p in models.autoencoder.parameters())
    n_dn = sum(p.numel() for p in models.denoiser.parameters())
    total, per_op = denoiser_flops("tiny", batch=2)
    text = describe("tiny", batch=2)
    rows = {
        line.split()[0]: line.split()[1]
        for line in text.splitlines()
        if line.startswith("  ") and len(line.split()) > 1
    }
    assert rows["autoencoder"] == f"{n_ae:,}"
    assert rows["denoiser"] == f"{n_dn:,}"
    assert rows["total"] == f"{n_ae + n_dn:,}"
    assert f"denoiser forward at batch 2: {total / 1e9:.3f} GFLOP" in text
    assert per_op["convolution"] > 0 and sum(per_op.values()) == total


def test_flops_scale_with_batch_and_include_the_conv_out_layer():
    one, per_op_one = denoiser_flops("tiny", batch=1)
    two, _ = denoiser_flops("tiny", batch=2)
    assert two == 2 * one
    # conv_out alone: 2 * c_out * c_in * 9 multiply-adds per output voxel.
    config = preset("tiny")
    c_z, t, h, w = config.latent_shape
    conv_out = 2 * c_z * config.denoiser.block_channels[0] * 9 * t * h * w
    assert per_op_one["convolution"] > conv_out


def test_describe_rejects_unknown_presets_and_bad_batches():
    with pytest.raises(ValueError, match="unknown preset"):
        describe("nope")
    with pytest.raises(ValueError, match="batch must be a positive int"):
        denoiser_flops("tiny", batch=0)
