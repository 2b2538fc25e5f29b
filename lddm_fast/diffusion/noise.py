"""Per-video random streams: every video draws its initial noise and each ancestral
noise from its own ``torch.Generator``, so a video depends only on its seed, never on
the batch it was sampled in or its position there.

Order of draws from video b's generator: the initial noise ``x_T`` first, then one
draw per sampler step (stochastic samplers only), then the autoencoder's texture code
(models with ``AutoencoderConfig.texture_channels`` only), then the white noise of its
speckle (models with ``AutoencoderConfig.speckle_frames`` only). :meth:`PerSampleNoise.predraw`
produces exactly the values the step-by-step draws would, which is how a captured
CUDA graph (which cannot call per-video generators on replay) gets the same noise.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lddm_fast.data.digest import text_hash64

__all__ = ["PerSampleNoise", "video_generators", "video_seed"]

_CL3D = torch.channels_last_3d


def video_seed(seed: int, index: int) -> int:
    """The generator seed of video ``index`` of a call made with ``seed``: a 63-bit
    hash of both, so neighbouring seeds give unrelated streams (``seed + index`` would
    give video 1 of seed 0 the noise of video 0 of seed 1)."""
    return text_hash64(f"lddm_fast/video/{int(seed)}/{int(index)}") & (2**63 - 1)


def video_generators(seeds: Sequence[int], device: torch.device | str) -> list[torch.Generator]:
    """One generator per video on ``device``, seeded with ``seeds[b]``."""
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


def _is_channels_last_3d(x: torch.Tensor) -> bool:
    return x.dim() == 5 and not x.is_contiguous() and x.is_contiguous(memory_format=_CL3D)


class PerSampleNoise:
    """A sampler ``noise_sampler``: each call returns ``[B, ...]`` noise like ``like``
    whose row b comes from ``generators[b]``.

    Args:
        generators: one per video, on like's device.
        like: ``[B, ...]`` template for shape, dtype, device and memory format.
    """

    def __init__(self, generators: Sequence[torch.Generator], like: torch.Tensor) -> None:
        if len(generators) != like.shape[0]:
            raise ValueError(f"{len(generators)} generators for a batch of {like.shape[0]}")
        self.generators = list(generators)
        self.like = like

    def _draw(self, g: torch.Generator) -> torch.Tensor:
        like = self.like
        return torch.randn(like.shape[1:], generator=g, dtype=like.dtype, device=like.device)

    def draw(self) -> torch.Tensor:
        """The next draw of every generator, ``[B, ...]`` in like's memory format."""
        out = torch.empty_like(self.like)
        for b, g in enumerate(self.generators):
            out[b].copy_(self._draw(g))
        return out

    def __call__(self, i: int) -> torch.Tensor:
        return self.draw()

    def predraw(self, steps: int) -> torch.Tensor:
        """The next ``steps`` draws of every generator at once, ``[steps, B, ...]``;
        ``out[i]`` equals what the i-th :meth:`draw` would return and has like's
        memory format (so a fused op reads it without a layout copy)."""
        like = self.like
        if _is_channels_last_3d(like):
            b, c, t, h, w = like.shape
            out = torch.empty((steps, b, t, h, w, c), dtype=like.dtype, device=like.device)
            out = out.permute(0, 1, 5, 2, 3, 4)
        else:
            out = torch.empty((steps, *like.shape), dtype=like.dtype, device=like.device)
        # Generator by generator, step by step: each generator sees the same sequence
        # of draws (same sizes, same order) as it does through draw().
        for b, g in enumerate(self.generators):
            for i in range(steps):
                out[i, b].copy_(self._draw(g))
        return out
