"""Stage 1: the video autoencoder's objective and its held-out reconstruction metrics.

Loss per clip (frames 1..T rebuilt from z and x0):

- L1 between rebuilt and true frames (mean over pixels);
- ``kl_weight`` x KL(q(z) || N(0, I)) per pixel of the clip, which keeps z's scale
  bounded so the stage-2 latent scale factor is meaningful;
- ``ssim_weight`` x (1 - SSIM), a structure term that needs no downloaded weights
  (speckle and edges: L1 alone prefers the blurry local mean);
- with a warping decoder (``AutoencoderConfig.warp``), ``warp_weight`` x the L1 of x0
  warped alone against the frames, on 4x and 8x average-pooled copies: speckle gives
  the displacement field a gradient only within a speckle size of the truth, the
  coarse anatomy (layers, lesion edges) over the whole motion range;
- from step ``adv_start`` on, ``adv_weight`` x an adaptive balance x the hinge loss of
  a 3-D patch discriminator (:mod:`~lddm_fast.train.discriminator`), which is trained
  in the same step; it is what makes the decoder draw speckle instead of its mean.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from lddm_fast.eval.psnr_ssim import psnr_clip, ssim_clip, ssim_images
from lddm_fast.models.autoencoder import VideoAutoencoder
from lddm_fast.models.config import LDDMConfig
from lddm_fast.train.data import SeededClips, collate, item_generators, per_item_randn
from lddm_fast.train.discriminator import (
    PatchDiscriminator3d,
    adaptive_weight,
    discriminator_hinge,
    generator_hinge,
)
from lddm_fast.train.export import export_checkpoint

__all__ = ["AutoencoderObjective", "AutoencoderStage", "reconstruction_metrics"]


class AutoencoderObjective(nn.Module):
    """``forward(clip, eps) -> (loss, parts)``.

    Args (forward):
        clip: ``[B, C, T+1, H, W]`` in [-1, 1], x0 first.
        eps: ``[B, c_z, T, h, w]`` standard normal noise of the posterior draw.

    Returns:
        The scalar loss and its detached parts ``l1``, ``kl`` (per pixel), ``ssim``,
        and with the adversarial term ``adv_g``, ``adv_d``, ``adv_margin`` (mean real
        minus fake logit) and ``adv_balance`` (0 before ``adv_start``).

    The discriminator (``adv_weight > 0``) is a submodule, so the loop's optimizer and
    training-state saves carry it; the exported checkpoint holds the autoencoder only.
    Its buffer ``steps_seen`` counts training forwards, saved with the state so a
    resumed run switches the adversarial term on at the same step.
    """

    def __init__(
        self,
        autoencoder: VideoAutoencoder,
        kl_weight: float,
        ssim_weight: float,
        adv_weight: float = 0.0,
        adv_start: int = 0,
        warp_weight: float = 1.0,
    ):
        super().__init__()
        self.autoencoder = autoencoder
        self.kl_weight, self.ssim_weight = kl_weight, ssim_weight
        self.warp_weight = warp_weight if autoencoder.config.warp else 0.0
        self.adv_weight, self.adv_start = adv_weight, adv_start
        self.discriminator = None
        if adv_weight > 0:
            self.discriminator = PatchDiscriminator3d(autoencoder.config.in_channels)
            self.register_buffer("steps_seen", torch.zeros((), dtype=torch.long))

    def forward(self, clip: torch.Tensor, eps: torch.Tensor):
        x0, frames = clip[:, :, 0], clip[:, :, 1:]
        posterior = self.autoencoder.encode(frames).latent_dist
        z = posterior.mean + posterior.std * eps.to(posterior.mean.dtype)
        decoded = self.autoencoder.decode(z, x0)
        rebuilt = decoded.sample.float()
        l1 = (rebuilt - frames).abs().mean()
        kl = posterior.kl().mean() / frames[0].numel()
        reconstruction = l1
        parts = {"l1": l1.detach(), "kl": kl.detach()}
        if self.warp_weight > 0:
            coarse = coarse_l1(decoded.warped.float(), frames)
            reconstruction = reconstruction + self.warp_weight * coarse
            parts["warp_l1"] = coarse.detach()
        if self.ssim_weight > 0:
            h, w = frames.shape[-2:]
            ssim = ssim_images(
                ((rebuilt + 1) / 2).reshape(-1, 1, h, w), ((frames + 1) / 2).reshape(-1, 1, h, w)
            ).mean()
            reconstruction = reconstruction + self.ssim_weight * (1.0 - ssim)
            parts["ssim"] = ssim.detach()
        loss = reconstruction + self.kl_weight * kl
        if self.discriminator is not None:
            loss = loss + self._adversarial(reconstruction, rebuilt, frames, x0, parts)
            if self.training:
                self.steps_seen += 1
        return loss, parts

    def _adversarial(self, reconstruction, rebuilt, frames, x0, parts) -> torch.Tensor:
        d_loss, margin = discriminator_hinge(self.discriminator, frames, rebuilt, x0)
        parts.update(adv_d=d_loss.detach(), adv_margin=margin)
        if int(self.steps_seen) < self.adv_start or not torch.is_grad_enabled():
            parts.update(adv_g=torch.zeros_like(margin), adv_balance=torch.zeros_like(margin))
            # The discriminator learns from the start, so it is no longer a random
            # critic when the decoder starts to follow it.
            return d_loss
        g_loss = generator_hinge(self.discriminator, rebuilt, x0)
        balance = adaptive_weight(reconstruction, g_loss, self.autoencoder.decoder.conv_out.weight)
        parts.update(adv_g=g_loss.detach(), adv_balance=balance)
        return self.adv_weight * balance * g_loss + d_loss


def coarse_l1(video: torch.Tensor, target: torch.Tensor, factors=(4, 8)) -> torch.Tensor:
    """Mean over ``factors`` of the L1 between spatially average-pooled copies of
    ``video`` and ``target`` (both ``[B, C, T, H, W]``): a scalar."""
    losses = []
    for f in factors:
        pool = (1, f, f)
        losses.append((F.avg_pool3d(video, pool) - F.avg_pool3d(target, pool)).abs().mean())
    return torch.stack(losses).mean()


@torch.no_grad()
def reconstruction_metrics(
    autoencoder: VideoAutoencoder,
    clips,
    device: torch.device,
    *,
    batch_size: int = 8,
    rebuilt: list[torch.Tensor] | None = None,
) -> dict[str, float]:
    """Held-out reconstruction of frames 1..T from the posterior mean, next to the
    "x0 repeated" baseline (what a decoder that ignored z would at best score).

    Args:
        clips: a dataset of ``(clip [C, T+1, H, W], label)`` (e.g. the val split).
        rebuilt: if given, each clip's x0 followed by its rebuilt frames,
            ``[C, T+1, H, W]`` float in [-1, 1] on the CPU, is appended to it.

    Returns:
        ``psnr``, ``ssim``, ``psnr_x0_repeated``, ``ssim_x0_repeated``, ``psnr_gain``
        (dB over the baseline) and ``clips`` (N).
    """
    psnr, ssim, psnr0, ssim0 = [], [], [], []
    for clip, _ in DataLoader(clips, batch_size=batch_size):
        clip = clip.to(device)
        x0, frames = clip[:, :, 0], clip[:, :, 1:]
        z = autoencoder.encode(frames).latent_dist.mode()
        out = autoencoder.decode(z, x0).sample.float().clamp(-1, 1)
        repeated = x0[:, :, None].expand_as(frames)
        psnr.append(psnr_clip(out, frames))
        ssim.append(ssim_clip(out, frames))
        psnr0.append(psnr_clip(repeated, frames))
        ssim0.append(ssim_clip(repeated, frames))
        if rebuilt is not None:
            rebuilt += list(torch.cat([x0[:, :, None], out], dim=2).cpu())
    out = {
        k: float(torch.cat(v).mean())
        for k, v in (
            ("psnr", psnr),
            ("ssim", ssim),
            ("psnr_x0_repeated", psnr0),
            ("ssim_x0_repeated", ssim0),
        )
    }
    out["psnr_gain"] = out["psnr"] - out["psnr_x0_repeated"]
    out["clips"] = float(sum(len(p) for p in psnr))
    return out


class AutoencoderStage:
    """Stage 1 for :func:`lddm_fast.train.loop.train`.

    Args:
        config: the whole model config (its autoencoder is trained; the denoiser is
            exported freshly initialised so the checkpoint is complete).
        train_clips, val_clips: the splits (:func:`lddm_fast.train.data.open_splits`).
        kl_weight, ssim_weight, adv_weight, warp_weight: loss weights (see the module
            docstring; ``warp_weight`` only counts for a warping decoder).
        adv_start: step from which the decoder follows the discriminator.
        eval_clips: at most this many val clips are scored at each checkpoint.
        device: where evaluation runs.
    """

    name = "autoencoder"

    def __init__(
        self,
        config: LDDMConfig,
        train_clips,
        val_clips,
        *,
        kl_weight: float = 1e-4,
        ssim_weight: float = 0.0,
        adv_weight: float = 0.0,
        adv_start: int = 0,
        warp_weight: float = 1.0,
        eval_clips: int = 64,
        device: torch.device | str = "cpu",
    ) -> None:
        self.config = config
        self.network = VideoAutoencoder(config.autoencoder)
        self.objective = AutoencoderObjective(
            self.network, kl_weight, ssim_weight, adv_weight, adv_start, warp_weight
        )
        self.dataset = SeededClips(train_clips)
        self.collate = collate
        self.val = torch.utils.data.Subset(val_clips, range(min(eval_clips, len(val_clips))))
        self.device = torch.device(device)

    def inputs(self, batch: dict, device: torch.device) -> dict[str, torch.Tensor]:
        c_z, t, h, w = self.config.latent_shape
        eps = per_item_randn(item_generators(batch["seed"]), (c_z, t, h, w), device)
        return {"clip": batch["clip"].to(device, non_blocking=True), "eps": eps}

    def evaluate(self, network: nn.Module, step: int) -> dict[str, float]:
        return reconstruction_metrics(network, self.val, next(network.parameters()).device)

    def export(self, network: nn.Module, directory: Path, meta: dict[str, Any]) -> None:
        export_checkpoint(directory, self.config, network, None, meta)
