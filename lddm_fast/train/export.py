"""Write a trained network as a checkpoint directory the pipeline loads."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from lddm_fast.data.atomic import atomic_folder
from lddm_fast.models.autoencoder import VideoAutoencoder
from lddm_fast.models.checkpoint import LDDMModels, save_pretrained
from lddm_fast.models.config import LDDMConfig
from lddm_fast.models.denoiser import LatentDenoiser

__all__ = ["autoencoder_record", "export_checkpoint"]


def export_checkpoint(
    directory: str | os.PathLike,
    config: LDDMConfig,
    autoencoder: VideoAutoencoder,
    denoiser: LatentDenoiser | None,
    meta: dict[str, Any],
) -> None:
    """Replace ``directory`` atomically with a checkpoint of ``config`` and the two
    networks. ``denoiser`` None (stage 1) writes a freshly initialised one, seeded, so
    the directory is complete and loads; ``meta["denoiser_trained"]`` says which."""
    if denoiser is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            denoiser = LatentDenoiser(config.denoiser)
    meta = {"denoiser_trained": meta.get("stage") == "diffusion", **meta}
    models = LDDMModels(config, autoencoder, denoiser)
    with atomic_folder(directory) as tmp:
        save_pretrained(tmp, models, meta=meta)


def autoencoder_record(checkpoint: str | os.PathLike, loaded: LDDMModels) -> dict[str, Any]:
    """What a checkpoint's ``meta.json`` says of the autoencoder it was built on: the
    folder, its weights' sha256 and how that autoencoder was trained."""
    keys = ("command", "steps", "wall_time_s", "heldout_metrics", "hardware", "init")
    return {
        "checkpoint": str(Path(checkpoint).resolve()),
        "sha256": loaded.meta["sha256"]["autoencoder.safetensors"],
        "meta": {k: loaded.meta.get(k) for k in keys},
    }
