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
- with a warping decoder and the true tissue motion of the clips (a phantom's,
  :class:`~lddm_fast.train.data.PhantomFlowClips`), ``flow_weight`` x
  :func:`flow_l1` of the predicted displacement field against it: the frames' L1
  hardly sees the sub-pixel differences of displacement over a lesion that make its
  strain (measured: the bundled decoder's field, trained without it, put the stiff
  lesions' strain ratio at 0.48 where the phantom's motion gives 0.39);
- with a texture code (``AutoencoderConfig.texture_channels``), ``texture_kl_weight``
  x KL(q(n) || N(0, I)) per pixel of the clip: generation draws n from the prior, so
  its posterior has to stay close to it (the z term is much weaker because stage 2
  learns z's distribution). The weight ramps up linearly over ``texture_kl_warmup``
  steps: at full weight from the start, the KL empties the code before the decoder
  has learned to read it (posterior collapse: measured, the code's KL fell from 1.5e-4
  to 3e-6 per pixel in 60 steps while the L1 did not move);
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
from lddm_fast.train.data import (
    PhantomFlowClips,
    SeededClips,
    collate,
    eval_view,
    item_generators,
    per_item_randn,
)
from lddm_fast.train.discriminator import (
    PatchDiscriminator3d,
    adaptive_weight,
    discriminator_hinge,
    generator_hinge,
)
from lddm_fast.train.export import export_checkpoint

__all__ = [
    "AutoencoderObjective",
    "AutoencoderStage",
    "flow_l1",
    "load_autoencoder_init",
    "reconstruction_metrics",
]


class AutoencoderObjective(nn.Module):
    """``forward(clip, eps) -> (loss, parts)``.

    Args (forward):
        clip: ``[B, C, T+1, H, W]`` in [-1, 1], x0 first.
        eps: ``[B, c_z, T, h, w]`` standard normal noise of the posterior draw.
        flow: ``[B, 2, T, H, W]`` the true displacement of frames 1..T back to x0
            (pixels, :func:`~lddm_fast.models.autoencoder.warp_image`'s convention);
            needed when ``flow_weight > 0``.

    Returns:
        The scalar loss and its detached parts ``l1``, ``kl`` (per pixel), ``ssim``,
        ``texture_kl`` (per pixel, with a texture code), ``flow_l1`` (with a flow),
        and with the adversarial term ``adv_g``, ``adv_d``, ``adv_margin`` (mean real
        minus fake logit) and ``adv_balance`` (0 before ``adv_start``).

    The discriminator (``adv_weight > 0``) is a submodule, so the loop's optimizer and
    training-state saves carry it; the exported checkpoint holds the autoencoder only.
    The buffer ``steps_seen`` (with the discriminator or a texture KL warm-up) counts
    training forwards, saved with the state so a resumed run switches the adversarial
    term on, and ramps the texture KL, at the same steps.
    """

    def __init__(
        self,
        autoencoder: VideoAutoencoder,
        kl_weight: float,
        ssim_weight: float,
        adv_weight: float = 0.0,
        adv_start: int = 0,
        warp_weight: float = 1.0,
        texture_kl_weight: float = 0.1,
        texture_kl_warmup: int = 0,
        flow_weight: float = 0.0,
    ):
        super().__init__()
        if flow_weight > 0 and not autoencoder.config.warp:
            raise ValueError("flow_weight needs a warping decoder (config autoencoder.warp)")
        self.flow_weight = flow_weight
        self.autoencoder = autoencoder
        self.texture_kl_weight, self.texture_kl_warmup = texture_kl_weight, texture_kl_warmup
        self.kl_weight, self.ssim_weight = kl_weight, ssim_weight
        self.warp_weight = warp_weight if autoencoder.config.warp else 0.0
        self.adv_weight, self.adv_start = adv_weight, adv_start
        self.discriminator = None
        if adv_weight > 0:
            self.discriminator = PatchDiscriminator3d(autoencoder.config.in_channels)
        if adv_weight > 0 or (autoencoder.texture_encoder is not None and texture_kl_warmup):
            self.register_buffer("steps_seen", torch.zeros((), dtype=torch.long))

    def forward(
        self,
        clip: torch.Tensor,
        eps: torch.Tensor,
        texture_eps: torch.Tensor | None = None,
        flow: torch.Tensor | None = None,
    ):
        x0, frames = clip[:, :, 0], clip[:, :, 1:]
        posterior = self.autoencoder.encode(frames).latent_dist
        z = posterior.mean + posterior.std * eps.to(posterior.mean.dtype)
        texture, texture_kl = None, None
        if self.autoencoder.texture_encoder is not None:
            q = self.autoencoder.encode_texture(frames, x0)
            texture = q.mean + q.std * texture_eps.to(q.mean.dtype)
            texture_kl = q.kl().mean() / frames[0].numel()
        decoded = self.autoencoder.decode(z, x0, texture)
        rebuilt = decoded.sample.float()
        l1 = (rebuilt - frames).abs().mean()
        kl = posterior.kl().mean() / frames[0].numel()
        reconstruction = l1
        parts = {"l1": l1.detach(), "kl": kl.detach()}
        if texture_kl is not None:
            parts["texture_kl"] = texture_kl.detach()
        if self.warp_weight > 0:
            coarse = coarse_l1(decoded.warped.float(), frames)
            reconstruction = reconstruction + self.warp_weight * coarse
            parts["warp_l1"] = coarse.detach()
        if self.flow_weight > 0:
            if flow is None:
                raise ValueError("flow_weight > 0 needs the clips' true flow")
            field = flow_l1(decoded.flow, flow.to(decoded.flow))
            reconstruction = reconstruction + self.flow_weight * field
            parts["flow_l1"] = field.detach()
        if self.ssim_weight > 0:
            h, w = frames.shape[-2:]
            ssim = ssim_images(
                ((rebuilt + 1) / 2).reshape(-1, 1, h, w), ((frames + 1) / 2).reshape(-1, 1, h, w)
            ).mean()
            reconstruction = reconstruction + self.ssim_weight * (1.0 - ssim)
            parts["ssim"] = ssim.detach()
        loss = reconstruction + self.kl_weight * kl
        if texture_kl is not None:
            loss = loss + self._texture_kl_weight() * texture_kl
        if self.discriminator is not None:
            loss = loss + self._adversarial(reconstruction, rebuilt, frames, x0, parts)
        if self.training and hasattr(self, "steps_seen"):
            self.steps_seen += 1
        return loss, parts

    def _texture_kl_weight(self) -> float:
        if not self.texture_kl_warmup:
            return self.texture_kl_weight
        ramp = min(1.0, (int(self.steps_seen) + 1) / self.texture_kl_warmup)
        return self.texture_kl_weight * ramp

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


def load_autoencoder_init(network: VideoAutoencoder, checkpoint: str | Path) -> list[str]:
    """Copy an exported checkpoint's autoencoder weights into ``network``.

    Every tensor of the checkpoint must exist in ``network`` with the same shape;
    ``network``'s tensors the checkpoint lacks must all belong to modules its config
    adds (the texture code's), and keep their initialisation. Returns those names.
    A displacement head moved to another level (``warp_level``) starts fresh too,
    from zero displacement: the checkpoint's reads other features. A config without
    fitted speckle (``speckle_frames`` 0) leaves the checkpoint's out: it was fitted
    to the old decoder's residuals (``lddm_fast.train.speckle`` refits it).
    """
    from lddm_fast.models.checkpoint import from_pretrained

    models = from_pretrained(checkpoint)
    source = models.autoencoder.state_dict()
    added = ("texture_encoder.", "decoder.texture_head.")
    if models.config.autoencoder.flow_level != network.config.flow_level:
        added += ("decoder.flow_head.",)
        source = {k: v for k, v in source.items() if not k.startswith("decoder.flow_head.")}
    if not network.config.speckle_frames:
        source = {k: v for k, v in source.items() if not k.startswith("speckle.")}
    target = network.state_dict()
    for name, tensor in source.items():
        if name not in target:
            raise ValueError(
                f"{checkpoint}: autoencoder tensor {name!r} has no place in this config"
            )
        if target[name].shape != tensor.shape:
            raise ValueError(
                f"{checkpoint}: autoencoder tensor {name!r} has shape {tuple(tensor.shape)}, "
                f"this config's is {tuple(target[name].shape)}"
            )
    fresh = sorted(set(target) - set(source))
    stray = [n for n in fresh if not n.startswith(added)]
    if stray:
        raise ValueError(
            f"{checkpoint}: lacks autoencoder tensors this config needs beyond a texture code: "
            f"{stray[:4]}{' ...' if len(stray) > 4 else ''}"
        )
    network.load_state_dict(source, strict=False)
    return fresh


#: How much the L1 of the displacement error's spatial derivatives weighs in
#: :func:`flow_l1` against the displacement's own (pixels per unit strain): about a
#: lesion's size, so a strain error across a lesion counts like the displacement
#: error it adds up to there.
FLOW_GRADIENT_SCALE = 8.0


def flow_l1(flow: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 between displacement fields ``[B, 2, T, H, W]`` (pixels), plus
    :data:`FLOW_GRADIENT_SCALE` x the L1 of the error's axial and lateral finite
    differences (its strain): a scalar."""
    error = flow.float() - target.float()
    axial = (error[..., 1:, :] - error[..., :-1, :]).abs().mean()
    lateral = (error[..., :, 1:] - error[..., :, :-1]).abs().mean()
    return error.abs().mean() + FLOW_GRADIENT_SCALE * (axial + lateral)


def coarse_l1(video: torch.Tensor, target: torch.Tensor, factors=(4, 8)) -> torch.Tensor:
    """Mean over ``factors`` of the L1 between spatially average-pooled copies of
    ``video`` and ``target`` (both ``[B, C, T, H, W]``): a scalar."""
    losses = []
    for f in factors:
        pool = (1, f, f)
        losses.append((F.avg_pool3d(video, pool) - F.avg_pool3d(target, pool)).abs().mean())
    return torch.stack(losses).mean()


@torch.no_grad()
def rebuild_batch(autoencoder: VideoAutoencoder, clip: torch.Tensor):
    """Rebuild ``clip [B, C, T+1, H, W]`` from the posterior means (z's and the texture
    code's). Returns x0 ``[B, C, H, W]``, frames ``[B, C, T, H, W]``, z, the rebuilt
    frames (float, clamped to [-1, 1]) and the decoder's field ``[B, 2, T, H, W]`` (None
    without ``warp``)."""
    x0, frames = clip[:, :, 0], clip[:, :, 1:]
    z = autoencoder.encode(frames).latent_dist.mode()
    texture = None
    if autoencoder.texture_encoder is not None:
        texture = autoencoder.encode_texture(frames, x0).mode()
    out = autoencoder.decode(z, x0, texture)
    return x0, frames, z, out.sample.float().clamp(-1, 1), out.flow


@torch.no_grad()
def reconstruction_metrics(
    autoencoder: VideoAutoencoder,
    clips,
    device: torch.device,
    *,
    batch_size: int = 8,
    rebuilt: list[torch.Tensor] | None = None,
    speckle: torch.Generator | None = None,
) -> dict[str, float]:
    """Held-out reconstruction of frames 1..T from the posterior means, next to the
    "x0 repeated" baseline (what a decoder that ignored z would at best score).

    Args:
        clips: a dataset of ``(clip [C, T+1, H, W], label)`` (e.g. the val split).
        rebuilt: if given, each clip's x0 followed by its rebuilt frames,
            ``[C, T+1, H, W]`` float in [-1, 1] on the CPU, is appended to it.
        speckle: with an autoencoder that has fitted speckle, a generator (on the
            device) to draw it from: ``rebuilt`` then gets the frames with speckle (a
            sample of the decoder, as generation makes them), and the figures gain
            ``psnr_with_speckle`` and ``ssim_with_speckle``; psnr and ssim stay the
            mean's.

    Returns:
        ``psnr``, ``ssim``, ``psnr_x0_repeated``, ``ssim_x0_repeated``, ``psnr_gain``
        (dB over the baseline) and ``clips`` (N).
    """
    if speckle is not None and autoencoder.speckle is None:
        raise ValueError("a speckle generator was given, but the autoencoder has no speckle")
    psnr, ssim, psnr0, ssim0, psnr_s, ssim_s = [], [], [], [], [], []
    for clip, _ in DataLoader(clips, batch_size=batch_size):
        x0, frames, z, out, flow = rebuild_batch(autoencoder, clip.to(device))
        repeated = x0[:, :, None].expand_as(frames)
        psnr.append(psnr_clip(out, frames))
        ssim.append(ssim_clip(out, frames))
        psnr0.append(psnr_clip(repeated, frames))
        ssim0.append(ssim_clip(repeated, frames))
        if speckle is not None:
            shape = autoencoder.speckle_shape(z)
            noise = torch.randn(shape, generator=speckle, device=z.device)
            out = autoencoder.add_speckle(out, noise, flow, x0).clamp(-1, 1)
            psnr_s.append(psnr_clip(out, frames))
            ssim_s.append(ssim_clip(out, frames))
        if rebuilt is not None:
            rebuilt += list(torch.cat([x0[:, :, None], out], dim=2).cpu())
    out = {
        k: float(torch.cat(v).mean())
        for k, v in (
            ("psnr", psnr),
            ("ssim", ssim),
            ("psnr_x0_repeated", psnr0),
            ("ssim_x0_repeated", ssim0),
            ("psnr_with_speckle", psnr_s),
            ("ssim_with_speckle", ssim_s),
        )
        if v
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
        kl_weight, ssim_weight, adv_weight, warp_weight, texture_kl_weight,
            flow_weight: loss weights (see the module docstring; ``warp_weight`` only
            counts for a warping decoder, ``texture_kl_weight`` with a texture code).
        flow_root: with ``flow_weight > 0``, the phantom folder (``lddm-fast
            phantom`` output) of ``train_clips``, whose ``dataset.json`` gives each
            clip's true motion; the training clips are then unaugmented (no crop
            or flip, which would move the frames away from it).
        adv_start: step from which the decoder follows the discriminator.
        texture_kl_warmup: steps over which the texture KL weight ramps up from 0.
        init: an exported checkpoint (folder) whose autoencoder weights start the
            run; modules this config has and it lacks (a texture code added to a
            trained model) keep their fresh initialisation.
        freeze_encoder: keep the z encoder fixed (with ``init``): the latents, and so
            a stage-2 model trained on them, stay valid while the decoder learns.
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
        texture_kl_weight: float = 0.1,
        texture_kl_warmup: int = 0,
        flow_weight: float = 0.0,
        flow_root: str | Path | None = None,
        init: str | Path | None = None,
        freeze_encoder: bool = False,
        eval_clips: int = 64,
        device: torch.device | str = "cpu",
    ) -> None:
        self.config = config
        self.network = VideoAutoencoder(config.autoencoder)
        if init is not None:
            load_autoencoder_init(self.network, init)
        if freeze_encoder:
            if init is None:
                raise ValueError(
                    "freezing the encoder needs an init checkpoint (--init): a random "
                    "encoder would stay random"
                )
            self.network.encoder.requires_grad_(False)
        self.objective = AutoencoderObjective(
            self.network,
            kl_weight,
            ssim_weight,
            adv_weight,
            adv_start,
            warp_weight,
            texture_kl_weight,
            texture_kl_warmup,
            flow_weight,
        )
        if flow_weight > 0:
            if flow_root is None:
                raise ValueError("flow_weight > 0 needs the phantom's folder (flow_root)")
            self.dataset = PhantomFlowClips(eval_view(train_clips), flow_root)
        else:
            self.dataset = SeededClips(train_clips)
        self.collate = collate
        self.val = torch.utils.data.Subset(val_clips, range(min(eval_clips, len(val_clips))))
        self.device = torch.device(device)

    def inputs(self, batch: dict, device: torch.device) -> dict[str, torch.Tensor]:
        c_z, t, h, w = self.config.latent_shape
        generators = item_generators(batch["seed"])
        eps = per_item_randn(generators, (c_z, t, h, w), device)
        out = {"clip": batch["clip"].to(device, non_blocking=True), "eps": eps}
        if "flow" in batch:
            out["flow"] = batch["flow"].to(device, non_blocking=True)
        k = self.config.autoencoder.texture_channels
        if k:
            size = self.config.size
            out["texture_eps"] = per_item_randn(generators, (k, t, size, size), device)
        return out

    def evaluate(self, network: nn.Module, step: int) -> dict[str, float]:
        return reconstruction_metrics(network, self.val, next(network.parameters()).device)

    def export(self, network: nn.Module, directory: Path, meta: dict[str, Any]) -> None:
        export_checkpoint(directory, self.config, network, None, meta)
