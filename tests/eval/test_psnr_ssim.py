"""PSNR and SSIM against closed forms and a by-hand SSIM window."""

import math

import numpy as np
import pytest
import torch

from lddm_fast.eval.psnr_ssim import psnr_clip, psnr_frames, ssim_clip, ssim_frames


def _clips(seed=0, shape=(2, 1, 3, 24, 20)):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(20, 236, shape, generator=gen, dtype=torch.uint8)


def test_identical_clips():
    x = _clips()
    assert torch.isinf(psnr_frames(x, x)).all() and torch.isinf(psnr_clip(x, x)).all()
    torch.testing.assert_close(ssim_frames(x, x), torch.ones(2, 3, dtype=torch.float64))
    torch.testing.assert_close(ssim_clip(x, x), torch.ones(2, dtype=torch.float64))


def test_constant_offset_gives_closed_form_psnr():
    x = _clips()
    y = x + 10  # values stay below 256
    expected = 20 * math.log10(255 / 10)  # MSE = (10 / 255)^2 on the [0, 1] scale
    torch.testing.assert_close(psnr_frames(x, y), torch.full((2, 3), expected, dtype=torch.float64))
    torch.testing.assert_close(psnr_clip(x, y), torch.full((2,), expected, dtype=torch.float64))


def test_clip_psnr_is_from_the_clip_mse_not_the_mean_of_frames():
    x = torch.zeros(1, 1, 2, 16, 16, dtype=torch.uint8)
    y = x.clone()
    y[0, 0, 0] = 51  # frame 0 off by 0.2, frame 1 exact
    assert torch.isinf(psnr_frames(x, y)[0, 1])
    expected = 10 * math.log10(1 / (0.2**2 / 2))
    assert float(psnr_clip(x, y)[0]) == pytest.approx(expected)


def test_uint8_and_signed_float_encodings_agree():
    x, y = _clips(1), _clips(2)
    xf, yf = x.double() / 127.5 - 1, y.double() / 127.5 - 1
    torch.testing.assert_close(psnr_frames(xf, yf), psnr_frames(x, y))
    torch.testing.assert_close(ssim_frames(xf, yf), ssim_frames(x, y))


def test_ssim_of_constant_frames_closed_form():
    # No variance: SSIM = (2ab + C1) / (a^2 + b^2 + C1), with C1 = (0.01)^2.
    a, b = 100 / 255, 140 / 255
    x = torch.full((1, 1, 1, 16, 16), 100, dtype=torch.uint8)
    y = torch.full((1, 1, 1, 16, 16), 140, dtype=torch.uint8)
    c1 = 0.01**2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    assert float(ssim_frames(x, y)[0, 0]) == pytest.approx(expected, rel=1e-12)


def test_ssim_single_window_by_hand():
    # An 11x11 frame has exactly one valid window: compute its Gaussian-weighted
    # statistics directly.
    rng = np.random.default_rng(0)
    xs, ys = rng.uniform(0, 1, (11, 11)), rng.uniform(0, 1, (11, 11))
    coords = np.arange(11) - 5
    g = np.exp(-(coords**2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    mx, my = (w * xs).sum(), (w * ys).sum()
    vx, vy = (w * (xs - mx) ** 2).sum(), (w * (ys - my) ** 2).sum()
    cov = (w * (xs - mx) * (ys - my)).sum()
    c1, c2 = 0.01**2, 0.03**2
    expected = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    xt, yt = (torch.from_numpy(a * 2 - 1).view(1, 1, 1, 11, 11) for a in (xs, ys))
    got = float(ssim_frames(xt, yt)[0, 0])
    assert got == pytest.approx(expected, rel=1e-10)


def test_ssim_symmetric_and_falls_with_noise():
    x = _clips(3, (1, 3, 2, 32, 32))
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(x.shape, generator=gen)
    little = (x.float() + 5 * noise).clamp(0, 255).to(torch.uint8)
    lots = (x.float() + 40 * noise).clamp(0, 255).to(torch.uint8)
    torch.testing.assert_close(ssim_frames(x, little), ssim_frames(little, x))
    assert (ssim_frames(x, lots) < ssim_frames(x, little)).all()
    assert (ssim_frames(x, little) < 1).all()


def test_shape_errors():
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim_frames(torch.zeros(1, 1, 1, 10, 20), torch.zeros(1, 1, 1, 10, 20))
    with pytest.raises(ValueError, match="one shape"):
        psnr_frames(torch.zeros(1, 1, 1, 8, 8), torch.zeros(1, 1, 2, 8, 8))
