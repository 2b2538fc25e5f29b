"""A stand-in for the model in synthesis tests: a real, deterministic function of
(image, seed), with no network, so engine tests run in milliseconds.

Run as a script it is ``python -m lddm_fast.synth`` with this sampler (for the
subprocess, SIGKILL and torchrun tests); ``STANDIN_DELAY_S`` slows each batch down.
"""

from __future__ import annotations

import os
import sys
import time

import torch

from lddm_fast.synth.engine import SampledBatch

SIZE = 16
FRAMES = 3


class StandInSampler:
    """Video b: frame 0 is the image, frame t > 0 the image plus t times a noise
    pattern drawn from ``seeds[b]`` (mod 256). Seeds in ``nan_seeds`` are flagged
    non-finite, as the pipeline flags a NaN video (all zeros, flag set)."""

    def __init__(self, size=SIZE, channels=1, num_frames=FRAMES, nan_seeds=(), delay_s=0.0):
        self.size, self.channels, self.num_frames = size, channels, num_frames
        self.model = {"id": "standin:v1", "preset": None, "checkpoint": None, "sha256": None}
        self.nan_seeds = set(nan_seeds)
        self.delay_s = delay_s
        self.batches: list[int] = []

    def video(self, image: torch.Tensor, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        pattern = torch.randint(0, 256, image.shape, generator=g)
        frames = [(image.long() + t * pattern) % 256 for t in range(self.num_frames + 1)]
        return torch.stack(frames, dim=1).to(torch.uint8)  # [C, T+1, H, W]

    def __call__(self, images: torch.Tensor, seeds: list[int]) -> SampledBatch:
        assert images.dtype == torch.uint8
        assert images.shape[1:] == (self.channels, self.size, self.size)
        self.batches.append(len(seeds))
        if self.delay_s:
            time.sleep(self.delay_s)
        videos = torch.stack([self.video(im, s) for im, s in zip(images, seeds, strict=True)])
        bad = torch.tensor([s in self.nan_seeds for s in seeds])
        videos[bad] = 0
        return SampledBatch(videos, bad)


def make_standin(args, device, dtype_name):
    """The ``make_sampler`` hook of :func:`lddm_fast.synth.cli.run`."""
    return StandInSampler(delay_s=float(os.environ.get("STANDIN_DELAY_S", "0")))


if __name__ == "__main__":
    torch.set_num_threads(1)
    from lddm_fast.synth.cli import main

    sys.exit(main(sys.argv[1:], make_sampler=make_standin))
