"""The one place the synthesis engine calls :class:`lddm_fast.LDDMPipeline`.

:func:`sample_videos` is the only code that depends on the pipeline's call
signature; :func:`load_sampler` the only code that depends on how a pipeline is
built. Everything else talks to a :class:`~lddm_fast.synth.engine.VideoSampler`.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from lddm_fast.synth.engine import SampledBatch

__all__ = ["DTYPES", "PipelineSampler", "checkpoint_sha256", "load_sampler", "sample_videos"]

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Presets are built with this weight seed, so a preset names one fixed model.
PRESET_SEED = 0


def sample_videos(
    pipe, images: torch.Tensor, seeds: list[int], *, num_frames, steps, sampler, guidance
) -> SampledBatch:
    """One batch through the pipeline: uint8 ``[B, C, S, S]`` images, one generator
    seed per image (the pipeline seeds video b's generator with ``seeds[b]`` directly,
    so a video does not depend on its batch), uint8 videos back on the CPU."""
    with warnings.catch_warnings():
        # The engine records NaN/Inf videos in failed.jsonl; the pipeline's own
        # warning about them would only break up the progress bar.
        warnings.filterwarnings(
            "ignore", message=r"LDDMPipeline: .* NaN/Inf", category=RuntimeWarning
        )
        out = pipe(
            images,
            num_frames=num_frames,
            steps=steps,
            sampler=sampler,
            guidance=guidance,
            seed=[int(s) for s in seeds],
            cuda_graph=pipe.device.type == "cuda",
            output="uint8",
        )
    return SampledBatch(out.videos.cpu(), out.nonfinite.cpu())


class PipelineSampler:
    """A :class:`~lddm_fast.synth.engine.VideoSampler` over an ``LDDMPipeline``.

    Attributes:
        size, channels, num_frames: the model's frame size, channels and T.
        model: ``id`` (``sha256:<hex>`` of a checkpoint or ``preset:<name>``),
            ``checkpoint`` path, ``preset`` name, ``sha256``.
    """

    def __init__(self, pipe, model: dict[str, Any], *, num_frames, steps, sampler, guidance):
        self.pipe = pipe
        self.model = model
        config = pipe.config
        self.size, self.channels = config.size, config.channels
        self.num_frames = config.num_frames if num_frames is None else num_frames
        self._knobs = {
            "num_frames": self.num_frames,
            "steps": steps,
            "sampler": sampler,
            "guidance": guidance,
        }

    def __call__(self, images: torch.Tensor, seeds: list[int]) -> SampledBatch:
        return sample_videos(self.pipe, images, seeds, **self._knobs)


def checkpoint_sha256(directory: str | os.PathLike) -> str:
    """One sha256 for a checkpoint: of its ``meta.json`` table of per-file sha256s
    (which loading verifies every file against), as canonical JSON."""
    meta_path = Path(directory) / "meta.json"
    try:
        table = json.loads(meta_path.read_text(encoding="utf-8"))["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{meta_path}: cannot read the sha256 table ({e})") from e
    canonical = json.dumps(table, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def load_sampler(
    *,
    checkpoint: str | None,
    preset: str | None,
    device: torch.device,
    dtype: torch.dtype,
    num_frames: int | None,
    steps: int,
    sampler: str,
    guidance: float,
) -> PipelineSampler:
    """Build the pipeline from ``checkpoint`` or ``preset`` (neither: the bundled model).

    Raises:
        FileNotFoundError: neither was given and no bundled model ships here.
        ValueError: a bad checkpoint (:class:`~lddm_fast.models.CheckpointError`),
            preset, sampler or frame count.
    """
    from lddm_fast.diffusion import SAMPLERS, LDDMPipeline
    from lddm_fast.models.bundled import bundled_checkpoint

    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; known: {', '.join(SAMPLERS)}")
    if preset is not None:
        pipe = LDDMPipeline.from_preset(preset, seed=PRESET_SEED, device=device, dtype=dtype)
        model = {"id": f"preset:{preset}", "preset": preset, "checkpoint": None, "sha256": None}
    else:
        if checkpoint is None:
            checkpoint = str(bundled_checkpoint())
        checkpoint = os.path.abspath(checkpoint)
        digest = checkpoint_sha256(checkpoint)
        pipe = LDDMPipeline.from_pretrained(checkpoint, device=device, dtype=dtype)
        model = {
            "id": f"sha256:{digest}",
            "preset": None,
            "checkpoint": checkpoint,
            "sha256": digest,
        }
    try:
        frames = pipe.resolve_num_frames(num_frames)
    except ValueError as e:
        raise ValueError(f"--num-frames: {e}") from None
    return PipelineSampler(
        pipe, model, num_frames=frames, steps=steps, sampler=sampler, guidance=guidance
    )
