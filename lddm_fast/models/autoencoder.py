"""Stage 1: the video autoencoder of LDDM.

The encoder maps T frames to the latent dynamics ``z: [B, c_z, T, H/f, W/f]`` as a
diagonal Gaussian; the decoder rebuilds the frames from z and the first frame x0,
which modulates every decoder block spatially (SPADE) from a 2-D encoding broadcast
over time, so z only has to carry what changes. With a texture code
(``AutoencoderConfig.texture_channels``) the decoder also takes ``n: [B, k, T, H, W]``,
inferred from the clip when rebuilding it and drawn from N(0, I) when generating.
With fitted speckle (``AutoencoderConfig.speckle_frames``) generation also draws
speckle over the decoded frames: log-compressed speckle with a fitted std table
(:mod:`.speckle`), or speckle imaged from point scatterers that the decoder's field
moves (``speckle_model="scatterers"``, :mod:`.scatterers`). Runs in channels_last_3d.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lddm_fast import ops
from lddm_fast.models.config import SCATTERER_SPECKLE_MODELS, AutoencoderConfig
from lddm_fast.models.layers import (
    Conv2d,
    Conv3d,
    GroupNorm,
    ImageEncoder2d,
    PointwiseConv3d,
    ResBlock3d,
    SiLU,
    channels_last,
    check_divisible,
    check_tensor,
    spatial_conv,
    zero_init,
)
from lddm_fast.models.scatterers import ScattererSpeckle
from lddm_fast.models.speckle import SpeckleResidual

__all__ = [
    "AutoencoderOutput",
    "DecoderOutput",
    "DiagonalGaussian",
    "EncoderOutput",
    "VideoAutoencoder",
]


class DiagonalGaussian:
    """A diagonal Gaussian posterior over z (or over the texture code).

    Args:
        mean, logvar: ``[B, c_z, T, h, w]`` (any shape); logvar is clamped to [-30, 20] so exp()
            stays finite.
    """

    def __init__(self, mean: torch.Tensor, logvar: torch.Tensor) -> None:
        self.mean = mean
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """A reparameterised draw ``mean + std * eps``, ``[B, c_z, T, h, w]``; eps comes
        from ``generator`` so a draw is reproducible."""
        eps = torch.randn(
            self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype
        )
        return self.mean + self.std * eps

    def mode(self) -> torch.Tensor:
        """The mean, ``[B, c_z, T, h, w]``."""
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) per sample, summed over (c_z, T, h, w): ``[B]`` float32."""
        mean, logvar = self.mean.float(), self.logvar.float()
        return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)


@dataclass
class EncoderOutput:
    """latent_dist: the posterior over z ``[B, c_z, T, h, w]``."""

    latent_dist: DiagonalGaussian


@dataclass
class DecoderOutput:
    """sample: rebuilt frames 1..T, ``[B, C, T, H, W]`` channels_last_3d.

    With ``AutoencoderConfig.warp``, also ``warped``: x0 moved by the predicted
    displacement field, ``[B, C, T, H, W]``, and ``flow``: that field in pixels,
    ``[B, 2, T, H, W]`` (x then y); None otherwise.
    """

    sample: torch.Tensor
    warped: torch.Tensor | None = None
    flow: torch.Tensor | None = None


@dataclass
class AutoencoderOutput:
    """sample: rebuilt frames ``[B, C, T, H, W]``; latent_dist: the posterior over z;
    texture_dist: the posterior over the texture code ``[B, k, T, H, W]`` (None
    without one)."""

    sample: torch.Tensor
    latent_dist: DiagonalGaussian
    texture_dist: DiagonalGaussian | None = None


class SpadeNorm(nn.Module):
    """Parameter-free GroupNorm of a video, modulated per pixel by an x0 feature map
    broadcast over time, then SiLU: ``silu(norm(x) * (1 + gamma) + beta)``.

    gamma and beta come from one 3x3 conv of the x0 features, as ``[B, C, 1, H, W]``
    views of its output; norm, modulation and SiLU are one
    :func:`lddm_fast.ops.group_norm` call (its spatial scale/shift form).
    """

    def __init__(self, channels: int, cond_channels: int, groups: int, eps: float) -> None:
        super().__init__()
        self.num_groups = groups
        self.eps = eps
        self.modulation = Conv2d(cond_channels, 2 * channels, 3, padding=1)

    def forward(self, x: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
        """x: ``[B, C, T, H, W]``; feature: ``[B, C_cond, H, W]``. Returns x's shape."""
        gamma, beta = self.modulation(feature).unsqueeze(2).chunk(2, dim=1)
        return ops.group_norm(
            x, self.num_groups, eps=self.eps, scale=gamma, shift=beta, activation="silu"
        )

    def forward_unfused(self, x: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
        """The same output as :meth:`forward` from the unfused formulation (a GroupNorm
        op, then the modulation and the SiLU as eager ops): the baseline the tests and
        the benchmarks' model suite compare the fused path against."""
        gamma, beta = self.modulation(feature).unsqueeze(2).chunk(2, dim=1)
        h = ops.group_norm(x, self.num_groups, eps=self.eps)
        return ops.silu(torch.addcmul(beta, h, 1.0 + gamma), inplace=True)


class SpadeResBlock3d(nn.Module):
    """Decoder ResBlock: SPADE(x0) -> 3x3x3 conv -> SPADE(x0) -> 3x3x3 conv, plus skip."""

    def __init__(
        self, in_channels: int, out_channels: int, cond_channels: int, groups: int, eps: float
    ) -> None:
        super().__init__()
        self.norm1 = SpadeNorm(in_channels, cond_channels, groups, eps)
        self.conv1 = Conv3d(in_channels, out_channels, 3, padding=1)
        self.norm2 = SpadeNorm(out_channels, cond_channels, groups, eps)
        self.conv2 = Conv3d(out_channels, out_channels, 3, padding=1)
        self.skip = (
            PointwiseConv3d(in_channels, out_channels)
            if in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
        """x: ``[B, C_in, T, H, W]``; feature: ``[B, C_cond, H, W]`` -> ``[B, C_out, T, H, W]``."""
        h = self.conv1(self.norm1(x, feature))
        h = self.conv2(self.norm2(h, feature))
        return self.skip(x) + h


class VideoEncoder(nn.Module):
    """3-D conv ResNet ``[B, C, T, H, W] -> [B, 2 c_z, T, H/f, W/f]`` (mean and logvar).
    Time is never downsampled: z has one slice per frame."""

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        widths, g, eps = config.block_channels, config.norm_groups, config.norm_eps
        self.conv_in = Conv3d(config.in_channels, widths[0], 3, padding=1)
        self.levels = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        prev = widths[0]
        for level, width in enumerate(widths):
            blocks = []
            for _ in range(config.layers_per_block):
                blocks.append(ResBlock3d(prev, width, g, eps))
                prev = width
            self.levels.append(nn.ModuleList(blocks))
            if level < len(widths) - 1:
                self.downsamples.append(spatial_conv(width, width, stride=2))
        self.mid = ResBlock3d(prev, prev, g, eps)
        self.norm_out = GroupNorm(prev, g, eps, activation="silu")
        self.conv_out = Conv3d(prev, 2 * config.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``[B, C, T, H, W]`` -> ``[B, 2 c_z, T, H/f, W/f]``."""
        h = self.conv_in(x)
        for level, blocks in enumerate(self.levels):
            for block in blocks:
                h = block(h)
            if level < len(self.downsamples):
                h = self.downsamples[level](h)
        return self.conv_out(self.norm_out(self.mid(h)))


class TextureEncoder(nn.Module):
    """``q(n | clip)``: frames ``[B, C, T, H, W]`` and x0 ``[B, C, H, W]`` ->
    ``[B, 2k, T, H, W]`` (mean and logvar of the texture code, per frame at image
    resolution: speckle is a few pixels wide, and measured on the warping model's
    held-out residuals it decorrelates within two frames, so a code shared by the
    clip could not hold it). Each frame is seen next to x0.
    """

    def __init__(self, config: AutoencoderConfig, width: int = 16) -> None:
        super().__init__()
        c, k = config.in_channels, config.texture_channels
        self.body = nn.Sequential(
            Conv3d(2 * c, width, 3, padding=1),
            SiLU(),
            Conv3d(width, width, 3, padding=1),
            SiLU(),
            Conv3d(width, 2 * k, 3, padding=1),
        )

    def forward(self, frames: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """frames ``[B, C, T, H, W]``, x0 ``[B, C, H, W]`` -> ``[B, 2k, T, H, W]``."""
        pairs = torch.cat([frames, x0[:, :, None].expand_as(frames)], dim=1)
        return self.body(channels_last(pairs))


def warp_image(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Move one image into every frame of a displacement field.

    Args:
        image: ``[B, C, H, W]``.
        flow: ``[B, 2, T, H, W]``, in pixels: output pixel (y, x) of frame t samples
            ``image`` at (y + flow[:, 1], x + flow[:, 0]), bilinearly, edges clamped.

    Returns:
        ``[B, C, T, H, W]`` channels_last_3d.
    """
    b, c, h, w = image.shape
    t = flow.shape[2]
    ys = (torch.arange(h, device=flow.device, dtype=flow.dtype) + 0.5) * (2.0 / h) - 1.0
    xs = (torch.arange(w, device=flow.device, dtype=flow.dtype) + 0.5) * (2.0 / w) - 1.0
    scale = torch.tensor([2.0 / w, 2.0 / h], device=flow.device, dtype=flow.dtype)
    base = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # [H, W, 2]
    grid = base + flow.permute(0, 2, 3, 4, 1) * scale  # [B, T, H, W, 2]
    frames = image.to(flow.dtype)[:, None].expand(b, t, c, h, w).reshape(b * t, c, h, w)
    out = F.grid_sample(
        frames, grid.reshape(b * t, h, w, 2), padding_mode="border", align_corners=False
    )
    return channels_last(out.reshape(b, t, c, h, w).transpose(1, 2))


class VideoDecoder(nn.Module):
    """Upsampling 3-D conv ResNet ``D(z, x0)``: ``[B, c_z, T, h, w]`` and x0 features ->
    ``[B, C, T, h f, w f]``. Every block is SPADE-modulated by the x0 feature map of
    its resolution.

    With ``config.warp``, a head at level ``config.flow_level`` (by default one finer
    than z) predicts a displacement field (upsampled bilinearly, so it is smooth), and
    the last conv a per-pixel gate that blends x0 warped by it with the decoder's own
    frames: speckle that moves with the tissue comes from x0, what x0 cannot explain
    (decorrelation, new tissue) from the network. The head starts at zero displacement.

    With ``config.texture_channels``, a head over the last features and the texture
    code adds the per-frame detail that neither x0 nor the coarse z holds; its last
    conv starts at zero, so adding a texture code to a trained decoder starts from
    that decoder's output.
    """

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        widths, g, eps = config.block_channels, config.norm_groups, config.norm_eps
        cond = config.cond_block_channels
        top = len(widths) - 1
        self.conv_in = Conv3d(config.latent_channels, widths[top], 3, padding=1)
        self.mid = SpadeResBlock3d(widths[top], widths[top], cond[top], g, eps)
        self.levels = nn.ModuleList()
        self.upsamples = nn.ModuleList()
        prev = widths[top]
        for level in range(top, -1, -1):
            blocks = []
            for _ in range(config.layers_per_block):
                blocks.append(SpadeResBlock3d(prev, widths[level], cond[level], g, eps))
                prev = widths[level]
            self.levels.append(nn.ModuleList(blocks))
            if level > 0:
                self.upsamples.append(spatial_conv(prev, prev))
        self.norm_out = GroupNorm(prev, g, eps, activation="silu")
        self.warp = config.warp
        self.flow_level = config.flow_level
        self.conv_out = Conv3d(prev, config.in_channels + int(self.warp), 3, padding=1)
        if self.warp:
            width = widths[self.flow_level]
            self.flow_head = nn.Sequential(
                GroupNorm(width, g, eps, activation="silu"),
                zero_init(Conv3d(width, 2, 3, padding=1)),
            )
        self.texture_channels = config.texture_channels
        if self.texture_channels:
            self.texture_head = nn.Sequential(
                Conv3d(prev + self.texture_channels, prev, 3, padding=1),
                SiLU(),
                zero_init(Conv3d(prev, config.in_channels, 3, padding=1)),
            )

    def forward(
        self,
        z: torch.Tensor,
        features: list[torch.Tensor],
        x0: torch.Tensor | None = None,
        texture: torch.Tensor | None = None,
    ) -> DecoderOutput:
        """z: ``[B, c_z, T, h, w]``; features: x0 pyramid, finest first (level l at
        ``h f / 2**l``); x0 ``[B, C, h f, w f]`` (needed with ``warp``); texture
        ``[B, k, T, h f, w f]`` (needed with ``texture_channels``) -> frames
        ``[B, C, T, h f, w f]`` (and the warp's parts, see :class:`DecoderOutput`)."""
        top = len(features) - 1
        h = self.mid(self.conv_in(z), features[top])
        flow = None
        for i, blocks in enumerate(self.levels):
            level = top - i
            for block in blocks:
                h = block(h, features[level])
            if self.warp and level == self.flow_level:
                flow = self.flow_head(h).float()
            if level > 0:
                h = F.interpolate(h, scale_factor=(1.0, 2.0, 2.0), mode="nearest")
                h = self.upsamples[i](h)
        h = self.norm_out(h)
        frames = self.conv_out(h)
        warped = None
        if self.warp:
            size = frames.shape[-2:]
            flow = F.interpolate(flow, size=(frames.shape[2], *size), mode="trilinear")
            warped = warp_image(x0, flow).to(frames.dtype)
            content, gate = frames[:, :-1], torch.sigmoid(frames[:, -1:])
            frames = torch.lerp(content, warped, gate)
        if self.texture_channels:
            frames = frames + self.texture_head(torch.cat([h, texture.to(h.dtype)], dim=1))
        return DecoderOutput(channels_last(frames), warped, flow)


class VideoAutoencoder(nn.Module):
    """The LDDM video autoencoder: ``E(frames) -> q(z)`` and ``D(z, x0) -> frames``.

    Build it from an :class:`AutoencoderConfig` or its keyword hyperparameters:
    ``VideoAutoencoder(config)`` or ``VideoAutoencoder(in_channels=3, ...)``.
    Inputs are converted to channels_last_3d once; outputs stay in it.
    """

    def __init__(self, config: AutoencoderConfig | None = None, **kwargs) -> None:
        super().__init__()
        if config is not None and kwargs:
            raise TypeError("pass either a config or keyword hyperparameters, not both")
        self.config = config if config is not None else AutoencoderConfig(**kwargs)
        self.encoder = VideoEncoder(self.config)
        self.cond_encoder = ImageEncoder2d(
            self.config.in_channels,
            self.config.cond_block_channels,
            self.config.norm_groups,
            self.config.norm_eps,
        )
        self.decoder = VideoDecoder(self.config)
        self.texture_encoder = TextureEncoder(self.config) if self.config.texture_channels else None
        self.speckle = None
        if self.config.speckle_frames and self.config.speckle_model in SCATTERER_SPECKLE_MODELS:
            self.speckle = ScattererSpeckle(retrieve=self.config.speckle_model == "retrieved")
        elif self.config.speckle_frames:
            self.speckle = SpeckleResidual(self.config.in_channels, self.config.speckle_frames)

    def _check_frames(self, name: str, frames: torch.Tensor) -> None:
        check_tensor(name, frames, 5, "[B, C, T, H, W]")
        c = self.config.in_channels
        if frames.shape[1] != c:
            raise ValueError(f"{name} has {frames.shape[1]} channels, the autoencoder expects {c}")
        f = self.config.downsample_factor
        why = "the autoencoder's spatial downsampling factor"
        check_divisible(f"{name} height H", frames.shape[3], f, why)
        check_divisible(f"{name} width W", frames.shape[4], f, why)

    def encode(self, frames: torch.Tensor) -> EncoderOutput:
        """frames: ``[B, C, T, H, W]`` in [-1, 1], H and W divisible by f (8 in the
        presets). Returns the posterior over z ``[B, c_z, T, H/f, W/f]`` (mean and
        logvar channels_last_3d)."""
        self._check_frames("frames", frames)
        moments = self.encoder(channels_last(frames))
        # The halves are channel-strided views; give each its own channels_last_3d
        # storage so z feeds the denoiser without a layout change.
        mean, logvar = (channels_last(m) for m in moments.chunk(2, dim=1))
        return EncoderOutput(DiagonalGaussian(mean, logvar))

    def encode_texture(self, frames: torch.Tensor, x0: torch.Tensor) -> DiagonalGaussian:
        """The posterior over the texture code: frames 1..T ``[B, C, T, H, W]`` and x0
        ``[B, C, H, W]`` -> a Gaussian over ``[B, k, T, H, W]``. Only with
        ``config.texture_channels``."""
        if self.texture_encoder is None:
            raise ValueError("this autoencoder has no texture code (texture_channels is 0)")
        self._check_frames("frames", frames)
        check_tensor("x0", x0, 4, "[B, C, H, W]")
        mean, logvar = self.texture_encoder(frames, x0).chunk(2, dim=1)
        return DiagonalGaussian(mean, logvar)

    def texture_shape(self, z: torch.Tensor) -> tuple[int, int, int, int, int]:
        """The texture code's shape ``(B, k, T, h f, w f)`` for ``z: [B, c_z, T, h, w]``."""
        b, _, t, h, w = z.shape
        f = self.config.downsample_factor
        return (b, self.config.texture_channels, t, h * f, w * f)

    def speckle_shape(self, z: torch.Tensor) -> tuple[int, ...]:
        """The speckle noise's shape for ``z: [B, c_z, T, h, w]``: ``(B, 2C, T, h f, w f)``
        for the residual model, ``(B, 2, T + 1, Nz, Nx)`` for the scatterers (see their
        ``noise_shape``)."""
        if self.speckle is None:
            raise ValueError("this autoencoder has no speckle model")
        b, _, t, h, w = z.shape
        f = self.config.downsample_factor
        return self.speckle.noise_shape((b, self.config.in_channels, t, h * f, w * f))

    def add_speckle(
        self,
        frames: torch.Tensor,
        noise: torch.Tensor,
        flow: torch.Tensor | None = None,
        x0: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Decoded means ``frames [B, C, T, H, W]`` with speckle drawn from ``noise`` (of
        :meth:`speckle_shape`); ``flow``: the decoder's field (:class:`DecoderOutput`),
        which the scatterer models move their scatterers by; ``x0 [B, C, H, W]``: the
        first frame, whose own scatterers the ``"retrieved"`` model moves."""
        if self.speckle is None:
            raise ValueError("speckle noise given, but this autoencoder has no speckle model")
        # The speckle module checks the noise's shape against the frames'.
        return channels_last(self.speckle(frames, noise, flow, x0))

    def decode(
        self,
        z: torch.Tensor,
        x0: torch.Tensor,
        texture: torch.Tensor | None = None,
        speckle: torch.Tensor | None = None,
    ) -> DecoderOutput:
        """z: ``[B, c_z, T, h, w]``; x0: first frame ``[B, C, h f, w f]``. Returns frames
        1..T, ``[B, C, T, h f, w f]`` channels_last_3d.

        texture: with ``config.texture_channels`` k, the code ``[B, k, T, h f, w f]``: a
        draw from N(0, I) when generating, the posterior's (:meth:`encode_texture`)
        when rebuilding a clip. None decodes with the prior's mean (zeros): no fresh
        texture. Must be None without a texture code.

        speckle: with ``config.speckle_frames``, white noise N(0, I) of
        :meth:`speckle_shape` that the speckle model (``config.speckle_model``) turns
        into speckle over the frames (generation); None returns the mean (rebuilding,
        PSNR). Must be None without fitted speckle."""
        check_tensor("z", z, 5, "[B, c_z, T, h, w]")
        check_tensor("x0", x0, 4, "[B, C, H, W]")
        cz, f = self.config.latent_channels, self.config.downsample_factor
        if z.shape[1] != cz:
            raise ValueError(f"z has {z.shape[1]} channels, the autoencoder's c_z is {cz}")
        b, _, _, h, w = z.shape
        want = (b, self.config.in_channels, h * f, w * f)
        if tuple(x0.shape) != want:
            raise ValueError(
                f"x0 has shape {tuple(x0.shape)} but z {tuple(z.shape)} needs x0 of shape {want} "
                f"[B, C, h*{f}, w*{f}]"
            )
        k = self.config.texture_channels
        if texture is not None and not k:
            raise ValueError("texture given, but this autoencoder has no texture code")
        if k:
            if texture is None:
                texture = x0.new_zeros(self.texture_shape(z))
            elif tuple(texture.shape) != self.texture_shape(z):
                raise ValueError(
                    f"texture has shape {tuple(texture.shape)}, z {tuple(z.shape)} needs "
                    f"{self.texture_shape(z)} [B, k, T, h*f, w*f]"
                )
        if speckle is not None:
            if self.speckle is None:
                raise ValueError("speckle noise given, but this autoencoder has no speckle model")
            if tuple(speckle.shape) != self.speckle_shape(z):
                raise ValueError(
                    f"speckle has shape {tuple(speckle.shape)}, z {tuple(z.shape)} needs "
                    f"{self.speckle_shape(z)}"
                )
        features = self.cond_encoder(channels_last(x0))
        out = self.decoder(channels_last(z), features, x0, texture)
        if speckle is not None:
            out.sample = self.add_speckle(out.sample, speckle, out.flow, x0)
        return out

    def forward(
        self,
        frames: torch.Tensor,
        x0: torch.Tensor,
        *,
        sample_posterior: bool = True,
        generator: torch.Generator | None = None,
    ) -> AutoencoderOutput:
        """Encode and rebuild a clip (the stage-1 training pass).

        Args:
            frames: frames 1..T ``[B, C, T, H, W]`` in [-1, 1].
            x0: the first frame ``[B, C, H, W]``.
            sample_posterior: decode a draw of z (training) or its mean.
            generator: source of the draw.

        Returns:
            :class:`AutoencoderOutput` with ``sample [B, C, T, H, W]`` and the posteriors.
        """
        posterior = self.encode(frames).latent_dist
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        texture_dist = texture = None
        if self.texture_encoder is not None:
            texture_dist = self.encode_texture(frames, x0)
            texture = texture_dist.sample(generator) if sample_posterior else texture_dist.mode()
        return AutoencoderOutput(self.decode(z, x0, texture).sample, posterior, texture_dist)
