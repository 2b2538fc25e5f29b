"""Speckle imaged from moving scatterers (``AutoencoderConfig.speckle_model =
"scatterers"``): its statistics, that it follows the field the way warp_image reads it,
re-forms under strain but not under translation, the AR(1) of the amplitudes, the
decoder/checkpoint/pipeline plumbing, and the fit recovering known parameters."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from speckle_helpers import speckle_config

from lddm_fast.diffusion import LDDMPipeline
from lddm_fast.models import preset
from lddm_fast.models.autoencoder import VideoAutoencoder, warp_image
from lddm_fast.models.checkpoint import build_models, from_pretrained, save_pretrained
from lddm_fast.models.scatterers import ScattererSpeckle, gaussian_blur
from lddm_fast.train.speckle import fit_scatterers, neighbour_correlation, with_speckle

# ln X for X exponential with mean 1: mean -gamma, std pi / sqrt 6.
LOG_EXPONENTIAL_STD = math.pi / math.sqrt(6)


def _module(rho: float = 1.0, axial: float = 0.7, lateral: float = 0.9) -> ScattererSpeckle:
    m = ScattererSpeckle()
    m.rho.fill_(rho)
    m.axial_sigma.fill_(axial)
    m.lateral_sigma.fill_(lateral)
    m.dynamic_range_db.fill_(60.0)
    return m


def _echo(m: ScattererSpeckle, flow: torch.Tensor, seed: int = 0) -> torch.Tensor:
    b, _, t, h, w = flow.shape
    g = torch.Generator().manual_seed(seed)
    return m.log_intensity(flow, torch.randn(m.noise_shape((b, 1, t, h, w)), generator=g))


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def test_still_speckle_is_fully_developed_and_frozen():
    flow = torch.zeros(6, 2, 3, 48, 40)
    s = _echo(_module(), flow)
    assert s.shape == (6, 1, 3, 48, 40) and s.dtype == torch.float32
    # ln of an exponential variable (mean 1) plus gamma: mean 0, std pi / sqrt 6.
    assert abs(float(s.mean())) < 0.05
    assert float(s.std()) == pytest.approx(LOG_EXPONENTIAL_STD, rel=0.05)
    # rho 1 and no motion: every frame shows the same scatterers.
    torch.testing.assert_close(s[:, :, 1:], s[:, :, :1].expand_as(s[:, :, 1:]))
    # Different noise, different speckle.
    assert abs(_corr(s, _echo(_module(), flow, seed=1))) < 0.05


@pytest.mark.parametrize("axis,shift", [(0, 3.0), (1, -2.0), (0, -4.0)])
def test_speckle_moves_as_warp_image_moves_x0(axis, shift):
    """A uniform field moves the speckle the way it moves an image through warp_image:
    a planted sign error in the inversion would move it the other way."""
    h = w = 40
    flow = torch.zeros(2, 2, 2, h, w)
    flow[:, axis, 1] = shift
    s = _echo(_module(), flow)[:, 0]
    moved = warp_image(s[:, 0:1], flow[:, :, 1:2])[:, 0, 0]
    inner = (slice(None), slice(6, -6), slice(6, -6))
    # Up to the per-frame normalisation of the power (other tissue came into view).
    diff = s[:, 1][inner] - moved[inner]
    diff = diff - diff.mean(dim=(-1, -2), keepdim=True)
    assert float(diff.abs().median()) < 1e-3 and float(diff.abs().max()) < 0.05
    assert _corr(s[:, 1][inner], s[:, 0][inner]) < 0.5


def test_speckle_re_forms_under_strain_instead_of_stretching():
    """Squeezed along depth, tissue shows the pulse's grain again (the scatterers crowd
    under the same PSF), where a warp of frame 0 would squeeze the grain with it."""
    h = w = 48
    z = torch.arange(h, dtype=torch.float32).view(h, 1).expand(h, w)
    f = torch.zeros(6, 2, 2, h, w)
    f[:, 1, 1] = 0.5 * z  # frame 1's pixel z shows frame 0's tissue at 1.5 z
    # A pulse long enough for its grain to span pixels, so the warp's squeeze shows.
    s = _echo(_module(axial=1.5, lateral=1.0), f)[:, 0]
    warped = warp_image(s[:, 0:1], f[:, :, 1:2])[:, 0, 0]
    rows = slice(2, 30)  # what frame 0 saw
    grain = {
        name: neighbour_correlation(v[:, rows, 4:-4][:, None, None])[0]
        for name, v in (("frame0", s[:, 0]), ("frame1", s[:, 1]), ("warped", warped))
    }
    assert grain["frame1"] == pytest.approx(grain["frame0"], abs=0.04)
    assert grain["warped"] < grain["frame0"] - 0.1


def test_amplitudes_drift_as_an_ar1():
    rho = 0.8
    s = _echo(_module(rho=rho), torch.zeros(8, 2, 4, 48, 48))
    intensity = (s - 0.5772156649015329).exp()
    # Intensities of complex Gaussian fields correlated by rho correlate by rho^2.
    for lag in (1, 2):
        got = _corr(intensity[:, :, lag:], intensity[:, :, :-lag])
        assert got == pytest.approx(rho ** (2 * lag), abs=0.04)


def test_wider_pulse_coarser_grain():
    flow = torch.zeros(4, 2, 2, 40, 40)
    fine = neighbour_correlation(_echo(_module(axial=0.5, lateral=0.7), flow))
    coarse = neighbour_correlation(_echo(_module(axial=1.2, lateral=1.6), flow))
    assert coarse[0] > fine[0] + 0.1 and coarse[1] > fine[1] + 0.1


def test_forward_blurs_the_mean_and_adds_the_speckle_in_display_units():
    m = _module()
    m.anatomy_sigma.fill_(1.0)
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(2, 1, 3, 32, 32, generator=g) * 2 - 1
    flow = torch.randn(2, 2, 3, 32, 32, generator=g) * 0.5
    noise = torch.randn(m.noise_shape(frames.shape), generator=g)
    out = m(frames, noise, flow)
    want = gaussian_blur(frames, 1.0) + m.log_intensity(flow, noise) / (3 * math.log(10))
    torch.testing.assert_close(out, want)
    assert out.shape == frames.shape
    # Unfitted (no display range): nothing added.
    assert torch.equal(ScattererSpeckle()(frames, noise, flow), frames)
    with pytest.raises(ValueError, match=r"speckle noise has shape"):
        m(frames, noise[:, :, :2], flow)
    with pytest.raises(ValueError, match=r"needs the decoder's field"):
        m(frames, noise, None)
    with pytest.raises(ValueError, match=r"needs the decoder's field"):
        m(frames, noise, flow[:, :, :2])


def test_gaussian_blur_keeps_constants_and_smooths():
    x = torch.full((1, 1, 9, 9), 0.3)
    torch.testing.assert_close(gaussian_blur(x, 1.5), x)
    spike = torch.zeros(1, 1, 9, 9)
    spike[0, 0, 4, 4] = 1.0
    out = gaussian_blur(spike, 1.0)
    assert float(out.sum()) == pytest.approx(1.0, abs=1e-5)
    assert float(out[0, 0, 4, 4]) == pytest.approx(1 / (2 * math.pi), rel=0.1)
    assert torch.equal(gaussian_blur(spike, 0.0), spike)


def _scatterer_config():
    return speckle_config("scatterers")


@pytest.mark.parametrize("model", ["scatterers", "retrieved"])
def test_config_needs_warp_and_a_known_model(model):
    with pytest.raises(ValueError, match=f"'{model}' moves its scatterers.*needs warp=True"):
        dataclasses.replace(preset("tiny").autoencoder, speckle_model=model)
    with pytest.raises(ValueError, match="speckle_model must be one of"):
        dataclasses.replace(preset("tiny").autoencoder, speckle_model="gaussian")


def test_decode_moves_the_speckle_with_the_decoders_field(tmp_path):
    config = _scatterer_config()
    torch.manual_seed(0)
    models = build_models(config)
    ae = models.autoencoder.eval()
    assert isinstance(ae.speckle, ScattererSpeckle)
    ae.speckle.dynamic_range_db.fill_(60.0)
    ae.speckle.rho.fill_(0.95)
    z = torch.randn(2, *config.latent_shape)
    x0 = torch.rand(2, 1, config.size, config.size) * 2 - 1
    mean = ae.decode(z, x0)
    noise = torch.randn(ae.speckle_shape(z))
    sample = ae.decode(z, x0, speckle=noise).sample
    torch.testing.assert_close(sample, ae.speckle(mean.sample, noise, mean.flow))
    with pytest.raises(ValueError, match=r"speckle has shape"):
        ae.decode(z, x0, speckle=noise[:, :, :2])
    save_pretrained(tmp_path / "ckpt", models)
    loaded = from_pretrained(tmp_path / "ckpt")
    assert loaded.config.autoencoder.speckle_model == "scatterers"
    for name, value in ae.speckle.named_buffers():
        assert torch.equal(loaded.autoencoder.speckle.get_buffer(name), value)
    pipe = LDDMPipeline.from_pretrained(tmp_path / "ckpt")
    images = torch.rand(2, 1, config.size, config.size)
    both = pipe(images, steps=2, seed=[3, 4], output="float").videos
    second = pipe(images[1:], steps=2, seed=[4], output="float").videos
    torch.testing.assert_close(both[1:], second, rtol=0, atol=1e-6)
    assert torch.isfinite(both).all()


def test_fit_recovers_the_parameters_of_synthetic_speckle():
    g = torch.Generator().manual_seed(0)
    n, t, size = 24, 6, 32
    # Smooth anatomy: a coarse random map upsampled, the same in every frame.
    coarse = (torch.rand(n, 1, 4, 4, generator=g) - 0.5) * 0.8
    anatomy = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic")
    mean = anatomy[:, :, None].expand(n, 1, t, size, size).contiguous()
    # A slow compression, different per clip.
    z = torch.arange(size, dtype=torch.float32).view(1, 1, size, 1)
    strain = torch.rand(n, 1, 1, 1, generator=g) * 0.03
    flows = torch.zeros(n, 2, t, size, size)
    flows[:, 1] = (strain * z) * torch.linspace(0, 1, t).view(1, t, 1, 1)
    truth = _module(rho=0.97, axial=0.8, lateral=1.2)
    noise = torch.randn(truth.noise_shape(mean.shape), generator=g)
    real = truth(mean, noise, flows).clamp(-1, 1)
    ae = VideoAutoencoder(_scatterer_config().autoencoder)
    module, record = fit_scatterers(ae, real, mean, flows, anatomy_sigma=0.25, seed=1)
    assert float(module.axial_sigma) == pytest.approx(0.8, rel=0.1)
    assert float(module.lateral_sigma) == pytest.approx(1.2, rel=0.1)
    assert float(module.rho) == pytest.approx(0.97, abs=0.015)
    assert float(module.anatomy_sigma) == 0.25  # given, not fitted
    assert record["frame_change"]["matched"]
    assert record["psf_sigma_px"] == {
        "axial": float(module.axial_sigma),
        "lateral": float(module.lateral_sigma),
    }
    with pytest.raises(ValueError, match="flows must be"):
        fit_scatterers(ae, real, mean, flows[:, :, :2])
    plain = VideoAutoencoder(preset("tiny").autoencoder)
    with pytest.raises(ValueError, match="needs warp"):
        fit_scatterers(plain, real, mean, flows)


def test_with_speckle_records_the_model():
    config = preset("tiny")
    config = dataclasses.replace(
        config, autoencoder=dataclasses.replace(config.autoencoder, warp=True)
    )
    torch.manual_seed(0)
    models = build_models(config)
    out = with_speckle(models, _module(), frames=config.num_frames)
    assert out.config.autoencoder.speckle_model == "scatterers"
    assert out.config.autoencoder.speckle_frames == config.num_frames
    with pytest.raises(ValueError, match="clip length"):
        with_speckle(models, _module())
