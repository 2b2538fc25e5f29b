"""Configs shared by the scatterer speckle models' tests."""

from __future__ import annotations

import dataclasses

from lddm_fast.models import LDDMConfig, preset


def speckle_config(model: str) -> LDDMConfig:
    """The tiny preset with a warping decoder and ``model``'s speckle (``speckle_model``),
    fitted at the preset's clip length."""
    config = preset("tiny")
    ae = dataclasses.replace(
        config.autoencoder, warp=True, speckle_frames=config.num_frames, speckle_model=model
    )
    return dataclasses.replace(config, autoencoder=ae)
