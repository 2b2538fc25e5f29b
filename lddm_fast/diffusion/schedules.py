"""Noise schedules of the discrete-time VP diffusion, the timesteps a sampler visits,
and conversions between the eps-, v- and x0-parameterisations.

Notation: ``x_t = alpha_t x0 + sigma_t eps`` with ``alpha_t = sqrt(abar_t)`` and
``sigma_t = sqrt(1 - abar_t)``, where ``abar_t = prod_{s <= t} (1 - beta_s)`` over the
training steps ``t = 0 .. N-1``. Schedule arithmetic is float64 (abar_999 of the linear
schedule is 4e-5; its square root enters every coefficient).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = [
    "BETA_SCHEDULES",
    "TIMESTEP_SPACINGS",
    "Schedule",
    "alphas_cumprod",
    "betas_for",
    "cosine_betas",
    "eps_from_v",
    "linear_betas",
    "sampling_schedule",
    "snr",
    "spaced_timesteps",
    "v_from_eps",
    "x0_from_eps",
]

TIMESTEP_SPACINGS = ("leading", "trailing")


def linear_betas(
    num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
) -> torch.Tensor:
    """DDPM's linear schedule: ``beta_t = linspace(beta_start, beta_end, N)[t]``
    (diffusers ``beta_schedule="linear"``). Returns ``[N]`` float64."""
    return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)


def cosine_betas(
    num_train_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999
) -> torch.Tensor:
    """Nichol & Dhariwal's cosine schedule (diffusers ``"squaredcos_cap_v2"``):
    ``abar(u) = cos((u + s) / (1 + s) * pi / 2) ** 2`` on ``u in [0, 1]`` and
    ``beta_t = min(1 - abar((t+1)/N) / abar(t/N), max_beta)``; the cap keeps the last
    steps from reaching beta = 1. Returns ``[N]`` float64."""
    u = torch.arange(num_train_timesteps + 1, dtype=torch.float64) / num_train_timesteps
    abar = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - abar[1:] / abar[:-1]).clamp(max=max_beta)


BETA_SCHEDULES = {"linear": linear_betas, "cosine": cosine_betas}


def betas_for(name: str, num_train_timesteps: int) -> torch.Tensor:
    """The ``[N]`` float64 betas of a schedule named in ``LDDMConfig.beta_schedule``."""
    if name not in BETA_SCHEDULES:
        raise ValueError(f"unknown beta schedule {name!r}; known: {', '.join(BETA_SCHEDULES)}")
    return BETA_SCHEDULES[name](num_train_timesteps)


def alphas_cumprod(betas: torch.Tensor) -> torch.Tensor:
    """``abar_t = prod_{s <= t} (1 - beta_s)``: ``[N]`` -> ``[N]`` float64."""
    return torch.cumprod(1 - betas.double(), dim=0)


def snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio ``alpha_t^2 / sigma_t^2 = abar / (1 - abar)``, same shape."""
    return alphas_cumprod / (1 - alphas_cumprod)


def spaced_timesteps(
    num_inference_steps: int, num_train_timesteps: int = 1000, spacing: str = "trailing"
) -> torch.Tensor:
    """The training timesteps a sampler visits, first (noisiest) to last.

    ``"leading"`` (DDIM paper, diffusers' DDIM default): ``k * (N // n)`` for
    ``k = n-1 .. 0``, so it ends at t = 0 but starts below N-1 (999 -> 960 for 25 of
    1000 steps). ``"trailing"`` (Lin et al. 2024): ``round(N - k N / n) - 1`` for
    ``k = 0 .. n-1``, so it starts at the pure-noise end t = N-1. Both match diffusers'
    ``DDIMScheduler.set_timesteps`` with ``steps_offset=0``.

    Returns:
        ``[n]`` int64, strictly decreasing, in ``[0, N-1]``.
    """
    n, big_n = num_inference_steps, num_train_timesteps
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= big_n:
        raise ValueError(f"steps must be an int in [1, {big_n}] (the training steps), got {n!r}")
    if spacing == "leading":
        return torch.arange(n - 1, -1, -1, dtype=torch.int64) * (big_n // n)
    if spacing == "trailing":
        # N - k * (N / n) in float64 is exactly numpy's arange(N, 0, -N / n), and
        # torch.round rounds half to even like np.round: the same integers as diffusers.
        k = torch.arange(n, dtype=torch.float64)
        return torch.round(big_n - k * (big_n / n)).to(torch.int64) - 1
    raise ValueError(f"timestep_spacing must be one of {TIMESTEP_SPACINGS}, got {spacing!r}")


@dataclass(frozen=True)
class Schedule:
    """The steps of one sampling run, on the sampling device (a sampler reads them with
    device ops only, so a captured CUDA graph can take new values by copy).

    Attributes:
        timesteps: ``[n]`` int64, the model's timestep at each step, decreasing.
        alphas_cumprod: ``[n + 1]`` float64: abar at each of those timesteps, then 1.0,
            the clean end that the last step lands on (so the result is the final x0
            estimate, as with diffusers' ``set_alpha_to_one`` / ``final_sigmas_type="zero"``).
    """

    timesteps: torch.Tensor
    alphas_cumprod: torch.Tensor

    def __post_init__(self) -> None:
        n = self.timesteps.shape[0] if self.timesteps.dim() == 1 else -1
        if n < 1 or self.alphas_cumprod.shape != (n + 1,):
            raise ValueError(
                f"Schedule needs timesteps [n] and alphas_cumprod [n + 1], got "
                f"{tuple(self.timesteps.shape)} and {tuple(self.alphas_cumprod.shape)}"
            )

    def __len__(self) -> int:
        return self.timesteps.shape[0]


def sampling_schedule(
    train_alphas_cumprod: torch.Tensor,
    steps: int,
    spacing: str = "trailing",
    device: torch.device | str | None = None,
) -> Schedule:
    """The :class:`Schedule` of ``steps`` steps over a training schedule.

    Args:
        train_alphas_cumprod: ``[N]`` abar of the N training timesteps.
        steps: number of sampling steps n, ``1 <= n <= N``.
        spacing: ``"leading"`` or ``"trailing"`` (see :func:`spaced_timesteps`).
        device: where the schedule lives (default: train_alphas_cumprod's device).
    """
    device = train_alphas_cumprod.device if device is None else device
    table = train_alphas_cumprod.double()
    timesteps = spaced_timesteps(steps, table.shape[0], spacing).to(table.device)
    abar = torch.cat([table[timesteps], table.new_ones(1)])
    return Schedule(timesteps.to(device), abar.to(device))


def x0_from_eps(x_t: torch.Tensor, eps: torch.Tensor, alpha, sigma) -> torch.Tensor:
    """``x0 = (x_t - sigma eps) / alpha`` (alpha, sigma broadcast against x_t)."""
    return (x_t - sigma * eps) / alpha


def eps_from_v(x_t: torch.Tensor, v: torch.Tensor, alpha, sigma) -> torch.Tensor:
    """eps from a v-prediction ``v = alpha eps - sigma x0``: ``eps = sigma x_t + alpha v``
    (uses ``alpha^2 + sigma^2 = 1``)."""
    return sigma * x_t + alpha * v


def v_from_eps(x_t: torch.Tensor, eps: torch.Tensor, alpha, sigma) -> torch.Tensor:
    """The v target for a noise ``eps``: ``v = alpha eps - sigma x0 = (eps - sigma x_t) /
    alpha`` (inverse of :func:`eps_from_v`)."""
    return (eps - sigma * x_t) / alpha
