"""Building blocks shared by the autoencoder and the denoiser.

Every norm, activation and temporal attention goes through
:mod:`lddm_fast.ops`, so the fused kernels of the selected backend run under the
models. Video tensors are ``[B, C, T, H, W]`` in channels_last_3d (images
``[B, C, H, W]`` in channels_last): the conv wrappers here return that layout whatever
kernel ATen picks, and the ops keep their input's layout.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lddm_fast import ops

CHANNELS_LAST_3D = torch.channels_last_3d


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """x (4-D or 5-D) with channels-last strides, copying only when needed.

    With one channel the contiguous strides already pass
    ``is_contiguous(memory_format=channels_last)``, so ``x.contiguous(...)`` would keep
    them, yet convolutions read such a tensor as contiguous and answer in contiguous
    format; writing the channels-last strides out makes the whole network follow.
    """
    fmt = CHANNELS_LAST_3D if x.dim() == 5 else torch.channels_last
    if x.stride(1) == 1 or x.shape[1] > 1:
        return x.contiguous(memory_format=fmt)
    return torch.empty_like(x, memory_format=fmt).copy_(x)


class GroupNorm(nn.Module):
    """GroupNorm with affine weights whose forward is one :func:`lddm_fast.ops.group_norm`
    call, optionally fused with a per-sample FiLM scale/shift and a SiLU.

    Args:
        num_channels: C.
        num_groups: G, a divisor of C.
        eps: variance epsilon.
        activation: None or ``"silu"``, applied after the affine and FiLM.
    """

    def __init__(
        self, num_channels: int, num_groups: int, eps: float = 1e-5, activation: str | None = None
    ) -> None:
        super().__init__()
        self.num_groups = num_groups
        self.eps = eps
        self.activation = activation
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(
        self, x: torch.Tensor, scale: torch.Tensor | None = None, shift: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x: ``[N, C, *spatial]``; scale, shift: ``[N, C]`` or None. Returns x's shape
        and memory format."""
        return ops.group_norm(
            x,
            self.num_groups,
            self.weight,
            self.bias,
            self.eps,
            scale=scale,
            shift=shift,
            activation=self.activation,
        )

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, groups={self.num_groups}, activation={self.activation}"


class SiLU(nn.Module):
    """``nn.SiLU`` through :func:`lddm_fast.ops.silu`, for the activations that have no
    norm before them (the time MLP, the texture-code layers)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: any shape. Returns x's shape and memory format."""
        return ops.silu(x)


def _onednn_convolution(conv: nn.Conv2d | nn.Conv3d, x: torch.Tensor) -> torch.Tensor | None:
    """``conv(x)`` through oneDNN when it is float32 CPU inference, else None.

    ATen's CPU heuristic sends a batch-1 convolution whose ``N*C*D*H`` (3-D) or
    ``N*C*H*W`` (2-D) is at most 20,480 to its native im2col kernel. At this model's
    batch-1 shapes that kernel is 3-18x slower than oneDNN, on one thread as on two
    (phantom64 [1, 16, 16, 64, 64] 3x3x3: 298 ms vs 16.5 ms; [1, 64, 16, 8, 8]: 14.6 vs
    1.3 ms), and it was 70% of a batch-1 sampling call. Where ATen picks oneDNN itself
    (batch > 1) this is the same kernel. Training keeps ATen's path (its autograd).
    """
    if (
        type(x) is not torch.Tensor  # fake, meta-like and other subclasses: ATen's dispatch
        or x.device.type != "cpu"
        or x.dtype != torch.float32
        or conv.padding_mode != "zeros"
        or isinstance(conv.padding, str)
        or (torch.is_grad_enabled() and (x.requires_grad or conv.weight.requires_grad))
        or not torch.backends.mkldnn.is_available()
        or not torch.backends.mkldnn.enabled
        or torch.compiler.is_compiling()
    ):
        return None
    return torch.ops.aten.mkldnn_convolution(
        x, conv.weight, conv.bias, conv.padding, conv.stride, conv.dilation, conv.groups
    )


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` whose output is channels_last_3d whichever kernel ATen picks, and
    which takes oneDNN for CPU inference where ATen would pick its slow native kernel
    (:func:`_onednn_convolution`).

    On CPU, small problems (batch 1 with few elements, or (k, 1, 1) kernels on one
    thread) go to ATen's native convolution, which answers in contiguous format;
    restoring the layout here keeps the model channels_last_3d end to end. When the
    kernel kept the layout this is a stride check, not a copy.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``[B, C_in, T, H, W]`` -> ``[B, C_out, T', H', W']`` channels_last_3d."""
        y = _onednn_convolution(self, x)
        y = super().forward(x) if y is None else y
        return y.contiguous(memory_format=CHANNELS_LAST_3D)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` whose output is channels_last (see :class:`Conv3d` for why)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``[B, C_in, H, W]`` -> ``[B, C_out, H', W']`` channels_last."""
        y = _onednn_convolution(self, x)
        y = super().forward(x) if y is None else y
        return y.contiguous(memory_format=torch.channels_last)


class PointwiseConv3d(nn.Conv3d):
    """1x1x1 conv computed as one matmul over the channel axis of the
    ``[B, T, H, W, C]`` view of a channels_last_3d video: no layout round trip and
    no dependence on ATen's conv heuristics. Same parameters as ``nn.Conv3d(k=1)``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``[B, C_in, T, H, W]`` -> ``[B, C_out, T, H, W]`` channels_last_3d."""
        y = F.linear(x.permute(0, 2, 3, 4, 1), self.weight.flatten(1), self.bias)
        return y.permute(0, 4, 1, 2, 3)


def spatial_conv(in_channels: int, out_channels: int, stride: int = 1) -> Conv3d:
    """A per-frame 3x3 conv on video: Conv3d with kernel (1, 3, 3) (stride in H, W only)."""
    return Conv3d(
        in_channels, out_channels, (1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1)
    )


def zero_init(module: nn.Module) -> nn.Module:
    """Zero a projection's weights and bias so the residual branch it ends starts at 0
    (the block starts as the identity)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def draw_zero_parameters(module: nn.Module, std: float = 0.02) -> nn.Module:
    """Undo :func:`zero_init` for tests and benchmarks: every all-zero parameter of
    ``module`` gets N(0, std^2) values from the global RNG, so no branch of an untrained
    model computes nothing and parity checks cover every op. Returns ``module``."""
    with torch.no_grad():
        for p in module.parameters():
            if not p.any():
                p.normal_(0.0, std)
    return module


def sinusoidal_embedding(
    positions: torch.Tensor, dim: int, max_period: float = 10000.0
) -> torch.Tensor:
    """Transformer-style sinusoidal embedding of (possibly fractional) positions.

    Args:
        positions: ``[N]``, any real dtype (timesteps or frame indices).
        dim: embedding width.

    Returns:
        ``[N, dim]`` float32: ``[cos(p * f_i), sin(p * f_i)]`` with geometric frequencies
        ``f_i = max_period ** (-i / (dim // 2))`` (a zero column last when dim is odd).
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period)
        * torch.arange(half, dtype=torch.float32, device=positions.device)
        / half
    )
    args = positions.to(torch.float32)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    return F.pad(emb, (0, dim % 2))


def check_divisible(what: str, size: int, multiple: int, why: str) -> None:
    """Raise a ValueError naming the size when ``size`` is not a multiple of ``multiple``."""
    if size % multiple:
        raise ValueError(f"{what}={size} is not divisible by {multiple} ({why})")


def check_tensor(name: str, x: torch.Tensor, dims: int, layout: str) -> None:
    """Raise a clear error unless x is a floating tensor with ``dims`` dimensions."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {layout}, got {type(x).__name__}")
    if x.dim() != dims:
        raise ValueError(f"{name} must be {dims}-D {layout}, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")


class ResBlock3d(nn.Module):
    """Pre-activation video ResBlock with full 3x3x3 convs (autoencoder encoder).

    ``x + conv(act(norm(conv(act(norm(x))))))`` with a 1x1x1 skip projection when
    the width changes.
    """

    def __init__(self, in_channels: int, out_channels: int, groups: int, eps: float) -> None:
        super().__init__()
        self.norm1 = GroupNorm(in_channels, groups, eps, activation="silu")
        self.conv1 = Conv3d(in_channels, out_channels, 3, padding=1)
        self.norm2 = GroupNorm(out_channels, groups, eps, activation="silu")
        self.conv2 = Conv3d(out_channels, out_channels, 3, padding=1)
        self.skip = (
            PointwiseConv3d(in_channels, out_channels)
            if in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``[B, C_in, T, H, W]`` -> ``[B, C_out, T, H, W]``."""
        h = self.conv1(self.norm1(x))
        h = self.conv2(self.norm2(h))
        return self.skip(x) + h


class ResBlock2d(nn.Module):
    """Pre-activation image ResBlock (x0 encoders): ``[B, C_in, H, W] -> [B, C_out, H, W]``."""

    def __init__(self, in_channels: int, out_channels: int, groups: int, eps: float) -> None:
        super().__init__()
        self.norm1 = GroupNorm(in_channels, groups, eps, activation="silu")
        self.conv1 = Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = GroupNorm(out_channels, groups, eps, activation="silu")
        self.conv2 = Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = (
            Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``[B, C_in, H, W]`` -> ``[B, C_out, H, W]``."""
        h = self.conv1(self.norm1(x))
        h = self.conv2(self.norm2(h))
        return self.skip(x) + h


class SpatialSelfAttention(nn.Module):
    """Self-attention over the h*w positions of each frame (low resolutions only).

    GroupNorm -> 1x1x1 qkv projection -> softmax attention per (batch, frame, head)
    via ``torch.nn.functional.scaled_dot_product_attention`` -> zero-initialised 1x1x1
    out projection -> residual. The sequence here is space, not time, so
    :func:`lddm_fast.ops.temporal_attention` does not apply.
    """

    def __init__(self, channels: int, head_dim: int, groups: int, eps: float) -> None:
        super().__init__()
        self.num_heads = channels // head_dim
        self.norm = GroupNorm(channels, groups, eps)
        self.qkv = PointwiseConv3d(channels, 3 * channels)
        self.proj_out = zero_init(PointwiseConv3d(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``[B, C, T, H, W]`` -> same shape and memory format."""
        b, c, t, h, w = x.shape
        d = c // self.num_heads
        qkv = self.qkv(self.norm(x))
        # [B, 3C, T, H, W] -> [3, B, T, heads, H*W, d]: qkv is channels_last_3d, so
        # this is a view, and SDPA takes the strided q, k, v as they are.
        qkv = qkv.permute(0, 2, 3, 4, 1).reshape(b, t, h * w, 3, self.num_heads, d)
        q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        # [B, T, heads, HW, d] -> [B, T, H, W, C] (one copy), viewed as [B, C, T, H, W]
        # in channels_last_3d strides.
        out = out.permute(0, 1, 3, 2, 4).reshape(b, t, h, w, c).permute(0, 4, 1, 2, 3)
        return x + self.proj_out(out)


class TemporalAttention(nn.Module):
    """Multi-head self-attention over the T frames at every spatial position.

    GroupNorm -> (+ frame position embedding) -> 1x1x1 conv to qkv ->
    :func:`lddm_fast.ops.temporal_attention` on three strided channel views of the qkv
    tensor (no copies) -> zero-initialised 1x1x1 out projection -> residual.

    Args:
        channels: C.
        head_dim: channels per head (heads = C / head_dim).
        groups, eps: GroupNorm settings.
        frame_embedding: ``"learned"`` (a ``max_frames`` x C table) or
            ``"sinusoidal"`` (fixed, any T).
        max_frames: the longest clip a learned table supports.
    """

    def __init__(
        self,
        channels: int,
        head_dim: int,
        groups: int,
        eps: float,
        frame_embedding: str,
        max_frames: int,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.num_heads = channels // head_dim
        self.frame_embedding = frame_embedding
        self.norm = GroupNorm(channels, groups, eps)
        if frame_embedding == "learned":
            self.frame_pos = nn.Parameter(torch.empty(max_frames, channels))
            nn.init.normal_(self.frame_pos, std=0.02)
        self.qkv = PointwiseConv3d(channels, 3 * channels)
        self.proj_out = zero_init(PointwiseConv3d(channels, channels))

    def position_embedding(self, num_frames: int, like: torch.Tensor) -> torch.Tensor:
        """``[T, C]`` frame position vectors in ``like``'s dtype and device."""
        if self.frame_embedding == "learned":
            if num_frames > self.frame_pos.shape[0]:
                raise ValueError(
                    f"T={num_frames} frames but the learned frame embedding holds "
                    f"max_frames={self.frame_pos.shape[0]}"
                )
            return self.frame_pos[:num_frames].to(like.dtype)
        frames = torch.arange(num_frames, device=like.device)
        return sinusoidal_embedding(frames, self.channels).to(like.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``[B, C, T, H, W]`` -> same shape and memory format."""
        t = x.shape[2]
        h = self.norm(x)
        h = h + self.position_embedding(t, h).t().reshape(1, self.channels, t, 1, 1)
        qkv = self.qkv(h)
        q, k, v = qkv.split(self.channels, dim=1)
        out = ops.temporal_attention(q, k, v, num_heads=self.num_heads)
        return x + self.proj_out(out)


class ImageEncoder2d(nn.Module):
    """2-D conv encoder of the first frame x0 into a feature pyramid.

    conv_in, then per level a ResBlock2d; a stride-2 conv between levels. Level l
    has ``widths[l]`` channels at ``H / 2**l``.

    Args:
        in_channels: image channels.
        widths: channels per level.
        groups, eps: GroupNorm settings.
    """

    def __init__(self, in_channels: int, widths: tuple[int, ...], groups: int, eps: float) -> None:
        super().__init__()
        self.conv_in = Conv2d(in_channels, widths[0], 3, padding=1)
        self.blocks = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        prev = widths[0]
        for level, width in enumerate(widths):
            self.blocks.append(ResBlock2d(prev, width, groups, eps))
            if level < len(widths) - 1:
                self.downsamples.append(Conv2d(width, width, 3, stride=2, padding=1))
            prev = width

    def forward(self, x0: torch.Tensor) -> list[torch.Tensor]:
        """x0: ``[B, C, H, W]`` (channels_last preferred) -> one feature map per level,
        ``[B, widths[l], H / 2**l, W / 2**l]``, finest first."""
        h = self.conv_in(x0)
        features = []
        for level, block in enumerate(self.blocks):
            h = block(h)
            features.append(h)
            if level < len(self.downsamples):
                h = self.downsamples[level](h)
        return features
