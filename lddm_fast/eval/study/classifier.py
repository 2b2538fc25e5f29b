"""The study's video classifier: a small R(2+1)D network for grayscale clips.

The R(2+1)D-18 design (Tran et al., 2018) at a width and depth that train in about a
minute on a 2-core CPU: each 3x3x3 convolution is factored into a 1x3x3 spatial one
and a 3x1x1 temporal one with a BatchNorm and ReLU between, the middle width chosen
so the pair has the parameters of the full 3-D kernel. Trained from scratch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ClassifierConfig", "VideoClassifier"]


@dataclass(frozen=True)
class ClassifierConfig:
    """widths: channels of the stages (each halves T, H and W after the first);
    blocks: residual blocks per stage; stem_width: channels after the stem;
    input_size: frames are average-pooled to this side first (None: as given), the
    cost that lets the study's grid train on a CPU (64 px: 5.7x the time of 32 px)."""

    input_size: int | None = 32
    widths: tuple[int, ...] = (16, 32, 64, 128)
    blocks: int = 1
    stem_width: int = 16
    num_classes: int = 2
    dropout: float = 0.3

    def to_dict(self) -> dict:
        return asdict(self)


def _middle(c_in: int, c_out: int) -> int:
    # R(2+1)D's rule: as many parameters as the 3x3x3 kernel it replaces.
    return (27 * c_in * c_out) // (9 * c_in + 3 * c_out)


class _Conv2Plus1D(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        mid = _middle(c_in, c_out)
        super().__init__(
            nn.Conv3d(c_in, mid, (1, 3, 3), (1, stride, stride), (0, 1, 1), bias=False),
            nn.BatchNorm3d(mid),
            nn.ReLU(inplace=True),
            nn.Conv3d(mid, c_out, (3, 1, 1), (stride, 1, 1), (1, 0, 0), bias=False),
        )


class _Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _Conv2Plus1D(c_in, c_out, stride),
            nn.BatchNorm3d(c_out),
            nn.ReLU(inplace=True),
            _Conv2Plus1D(c_out, c_out),
            nn.BatchNorm3d(c_out),
        )
        self.skip = (
            nn.Identity()
            if stride == 1 and c_in == c_out
            else nn.Sequential(nn.Conv3d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm3d(c_out))
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.skip(x))


class VideoClassifier(nn.Module):
    """Grayscale clip ``[B, 1, T, H, W]`` (float, about [-1, 1]) -> logits
    ``[B, num_classes]``. Any T, H, W >= 1 (global average pooling at the end)."""

    def __init__(self, config: ClassifierConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or ClassifierConfig()
        stem_mid = 45 * config.stem_width // 64 or 1  # torchvision's R2Plus1dStem ratio
        self.stem = nn.Sequential(
            nn.Conv3d(1, stem_mid, (1, 7, 7), (1, 2, 2), (0, 3, 3), bias=False),
            nn.BatchNorm3d(stem_mid),
            nn.ReLU(inplace=True),
            nn.Conv3d(stem_mid, config.stem_width, (3, 1, 1), 1, (1, 0, 0), bias=False),
            nn.BatchNorm3d(config.stem_width),
            nn.ReLU(inplace=True),
        )
        layers, c_in = [], config.stem_width
        for i, width in enumerate(config.widths):
            for j in range(config.blocks):
                layers.append(_Block(c_in, width, 2 if (i > 0 and j == 0) else 1))
                c_in = width
        self.stages = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool3d(1),
            nn.Flatten(),
            nn.Dropout(config.dropout),
            nn.Linear(c_in, config.num_classes),
        )

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        if clips.dim() != 5 or clips.shape[1] != 1:
            raise ValueError(f"clips must be [B, 1, T, H, W], got {list(clips.shape)}")
        side = self.config.input_size
        if side is not None and clips.shape[-2:] != (side, side):
            clips = F.adaptive_avg_pool3d(clips, (clips.shape[2], side, side))
        return self.head(self.stages(self.stem(clips)))
