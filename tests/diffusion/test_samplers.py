"""Sampler math against independent closed forms.

- Convergence on Gaussian data with the exact noise predictor (``GaussianData`` in
  conftest.py):
  sample moments with many random samples, and the order of convergence on
  standardised noise (no Monte-Carlo error).
- DDPM's step against the Gaussian posterior q(x_s | x_t, x0) derived by conditioning;
  DDIM with eta=1 against DDPM.
- DDIM and DPM-Solver++(2M) against k-diffusion's formulation in the VE
  (sigma = sqrt((1 - abar) / abar)) parameterisation.
- Classifier-free guidance batch sizes, callbacks and noise draws.
- diffusers' DDIM / DPM-Solver schedulers, when diffusers is installed.
"""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from lddm_fast.diffusion import (
    SAMPLERS,
    ClassifierFreeGuidance,
    PerSampleNoise,
    Schedule,
    ddim_coefficients,
    ddpm_coefficients,
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
    sampling_schedule,
    uses_noise,
    video_generators,
)


def _eps_model(data):
    return lambda x, t: data.eps(x, t)


# Discretisation error allowed on top of Monte-Carlo error in the moment test: the
# relative std error of each sampler at these step counts, as measured by the
# MC-free test below (DDIM 250 steps: <= 1.2%; DPM-Solver++(2M) 50 steps: <= 0.6%),
# rounded up.
DISCRETISATION = {("ddim", 250): 0.015, ("dpmpp_2m", 50): 0.008}


@pytest.mark.parametrize("sampler,steps,n", [("ddim", 250, 20_000), ("dpmpp_2m", 50, 100_000)])
def test_deterministic_samplers_reach_gaussian_moments(gaussian, sampler, steps, n):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=gen)  # float32 state, as the pipeline runs
    sched = sampling_schedule(gaussian.alphas_cumprod, steps, "trailing")
    out = SAMPLERS[sampler](_eps_model(gaussian), x, sched, disable=True).double()
    mean, std = gaussian.flow_target(sched.alphas_cumprod[0])
    # Monte-Carlo error of n iid samples: the sample mean has standard error std/sqrt(n)
    # and the sample std a relative standard error 1/sqrt(2n); 5 standard errors make
    # a false failure a < 1e-6 event per dimension.
    mc_mean, mc_std = 5 * std / math.sqrt(n), 5 / math.sqrt(2 * n)
    allowed = DISCRETISATION[(sampler, steps)]
    torch.testing.assert_close(out.mean(0), mean, rtol=0, atol=(mc_mean + allowed * std).max())
    ones = torch.ones(4, dtype=torch.float64)
    torch.testing.assert_close(out.std(0) / std, ones, rtol=0, atol=mc_std + allowed)
    # The target itself is within 1% of N(mu, s^2) for these schedules and spacings:
    # the gap is the N(0, I) start not being exactly the t = T marginal.
    torch.testing.assert_close(std, gaussian.s, rtol=1e-2, atol=0)


def _flow_error(data, sampler: str, steps: int) -> float:
    """Largest relative std error over the dimensions, with standardised x_T.

    On Gaussian data every deterministic sampler step is affine in x, so with x_T
    standardised to sample mean 0 and std 1 the output's sample moments are the
    sampler's exact pushforward moments: no Monte-Carlo error is left."""
    x = torch.randn(2000, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = (x - x.mean(0)) / x.std(0)
    sched = sampling_schedule(data.alphas_cumprod, steps, "trailing")
    out = SAMPLERS[sampler](_eps_model(data), x, sched, disable=True)
    mean, std = data.flow_target(sched.alphas_cumprod[0])
    assert (out.mean(0) - mean).abs().max() < 1e-3 * std.max()
    return (out.std(0) / std - 1).abs().max().item()


def test_ddim_converges_at_first_order(gaussian):
    errors = [_flow_error(gaussian, "ddim", n) for n in (125, 250, 500)]
    assert errors[1] <= DISCRETISATION[("ddim", 250)]
    for coarse, fine in zip(errors, errors[1:], strict=False):
        assert 1.7 <= coarse / fine <= 2.3, errors  # halving the step halves the error


def test_dpmpp_2m_converges_far_ahead_of_ddim(gaussian):
    """No fixed error ratio here: the solver is second order along the path, but its
    last step is a first-order jump onto sigma = 0 whose (small) error shrinks only
    like 1 - abar of the last timestep, i.e. like 1/n, and dominates beyond ~100 steps."""
    steps = (50, 100, 200)
    dpm = [_flow_error(gaussian, "dpmpp_2m", n) for n in steps]
    ddim = [_flow_error(gaussian, "ddim", n) for n in steps]
    assert dpm[0] <= DISCRETISATION[("dpmpp_2m", 50)] and dpm[2] <= 1e-3, dpm
    assert dpm[0] > dpm[1] > dpm[2], dpm
    for d, e in zip(dpm, ddim, strict=True):
        assert 5 * d < e, (dpm, ddim)


def _gaussian_posterior(x_t, x0, abar_t, abar_s):
    """q(x_s | x_t, x0) by Gaussian conditioning (precisions add), independently of the
    DDPM paper's coefficient formulas: x_s = sqrt(abar_s) x0 + sqrt(1 - abar_s) e1 and
    x_t = sqrt(a) x_s + sqrt(1 - a) e2 with a = abar_t / abar_s."""
    if abar_s == 1.0:  # conditioning on x0 leaves nothing random at the clean end
        return x0, 0.0
    a = abar_t / abar_s
    precision = 1 / (1 - abar_s) + a / (1 - a)
    var = 1 / precision
    mean = var * (math.sqrt(abar_s) * x0 / (1 - abar_s) + math.sqrt(a) * x_t / (1 - a))
    return mean, var


@pytest.mark.parametrize("t,s", [(999, 949), (500, 0), (40, 39)])
def test_ddpm_step_is_the_posterior(gaussian, t, s):
    gen = torch.Generator().manual_seed(2)
    abar = gaussian.alphas_cumprod
    x = torch.randn(64, 4, generator=gen, dtype=torch.float64)
    z = torch.randn(64, 4, generator=gen, dtype=torch.float64)
    sched = Schedule(torch.tensor([t]), torch.stack([abar[t], abar[s]]))
    out = sample_ddpm(_eps_model(gaussian), x, sched, disable=True, noise_sampler=lambda i: z)
    x0 = gaussian.x0(x, torch.full((64,), t))
    mean, var = _gaussian_posterior(x, x0, abar[t].item(), abar[s].item())
    torch.testing.assert_close(out, mean + math.sqrt(var) * z, rtol=1e-10, atol=1e-10)


def test_ddpm_last_step_lands_on_x0_estimate(gaussian):
    """To abar = 1 the posterior collapses onto the x0 estimate: no noise survives."""
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    sched = Schedule(torch.tensor([37]), torch.stack([gaussian.alphas_cumprod[37], torch.ones(())]))
    ones = lambda i: torch.ones_like(x)  # noqa: E731
    out = sample_ddpm(_eps_model(gaussian), x, sched, disable=True, noise_sampler=ones)
    torch.testing.assert_close(out, gaussian.x0(x, torch.full((16,), 37)), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("steps", [1, 10, 50])
def test_ddim_eta1_has_ddpm_posterior_variance(gaussian, steps):
    sched = sampling_schedule(gaussian.alphas_cumprod, steps, "trailing")
    abar = sched.alphas_cumprod
    a1, b1, c1 = ddim_coefficients(abar, eta=1.0)
    a, b, c = ddpm_coefficients(abar)
    pairs = [(abar[i].item(), abar[i + 1].item()) for i in range(steps)]
    var = torch.tensor(
        [_gaussian_posterior(0.0, 0.0, t, s)[1] for t, s in pairs], dtype=torch.float64
    )
    torch.testing.assert_close(c1**2, var, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(c**2, var, rtol=1e-10, atol=1e-14)
    # The means agree too, so DDIM(eta=1) is DDPM: same sample from the same noise.
    torch.testing.assert_close(a1, a, rtol=1e-10, atol=0)
    torch.testing.assert_close(b1, b, rtol=1e-10, atol=1e-12)
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    noise = torch.randn(steps, 8, 4, generator=torch.Generator().manual_seed(5), dtype=x.dtype)
    model = _eps_model(gaussian)
    ddim = sample_ddim(model, x, sched, disable=True, eta=1.0, noise_sampler=noise.__getitem__)
    ddpm = sample_ddpm(model, x, sched, disable=True, noise_sampler=noise.__getitem__)
    torch.testing.assert_close(ddim, ddpm, rtol=1e-9, atol=1e-9)


def _ve(data, sched: Schedule):
    """k-diffusion's view: sigmas ``[n + 1]`` ending at 0, and a denoiser
    ``D(x_ve, i)`` of the VE state ``x_ve = x_vp / sqrt(abar)``."""
    abar = sched.alphas_cumprod
    sigmas = ((1 - abar) / abar).sqrt()

    def denoised(x_ve, i):
        t = sched.timesteps[i].expand(x_ve.shape[0])
        return data.x0(x_ve * abar[i].sqrt(), t)

    return sigmas, denoised


def _kdiffusion_euler(data, x_vp, sched):
    """k-diffusion ``sample_euler`` (no churn): an Euler step of the VE ODE."""
    sigmas, denoised = _ve(data, sched)
    x = x_vp / sched.alphas_cumprod[0].sqrt()
    for i in range(len(sched)):
        d = (x - denoised(x, i)) / sigmas[i]
        x = x + d * (sigmas[i + 1] - sigmas[i])
    return x  # sigma_n = 0: VE and VP states coincide


def _kdiffusion_dpmpp_2m_step(sigmas, i, x, denoised, old):
    """One step of k-diffusion's ``sample_dpmpp_2m``, transcribed: VE state x at
    sigmas[i], x0 estimates of this step and the previous one (None on the first)."""
    t, t_next = -sigmas[i].log(), -sigmas[i + 1].log()
    h = t_next - t
    if old is None or sigmas[i + 1] == 0:
        return (sigmas[i + 1] / sigmas[i]) * x - torch.expm1(-h) * denoised
    r = (t - -sigmas[i - 1].log()) / h
    d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old
    return (sigmas[i + 1] / sigmas[i]) * x - torch.expm1(-h) * d


def _kdiffusion_dpmpp_2m(data, x_vp, sched):
    """k-diffusion ``sample_dpmpp_2m``, transcribed."""
    sigmas, denoised_fn = _ve(data, sched)
    x = x_vp / sched.alphas_cumprod[0].sqrt()
    old = None
    for i in range(len(sched)):
        denoised = denoised_fn(x, i)
        x = _kdiffusion_dpmpp_2m_step(sigmas, i, x, denoised, old)
        old = denoised
    return x


@pytest.mark.parametrize("steps", [1, 2, 7, 25])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_matches_kdiffusion_formulation(gaussian, steps, spacing):
    sched = sampling_schedule(gaussian.alphas_cumprod, steps, spacing)
    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    model = _eps_model(gaussian)
    ddim = sample_ddim(model, x, sched, disable=True)
    dpm = sample_dpmpp_2m(model, x, sched, disable=True)
    # DDIM(eta=0) is exactly Euler on the VE ODE (Karras et al. 2022, sec. 3).
    torch.testing.assert_close(ddim, _kdiffusion_euler(gaussian, x, sched), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(dpm, _kdiffusion_dpmpp_2m(gaussian, x, sched), rtol=1e-9, atol=1e-9)
    if steps <= 2:  # only first-order steps: DPM-Solver++(1) is DDIM
        torch.testing.assert_close(dpm, ddim, rtol=1e-9, atol=1e-9)
    else:
        assert (dpm - ddim).abs().max() > 1e-4


def test_callback_sees_every_step(gaussian):
    sched = sampling_schedule(gaussian.alphas_cumprod, 5, "trailing")
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    for sampler in SAMPLERS:
        seen = []
        kw = {"noise_sampler": lambda i: torch.zeros_like(x)} if sampler == "ddpm" else {}
        SAMPLERS[sampler](_eps_model(gaussian), x, sched, callback=seen.append, disable=True, **kw)
        assert [d["i"] for d in seen] == list(range(5))
        assert [int(d["t"]) for d in seen] == sched.timesteps.tolist()
        for d in seen:
            t = d["t"].expand(8)
            torch.testing.assert_close(d["denoised"], gaussian.x0(d["x"], t), rtol=1e-9, atol=1e-9)


def test_noise_draws_per_step(make_gaussian):
    data = make_gaussian()
    sched = sampling_schedule(data.alphas_cumprod, 6, "trailing")
    x = torch.randn(4, 4, dtype=torch.float64)
    for sampler, eta, draws in [("ddpm", 0.0, 6), ("ddim", 0.5, 6), ("ddim", 0.0, 0)]:
        calls = []

        def noise(i, calls=calls):
            calls.append(i)
            return torch.zeros_like(x)

        kw = {"eta": eta} if sampler == "ddim" else {}
        SAMPLERS[sampler](_eps_model(data), x, sched, disable=True, noise_sampler=noise, **kw)
        assert calls == list(range(draws)) and uses_noise(sampler, eta) == (draws > 0)
    assert not uses_noise("dpmpp_2m")
    with pytest.raises(ValueError, match="unknown sampler 'euler'"):
        uses_noise("euler")
    with pytest.raises(ValueError, match="eta must be >= 0"):
        sample_ddim(_eps_model(data), x, sched, eta=-1.0)


def test_predrawn_noise_equals_step_draws():
    """The CUDA-graph path pre-draws all steps' noise; it must be what the eager loop
    draws step by step from the same per-video generators."""
    like = torch.empty(3, 4, 2, 4, 4).contiguous(memory_format=torch.channels_last_3d)
    eager = PerSampleNoise(video_generators([1, 2, 3], "cpu"), like)
    steps = [eager.draw() for _ in range(5)]
    pre = PerSampleNoise(video_generators([1, 2, 3], "cpu"), like).predraw(5)
    assert pre.shape == (5, *like.shape)
    for i in range(5):
        assert torch.equal(pre[i], steps[i])
        assert pre[i].is_contiguous(memory_format=torch.channels_last_3d)
    # Row b depends on generator b only.
    alone = PerSampleNoise(video_generators([2], "cpu"), like[1:2]).predraw(5)
    assert torch.equal(alone[:, 0], pre[:, 1])


class _CountingNet:
    """A stand-in conditional network recording each call's batch size."""

    def __init__(self):
        self.batches = []

    def __call__(self, x, t, cond):
        self.batches.append(x.shape[0])
        assert t.shape == (x.shape[0],) and cond.shape[0] == x.shape[0]
        return x * 0.1 + cond.view(-1, 1)


@pytest.mark.parametrize("scale", [1.0, None])
def test_guidance_off_does_not_double_the_batch(scale, make_gaussian):
    net = _CountingNet()
    cond = torch.ones(3)
    model = ClassifierFreeGuidance(net, cond, None, scale)
    sched = sampling_schedule(make_gaussian().alphas_cumprod, 4, "trailing")
    sample_ddim(model, torch.randn(3, 5), sched, disable=True)
    assert net.batches == [3] * 4


def test_guidance_combines_one_doubled_batch():
    net = _CountingNet()
    cond, uncond = torch.full((3,), 2.0), torch.full((3,), -1.0)
    x, t = torch.randn(3, 5), torch.zeros(3, dtype=torch.int64)
    scale = 4.0
    out = ClassifierFreeGuidance(net, cond, uncond, scale)(x, t)
    assert net.batches == [6]
    e_c, e_u = x * 0.1 + 2.0, x * 0.1 - 1.0
    torch.testing.assert_close(out, e_u + scale * (e_c - e_u))
    # A [B] tensor scale (a graph's static buffer) is per sample.
    per_sample = ClassifierFreeGuidance(net, cond, uncond, torch.tensor([1.0, 2.0, 0.0]))(x, t)
    torch.testing.assert_close(per_sample, e_u + torch.tensor([[1.0], [2.0], [0.0]]) * (e_c - e_u))
    with pytest.raises(ValueError, match="guidance needs the unconditional"):
        ClassifierFreeGuidance(net, cond, None, 2.0)


_DIFFUSERS = importlib.util.find_spec("diffusers") is not None
needs_diffusers = pytest.mark.skipif(
    not _DIFFUSERS, reason="diffusers is not installed (optional test dependency)"
)


@needs_diffusers
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("beta_schedule", ["linear", "cosine"])
def test_ddim_matches_diffusers(spacing, beta_schedule, make_gaussian):
    from diffusers import DDIMScheduler

    data = make_gaussian(beta_schedule)
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule="linear" if beta_schedule == "linear" else "squaredcos_cap_v2",
        clip_sample=False,
        set_alpha_to_one=True,
        steps_offset=0,
        prediction_type="epsilon",
        timestep_spacing=spacing,
    )
    # diffusers accumulates its (float32) betas in float32.
    torch.testing.assert_close(
        scheduler.alphas_cumprod.double(), data.alphas_cumprod, rtol=1e-5, atol=1e-9
    )
    # 10 divides 1000: diffusers' DDIM steps from t to t - N // n, which is the next
    # listed timestep only when n divides N (for n = 3 trailing it would go 666 -> 333
    # where the list, and this library, go 666 -> 332).
    steps = 10
    scheduler.set_timesteps(steps)
    sched = sampling_schedule(data.alphas_cumprod, steps, spacing)
    assert scheduler.timesteps.tolist() == sched.timesteps.tolist()
    a, b, _ = ddim_coefficients(sched.alphas_cumprod)
    gen = torch.Generator().manual_seed(8)
    for i, t in enumerate(scheduler.timesteps):
        x = torch.randn(4, 4, generator=gen)
        eps = data.eps(x, t.expand(4))
        want = scheduler.step(eps, t, x, eta=0.0).prev_sample
        # float32 in diffusers (x0 = (x - sigma eps) / alpha cancels at alpha ~ 0.006).
        torch.testing.assert_close(
            a[i].float() * x + b[i].float() * eps, want, rtol=1e-4, atol=1e-4
        )


def _float64_steps(abar, states, eps):
    """The DPM-Solver++(2M) step from each recorded float32 state, computed in float64
    from the same inputs: ``states[i]`` (VP x_i) and ``eps[i]`` as the sampler saw them,
    over ``abar [n + 1]``. Returns the float64 x_{i+1} of each step (VP)."""
    abar = abar.double()
    sigmas = ((1 - abar) / abar).sqrt()
    out, old = [], None
    for i, (x, e) in enumerate(zip(states, eps, strict=True)):
        x, e = x.double(), e.double()
        denoised = (x - (1 - abar[i]).sqrt() * e) / abar[i].sqrt()
        x_next = _kdiffusion_dpmpp_2m_step(sigmas, i, x / abar[i].sqrt(), denoised, old)
        out.append(x_next * abar[i + 1].sqrt())
        old = denoised
    return out


def _eps_amplification(abar):
    """``[n]``: how much a relative rounding of eps (or of sigma_t) in the data estimate
    ``D = (x - sigma eps) / alpha`` is amplified into x_{i+1}: the weight of each D a
    step uses times sigma / alpha at that D's timestep (2e4 at t = 999 of the cosine
    schedule, where alpha = 4.9e-5)."""
    abar = abar.double()
    alpha, sigma = abar.sqrt(), (1 - abar).sqrt()
    sigmas = sigma / alpha
    lam = -sigmas.log()
    h = lam[1:] - lam[:-1]
    k = (alpha[1:] * -torch.expm1(-h)).abs()
    gain = sigma[:-1] / alpha[:-1]
    out = k * gain
    n = h.shape[0]
    for i in range(1, n - 1):  # second-order steps weight D_i by 1 + 1/2r, D_{i-1} by 1/2r
        half_inv_r = 0.5 * h[i] / h[i - 1]
        out[i] = k[i] * ((1 + half_inv_r) * gain[i] + half_inv_r * gain[i - 1])
    return out


@needs_diffusers
@pytest.mark.parametrize("beta_schedule", ["linear", "cosine"])
def test_dpmpp_2m_matches_diffusers(beta_schedule, make_gaussian):
    """Both implementations against the same steps computed in float64.

    The two float32 trajectories cannot be compared with each other directly at float32
    tolerances on the cosine schedule: its first step turns eps into the x0 estimate
    through ``sigma / alpha = 2e4`` (alpha_999 = 4.9e-5), so a rounding of eps or of a
    coefficient by 2^-24 moves x_1 by ~3e-4. Instead each step of each sampler is
    recomputed in float64 (k-diffusion's formulation) from the float32 state and eps that
    sampler saw, with its own schedule, and compared with what it produced:

    - ours stays within a few float32 ulps of the largest |x| at every step;
    - diffusers' stays within the error its formula admits: ``(x - sigma_t eps) /
      alpha_t`` with float32 sigma_t and eps, i.e. a few ulps amplified by the
      weight of eps in the step (:func:`_eps_amplification`). With diffusers 0.42.1
      its first cosine step is off by 6.2e-4 (ours: 6e-8), which is the 6.5e-4 the two
      trajectories differed by.
    """
    from diffusers import DPMSolverMultistepScheduler

    data = make_gaussian(beta_schedule)
    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=1000,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule="linear" if beta_schedule == "linear" else "squaredcos_cap_v2",
        algorithm_type="dpmsolver++",
        solver_order=2,
        prediction_type="epsilon",
        timestep_spacing="trailing",  # diffusers' "leading" differs for DPM-Solver (n + 1 split)
        final_sigmas_type="zero",
        lower_order_final=True,
    )
    steps = 12
    scheduler.set_timesteps(steps)
    sched = sampling_schedule(data.alphas_cumprod, steps, "trailing")
    assert scheduler.timesteps.tolist() == sched.timesteps.tolist()
    # diffusers accumulates its (float32) betas in float32.
    theirs_abar = torch.cat([scheduler.alphas_cumprod.double()[sched.timesteps], torch.ones(1)])
    torch.testing.assert_close(theirs_abar, sched.alphas_cumprod, rtol=2e-5, atol=0)

    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(9))
    ours_x, ours_eps = [], []

    def model(x, t):
        ours_x.append(x)
        ours_eps.append(data.eps(x, t))
        return ours_eps[-1]

    ours_x.append(sample_dpmpp_2m(model, x, sched, disable=True))
    theirs_x, theirs_eps = [x], []
    for t in scheduler.timesteps:
        theirs_eps.append(data.eps(theirs_x[-1], t.expand(16)))
        theirs_x.append(scheduler.step(theirs_eps[-1], t, theirs_x[-1]).prev_sample)

    ulp = torch.finfo(torch.float32).eps
    ours_ref = _float64_steps(sched.alphas_cumprod, ours_x[:-1], ours_eps)
    for i, (got, want) in enumerate(zip(ours_x[1:], ours_ref, strict=True)):
        # Two fused float32 updates, each a few roundings of terms no larger than |x|.
        tol = 4 * ulp * want.abs().max().item()
        err = (got.double() - want).abs().max().item()
        assert err <= tol, f"step {i}: {err:.2e} from float64 > {tol:.2e}"
    gain = _eps_amplification(theirs_abar)
    theirs_ref = _float64_steps(theirs_abar, theirs_x[:-1], theirs_eps)
    for i, (got, want) in enumerate(zip(theirs_x[1:], theirs_ref, strict=True)):
        scale = want.abs().max() + gain[i] * theirs_eps[i].abs().max()
        tol = 4 * ulp * scale.item()
        err = (got.double() - want).abs().max().item()
        assert err <= tol, f"step {i}: {err:.2e} from float64 > {tol:.2e}"
