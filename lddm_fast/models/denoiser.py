"""Stage 2: the conditional latent denoiser of LDDM, a pseudo-3D UNet.

It predicts the noise (or v, see ``LDDMConfig.prediction_type``) of a noisy latent
``z_t: [B, c_z, T, h, w]`` given the timestep and the first frame x0. x0 is encoded
to ``[B, c_cond, h, w]``, broadcast over time and concatenated with z_t; a learned
null encoding replaces it for samples whose condition is dropped (classifier-free
guidance). Each level stacks ResBlocks (per-frame 3x3 convs, timestep FiLM fused
into :func:`lddm_fast.ops.group_norm`), temporal 1-D convs, temporal attention
(:func:`lddm_fast.ops.temporal_attention`) and, at the lowest resolutions, spatial
self-attention. Every residual branch ends in a zero-initialised projection, so a
fresh model is the identity on its residual stream and predicts 0. The network runs
in channels_last_3d end to end.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lddm_fast import ops
from lddm_fast.models.config import DenoiserConfig
from lddm_fast.models.layers import (
    Conv2d,
    Conv3d,
    GroupNorm,
    ImageEncoder2d,
    PointwiseConv3d,
    SiLU,
    SpatialSelfAttention,
    TemporalAttention,
    channels_last,
    check_divisible,
    check_tensor,
    sinusoidal_embedding,
    spatial_conv,
    zero_init,
)

__all__ = ["DenoiserOutput", "LatentDenoiser"]


@dataclass
class DenoiserOutput:
    """sample: the prediction (eps or v) ``[B, c_z, T, h, w]``, channels_last_3d."""

    sample: torch.Tensor


class ResBlock(nn.Module):
    """Pseudo-3D ResBlock with timestep FiLM.

    ``skip(x) + conv2(gn_film_silu(conv1(gn_silu(x)), emb))`` with per-frame (1, 3, 3)
    convs; the FiLM scale/shift ``[B, C_out]`` come from a linear map of the timestep
    embedding and are fused into the second GroupNorm. conv2 starts at zero.
    """

    def __init__(
        self, in_channels: int, out_channels: int, temb_dim: int, groups: int, eps: float
    ) -> None:
        super().__init__()
        self.norm1 = GroupNorm(in_channels, groups, eps, activation="silu")
        self.conv1 = spatial_conv(in_channels, out_channels)
        self.film = nn.Linear(temb_dim, 2 * out_channels)
        self.norm2 = GroupNorm(out_channels, groups, eps, activation="silu")
        self.conv2 = zero_init(spatial_conv(out_channels, out_channels))
        self.skip = (
            PointwiseConv3d(in_channels, out_channels)
            if in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """x: ``[B, C_in, T, h, w]``; emb: activated timestep embedding ``[B, temb_dim]``
        -> ``[B, C_out, T, h, w]``."""
        h = self.conv1(self.norm1(x))
        scale, shift = self.film(emb).chunk(2, dim=1)
        h = self.conv2(self.norm2(h, scale, shift))
        return self.skip(x) + h


class TemporalConv(nn.Module):
    """``x + conv_t(gn_silu(x))`` with a (3, 1, 1) conv mixing neighbouring frames
    at each pixel; the conv starts at zero."""

    def __init__(self, channels: int, groups: int, eps: float) -> None:
        super().__init__()
        self.norm = GroupNorm(channels, groups, eps, activation="silu")
        self.conv = zero_init(Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``[B, C, T, h, w]`` -> same shape."""
        return x + self.conv(self.norm(x))


class UNetLayer(nn.Module):
    """One UNet layer: ResBlock -> temporal conv -> [spatial attention] -> [temporal
    attention]."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        config: DenoiserConfig,
        spatial_attention: bool,
        temporal_attention: bool,
    ) -> None:
        super().__init__()
        g, eps, hd = config.norm_groups, config.norm_eps, config.attention_head_dim
        self.resnet = ResBlock(in_channels, out_channels, config.temb_dim, g, eps)
        self.temporal_conv = TemporalConv(out_channels, g, eps)
        self.spatial_attention = (
            SpatialSelfAttention(out_channels, hd, g, eps) if spatial_attention else None
        )
        self.temporal_attention = (
            TemporalAttention(out_channels, hd, g, eps, config.frame_embedding, config.max_frames)
            if temporal_attention
            else None
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """x: ``[B, C_in, T, h, w]``; emb: ``[B, temb_dim]`` -> ``[B, C_out, T, h, w]``."""
        h = self.temporal_conv(self.resnet(x, emb))
        if self.spatial_attention is not None:
            h = self.spatial_attention(h)
        if self.temporal_attention is not None:
            h = self.temporal_attention(h)
        return h


class LatentDenoiser(nn.Module):
    """The conditional latent denoiser ``eps_theta(z_t, t, x0)``.

    Build it from a :class:`DenoiserConfig` or its keyword hyperparameters:
    ``LatentDenoiser(config)`` or ``LatentDenoiser(block_channels=(32, 64), ...)``.
    """

    def __init__(self, config: DenoiserConfig | None = None, **kwargs) -> None:
        super().__init__()
        if config is not None and kwargs:
            raise TypeError("pass either a config or keyword hyperparameters, not both")
        self.config = cfg = config if config is not None else DenoiserConfig(**kwargs)
        widths, g, eps = cfg.block_channels, cfg.norm_groups, cfg.norm_eps
        top = len(widths) - 1

        self.cond_encoder = ImageEncoder2d(cfg.image_channels, cfg.cond_encoder_channels, g, eps)
        self.cond_norm = GroupNorm(cfg.cond_encoder_channels[-1], g, eps, activation="silu")
        self.cond_out = Conv2d(cfg.cond_encoder_channels[-1], cfg.cond_channels, 3, padding=1)
        self.null_cond = nn.Parameter(torch.zeros(cfg.cond_channels))

        self.time_mlp = nn.Sequential(
            nn.Linear(widths[0], cfg.temb_dim), SiLU(), nn.Linear(cfg.temb_dim, cfg.temb_dim)
        )
        # One conv over [z_t, x0 encoding]; forward applies its two input slices
        # separately because the x0 half is the same for every frame.
        self.conv_in = spatial_conv(cfg.latent_channels + cfg.cond_channels, widths[0])

        self.down = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        skips = [widths[0]]
        prev = widths[0]
        for level, width in enumerate(widths):
            layers = []
            for _ in range(cfg.layers_per_block):
                layers.append(
                    UNetLayer(
                        prev,
                        width,
                        cfg,
                        cfg.spatial_attention[level],
                        cfg.temporal_attention[level],
                    )
                )
                prev = width
                skips.append(prev)
            self.down.append(nn.ModuleList(layers))
            if level < top:
                self.downsamples.append(spatial_conv(prev, prev, stride=2))
                skips.append(prev)

        self.mid = nn.ModuleList(
            [
                UNetLayer(prev, prev, cfg, cfg.spatial_attention[top], cfg.temporal_attention[top]),
                UNetLayer(prev, prev, cfg, False, False),
            ]
        )

        self.up = nn.ModuleList()
        self.upsamples = nn.ModuleList()
        for level in range(top, -1, -1):
            layers = []
            for _ in range(cfg.layers_per_block + 1):
                layers.append(
                    UNetLayer(
                        prev + skips.pop(),
                        widths[level],
                        cfg,
                        cfg.spatial_attention[level],
                        cfg.temporal_attention[level],
                    )
                )
                prev = widths[level]
            self.up.append(nn.ModuleList(layers))
            if level > 0:
                self.upsamples.append(spatial_conv(prev, prev))

        self.norm_out = GroupNorm(prev, g, eps, activation="silu")
        self.conv_out = zero_init(spatial_conv(prev, cfg.latent_channels))

    def encode_condition(
        self, x0: torch.Tensor, drop_cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The latent encoding of the first frame, computed once per sample so a sampler
        can reuse it at every step.

        Args:
            x0: ``[B, C, H, W]`` in [-1, 1], H and W divisible by the x0 encoder's
                factor f (8 in the presets).
            drop_cond: ``[B]`` bool; True replaces that sample's encoding by the learned
                null encoding (classifier-free guidance). None keeps every condition.

        Returns:
            ``[B, c_cond, H/f, W/f]`` channels_last.
        """
        check_tensor("x0", x0, 4, "[B, C, H, W]")
        cfg = self.config
        if x0.shape[1] != cfg.image_channels:
            raise ValueError(
                f"x0 has {x0.shape[1]} channels, the denoiser expects {cfg.image_channels}"
            )
        f = cfg.cond_downsample_factor
        check_divisible("x0 height H", x0.shape[2], f, "the x0 encoder's downsampling factor")
        check_divisible("x0 width W", x0.shape[3], f, "the x0 encoder's downsampling factor")
        feature = self.cond_encoder(channels_last(x0))[-1]
        cond = self.cond_out(self.cond_norm(feature))
        if drop_cond is None:
            return cond
        if not isinstance(drop_cond, torch.Tensor) or drop_cond.dtype != torch.bool:
            raise TypeError("drop_cond must be a bool tensor [B]")
        if drop_cond.shape != (x0.shape[0],):
            raise ValueError(
                f"drop_cond must have shape ({x0.shape[0]},) = [B], got {tuple(drop_cond.shape)}"
            )
        null = self.null_cond.to(cond.dtype).view(1, -1, 1, 1)
        return torch.where(drop_cond.to(cond.device).view(-1, 1, 1, 1), null, cond)

    def _timestep_embedding(
        self, timestep: torch.Tensor | float, batch: int, like: torch.Tensor
    ) -> torch.Tensor:
        t = torch.as_tensor(timestep, device=like.device)
        if t.dim() == 0:
            t = t.expand(batch)
        if t.shape != (batch,):
            raise ValueError(
                f"timestep must be a scalar or have shape ({batch},) = [B], got {tuple(t.shape)}"
            )
        emb = sinusoidal_embedding(t, self.config.block_channels[0]).to(like.dtype)
        return ops.silu(self.time_mlp(emb))

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float,
        x0: torch.Tensor | None = None,
        *,
        drop_cond: torch.Tensor | None = None,
        cond: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> DenoiserOutput | tuple[torch.Tensor]:
        """Predict eps (or v) for a noisy latent video.

        Args:
            sample: z_t ``[B, c_z, T, h, w]``; h and w divisible by
                ``2 ** (len(block_channels) - 1)``; T <= max_frames for a learned
                frame embedding.
            timestep: ``[B]`` or a scalar, integer or fractional diffusion step.
            x0: the first frame ``[B, C, h f, w f]``; or give ``cond`` instead.
            drop_cond: ``[B]`` bool, True drops that sample's x0 (only with ``x0``).
            cond: a precomputed :meth:`encode_condition` ``[B, c_cond, h, w]``.
            return_dict: return :class:`DenoiserOutput` (else a 1-tuple).

        Returns:
            ``DenoiserOutput(sample=[B, c_z, T, h, w])`` channels_last_3d.
        """
        cfg = self.config
        check_tensor("sample", sample, 5, "[B, c_z, T, h, w]")
        b, cz, t, h, w = sample.shape
        if cz != cfg.latent_channels:
            raise ValueError(
                f"sample has {cz} channels, the denoiser's c_z is {cfg.latent_channels}"
            )
        why = f"the UNet halves it {len(cfg.block_channels) - 1} times"
        check_divisible("latent height h", h, cfg.latent_multiple, why)
        check_divisible("latent width w", w, cfg.latent_multiple, why)
        if cfg.frame_embedding == "learned" and t > cfg.max_frames:
            raise ValueError(f"sample has T={t} frames, more than max_frames={cfg.max_frames}")
        if (x0 is None) == (cond is None):
            raise ValueError(
                "pass exactly one of x0 (the first frame) and cond (from encode_condition)"
            )
        if cond is None:
            f = cfg.cond_downsample_factor
            check_tensor("x0", x0, 4, "[B, C, H, W]")
            if x0.shape[0] != b or tuple(x0.shape[2:]) != (h * f, w * f):
                raise ValueError(
                    f"x0 has shape {tuple(x0.shape)} but the latent {tuple(sample.shape)} needs "
                    f"[B={b}, C, H={h * f}, W={w * f}] (factor {f})"
                )
            cond = self.encode_condition(x0, drop_cond)
        elif drop_cond is not None:
            raise ValueError("drop_cond applies to x0; pass it to encode_condition with cond")
        elif tuple(cond.shape) != (b, cfg.cond_channels, h, w):
            raise ValueError(
                f"cond has shape {tuple(cond.shape)}, expected "
                f"{(b, cfg.cond_channels, h, w)} [B, c_cond, h, w]"
            )

        emb = self._timestep_embedding(timestep, b, sample)
        weight = self.conv_in.weight
        x = F.conv3d(channels_last(sample), weight[:, :cz], self.conv_in.bias, padding=(0, 1, 1))
        x = x.contiguous(memory_format=torch.channels_last_3d)  # see layers.Conv3d
        x = x + F.conv2d(cond, weight[:, cz:, 0], padding=1).unsqueeze(2)

        skips = [x]
        for level, layers in enumerate(self.down):
            for layer in layers:
                x = layer(x, emb)
                skips.append(x)
            if level < len(self.downsamples):
                x = self.downsamples[level](x)
                skips.append(x)
        for layer in self.mid:
            x = layer(x, emb)
        for i, layers in enumerate(self.up):
            for layer in layers:
                x = layer(torch.cat([x, skips.pop()], dim=1), emb)
            if i < len(self.upsamples):
                x = F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest")
                x = self.upsamples[i](x)
        out = self.conv_out(self.norm_out(x))
        return DenoiserOutput(out) if return_dict else (out,)
