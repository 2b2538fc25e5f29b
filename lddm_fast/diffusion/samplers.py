"""Samplers: DDPM (ancestral), DDIM (with eta) and DPM-Solver++(2M).

Each sampler is a short pure function in the k-diffusion shape::

    sample_xxx(model, x, schedule, extra_args=None, callback=None, disable=None, <knobs>)

- ``model(x, t, **extra_args) -> eps``: a denoiser callable predicting the noise of
  ``x: [B, ...]`` at timesteps ``t: [B]`` int64 (wrap v-prediction networks in
  :class:`~lddm_fast.diffusion.denoisers.VPrediction`, guidance in
  :class:`~lddm_fast.diffusion.denoisers.ClassifierFreeGuidance`).
- ``x``: the initial noise ``x_T ~ N(0, I)``, ``[B, ...]``; the result has its shape,
  dtype and memory format and is the x0 estimate (the last step lands on abar = 1).
- ``schedule``: a :class:`~lddm_fast.diffusion.schedules.Schedule` (timesteps ``[n]``
  and abar ``[n + 1]`` on x's device).
- ``callback``: called after each model evaluation with a dict ``x`` (the state
  before the step), ``i``, ``t`` (0-dim timestep) and ``denoised`` (x0 estimate).
- ``noise_sampler(i) -> [B, ...]``: the fresh N(0, I) noise of step i for the
  stochastic samplers (default: ``torch.randn_like(x)`` from the global generator).
  Per-video generators and pre-drawn noise plug in here (see
  :class:`~lddm_fast.diffusion.noise.PerSampleNoise`). A stochastic sampler calls it
  once at every step, the last included, so a pre-drawn ``[n, B, ...]`` buffer holds
  exactly what the eager loop would draw.

Every step is one affine update ``x_next = a x + b eps (+ c noise)`` run by the fused
:func:`lddm_fast.ops.sampler_step`, with per-step coefficients computed once, before
the loop, from ``schedule.alphas_cumprod`` by device ops: nothing in a sampler reads a
value back to the host, so the whole loop can be captured in one CUDA graph.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from tqdm.auto import trange

from lddm_fast import ops
from lddm_fast.diffusion.schedules import Schedule

__all__ = [
    "SAMPLERS",
    "ddim_coefficients",
    "ddpm_coefficients",
    "default_noise_sampler",
    "dpmpp_2m_coefficients",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpmpp_2m",
    "uses_noise",
]

Denoiser = Callable[..., torch.Tensor]
NoiseSampler = Callable[[int], torch.Tensor]
Callback = Callable[[dict[str, Any]], None]


def default_noise_sampler(x: torch.Tensor) -> NoiseSampler:
    """Fresh ``N(0, I)`` noise like x at each step, from the global generator."""
    return lambda i: torch.randn_like(x)


def _alpha_sigma(abar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return abar.sqrt(), (1 - abar).clamp(min=0).sqrt()


def ddpm_coefficients(
    alphas_cumprod: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ancestral steps through the DDPM posterior ``q(x_s | x_t, x0)``.

    For a step from abar_t to abar_s (the next entry), with ``alpha' = abar_t / abar_s``
    and ``beta' = 1 - alpha'`` (the combined beta of the skipped training steps), the
    posterior is ``N(c0 x0 + ct x_t, var)`` with ``c0 = sqrt(abar_s) beta' / (1 -
    abar_t)``, ``ct = sqrt(alpha') (1 - abar_s) / (1 - abar_t)`` and ``var = (1 - abar_s) /
    (1 - abar_t) beta'`` (diffusers' "fixed_small" variance). Substituting the x0
    estimate ``(x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)`` gives the affine step.

    Args:
        alphas_cumprod: ``[n + 1]`` abar of the visited timesteps then the end (1.0).

    Returns:
        ``(a, b, c)``, each ``[n]``: ``x_s = a x_t + b eps + c z`` with ``z ~ N(0, I)``.
    """
    at, an = alphas_cumprod[:-1], alphas_cumprod[1:]
    alpha_step = at / an
    beta_step = 1 - alpha_step
    c0 = an.sqrt() * beta_step / (1 - at)
    ct = alpha_step.sqrt() * (1 - an) / (1 - at)
    var = (1 - an) / (1 - at) * beta_step
    return c0 / at.sqrt() + ct, -c0 * (1 - at).sqrt() / at.sqrt(), var.clamp(min=0).sqrt()


def ddim_coefficients(
    alphas_cumprod: torch.Tensor, eta: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DDIM steps (Song et al. 2021, eq. 12).

    ``x_s = sqrt(abar_s) x0_hat + sqrt(1 - abar_s - sigma^2) eps + sigma z`` with
    ``sigma = eta sqrt((1 - abar_s) / (1 - abar_t)) sqrt(1 - abar_t / abar_s)``: eta = 0
    is the deterministic ODE sampler, eta = 1 has DDPM's posterior variance.

    Returns:
        ``(a, b, c)``, each ``[n]``: ``x_s = a x_t + b eps + c z``.
    """
    at, an = alphas_cumprod[:-1], alphas_cumprod[1:]
    sigma = eta * ((1 - an) / (1 - at) * (1 - at / an)).clamp(min=0).sqrt()
    direction = (1 - an - sigma**2).clamp(min=0).sqrt()
    ratio = (an / at).sqrt()
    return ratio, direction - ratio * (1 - at).sqrt(), sigma


def dpmpp_2m_coefficients(
    alphas_cumprod: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPM-Solver++(2M) (Lu et al. 2022, multistep, data prediction).

    With ``lambda = log(alpha / sigma)`` and ``h_i = lambda_{i+1} - lambda_i``:
    ``x_{i+1} = (sigma_{i+1} / sigma_i) x_i + alpha_{i+1} (1 - e^{-h_i}) D`` where D is
    the x0 estimate ``D_i`` (first order: the first step, and the last, which lands on
    sigma = 0 where the second-order weight would be infinite) or
    ``(1 + 1/(2 r)) D_i - 1/(2 r) D_{i-1}`` with ``r = h_{i-1} / h_i``.

    Returns:
        ``(ratio, d_coef, prev_coef)``, each ``[n]``:
        ``x_{i+1} = ratio x_i + d_coef D_i + prev_coef D_{i-1}`` (prev_coef = 0 on the
        first-order steps).
    """
    alpha, sigma = _alpha_sigma(alphas_cumprod)
    lam = alpha.log() - sigma.log()  # +inf at the clean end (sigma = 0)
    h = lam[1:] - lam[:-1]
    ratio = sigma[1:] / sigma[:-1]
    k = alpha[1:] * -torch.expm1(-h)
    n = h.shape[0]
    second = torch.zeros(n, dtype=torch.bool, device=h.device)
    second[1 : n - 1] = True
    r = torch.ones_like(h)
    r[1:] = h[:-1] / h[1:]
    # where() keeps the first-order entries finite (r = 0 at the last step).
    half_inv_r = torch.where(second, 0.5 / r, torch.zeros_like(r))
    return ratio, k * (1 + half_inv_r), -k * half_inv_r


def _rows(table: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``[n]`` -> ``[n, B]`` contiguous in the coefficient dtype (float32, float64 for a
    float64 x), so step i's coefficients are a ready ``[B]`` view for
    :func:`lddm_fast.ops.sampler_step`, with no copy or cast inside the loop."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    return table.to(dtype).unsqueeze(1).expand(-1, x.shape[0]).contiguous()


def _x0_rows(schedule: Schedule, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x0 = x / alpha - (sigma / alpha) eps`` coefficients, ``[n, B]`` each."""
    alpha, sigma = _alpha_sigma(schedule.alphas_cumprod[:-1])
    return _rows(1 / alpha, x), _rows(-sigma / alpha, x)


def _affine_loop(
    model: Denoiser,
    x: torch.Tensor,
    schedule: Schedule,
    coefficients: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    stochastic: bool,
    extra_args: dict[str, Any] | None,
    callback: Callback | None,
    disable: bool | None,
    noise_sampler: NoiseSampler | None,
) -> torch.Tensor:
    """The loop shared by DDPM and DDIM: ``x = a x + b eps (+ c z)`` per step."""
    extra_args = extra_args or {}
    a, b, c = (_rows(t, x) for t in coefficients)
    if stochastic:
        noise_sampler = noise_sampler or default_noise_sampler(x)
    if callback is not None:
        x0_a, x0_b = _x0_rows(schedule, x)
    batch = x.shape[0]
    for i in trange(len(schedule), disable=disable):
        t = schedule.timesteps[i]
        eps = model(x, t.expand(batch), **extra_args)
        if callback is not None:
            denoised = ops.sampler_step(x, eps, x0_a[i], x0_b[i])
            callback({"x": x, "i": i, "t": t, "denoised": denoised})
        if stochastic:
            x = ops.sampler_step(x, eps, a[i], b[i], noise_sampler(i), c[i])
        else:
            x = ops.sampler_step(x, eps, a[i], b[i])
    return x


def sample_ddpm(
    model: Denoiser,
    x: torch.Tensor,
    schedule: Schedule,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    noise_sampler: NoiseSampler | None = None,
) -> torch.Tensor:
    """Ancestral DDPM sampling over ``schedule`` (any subset of the training steps), see
    :func:`ddpm_coefficients`. x: ``[B, ...]`` initial noise -> ``[B, ...]`` sample."""
    coefficients = ddpm_coefficients(schedule.alphas_cumprod)
    return _affine_loop(
        model, x, schedule, coefficients, True, extra_args, callback, disable, noise_sampler
    )


def sample_ddim(
    model: Denoiser,
    x: torch.Tensor,
    schedule: Schedule,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    eta: float = 0.0,
    noise_sampler: NoiseSampler | None = None,
) -> torch.Tensor:
    """DDIM sampling, see :func:`ddim_coefficients`; ``eta = 0`` draws no noise.
    x: ``[B, ...]`` initial noise -> ``[B, ...]`` sample."""
    if not eta >= 0:
        raise ValueError(f"eta must be >= 0, got {eta!r}")
    coefficients = ddim_coefficients(schedule.alphas_cumprod, eta)
    return _affine_loop(
        model, x, schedule, coefficients, eta > 0, extra_args, callback, disable, noise_sampler
    )


def sample_dpmpp_2m(
    model: Denoiser,
    x: torch.Tensor,
    schedule: Schedule,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M), deterministic, see :func:`dpmpp_2m_coefficients`.
    x: ``[B, ...]`` initial noise -> ``[B, ...]`` sample.

    The steps carry ``u_i = x_i - sigma_i eps_i = alpha_i D_i`` rather than the x0
    estimate D_i, so that a float32 step stays within a few ulps of the same step in
    float64. At the noisy end alpha is tiny (4.9e-5 at t = 999 of the cosine
    schedule): ``D = x / alpha - (sigma / alpha) eps`` would multiply the float32
    rounding of both ~2e4 coefficients into D (an error of ~1e-3 there), while ``u``
    is a difference of O(1) terms and ``1 / alpha`` folds into the step's coefficient,
    which then scales a small ``u``. ``u`` is computed as ``(x - eps) + (1 - sigma)
    eps`` because sigma = 1 - 1.2e-9 rounds to 1.0 in float32, and that rounding alone
    would move the first cosine step by ~1e-5.
    """
    extra_args = extra_args or {}
    abar = schedule.alphas_cumprod
    ratio, d_coef, prev_coef = dpmpp_2m_coefficients(abar)
    alpha, sigma = _alpha_sigma(abar[:-1])
    alpha_prev = torch.cat([alpha[:1], alpha[:-1]])  # prev_coef[0] is 0: any finite value
    ratio, u_coef, prev_u_coef, one_minus_sigma, inv_alpha = (
        _rows(t, x)
        for t in (ratio, d_coef / alpha, prev_coef / alpha_prev, abar[:-1] / (1 + sigma), 1 / alpha)
    )
    ones = torch.ones_like(ratio[0])
    minus_ones, zeros = -ones, torch.zeros_like(ones)
    n, batch = len(schedule), x.shape[0]
    u_prev = None
    for i in trange(n, disable=disable):
        t = schedule.timesteps[i]
        eps = model(x, t.expand(batch), **extra_args)
        u = ops.sampler_step(x, eps, ones, minus_ones, eps, one_minus_sigma[i])
        if callback is not None:
            denoised = ops.sampler_step(u, u, inv_alpha[i], zeros)
            callback({"x": x, "i": i, "t": t, "denoised": denoised})
        if u_prev is None or i == n - 1:
            x = ops.sampler_step(x, u, ratio[i], u_coef[i])
        else:
            x = ops.sampler_step(x, u, ratio[i], u_coef[i], u_prev, prev_u_coef[i])
        u_prev = u
    return x


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "dpmpp_2m": sample_dpmpp_2m,
}


def uses_noise(sampler: str, eta: float = 0.0) -> bool:
    """Whether ``sampler`` calls its noise_sampler (once per step) with this eta."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; known: {', '.join(SAMPLERS)}")
    return sampler == "ddpm" or (sampler == "ddim" and eta > 0)
