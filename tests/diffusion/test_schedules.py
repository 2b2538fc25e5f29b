"""Noise schedules against their closed forms, timestep spacing, and the eps / v / x0
conversions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lddm_fast.diffusion import (
    EpsPrediction,
    Schedule,
    VPrediction,
    alphas_cumprod,
    betas_for,
    cosine_betas,
    eps_from_v,
    linear_betas,
    prediction_adapter,
    sampling_schedule,
    snr,
    spaced_timesteps,
    v_from_eps,
    x0_from_eps,
)


def test_linear_schedule_closed_form():
    n = 1000
    betas = linear_betas(n)
    expected = [1e-4 + (0.02 - 1e-4) * t / (n - 1) for t in range(n)]
    assert betas.dtype == torch.float64
    torch.testing.assert_close(betas, torch.tensor(expected, dtype=torch.float64))
    # abar as a running product in plain Python floats, independent of torch.cumprod.
    abar, running = [], 1.0
    for beta in expected:
        running *= 1 - beta
        abar.append(running)
    torch.testing.assert_close(
        alphas_cumprod(betas), torch.tensor(abar, dtype=torch.float64), rtol=1e-12, atol=0
    )
    assert alphas_cumprod(betas)[-1] == pytest.approx(4.04e-5, rel=1e-2)  # DDPM's abar_T


def test_cosine_schedule_closed_form():
    n, s = 1000, 0.008

    def f(u):
        return math.cos((u / n + s) / (1 + s) * math.pi / 2) ** 2

    abar = alphas_cumprod(cosine_betas(n, s=s))
    # The product telescopes to f(t+1) / f(0) wherever beta is not capped at 0.999,
    # which is every step but the last (where f(N) = 0 would make beta = 1).
    expected = torch.tensor([f(t + 1) / f(0) for t in range(n - 1)], dtype=torch.float64)
    torch.testing.assert_close(abar[:-1], expected, rtol=1e-10, atol=1e-15)
    assert cosine_betas(n)[-1] == 0.999
    assert abar[-1] == pytest.approx(abar[-2].item() * 0.001, rel=1e-12)


def test_betas_for_and_snr():
    torch.testing.assert_close(betas_for("linear", 50), linear_betas(50))
    torch.testing.assert_close(betas_for("cosine", 50), cosine_betas(50))
    with pytest.raises(ValueError, match="unknown beta schedule 'sigmoid'"):
        betas_for("sigmoid", 50)
    abar = alphas_cumprod(linear_betas())
    ratio = snr(abar)
    torch.testing.assert_close(ratio, abar / (1 - abar))
    assert (ratio[1:] < ratio[:-1]).all()  # noise grows with t


@pytest.mark.parametrize("steps", [1, 3, 7, 10, 16, 25, 50, 333, 1000])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_spacing_matches_diffusers_formula(steps, spacing):
    """The diffusers DDIMScheduler.set_timesteps formulas (steps_offset=0), in numpy."""
    n_train = 1000
    if spacing == "leading":
        ratio = n_train // steps
        want = (np.arange(0, steps) * ratio).round()[::-1].astype(np.int64)
    else:
        want = np.round(np.arange(n_train, 0, -n_train / steps)).astype(np.int64) - 1
    got = spaced_timesteps(steps, n_train, spacing)
    assert got.dtype == torch.int64 and got.tolist() == want.tolist()
    assert len(got) == steps and (got[1:] < got[:-1]).all()
    assert 0 <= got.min() and got.max() <= n_train - 1


def test_leading_vs_trailing():
    assert spaced_timesteps(10, 1000, "leading").tolist() == list(range(900, -1, -100))
    assert spaced_timesteps(10, 1000, "trailing").tolist() == list(range(999, 98, -100))
    # Leading ends on t = 0 but never starts at the pure-noise end; trailing does.
    assert spaced_timesteps(3, 1000, "leading").tolist() == [666, 333, 0]
    assert spaced_timesteps(3, 1000, "trailing").tolist() == [999, 666, 332]
    for spacing in ("leading", "trailing"):
        assert spaced_timesteps(1000, 1000, spacing).tolist() == list(range(999, -1, -1))


@pytest.mark.parametrize("bad", [0, 1001, 2.5, True])
def test_spacing_rejects_bad_steps(bad):
    with pytest.raises(ValueError, match=r"steps must be an int in \[1, 1000\]"):
        spaced_timesteps(bad, 1000)


def test_spacing_rejects_unknown_spacing():
    with pytest.raises(ValueError, match="timestep_spacing must be one of"):
        spaced_timesteps(10, 1000, "linspace")


def test_sampling_schedule_ends_clean():
    abar = alphas_cumprod(linear_betas())
    sched = sampling_schedule(abar, 4, "trailing")
    assert sched.timesteps.tolist() == [999, 749, 499, 249]
    assert sched.alphas_cumprod.dtype == torch.float64 and len(sched) == 4
    torch.testing.assert_close(sched.alphas_cumprod[:-1], abar[sched.timesteps])
    assert sched.alphas_cumprod[-1] == 1.0
    with pytest.raises(ValueError, match=r"timesteps \[n\] and alphas_cumprod \[n \+ 1\]"):
        Schedule(sched.timesteps, sched.alphas_cumprod[:-1])


def test_eps_v_x0_conversions_round_trip():
    gen = torch.Generator().manual_seed(0)
    abar = alphas_cumprod(cosine_betas())[torch.tensor([0, 100, 500, 900, 998])]
    alpha, sigma = abar.sqrt().view(-1, 1), (1 - abar).sqrt().view(-1, 1)
    x0 = torch.randn(5, 8, generator=gen, dtype=torch.float64)
    eps = torch.randn(5, 8, generator=gen, dtype=torch.float64)
    x_t = alpha * x0 + sigma * eps
    v = alpha * eps - sigma * x0  # the definition of the v target
    torch.testing.assert_close(v_from_eps(x_t, eps, alpha, sigma), v)
    torch.testing.assert_close(eps_from_v(x_t, v, alpha, sigma), eps)
    torch.testing.assert_close(x0_from_eps(x_t, eps, alpha, sigma), x0)
    torch.testing.assert_close(
        v_from_eps(x_t, eps_from_v(x_t, v, alpha, sigma), alpha, sigma), v, rtol=1e-12, atol=1e-12
    )


def test_prediction_adapters():
    gen = torch.Generator().manual_seed(1)
    abar_train = alphas_cumprod(linear_betas())
    t = torch.tensor([0, 250, 999])
    x = torch.randn(3, 4, 2, 2, 2, generator=gen, dtype=torch.float64)
    v = torch.randn(3, 4, 2, 2, 2, generator=gen, dtype=torch.float64)
    calls = []

    def net(x_in, t_in, **kw):
        calls.append(kw)
        return v

    model = VPrediction(net, abar_train)
    ab = abar_train[t].view(-1, 1, 1, 1, 1)
    torch.testing.assert_close(model(x, t, cond="c"), eps_from_v(x, v, ab.sqrt(), (1 - ab).sqrt()))
    assert calls == [{"cond": "c"}]  # keyword arguments pass through to the network
    assert isinstance(prediction_adapter("eps", net, abar_train), EpsPrediction)
    assert prediction_adapter("eps", net, abar_train)(x, t) is v
    with pytest.raises(ValueError, match="prediction_type must be 'eps' or 'v'"):
        prediction_adapter("x0", net, abar_train)
