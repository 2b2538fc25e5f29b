"""The shapes every benchmark suite uses, in one place: the denoiser's real tensors
(kernels suite) and the (preset, batch) configurations of the model, sampler and
synthesis suites.

The pseudo-3D UNet of the ``phantom64`` preset runs on 8x8 latents (64 px / 8),
``busv128`` on 16x16, with T=16 frames, channels 64..512 across levels, and batches
from 1-2 (interactive use) to 64 (batch synthesis). On CPU the tables are smaller so
a run stays in minutes on a 2-core machine; ``--quick`` takes the first entries only.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GroupNormShape:
    label: str
    n: int
    c: int
    t: int
    h: int
    w: int
    groups: int = 32

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.n, self.c, self.t, self.h, self.w)


@dataclass(frozen=True)
class AttentionShape:
    label: str
    b: int
    c: int
    t: int
    h: int
    w: int
    heads: int

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.b, self.c, self.t, self.h, self.w)


GROUP_NORM: dict[str, list[GroupNormShape]] = {
    "cpu": [
        GroupNormShape("denoiser 16x16 level", 4, 256, 16, 16, 16),
        GroupNormShape("phantom64 level 1", 2, 128, 16, 8, 8),
        GroupNormShape("C/G=10 (C=320)", 2, 320, 16, 8, 8),
        GroupNormShape("phantom64 level 0", 8, 64, 16, 16, 16),
    ],
    "cuda": [
        GroupNormShape("busv128 level 0, batch 2", 2, 128, 16, 32, 32),
        GroupNormShape("busv128 level 2, batch 64", 64, 512, 16, 8, 8),
        GroupNormShape("phantom64 level 0, batch 64", 64, 64, 16, 16, 16),
        GroupNormShape("C/G=10 (C=320), batch 8", 8, 320, 16, 16, 16),
        GroupNormShape("busv128 level 1, batch 1", 1, 256, 16, 16, 16),
    ],
}

TEMPORAL_ATTENTION: dict[str, list[AttentionShape]] = {
    "cpu": [
        AttentionShape("denoiser 16x16, 8 heads x 32", 4, 256, 16, 16, 16, 8),
        AttentionShape("phantom64 8x8, 4 heads x 32", 8, 128, 16, 8, 8, 4),
        AttentionShape("head_dim 64", 2, 512, 16, 8, 8, 8),
    ],
    "cuda": [
        AttentionShape("busv128 16x16, batch 64", 64, 256, 16, 16, 16, 8),
        AttentionShape("busv128 32x32, batch 8", 8, 128, 16, 32, 32, 4),
        AttentionShape("head_dim 64, batch 64", 64, 512, 16, 8, 8, 8),
        AttentionShape("batch 1", 1, 256, 16, 16, 16, 8),
    ],
}


# Denoiser forwards: (preset, batch).
MODEL: dict[str, list[tuple[str, int]]] = {
    "cpu": [("phantom64", 1), ("phantom64", 4), ("tiny", 8)],
    "cuda": [("phantom64", 8), ("busv128", 1), ("busv128", 8), ("phantom64", 64)],
}

# Whole sampling loops: (preset, batch).
SAMPLER_LOOPS: dict[str, list[tuple[str, int]]] = {
    "cpu": [("phantom64", 1), ("phantom64", 4)],
    "cuda": [(name, batch) for name in ("phantom64", "busv128") for batch in (1, 8, 64)],
}

# End-to-end synthesis: (preset, steps, images, batch size).
SYNTHESIS: dict[str, list[tuple[str, int, int, int]]] = {
    "cpu": [("tiny", 2, 8, 4), ("phantom64", 4, 8, 4)],
    "cuda": [("phantom64", 25, 256, 64), ("busv128", 25, 64, 16)],
}
