"""Sampling: noise schedules, samplers, classifier-free guidance, per-video seeds, the
CUDA-graph runner and :class:`LDDMPipeline`.

- :mod:`~lddm_fast.diffusion.schedules`: linear / cosine betas, abar, SNR, timestep
  spacing (``leading`` / ``trailing``), eps / v / x0 conversions, :class:`Schedule`.
- :mod:`~lddm_fast.diffusion.samplers`: ``sample_ddpm``, ``sample_ddim`` (eta),
  ``sample_dpmpp_2m``: k-diffusion-style pure functions over a denoiser callable.
- :mod:`~lddm_fast.diffusion.denoisers`: eps / v adapters, classifier-free guidance.
- :mod:`~lddm_fast.diffusion.noise`: per-video generators and noise.
- :class:`CUDAGraphRunner`: one captured CUDA graph per sampling configuration.
- :class:`LDDMPipeline`: images in, videos out.
"""

from lddm_fast.diffusion.denoisers import (
    ClassifierFreeGuidance,
    EpsPrediction,
    VPrediction,
    prediction_adapter,
)
from lddm_fast.diffusion.graph_runner import CUDAGraphRunner
from lddm_fast.diffusion.noise import PerSampleNoise, video_generators, video_seed
from lddm_fast.diffusion.pipeline import BUNDLED_MODEL_DIR, LDDMPipeline, LDDMPipelineOutput
from lddm_fast.diffusion.samplers import (
    SAMPLERS,
    ddim_coefficients,
    ddpm_coefficients,
    default_noise_sampler,
    dpmpp_2m_coefficients,
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
    uses_noise,
)
from lddm_fast.diffusion.schedules import (
    BETA_SCHEDULES,
    TIMESTEP_SPACINGS,
    Schedule,
    alphas_cumprod,
    betas_for,
    cosine_betas,
    eps_from_v,
    linear_betas,
    sampling_schedule,
    snr,
    spaced_timesteps,
    v_from_eps,
    x0_from_eps,
)

__all__ = [
    "BETA_SCHEDULES",
    "BUNDLED_MODEL_DIR",
    "SAMPLERS",
    "TIMESTEP_SPACINGS",
    "CUDAGraphRunner",
    "ClassifierFreeGuidance",
    "EpsPrediction",
    "LDDMPipeline",
    "LDDMPipelineOutput",
    "PerSampleNoise",
    "Schedule",
    "VPrediction",
    "alphas_cumprod",
    "betas_for",
    "cosine_betas",
    "ddim_coefficients",
    "ddpm_coefficients",
    "default_noise_sampler",
    "dpmpp_2m_coefficients",
    "eps_from_v",
    "linear_betas",
    "prediction_adapter",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpmpp_2m",
    "sampling_schedule",
    "snr",
    "spaced_timesteps",
    "uses_noise",
    "v_from_eps",
    "video_generators",
    "video_seed",
    "x0_from_eps",
]
