"""``LDDMPipeline``: first frames in, ultrasound videos out.

    pipe = LDDMPipeline.from_pretrained(path)          # or from_preset("phantom64")
    out = pipe(images, num_frames=16, steps=25, sampler="ddim", guidance=1.0, seed=0)
    out.videos      # [B, C, T+1, H, W] uint8, x0 first
    out.nonfinite   # [B] bool, True where a video came out with NaN/Inf
    out.sources     # B pairs (i, v): video b is of view v of images[i]

Stages of a call: images -> x0 ``[B, C, S, S]`` in [-1, 1] -> condition encoding (once
per video) -> per-video initial noise -> the sampling loop over the latent
``[B, c_z, T, h, w]`` (one CUDA graph replay on GPU) -> autoencoder decode -> videos.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch

from lddm_fast import ops
from lddm_fast.cpu_memory import retain_freed_memory
from lddm_fast.data.regions import FIT_MODE, check_mode, image_views, read_views
from lddm_fast.data.transforms import fit_image
from lddm_fast.data.video_io import LUMA
from lddm_fast.diffusion.denoisers import ClassifierFreeGuidance, prediction_adapter
from lddm_fast.diffusion.graph_runner import CUDAGraphRunner
from lddm_fast.diffusion.noise import PerSampleNoise, video_generators, video_seed
from lddm_fast.diffusion.samplers import SAMPLERS, uses_noise
from lddm_fast.diffusion.schedules import (
    Schedule,
    alphas_cumprod,
    betas_for,
    sampling_schedule,
    spaced_timesteps,
)
from lddm_fast.models import LDDMModels, build_models, preset
from lddm_fast.models import from_pretrained as load_checkpoint
from lddm_fast.models.bundled import BUNDLED_MODEL_DIR, bundled_checkpoint
from lddm_fast.models.layers import draw_zero_parameters
from lddm_fast.ops.dispatch import requested_backend

__all__ = ["BUNDLED_MODEL_DIR", "LDDMPipeline", "LDDMPipelineOutput"]

OUTPUTS = ("uint8", "float")
_CL3D = torch.channels_last_3d
# Float images may overshoot [-1, 1] by rounding (e.g. after a resize); beyond this
# they are on another scale ([0, 255] floats) and are refused.
_RANGE_SLACK = 1e-3


@dataclass
class LDDMPipelineOutput:
    """What :meth:`LDDMPipeline.__call__` returns.

    Attributes:
        videos: ``[B, C, T+1, H, W]``, frame 0 the (resized) input image, then T
            generated frames; uint8 in [0, 255] or float32 in [-1, 1] (``output=``).
        nonfinite: ``[B]`` bool on the CPU, True where sampling produced NaN/Inf in that
            video. Such a video is not a valid sample (a warning lists them): as float
            it keeps its NaNs (Inf is clamped to +-1), as uint8 it is all zeros.
        sources: B pairs ``(i, v)``: video b was made from view v of input image i.
            v is 0, and B the number of images, except for a DICOM path with several
            tissue regions (a dual view) under ``region="auto"``: each of its views is
            a video of its own, in the file's left-to-right order.
    """

    videos: torch.Tensor
    nonfinite: torch.Tensor
    sources: list[tuple[int, int]] = field(default_factory=list)


def _default_device(device: torch.device | str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _default_dtype(device: torch.device, dtype: torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point dtype, got {dtype}")
    return dtype


def _set_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """``[C, H, W]`` with C in {1, 3} -> ``[channels, H, W]`` (luma or replication);
    uint8 stays uint8 (the luma rounded)."""
    if x.shape[0] == channels:
        return x
    if channels == 1:
        weights = torch.tensor(LUMA, dtype=torch.float32).view(3, 1, 1)
        luma = (x.float() * weights).sum(0, keepdim=True)
        return luma.round().clamp(0, 255).to(torch.uint8) if x.dtype == torch.uint8 else luma
    return x.expand(3, -1, -1)


def _fit(x: torch.Tensor, size: int, what: str, region: str) -> torch.Tensor:
    """``fit_image`` for ``region``; a float image is in [-1, 1], where black is -1."""
    fill = 0.0 if x.dtype == torch.uint8 else -1.0
    try:
        return fit_image(x, size, FIT_MODE[region], fill=fill)
    except ValueError as e:
        raise ValueError(f"{what}: {e}") from None


def _cut(x: torch.Tensor, region: str, what: str) -> torch.Tensor:
    """``[C, H, W]`` -> the imaging region for ``region="auto"`` (other modes: x)."""
    if region != "auto":
        return x
    if x.dtype != torch.uint8:
        raise ValueError(
            f"{what}: region='auto' finds the imaging area in 8-bit pixels; pass uint8 "
            "images, PIL images or file paths"
        )
    pixels = x[0].cpu().numpy() if x.shape[0] == 1 else x.permute(1, 2, 0).cpu().numpy()
    cut = torch.from_numpy(np.ascontiguousarray(image_views(pixels, "auto")[0].pixels))
    return cut[None] if cut.ndim == 2 else cut.permute(2, 0, 1)


def _unit_range(x: torch.Tensor, what: str) -> torch.Tensor:
    """uint8 [0, 255] or float [-1, 1] -> float32 [-1, 1], refusing NaN/Inf, other
    dtypes and floats off the [-1, 1] scale."""
    if x.dtype == torch.uint8:
        return x.float() / 127.5 - 1
    if not x.is_floating_point():
        raise ValueError(f"{what} must be uint8 in [0, 255] or float in [-1, 1], got {x.dtype}")
    x = x.float()
    finite = torch.isfinite(x)
    if not finite.all():
        if x.dim() == 4:  # a batch: name the bad images
            bad = (~finite).flatten(1).any(1).nonzero().flatten().tolist()
            raise ValueError(f"{what} {bad} contain NaN or Inf")
        raise ValueError(f"{what} contains NaN or Inf")
    lo, hi = x.min().item(), x.max().item()
    if lo < -1 - _RANGE_SLACK or hi > 1 + _RANGE_SLACK:
        raise ValueError(
            f"{what} has values in [{lo:.4g}, {hi:.4g}]; float images must be in [-1, 1] "
            "(pass uint8 for [0, 255] data, or map it with x / 127.5 - 1)"
        )
    return x.clamp(-1, 1)


def _item_views(
    item: Any, index: int, channels: int, region: str = "center", frame: int = 0
) -> list[torch.Tensor]:
    """One list entry (a file path, PIL image or numpy [H, W] / [H, W, C] array) ->
    its views ``[channels, H, W]``, uint8 for 8-bit sources (so each is fitted as the
    batch engine fits a file), else float32 in [-1, 1] (validated).

    One view, but for a file path whose :func:`~lddm_fast.data.regions.read_views`
    gives several (a DICOM dual view under ``region="auto"``): all of them, in order,
    as ``synthesize`` makes each its own input.
    """
    if not isinstance(item, (str, os.PathLike)):
        return [_item_to_tensor(item, index, channels, region)]
    views = []
    for view in read_views(item, channels=channels, mode=region, frame=frame):
        x = torch.from_numpy(np.ascontiguousarray(view.pixels))
        views.append(x[None] if x.ndim == 2 else x.permute(2, 0, 1))
    return views


def _item_to_tensor(item: Any, index: int, channels: int, region: str = "center") -> torch.Tensor:
    """One PIL image or numpy [H, W] / [H, W, C] array -> its imaging region (see
    :func:`_cut`) ``[channels, H, W]``, uint8 for 8-bit sources, else float32 in
    [-1, 1] (validated)."""
    what = f"images[{index}]"
    if not isinstance(item, np.ndarray):
        try:
            from PIL import Image  # optional: only needed for PIL inputs
        except ImportError:
            Image = None
        if Image is None or not isinstance(item, Image.Image):
            raise ValueError(
                f"{what} is a {type(item).__name__}; list entries must be file paths, PIL "
                "images or numpy arrays [H, W] / [H, W, C] (or pass one [B, C, H, W] tensor)"
            )
        if item.mode.startswith(("I", "F")):
            raise ValueError(
                f"{what} is a PIL image of mode {item.mode!r} (16-bit or float); convert it "
                "to 8-bit ('L' or 'RGB') first"
            )
        item = np.asarray(item.convert("L" if channels == 1 else "RGB"))
    if item.ndim == 2:
        item = item[:, :, None]
    if item.ndim != 3 or item.shape[2] not in (1, 3) or min(item.shape[:2]) == 0:
        raise ValueError(
            f"{what} has shape {item.shape}; numpy images must be [H, W] or [H, W, C] "
            "with C = 1 or 3 (drop an alpha channel first)"
        )
    # torch.tensor copies: arrays from PIL are read-only, which from_numpy warns about.
    x = torch.tensor(item).permute(2, 0, 1)
    if x.dtype != torch.uint8:
        x = _unit_range(x, what)
    return _cut(_set_channels(x, channels), region, what)


class LDDMPipeline:
    """Image-to-video sampling with a latent dynamic diffusion model.

    Args:
        models: the autoencoder, denoiser and config (see :mod:`lddm_fast.models`).
        device: where to run (default: CUDA when available, else CPU).
        dtype: weights and network compute dtype (default: bfloat16 on CUDA, float32 on
            CPU). The sampling state stays float32 (float64 for float64 weights).
        backend: force one :mod:`lddm_fast.ops` backend for every op of a call (None:
            the default dispatch, or ``LDDM_BACKEND``).

    The networks are moved to ``device`` / ``dtype`` and put in eval mode. On the CPU
    the process keeps freed memory for the next call
    (:func:`lddm_fast.cpu_memory.retain_freed_memory`; ``LDDM_RETAIN_CPU_MEMORY=0``
    turns that off).
    """

    def __init__(
        self,
        models: LDDMModels,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        backend: str | None = None,
    ) -> None:
        self.device = _default_device(device)
        self.dtype = _default_dtype(self.device, dtype)
        if self.device.type == "cpu":
            retain_freed_memory()
        if backend is not None:
            with ops.use_backend(backend):  # raises BackendError for an unknown name
                pass
        self.backend = backend
        self.models = models
        self.config = models.config
        for module in (models.autoencoder, models.denoiser):
            module.to(device=self.device, dtype=self.dtype).eval()
        self.state_dtype = torch.float64 if self.dtype == torch.float64 else torch.float32
        betas = betas_for(self.config.beta_schedule, self.config.num_train_timesteps)
        #: ``[N]`` float64 abar of the training schedule, on the device.
        self.alphas_cumprod = alphas_cumprod(betas).to(self.device)
        self.graph_runner = CUDAGraphRunner()

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        backend: str | None = None,
        verify_sha256: bool = True,
    ) -> LDDMPipeline:
        """Load a checkpoint directory (see :func:`lddm_fast.models.from_pretrained`).

        ``path=None`` loads the model bundled under ``lddm_fast/assets/phantom64/`` (a
        64 px, 16-frame grayscale model trained on the phantom; ``docs/TRAINING.md``)
        after checking each of its files against the sha256 recorded in
        :mod:`lddm_fast.models.bundled`; a missing or damaged file is named with its
        expected hash.
        """
        if path is None:
            path = bundled_checkpoint()
        device = _default_device(device)
        dtype = _default_dtype(device, dtype)
        models = load_checkpoint(path, device=device, dtype=dtype, verify_sha256=verify_sha256)
        return cls(models, device=device, dtype=dtype, backend=backend)

    @classmethod
    def from_preset(
        cls,
        name: str,
        seed: int = 0,
        *,
        channels: int = 1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        backend: str | None = None,
    ) -> LDDMPipeline:
        """An untrained pipeline of a preset (``tiny``, ``phantom64``, ``busv128``) for
        tests and benchmarks, with weights drawn from ``seed``.

        A fresh model zero-initialises its output projections and would predict
        exactly 0, so sampling would only rescale the initial noise and batch-invariance
        or parity checks would be vacuous; here every all-zero parameter is drawn from
        N(0, 0.02^2) instead. The global RNG state is left untouched.
        """
        config = preset(name, channels=channels)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            models = build_models(config)
            for module in (models.autoencoder, models.denoiser):
                draw_zero_parameters(module)
        return cls(models, device=device, dtype=dtype, backend=backend)

    # ------------------------------------------------------------------- stages
    def resolve_num_frames(self, num_frames: int | None) -> int:
        """T for a call: ``num_frames``, or the config's when None.

        Raises:
            ValueError: not a positive int, or more frames than a learned frame
                embedding has (``denoiser.max_frames``).
        """
        frames = self.config.num_frames if num_frames is None else num_frames
        if not isinstance(frames, int) or isinstance(frames, bool) or frames < 1:
            raise ValueError(f"num_frames must be a positive int, got {num_frames!r}")
        dn = self.config.denoiser
        if dn.frame_embedding == "learned" and frames > dn.max_frames:
            raise ValueError(
                f"num_frames={frames} exceeds this model's max_frames={dn.max_frames} "
                "(its frame embedding is learned)"
            )
        return frames

    def preprocess(self, images: Any, region: str = "center", frame: int = 0) -> torch.Tensor:
        """Images -> x0 ``[B, C, S, S]`` float32 in [-1, 1] on the device: one row per
        image, or per view of a dual-view DICOM path (see ``region``).

        Args:
            images: a ``[B, C, H, W]`` tensor (uint8 in [0, 255] or float in [-1, 1],
                C the model's channels), or a list of file paths (PNG/JPEG/DICOM, read
                by :func:`lddm_fast.data.regions.read_views`), PIL images or numpy
                arrays (``[H, W]`` or ``[H, W, C]``, uint8 or float in [-1, 1]),
                converted to grayscale (ITU-R 601 luma) or RGB as the model needs.
                Every image is fitted by :func:`lddm_fast.data.transforms.fit_image`
                (shorter side to S, antialiased bilinear, centre crop; 8-bit images
                rounded back to 8 bits), exactly as ``lddm-fast synthesize`` fits an
                image file.
            region: the imaging region (:mod:`lddm_fast.data.regions`): ``"center"``
                (the whole image, centre crop), ``"auto"`` (the DICOM tissue region or
                the detected imaging area, text around it blacked out; 8-bit images
                only; a DICOM path with several tissue regions, a dual view, gives
                each as a row of its own, left to right, so B exceeds the number of
                images; ``LDDMPipelineOutput.sources`` maps them back), ``"none"``
                (the whole image letterboxed), as ``synthesize --region``.
            frame: the frame of a multi-frame DICOM path.

        Raises:
            ValueError: empty batch, wrong shape or channel count, NaN/Inf, a float
                image outside [-1, 1], an unsupported dtype or list entry, an image
                with a side below S, an unreadable file (:class:`BadInputError`).
        """
        return self._preprocess(images, region, frame)[0]

    def _preprocess(
        self, images: Any, region: str, frame: int
    ) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """:meth:`preprocess`, and per row of x0 its ``(image index, view index)``."""
        check_mode(region)
        c, size = self.config.channels, self.config.size
        if isinstance(images, torch.Tensor):
            if images.dim() != 4:
                raise ValueError(
                    f"images must be a [B, C, H, W] tensor, got shape {tuple(images.shape)} "
                    "(for one image use images[None])"
                )
            if images.shape[0] == 0:
                raise ValueError("images is an empty batch (B = 0)")
            if images.shape[1] != c:
                raise ValueError(
                    f"images have {images.shape[1]} channels but the model expects {c} "
                    f"({'grayscale' if c == 1 else 'RGB'}); convert them, or pass a list of "
                    "PIL images / numpy arrays, which are converted"
                )
            if min(images.shape[2:]) == 0:
                raise ValueError(f"images have an empty side: shape {tuple(images.shape)}")
            sources = [(i, 0) for i in range(images.shape[0])]
            if region == "auto":  # each image has its own region, so its own fit
                frames = [
                    _unit_range(
                        _fit(_cut(x, region, f"images[{i}]"), size, "images", region), "images"
                    )
                    for i, x in enumerate(images.cpu())
                ]
                return torch.stack(frames).to(self.device), sources
            if images.dtype == torch.uint8:  # fitted in 0..255 and rounded, as files are
                fitted = _fit(images, size, "images", region)
                return _unit_range(fitted, "images").to(self.device), sources
            else:
                x = _unit_range(images, "images")
                return _fit(x.to(self.device), size, "images", region).contiguous(), sources
        if isinstance(images, (list, tuple)):
            if not images:
                raise ValueError("images is an empty list")
            frames, sources = [], []
            for i, im in enumerate(images):
                for v, x in enumerate(_item_views(im, i, c, region, frame)):
                    frames.append(_unit_range(_fit(x, size, f"images[{i}]", region), "images"))
                    sources.append((i, v))
            return torch.stack(frames).to(self.device), sources
        raise ValueError(
            f"images must be a [B, C, H, W] tensor or a list of PIL images / numpy arrays, "
            f"got {type(images).__name__}"
        )

    def _network(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The denoiser in its dtype, answering in the state dtype."""
        return self.models.denoiser(x.to(self.dtype), t, cond=cond).sample.to(x.dtype)

    def _loop(
        self,
        x: torch.Tensor,
        cond: torch.Tensor,
        timesteps: torch.Tensor,
        alphas_cumprod: torch.Tensor,
        uncond: torch.Tensor | None = None,
        scale: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        *,
        sampler: str,
        eta: float,
        noise_sampler=None,
        disable: bool = True,
    ) -> torch.Tensor:
        """The sampling loop over tensors only (what the graph runner captures)."""
        model = ClassifierFreeGuidance(self._network, cond, uncond, scale)
        model = prediction_adapter(self.config.prediction_type, model, self.alphas_cumprod)
        knobs: dict[str, Any] = {"eta": eta} if sampler == "ddim" else {}
        if noise is not None:
            noise_sampler = noise.__getitem__
        if noise_sampler is not None:
            knobs["noise_sampler"] = noise_sampler
        schedule = Schedule(timesteps, alphas_cumprod)
        return SAMPLERS[sampler](model, x, schedule, disable=disable, **knobs)

    def denoise(
        self,
        latents: torch.Tensor,
        cond: torch.Tensor,
        uncond: torch.Tensor | None = None,
        *,
        steps: int = 25,
        sampler: str = "ddim",
        guidance: float = 1.0,
        eta: float = 0.0,
        timestep_spacing: str = "trailing",
        generators: Sequence[torch.Generator] | None = None,
        cuda_graph: bool = True,
        progress: bool = False,
    ) -> torch.Tensor:
        """The sampling loop alone: initial noise -> clean latent.

        Args:
            latents: x_T ``[B, c_z, T, h, w]`` in the state dtype (channels_last_3d
                avoids layout copies in the fused update).
            cond: :meth:`LatentDenoiser.encode_condition` of x0, ``[B, c_cond, h, w]``.
            uncond: the dropped-condition encoding (needed when ``guidance != 1``).
            steps, sampler, guidance, eta, timestep_spacing: see :meth:`__call__`.
            generators: one per video, for the stochastic samplers' noise.
            cuda_graph: on CUDA, replay a captured graph of the whole loop (captured on
                the first call per batch/shape/dtype/sampler/steps/guidance on-off).
                Stochastic samplers then pre-draw all n steps of noise per video
                (``[n, B, c_z, T, h, w]`` of memory) from the same generators, giving the
                eager loop's values.
            progress: show a progress bar (eager loop only).

        Returns:
            The x0 latent ``[B, c_z, T, h, w]`` in the state dtype.
        """
        self._check_sampling_args(steps, sampler, guidance, eta, timestep_spacing)
        schedule = sampling_schedule(
            self.alphas_cumprod, steps, timestep_spacing, device=self.device
        )
        guided = guidance != 1.0
        inputs = {
            "x": latents,
            "cond": cond,
            "timesteps": schedule.timesteps,
            "alphas_cumprod": schedule.alphas_cumprod,
        }
        if guided:
            if uncond is None:
                raise ValueError("guidance != 1 needs uncond, the dropped-condition encoding")
            inputs["uncond"] = uncond
            inputs["scale"] = torch.full((latents.shape[0],), float(guidance), device=self.device)
        noise = None
        if uses_noise(sampler, eta):
            if generators is None:
                raise ValueError(f"sampler {sampler!r} with eta={eta} needs generators")
            noise = PerSampleNoise(generators, latents)
        with self._backend(), torch.no_grad():
            if cuda_graph and self.device.type == "cuda":
                if noise is not None:
                    inputs["noise"] = noise.predraw(steps)
                key = (sampler, float(eta), guided, requested_backend()[0])
                loop = partial(self._loop, sampler=sampler, eta=eta)
                return self.graph_runner(key, loop, inputs)
            return self._loop(
                **inputs, sampler=sampler, eta=eta, noise_sampler=noise, disable=not progress
            )

    def _check_sampling_args(
        self, steps: int, sampler: str, guidance: float, eta: float, timestep_spacing: str
    ) -> None:
        """Reject bad sampling arguments before any work is done."""
        spaced_timesteps(steps, self.config.num_train_timesteps, timestep_spacing)
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; known: {', '.join(SAMPLERS)}")
        if not (isinstance(eta, numbers.Real) and eta >= 0):
            raise ValueError(f"eta must be a number >= 0, got {eta!r}")
        if eta != 0.0 and sampler != "ddim":
            raise ValueError(f"eta applies to the 'ddim' sampler only, not {sampler!r}")
        if not (isinstance(guidance, numbers.Real) and math.isfinite(guidance)):
            raise ValueError(f"guidance must be a finite number, got {guidance!r}")

    def _backend(self):
        # use_backend(None) would also cancel an outer use_backend(); enter it only
        # when this pipeline forces a backend.
        return ops.use_backend(self.backend) if self.backend else contextlib.nullcontext()

    # --------------------------------------------------------------------- call
    def __call__(
        self,
        images: Any,
        num_frames: int | None = None,
        steps: int = 25,
        sampler: str = "ddim",
        guidance: float = 1.0,
        seed: int | Sequence[int] = 0,
        *,
        eta: float = 0.0,
        timestep_spacing: str = "trailing",
        cuda_graph: bool = True,
        output: str = "uint8",
        progress: bool = False,
        return_dict: bool = True,
        region: str = "center",
        frame: int = 0,
    ) -> LDDMPipelineOutput | tuple[torch.Tensor, torch.Tensor]:
        """Generate one video per input image (per view of a dual-view DICOM path under
        ``region="auto"``: see :meth:`preprocess`).

        Args:
            images: see :meth:`preprocess` (``[B, C, H, W]`` tensor or list of images).
            num_frames: T, frames generated after x0 (default: the config's).
            steps: sampler steps n, 1 <= n <= num_train_timesteps.
            sampler: ``"ddim"``, ``"dpmpp_2m"`` (DPM-Solver++(2M)) or ``"ddpm"``.
            guidance: classifier-free guidance scale; 1.0 is off (no doubled batch).
            seed: an int: video i draws from a generator seeded with
                ``video_seed(seed, i)``; or B ints (one per video, so per view of a
                dual view), used as the videos' generator seeds directly. Either way a
                video depends only on its own generator seed, not on the batch it is
                in: ``pipe(images[i:i+1], seed=[video_seed(s, i)])`` reproduces video i
                of ``pipe(images, seed=s)`` (when no image before i is a dual view).
            eta: DDIM stochasticity (0: deterministic; 1: DDPM's variance).
            timestep_spacing: ``"trailing"`` (starts at t = N-1) or ``"leading"``.
            cuda_graph: replay the whole loop as one CUDA graph (CUDA only; a failed
                capture falls back to the eager loop with a warning).
            output: ``"uint8"`` ([0, 255]) or ``"float"`` (float32 in [-1, 1]).
            progress: show a progress bar over the steps (eager loop).
            return_dict: return :class:`LDDMPipelineOutput`, else ``(videos, nonfinite)``.
            region, frame: the imaging region and DICOM frame, see :meth:`preprocess`.

        Returns:
            videos ``[B, C, T+1, H, W]`` on the device (x0 first), the ``[B]``
            nonfinite mask (videos with NaN/Inf are also named in a RuntimeWarning)
            and, in :class:`LDDMPipelineOutput` only, each video's source image and
            view.
        """
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        self._check_sampling_args(steps, sampler, guidance, eta, timestep_spacing)
        cfg = self.config
        frames = self.resolve_num_frames(num_frames)
        x0, sources = self._preprocess(images, region, frame)
        batch = x0.shape[0]
        if isinstance(seed, numbers.Integral):
            seeds = [video_seed(seed, i) for i in range(batch)]
        else:
            seeds = [int(s) for s in seed]
            if len(seeds) != batch:
                what = f"{batch} images"
                if batch != len(images):  # dual views: one video per view
                    what = f"{batch} videos (the views of {len(images)} images)"
                raise ValueError(f"seed has {len(seeds)} entries for {what}")
        generators = video_generators(seeds, self.device)

        c_z, _, h, w = cfg.latent_shape
        like = torch.empty((batch, c_z, frames, h, w), dtype=self.state_dtype, device=self.device)
        # The initial noise is the first draw of each video's generator.
        latents = PerSampleNoise(generators, like.contiguous(memory_format=_CL3D)).draw()
        with self._backend(), torch.no_grad():
            denoiser, autoencoder = self.models.denoiser, self.models.autoencoder
            x0_model = x0.to(self.dtype)
            cond = denoiser.encode_condition(x0_model)
            uncond = None
            if guidance != 1.0:
                drop = torch.ones(batch, dtype=torch.bool, device=self.device)
                uncond = denoiser.encode_condition(x0_model, drop)
            z = self.denoise(
                latents,
                cond,
                uncond,
                steps=steps,
                sampler=sampler,
                guidance=guidance,
                eta=eta,
                timestep_spacing=timestep_spacing,
                generators=generators,
                cuda_graph=cuda_graph,
                progress=progress,
            )
            texture = None
            if autoencoder.config.texture_channels:
                # The texture code is each video's last draw, after the sampler's.
                shape = autoencoder.texture_shape(z)
                like = torch.empty(shape, device=self.device, memory_format=_CL3D)
                texture = PerSampleNoise(generators, like).draw().to(self.dtype)
            speckle = None
            if autoencoder.speckle is not None:
                # Then the speckle's white noise, drawn in float32 whatever the dtype.
                shape = autoencoder.speckle_shape(z)
                like = torch.empty(shape, device=self.device, memory_format=_CL3D)
                speckle = PerSampleNoise(generators, like).draw()
            z_model = (z / cfg.latent_scale).to(self.dtype)
            decoded = autoencoder.decode(z_model, x0_model, texture, speckle).sample
            decoded = decoded.float()
        nonfinite = ~(
            torch.isfinite(decoded).flatten(1).all(1) & torch.isfinite(z).flatten(1).all(1)
        )
        video = torch.cat([x0[:, :, None], decoded.clamp(-1, 1)], dim=2).contiguous()
        nonfinite = nonfinite.cpu()
        if nonfinite.any():
            bad = nonfinite.nonzero().flatten().tolist()
            warnings.warn(
                f"LDDMPipeline: {len(bad)} of {batch} videos contain NaN/Inf (indices {bad}); "
                "they are flagged in output.nonfinite and are not valid samples"
                + (" (written as zeros in uint8)" if output == "uint8" else ""),
                RuntimeWarning,
                stacklevel=2,
            )
        if output == "uint8":
            mask = nonfinite.to(self.device).view(-1, 1, 1, 1, 1)
            video = torch.where(mask, 0.0, (video + 1) * 127.5)
            video = video.round().clamp(0, 255).to(torch.uint8)
        if return_dict:
            return LDDMPipelineOutput(video, nonfinite, sources)
        return video, nonfinite
