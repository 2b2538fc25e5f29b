"""Fitted speckle over the decoded frames (``AutoencoderConfig.speckle_frames``): the
log-intensity statistics of the drawn field, the std table lookup, the decoder and
pipeline plumbing, and the fit recovering known parameters."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from lddm_fast.diffusion import LDDMPipeline
from lddm_fast.models import preset
from lddm_fast.models.autoencoder import VideoAutoencoder
from lddm_fast.models.checkpoint import build_models, from_pretrained, save_pretrained
from lddm_fast.models.speckle import (
    SPECKLE_KERNEL,
    SPECKLE_LEVELS,
    SpeckleResidual,
    standard_log_speckle,
)
from lddm_fast.train.speckle import (
    fit_speckle,
    gaussian_kernel,
    neighbour_correlation,
    with_speckle,
)

# Skewness of ln X for X exponential: -2 zeta(3) / (pi^2 / 6)^1.5.
LOG_EXPONENTIAL_SKEW = -2 * 1.2020569031595942 / (math.pi**2 / 6) ** 1.5


def _delta() -> torch.Tensor:
    kernel = torch.zeros(SPECKLE_KERNEL, SPECKLE_KERNEL)
    kernel[SPECKLE_KERNEL // 2, SPECKLE_KERNEL // 2] = 1.0
    return kernel


def _intensity(speckle: torch.Tensor) -> torch.Tensor:
    """Back from standardised log intensity to |c|^2 (mean 2)."""
    return (speckle * (math.pi / math.sqrt(6)) + math.log(2) - 0.5772156649015329).exp()


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def test_log_speckle_has_the_log_exponential_distribution():
    noise = torch.randn(8, 2, 4, 64, 64)
    s = standard_log_speckle(noise, _delta(), 0.0).double()
    assert s.shape == (8, 1, 4, 64, 64)
    assert abs(float(s.mean())) < 0.02
    assert float(s.std()) == pytest.approx(1.0, abs=0.02)
    skew = float(((s - s.mean()) ** 3).mean() / s.std() ** 3)
    assert skew == pytest.approx(LOG_EXPONENTIAL_SKEW, abs=0.06)


@pytest.mark.parametrize("rho", [0.0, 0.5, 0.9])
def test_frames_are_correlated_by_rho(rho):
    # A circular complex Gaussian field with correlation rho has intensities
    # correlated by rho^2.
    noise = torch.randn(16, 2, 3, 48, 48)
    intensity = _intensity(standard_log_speckle(noise, _delta(), rho))
    for t in (0, 1):
        assert _corr(intensity[:, :, t], intensity[:, :, t + 1]) == pytest.approx(rho**2, abs=0.02)
    assert _corr(intensity[:, :, 0], intensity[:, :, 2]) == pytest.approx(rho**4, abs=0.02)


def test_the_kernel_spreads_the_field_spatially():
    kernel = torch.zeros(SPECKLE_KERNEL, SPECKLE_KERNEL)
    mid = SPECKLE_KERNEL // 2
    kernel[mid, mid] = kernel[mid, mid + 1] = math.sqrt(0.5)
    noise = torch.randn(16, 2, 2, 48, 48)
    intensity = _intensity(standard_log_speckle(noise, kernel, 0.0))
    # Neighbours along W share half of each complex value: intensity correlation 1/4.
    assert _corr(intensity[..., :-1], intensity[..., 1:]) == pytest.approx(0.25, abs=0.02)
    assert _corr(intensity[..., :-1, :], intensity[..., 1:, :]) == pytest.approx(0.0, abs=0.02)
    assert float(intensity.mean()) == pytest.approx(2.0, rel=0.02)


def test_gaussian_kernels_and_the_grain_they_make():
    noise = torch.randn(4, 2, 2, 48, 48)
    grain = {}
    for sigmas in ((0.5, 0.5), (0.5, 1.5), (1.5, 0.5)):
        k = gaussian_kernel(*sigmas)
        assert k.shape == (SPECKLE_KERNEL, SPECKLE_KERNEL)
        assert float(k.square().sum()) == pytest.approx(1.0, abs=1e-6)
        torch.testing.assert_close(k, k.flip(0).flip(1))
        grain[sigmas] = neighbour_correlation(standard_log_speckle(noise, k, 0.0))
    # Widening one axis coarsens the grain along it: the fit's bisections rely on it.
    assert grain[(0.5, 1.5)][1] > grain[(0.5, 0.5)][1] + 0.2
    assert grain[(1.5, 0.5)][0] > grain[(0.5, 0.5)][0] + 0.2


def test_the_std_table_is_read_by_channel_frame_and_gray_level():
    module = SpeckleResidual(channels=2, frames=3)
    module.std.copy_(torch.arange(2 * 3 * SPECKLE_LEVELS, dtype=torch.float32).view(2, 3, -1))
    # Two channels, five frames (frames 3 and 4 reuse the table's last row), one
    # value per gray-level bin along W (bin centres).
    centres = (torch.arange(SPECKLE_LEVELS) + 0.5) * (2 / SPECKLE_LEVELS) - 1
    frames = centres.view(1, 1, 1, 1, -1).expand(1, 2, 5, 1, SPECKLE_LEVELS)
    scale = module.scale(frames)
    for c in range(2):
        for t in range(5):
            row = min(t, 2)
            assert scale[0, c, t, 0].tolist() == module.std[c, row].tolist()
    # Values at the ends and past them fall in the end bins.
    ends = torch.tensor([-1.5, -1.0, 1.0, 1.5]).view(1, 1, 1, 1, 4)
    assert module.level_index(ends).flatten().tolist() == [0, 0, 7, 7]


def test_a_fresh_module_adds_nothing_and_a_fitted_one_adds_its_std():
    module = SpeckleResidual(channels=1, frames=4)
    frames = torch.rand(2, 1, 4, 16, 16) - 0.5
    noise = torch.randn(module.noise_shape(frames.shape))
    assert torch.equal(module(frames, noise), frames)
    module.std.fill_(0.2)
    module.rho.fill_(0.5)
    added = module(frames, noise) - frames
    assert float(added.std()) == pytest.approx(0.2, rel=0.1)
    with pytest.raises(ValueError, match=r"speckle noise has shape \(2, 1, 4, 16, 16\)"):
        module(frames, noise[:, :1])


def _speckle_config(frames: int | None = None):
    config = preset("tiny")
    t = config.num_frames if frames is None else frames
    ae = dataclasses.replace(config.autoencoder, warp=True, speckle_frames=t)
    return dataclasses.replace(config, autoencoder=ae)


def _fitted(ae: VideoAutoencoder) -> VideoAutoencoder:
    ae.speckle.std.uniform_(0.05, 0.15)
    ae.speckle.rho.fill_(0.7)
    return ae


def _saved_fitted(directory):
    """The tiny preset with fitted-looking speckle, saved to ``directory``."""
    config = _speckle_config()
    torch.manual_seed(0)
    models = build_models(config)
    _fitted(models.autoencoder)
    save_pretrained(directory, models)
    return config, models


def test_config_checks():
    with pytest.raises(ValueError, match="speckle_frames must be an int >= 0"):
        dataclasses.replace(preset("tiny").autoencoder, speckle_frames=-1)


def test_decode_draws_speckle_only_when_given_noise():
    config = _speckle_config()
    torch.manual_seed(0)
    ae = _fitted(VideoAutoencoder(config.autoencoder).eval())
    z = torch.randn(2, *config.latent_shape)
    x0 = torch.rand(2, 1, config.size, config.size) * 2 - 1
    mean = ae.decode(z, x0).sample
    noise = torch.randn(ae.speckle_shape(z))
    sample = ae.decode(z, x0, speckle=noise).sample
    assert sample.shape == mean.shape == (2, 1, config.num_frames, config.size, config.size)
    torch.testing.assert_close(sample, mean + ae.speckle.scale(mean) * _log(noise, ae))
    with pytest.raises(ValueError, match=r"speckle has shape"):
        ae.decode(z, x0, speckle=noise[:, :, :2])
    plain = VideoAutoencoder(preset("tiny").autoencoder)
    with pytest.raises(ValueError, match="has no speckle model"):
        plain.decode(z, x0, speckle=noise)


def _log(noise: torch.Tensor, ae: VideoAutoencoder) -> torch.Tensor:
    return standard_log_speckle(noise, ae.speckle.kernel, float(ae.speckle.rho))


def test_speckle_buffers_survive_a_checkpoint(tmp_path):
    config, models = _saved_fitted(tmp_path / "ckpt")
    loaded = from_pretrained(tmp_path / "ckpt")
    assert loaded.config.autoencoder.speckle_frames == config.num_frames
    for name in ("kernel", "rho", "std"):
        assert torch.equal(
            getattr(loaded.autoencoder.speckle, name), getattr(models.autoencoder.speckle, name)
        )


def test_pipeline_videos_carry_speckle_and_depend_only_on_their_seed(tmp_path):
    config, models = _saved_fitted(tmp_path / "ckpt")
    pipe = LDDMPipeline.from_pretrained(tmp_path / "ckpt")
    images = torch.rand(2, 1, config.size, config.size)
    both = pipe(images, steps=2, seed=[11, 12], output="float").videos
    second = pipe(images[1:], steps=2, seed=[12], output="float").videos
    torch.testing.assert_close(both[1:], second, rtol=0, atol=1e-6)
    # The same model without its speckle makes the mean of these videos' frames.
    models.autoencoder.speckle.std.zero_()
    save_pretrained(tmp_path / "mean", models)
    mean = LDDMPipeline.from_pretrained(tmp_path / "mean")(
        images, steps=2, seed=[11, 12], output="float"
    ).videos
    torch.testing.assert_close(both[:, :, 0], mean[:, :, 0])
    change = (both[:, :, 1:] - mean[:, :, 1:]).std()
    assert 0.05 < float(change) < 0.2, "speckle of std 0.05-0.15 was not drawn"


def test_fit_recovers_the_parameters_of_synthetic_speckle():
    torch.manual_seed(0)
    n, t, size = 48, 6, 32
    mean = (torch.rand(n, 1, 1, 1, 1) - 0.5) * 0.8 + torch.zeros(n, 1, t, size, size)
    kernel = gaussian_kernel(0.6, 1.2)
    rho, sigma = 0.8, torch.linspace(0.06, 0.12, t).view(1, 1, t, 1, 1)
    noise = torch.randn(n, 2, t, size, size)
    real = mean + sigma * standard_log_speckle(noise, kernel, rho)
    ae = VideoAutoencoder(preset("tiny").autoencoder)
    module, record = fit_speckle(ae, real, mean, seed=1)
    assert float(module.rho) == pytest.approx(rho, abs=0.03)
    # Every gray-level bin the means fall in holds the frame's sigma.
    used = module.level_index(mean[:, :, 0]).unique()
    for level in used.tolist():
        torch.testing.assert_close(module.std[0, :, level], sigma.flatten(), rtol=0.06, atol=0)
    # The kernel: the true widths back, and with them the clips' grain.
    assert module.kernel.shape == kernel.shape
    torch.testing.assert_close(module.kernel, kernel, atol=0.03, rtol=0)
    grain = record["neighbour_correlation_axial_lateral"]
    for got, want in zip(grain["rebuilt_with_speckle"], grain["clips"], strict=True):
        assert got == pytest.approx(want, abs=0.01)
    assert record["kernel_sigma_px"]["axial"] == pytest.approx(0.6, abs=0.08)
    assert record["kernel_sigma_px"]["lateral"] == pytest.approx(1.2, abs=0.08)
    assert record["frame_change"]["matched"] is True
    assert record["frame_change"]["rebuilt_with_speckle"] == pytest.approx(
        record["frame_change"]["clips"], rel=0.01
    )
    with pytest.raises(ValueError, match="must be the same"):
        fit_speckle(ae, real, mean[:, :, :2])


def test_with_speckle_keeps_every_weight():
    torch.manual_seed(0)
    models = build_models(preset("tiny"))
    before = {k: v.clone() for k, v in models.autoencoder.state_dict().items()}
    module = SpeckleResidual(1, preset("tiny").num_frames)
    out = with_speckle(models, module)
    assert out.config.autoencoder.speckle_frames == preset("tiny").num_frames
    state = out.autoencoder.state_dict()
    assert sorted(set(state) - set(before)) == ["speckle.kernel", "speckle.rho", "speckle.std"]
    for k, v in before.items():
        assert torch.equal(state[k], v)


def test_reconstruction_metrics_score_the_mean_and_hand_back_samples():
    from lddm_fast.train.autoencoder import reconstruction_metrics

    config = _speckle_config()
    torch.manual_seed(0)
    ae = _fitted(VideoAutoencoder(config.autoencoder).eval())
    g = torch.Generator().manual_seed(0)
    shape = (1, config.num_frames + 1, config.size, config.size)
    clips = [(torch.rand(shape, generator=g) * 2 - 1, 0) for _ in range(3)]
    cpu = torch.device("cpu")
    plain, sampled = [], []
    mean = reconstruction_metrics(ae, clips, cpu, rebuilt=plain)
    drawn = reconstruction_metrics(
        ae, clips, cpu, rebuilt=sampled, speckle=torch.Generator().manual_seed(1)
    )
    assert "psnr_with_speckle" not in mean
    assert drawn["psnr"] == mean["psnr"] and drawn["ssim"] == mean["ssim"]
    assert drawn["psnr_with_speckle"] != drawn["psnr"]
    for a, b in zip(plain, sampled, strict=True):
        assert torch.equal(a[:, 0], b[:, 0])  # x0
        assert 0.03 < float((b[:, 1:] - a[:, 1:]).std()) < 0.2
    plain_ae = VideoAutoencoder(preset("tiny").autoencoder)
    with pytest.raises(ValueError, match="has no speckle"):
        reconstruction_metrics(plain_ae, clips, cpu, speckle=torch.Generator())
