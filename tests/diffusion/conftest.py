"""Fixtures for the sampler tests: single-threaded runs and a Gaussian data
distribution whose exact noise predictor is known in closed form."""

from __future__ import annotations

import pytest
import torch

from lddm_fast.diffusion import alphas_cumprod, betas_for


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: these tensors are small, and on a busy 2-core machine a
    multi-threaded op pays milliseconds of thread hand-off each."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class GaussianData:
    """Data ``x0 ~ N(mu, diag(s^2))`` over D dimensions (samples are ``[n, D]``).

    Under ``x_t = sqrt(abar) x0 + sqrt(1 - abar) eps`` the marginal of x_t is
    ``N(sqrt(abar) mu, v)`` with ``v = abar s^2 + 1 - abar``, and the exact
    (MMSE) noise predictor is ``E[eps | x_t] = sqrt(1 - abar) (x_t - sqrt(abar) mu) / v``.
    The probability-flow ODE maps the standardised value ``(x_t - mean_t) / sqrt(v_t)``
    unchanged, so starting from ``x_T ~ N(0, I)`` at a timestep with ``abar_T`` it ends
    at ``N(mu - s sqrt(abar_T) mu / sqrt(v_T), s^2 / v_T)`` -- not exactly N(mu, s^2),
    because N(0, I) is only approximately the marginal at t = T.
    """

    def __init__(self, schedule: str = "linear", num_train_timesteps: int = 1000) -> None:
        self.mu = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64)
        self.s = torch.tensor([0.5, 1.0, 0.7, 2.0], dtype=torch.float64)
        self.alphas_cumprod = alphas_cumprod(betas_for(schedule, num_train_timesteps))

    def eps(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The exact eps predictor: x ``[B, D]``, t ``[B]`` int64 -> ``[B, D]``."""
        ab = self.alphas_cumprod[t].view(-1, 1)
        v = ab * self.s**2 + 1 - ab
        out = (x.double() - ab.sqrt() * self.mu) * (1 - ab).sqrt() / v
        return out.to(x.dtype)

    def x0(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The exact posterior mean E[x0 | x_t] (the "denoised" estimate), ``[B, D]``."""
        ab = self.alphas_cumprod[t].view(-1, 1)
        return ((x.double() - (1 - ab).sqrt() * self.eps(x, t).double()) / ab.sqrt()).to(x.dtype)

    def flow_target(self, abar_start: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) ``[D]`` of the exact ODE's pushforward of N(0, I) from abar_start."""
        ab = torch.as_tensor(abar_start, dtype=torch.float64)
        v = ab * self.s**2 + 1 - ab
        return self.mu - self.s * ab.sqrt() * self.mu / v.sqrt(), self.s / v.sqrt()


@pytest.fixture(params=["linear", "cosine"])
def gaussian(request) -> GaussianData:
    return GaussianData(request.param)


@pytest.fixture
def make_gaussian() -> type[GaussianData]:
    """The :class:`GaussianData` class, for tests that pick the schedule themselves."""
    return GaussianData
