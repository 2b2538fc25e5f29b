"""Stage 2: the conditional latent denoiser, trained on z of the frozen autoencoder.

Per sample: z0 = scale * (a draw of the autoencoder's posterior), a timestep t, noise,
and with probability ``config.cond_drop_prob`` the x0 condition swapped for the null
condition (so classifier-free guidance works). Loss: MSE to eps or v, as
``config.prediction_type`` says. ``scale`` is 1/std of z over training clips, set
once before the first step and stored in the checkpoint's config.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lddm_fast.data.atomic import atomic_folder
from lddm_fast.diffusion.schedules import alphas_cumprod, betas_for
from lddm_fast.models.autoencoder import VideoAutoencoder
from lddm_fast.models.checkpoint import LDDMModels
from lddm_fast.models.config import LDDMConfig
from lddm_fast.models.denoiser import LatentDenoiser
from lddm_fast.train.data import (
    SeededClips,
    collate,
    item_generators,
    item_seed,
    per_item_randn,
)
from lddm_fast.train.export import export_checkpoint

__all__ = ["DiffusionObjective", "DiffusionStage", "LatentCache", "latent_scale"]

log = logging.getLogger(__name__)

# Item-seed "steps" reserved for the latent scale and the cache (the loop uses 0, 1, ...).
_SCALE_STEP = 2**31 - 1
_CACHE_STEP = 2**31


class DiffusionObjective(nn.Module):
    """``forward(z0, x0, t, noise, drop) -> (loss, parts)``.

    Args (forward):
        z0: clean scaled latents ``[B, c_z, T, h, w]``.
        x0: first frames ``[B, C, H, W]``.
        t: int64 timesteps ``[B]`` in 0..N-1.
        noise: ``[B, c_z, T, h, w]`` standard normal.
        drop: bool ``[B]``, True replaces the sample's x0 by the null condition.
    """

    def __init__(self, denoiser: LatentDenoiser, config: LDDMConfig) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.prediction_type = config.prediction_type
        abar = alphas_cumprod(betas_for(config.beta_schedule, config.num_train_timesteps))
        self.register_buffer("abar", abar.float(), persistent=False)

    def forward(self, z0, x0, t, noise, drop):
        abar = self.abar[t].view(-1, 1, 1, 1, 1)
        alpha, sigma = abar.sqrt(), (1 - abar).sqrt()
        z_t = alpha * z0 + sigma * noise
        pred = self.denoiser(z_t, t, x0, drop_cond=drop).sample.float()
        target = noise if self.prediction_type == "eps" else alpha * noise - sigma * z0
        loss = F.mse_loss(pred, target)
        return loss, {"mse": loss.detach()}


def _draws(seeds: list[int], config: LDDMConfig, device: torch.device):
    """Per-sample randomness of one batch: posterior eps, t, noise, drop."""
    gens = item_generators(seeds)
    shape = config.latent_shape
    eps = per_item_randn(gens, shape, device)
    t = torch.stack([torch.randint(config.num_train_timesteps, (), generator=g) for g in gens])
    noise = per_item_randn(gens, shape, device)
    drop = torch.stack([torch.rand((), generator=g) < config.cond_drop_prob for g in gens])
    return eps, t.to(device), noise, drop.to(device)


@torch.no_grad()
def latent_scale(
    autoencoder: VideoAutoencoder, clips, seed: int, device: torch.device, *, count: int = 64
) -> float:
    """1/std of posterior draws of z over up to ``count`` training clips (fixed seeds)."""
    zs = []
    seeded = SeededClips(clips)
    n = min(count, len(clips))
    for start in range(0, n, 8):
        items = [
            seeded[(i, item_seed(seed, _SCALE_STEP, i))] for i in range(start, min(n, start + 8))
        ]
        batch = collate(items)
        clip = batch["clip"].to(device)
        post = autoencoder.encode(clip[:, :, 1:]).latent_dist
        eps = per_item_randn(item_generators(batch["seed"]), tuple(post.mean.shape[1:]), device)
        zs.append((post.mean + post.std * eps).float().flatten())
    std = float(torch.cat(zs).std())
    if not std > 0:
        raise ValueError("the autoencoder's latents have zero spread; is it trained?")
    return 1.0 / std


class LatentCache(Dataset):
    """Posterior moments of ``variants`` augmented clips per training video, encoded
    once by the frozen autoencoder and kept in ``folder`` (safetensors shards and
    ``index.json``); reused while the autoencoder's and the data's hashes match.

    Item ``(index, seed)`` (as :class:`~lddm_fast.train.data.StepBatches` yields, over
    ``videos * variants`` items): dict with ``mean``, ``logvar`` ``[c_z, T, h, w]``,
    ``x0`` ``[C, H, W]``, ``label``, ``seed``, ``skipped``.
    """

    SHARD = 256

    def __init__(self, folder: Path, key: dict[str, Any]) -> None:
        index = json.loads((folder / "index.json").read_text())
        if index["key"] != key:
            raise ValueError(f"{folder}: latent cache was made for another autoencoder or data")
        parts: dict[str, list[torch.Tensor]] = {"mean": [], "logvar": [], "x0": [], "label": []}
        for name in index["shards"]:
            shard = safetensors.torch.load_file(folder / name)
            for k in parts:
                parts[k].append(shard[k])
        self.tensors = {k: torch.cat(v) for k, v in parts.items()}

    def __len__(self) -> int:
        return len(self.tensors["label"])

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, seed = key
        item = {k: v[index] for k, v in self.tensors.items()}
        return {**item, "label": int(item["label"]), "seed": seed, "skipped": []}

    @staticmethod
    def collate(items: list[dict]) -> dict:
        out = {k: torch.stack([it[k] for it in items]) for k in ("mean", "logvar", "x0")}
        out["seed"] = [it["seed"] for it in items]
        out["skipped"] = [s for it in items for s in it["skipped"]]
        return out

    @classmethod
    def build(
        cls,
        folder: Path,
        key: dict[str, Any],
        autoencoder: VideoAutoencoder,
        clips,
        *,
        variants: int,
        seed: int,
        device: torch.device,
        batch_size: int = 8,
        workers: int = 0,
        progress: bool = True,
    ) -> LatentCache:
        """Reuse ``folder`` if its key matches, else encode and write it (atomically).

        ``workers`` DataLoader processes decode and augment the clips (each from its own
        seed, so the cache is the same for any count) while the encoder runs."""
        if (folder / "index.json").is_file():
            try:
                cache = cls(folder, key)
                log.info("latent cache %s reused (%d items)", folder, len(cache))
                return cache
            except (ValueError, OSError, KeyError) as e:
                log.warning("latent cache %s not reused: %s", folder, e)
        from tqdm import tqdm

        keys = [
            (i, item_seed(seed, _CACHE_STEP + v, i))
            for v in range(variants)
            for i in range(len(clips))
        ]
        loader = DataLoader(
            _KeyedItems(SeededClips(clips), keys),
            batch_size=batch_size,
            collate_fn=collate,
            num_workers=workers,
        )
        names = ("mean", "logvar", "x0", "label")
        with atomic_folder(folder) as tmp, torch.no_grad():
            shards: list[str] = []
            parts: dict[str, list[torch.Tensor]] = {k: [] for k in names}

            def write_shard() -> None:
                name = f"shard-{len(shards):05d}.safetensors"
                safetensors.torch.save_file(
                    {k: torch.cat(v).contiguous() for k, v in parts.items()},
                    os.path.join(tmp, name),
                )
                shards.append(name)
                for v in parts.values():
                    v.clear()

            for batch in tqdm(loader, desc="encoding latents", unit="batch", disable=not progress):
                for path, reason in batch["skipped"]:
                    log.warning("skipped clip %s: %s", path, reason)
                clip = batch["clip"].to(device)
                post = autoencoder.encode(clip[:, :, 1:]).latent_dist
                parts["mean"].append(post.mean.float().contiguous().cpu())
                parts["logvar"].append(post.logvar.float().contiguous().cpu())
                parts["x0"].append(clip[:, :, 0].cpu())
                parts["label"].append(batch["label"])
                if sum(len(x) for x in parts["label"]) >= cls.SHARD:
                    write_shard()
            if parts["label"]:
                write_shard()
            Path(tmp, "index.json").write_text(json.dumps({"key": key, "shards": shards}, indent=2))
        return cls(folder, key)


class _KeyedItems(Dataset):
    """``seeded[keys[j]]`` for j in range(len(keys)): fixed (video, seed) items for a
    DataLoader."""

    def __init__(self, seeded: SeededClips, keys: list[tuple[int, int]]) -> None:
        self.seeded, self.keys = seeded, keys

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, j: int) -> dict:
        return self.seeded[self.keys[j]]


def cache_key(
    autoencoder_sha256: str, data_sha256: str, variants: int, seed: int, frames: int, size: int
) -> dict[str, Any]:
    return {
        "autoencoder_sha256": autoencoder_sha256,
        "data_sha256": data_sha256,
        "variants": variants,
        "seed": seed,
        "frames": frames,
        "size": size,
    }


def cache_folder(root: Path, key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return root / digest


class DiffusionStage:
    """Stage 2 for :func:`lddm_fast.train.loop.train`.

    Args:
        config: the model config (its ``latent_scale`` already set from data).
        autoencoder: the frozen, trained autoencoder (eval mode, no grad).
        train_clips, val_clips: the splits.
        cache: a :class:`LatentCache` of the training clips, or None to encode each
            batch on the fly.
        preview_dir: where contact sheets and gifs of val samples go (None: none).
        preview_images: how many val first frames a preview samples from.
        eval_clips: val clips the held-out loss is measured on.
        device: where the frozen autoencoder and evaluation run.
    """

    name = "diffusion"

    def __init__(
        self,
        config: LDDMConfig,
        autoencoder: VideoAutoencoder,
        train_clips,
        val_clips,
        *,
        cache: LatentCache | None = None,
        preview_dir: Path | None = None,
        preview_images: int = 4,
        preview_steps: int = 25,
        eval_clips: int = 64,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        self.config = config
        self.device = torch.device(device)
        self.autoencoder = autoencoder.to(self.device).eval().requires_grad_(False)
        self.network = LatentDenoiser(config.denoiser)
        self.objective = DiffusionObjective(self.network, config)
        if cache is not None:
            self.dataset, self.collate = cache, LatentCache.collate
        else:
            self.dataset, self.collate = SeededClips(train_clips), collate
        self.val = torch.utils.data.Subset(val_clips, range(min(eval_clips, len(val_clips))))
        self.preview_dir = preview_dir
        self.preview_images, self.preview_steps, self.seed = preview_images, preview_steps, seed

    @torch.no_grad()
    def _z0(self, batch: dict, eps: torch.Tensor, device: torch.device):
        if "mean" in batch:
            mean, logvar = batch["mean"].to(device), batch["logvar"].to(device)
            x0 = batch["x0"].to(device)
            std = torch.exp(0.5 * logvar)
        else:
            clip = batch["clip"].to(device)
            post = self.autoencoder.encode(clip[:, :, 1:]).latent_dist
            mean, std, x0 = post.mean.float(), post.std.float(), clip[:, :, 0]
        return (mean + std * eps) * self.config.latent_scale, x0

    def inputs(self, batch: dict, device: torch.device) -> dict[str, torch.Tensor]:
        eps, t, noise, drop = _draws(batch["seed"], self.config, device)
        z0, x0 = self._z0(batch, eps, device)
        return {"z0": z0, "x0": x0, "t": t, "noise": noise, "drop": drop}

    def evaluate(self, network: nn.Module, step: int) -> dict[str, float]:
        device = next(network.parameters()).device
        objective = DiffusionObjective(network, self.config).to(device)
        total, count = 0.0, 0
        seeded = SeededClips(self.val.dataset)
        for start in range(0, len(self.val), 8):
            ids = range(start, min(len(self.val), start + 8))
            batch = collate([seeded[(i, item_seed(self.seed, _SCALE_STEP - 1, i))] for i in ids])
            inputs = self.inputs(batch, device)
            inputs["drop"] = torch.zeros_like(inputs["drop"])
            loss, _ = objective(**inputs)
            total += float(loss) * len(ids)
            count += len(ids)
        metrics = {"val_loss": total / max(1, count), "val_clips": float(count)}
        if self.preview_dir is not None and self.preview_images > 0:
            self.preview(network, step)
        return metrics

    def preview(self, network: nn.Module, step: int) -> Path:
        """Sample from the first val frames through :class:`LDDMPipeline`; write a
        contact sheet (x0 then frames, one row per video) and a gif of the first."""
        from lddm_fast.data.contact_sheet import contact_sheet
        from lddm_fast.data.video_io import write_video
        from lddm_fast.diffusion.pipeline import LDDMPipeline

        device = next(network.parameters()).device
        models = LDDMModels(self.config, self.autoencoder, network)
        pipe = LDDMPipeline(models, device=device, dtype=torch.float32)
        count = min(self.preview_images, len(self.val))
        x0 = torch.stack([self.val[i][0][:, 0] for i in range(count)])
        videos = pipe(x0, steps=self.preview_steps, seed=self.seed, output="uint8").videos
        frames = [v.permute(1, 2, 3, 0).squeeze(-1).cpu().numpy() for v in videos]
        self.preview_dir.mkdir(parents=True, exist_ok=True)
        sheet = self.preview_dir / f"step-{step:08d}.png"
        contact_sheet(frames, sheet, columns=min(9, self.config.num_frames + 1))
        write_video(self.preview_dir / f"step-{step:08d}.gif", frames[0])
        network.eval()
        return sheet

    def export(self, network: nn.Module, directory: Path, meta: dict[str, Any]) -> None:
        export_checkpoint(directory, self.config, self.autoencoder, network, meta)
