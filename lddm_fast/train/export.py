"""Write a trained network as a checkpoint directory the pipeline loads."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from lddm_fast.data.atomic import atomic_folder
from lddm_fast.models.autoencoder import VideoAutoencoder
from lddm_fast.models.checkpoint import LDDMModels, save_pretrained
from lddm_fast.models.config import LDDMConfig
from lddm_fast.models.denoiser import LatentDenoiser

__all__ = ["autoencoder_record", "export_checkpoint", "init_chain"]


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
    folder, its weights' sha256, how that autoencoder was trained and, for a
    ``train-ae --init`` fine-tune, the runs it started from (:func:`init_chain`)."""
    keys = ("command", "steps", "wall_time_s", "heldout_metrics", "hardware", "init")
    return {
        "checkpoint": str(Path(checkpoint).resolve()),
        "sha256": loaded.meta["sha256"]["autoencoder.safetensors"],
        "meta": {k: loaded.meta.get(k) for k in keys},
        "init_chain": init_chain(loaded.meta),
    }


def init_chain(meta: dict[str, Any], limit: int = 16) -> list[dict[str, Any]]:
    """The checkpoints a chain of ``--init`` fine-tunes started from, newest first, as
    far as their folders still exist: each one's folder, autoencoder sha256, command,
    steps and wall time (a fine-tune's own meta names only the run just before it)."""
    chain: list[dict[str, Any]] = []
    seen: set[Path] = set()
    init = meta.get("init")
    while isinstance(init, dict) and "checkpoint" in init and len(chain) < limit:
        folder = Path(init["checkpoint"]).resolve()
        if folder in seen or not (folder / "meta.json").is_file():
            break
        seen.add(folder)
        earlier = json.loads((folder / "meta.json").read_text())
        chain.append(
            {
                "checkpoint": str(folder),
                "sha256": earlier.get("sha256", {}).get("autoencoder.safetensors"),
                **{k: earlier.get(k) for k in ("command", "steps", "wall_time_s")},
            }
        )
        init = earlier.get("init")
    return chain
