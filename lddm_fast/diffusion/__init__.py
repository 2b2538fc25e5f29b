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

Names are imported on first use (PEP 562), like the other subpackages.
"""

from __future__ import annotations

from lddm_fast._lazy import lazy_exports

_EXPORTS = {
    "BETA_SCHEDULES": "schedules",
    "BUNDLED_MODEL_DIR": "pipeline",
    "SAMPLERS": "samplers",
    "TIMESTEP_SPACINGS": "schedules",
    "CUDAGraphRunner": "graph_runner",
    "ClassifierFreeGuidance": "denoisers",
    "EpsPrediction": "denoisers",
    "LDDMPipeline": "pipeline",
    "LDDMPipelineOutput": "pipeline",
    "PerSampleNoise": "noise",
    "Schedule": "schedules",
    "VPrediction": "denoisers",
    "alphas_cumprod": "schedules",
    "betas_for": "schedules",
    "cosine_betas": "schedules",
    "ddim_coefficients": "samplers",
    "ddpm_coefficients": "samplers",
    "default_noise_sampler": "samplers",
    "dpmpp_2m_coefficients": "samplers",
    "eps_from_v": "schedules",
    "linear_betas": "schedules",
    "prediction_adapter": "denoisers",
    "sample_ddim": "samplers",
    "sample_ddpm": "samplers",
    "sample_dpmpp_2m": "samplers",
    "sampling_schedule": "schedules",
    "snr": "schedules",
    "spaced_timesteps": "schedules",
    "uses_noise": "samplers",
    "v_from_eps": "schedules",
    "video_generators": "noise",
    "video_seed": "noise",
    "x0_from_eps": "schedules",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
