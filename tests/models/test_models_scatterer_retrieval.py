"""x0's own scatterers, retrieved from its envelope (``speckle_model = "retrieved"``): the
baseband imager and its adjoint, the retrieval's fit of a phantom frame, the frames
moving the way warp_image moves x0, and the decoder/checkpoint/pipeline plumbing."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from speckle_helpers import speckle_config

from lddm_fast.data.phantom import PhantomConfig, simulate_clip
from lddm_fast.data.phantom_bmode import Pulse
from lddm_fast.diffusion import LDDMPipeline
from lddm_fast.eval.psnr_ssim import psnr_clip
from lddm_fast.models import preset
from lddm_fast.models.checkpoint import build_models, from_pretrained, save_pretrained
from lddm_fast.models.lattice_imaging import LatticeImager
from lddm_fast.models.scatterers import ScattererSpeckle
from lddm_fast.train.speckle import with_speckle

SIZE = 32


def _module(rho: float = 1.0) -> ScattererSpeckle:
    m = ScattererSpeckle(retrieve=True)
    m.rho.fill_(rho)
    m.dynamic_range_db.fill_(60.0)
    return m


def _imager(z: torch.Tensor, x: torch.Tensor, size: int = SIZE) -> LatticeImager:
    geo = _module()._geometry(size, size)
    return LatticeImager(Pulse(0.7, 0.9), geo["rf"], geo["pad"], (size, size), z, x, baseband=True)


def _x0(seed: int = 3, label: str = "benign") -> torch.Tensor:
    frame = simulate_clip(label, seed, PhantomConfig(size=SIZE, frames=1)).frames[0]
    return torch.from_numpy(frame).float().div(127.5).sub(1)[None, None]  # [1, 1, H, W]


def _noise(m: ScattererSpeckle, t: int, seed: int, b: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m.noise_shape((b, 1, t, SIZE, SIZE)), generator=g)


def _psnr(frame: torch.Tensor, x0: torch.Tensor) -> float:
    return float(psnr_clip(frame.clamp(-1, 1)[:, :, None], x0[:, :, None]).mean())


def test_adjoint_matches_the_operator():
    g = torch.Generator().manual_seed(torch.seed() % 2**31)
    z = torch.rand(2, 500, generator=g) * 40 - 4
    x = torch.rand(2, 500, generator=g) * 40 - 4
    op = _imager(z, x)
    a = torch.complex(*torch.randn((2, 2, 500), generator=g))
    r = torch.complex(*torch.randn((2, 2, SIZE, SIZE), generator=g))
    left, right = (op.A(a).conj() * r).sum(), (a.conj() * op.AH(r)).sum()
    assert abs(left - right) <= 1e-4 * abs(left)


def test_baseband_keeps_a_moving_scatterers_power():
    # Splatting the carrier itself halves a lone echo's power half an RF sample away; at
    # baseband only the envelope is splatted, and the power at the pixels follows the
    # PSF's own (its squared Gaussian summed over the pixels) within a few per cent.
    one = torch.ones(1, 1, dtype=torch.complex64)
    i = torch.arange(SIZE, dtype=torch.float64)
    ratios = []
    for d in (0.0, 1 / 6, 0.25, 1 / 3, 0.5):  # 1/6 px: half an RF sample
        z = 15.0 + d
        echo = _imager(torch.tensor([[z]]), torch.tensor([[15.0]])).A(one)
        psf = torch.exp(-((i - z) ** 2) / 0.7**2).sum() * torch.exp(-((i - 15) ** 2) / 0.9**2).sum()
        ratios.append(float(echo.abs().square().sum() / psf))
    assert max(ratios) / min(ratios) < 1.05, ratios


def test_power_is_the_expected_echo_power_of_independent_amplitudes():
    g = torch.Generator().manual_seed(torch.seed() % 2**31)
    m = _module()
    z, x = m._lattice(
        torch.randn(1, 2, *m._geometry(SIZE, SIZE)["lattice"], generator=g), SIZE, SIZE
    )
    variance = (1 + torch.rand(z.shape, generator=g)).expand(64, -1)
    op = _imager(z.expand(64, -1), x.expand(64, -1))
    draws = torch.complex(*torch.randn((2, *variance.shape), generator=g)) / 2**0.5
    measured = op.A(draws * variance.sqrt()).abs().square().mean(0)
    expected = op.power(variance)[0]
    inner = slice(4, SIZE - 4)
    ratio = measured[inner, inner].mean() / expected[inner, inner].mean()
    # About: bilinear sharing loses some power between grid samples (measured 0.89).
    assert 0.8 < float(ratio) < 1.05, float(ratio)


@pytest.mark.parametrize("label,seed", [("benign", 3), ("malignant", 11)])
def test_retrieved_frames_fit_x0_and_follow_the_field(label, seed):
    m, x0 = _module(), _x0(seed, label)
    still = torch.zeros(1, 2, 2, SIZE, SIZE)
    frames = m.retrieved_frames(x0, still, _noise(m, 2, 0))
    assert frames.shape == (1, 1, 2, SIZE, SIZE) and frames.dtype == torch.float32
    assert _psnr(frames[:, :, 0], x0) > 25.0
    torch.testing.assert_close(frames[:, :, 1], frames[:, :, 0])  # rho 1, no motion
    # Another prior draw: other scatterers, the same fit to x0.
    other = m.retrieved_frames(x0, still, _noise(m, 2, 1))
    assert _psnr(other[:, :, 0], x0) > 25.0
    assert not torch.allclose(other, frames, atol=1e-2)
    # Tissue moved one pixel down: frame t's pixel (y, x) shows frame 0's (y - 1, x).
    down = still.clone()
    down[:, 1, 1] = -1.0
    moved = m.retrieved_frames(x0, down, _noise(m, 2, 0))[0, 0]
    inner = slice(4, SIZE - 4)
    torch.testing.assert_close(
        moved[1, inner, inner], moved[0, 3 : SIZE - 5, inner], atol=1e-3, rtol=0
    )


def test_rho_below_one_draws_fresh_scatterers_over_the_clip():
    m, x0 = _module(rho=0.8), _x0()
    frames = m.retrieved_frames(x0, torch.zeros(1, 2, 3, SIZE, SIZE), _noise(m, 3, 0))
    corr = [
        float(torch.corrcoef(torch.stack([x0.flatten(), frames[0, 0, t].flatten()]))[0, 1])
        for t in range(3)
    ]
    # Each step mixes in fresh scatterers: the frames drift away from x0.
    assert corr[0] > corr[1] > corr[2], corr
    assert corr[2] < 0.8, corr


def test_decode_checkpoint_and_pipeline(tmp_path):
    config = speckle_config("retrieved")
    torch.manual_seed(0)
    models = build_models(config)
    ae = models.autoencoder.eval()
    assert isinstance(ae.speckle, ScattererSpeckle) and ae.speckle.retrieve
    ae.speckle.dynamic_range_db.fill_(60.0)
    z = torch.randn(2, *config.latent_shape)
    x0 = torch.rand(2, 1, config.size, config.size) * 2 - 1
    noise = torch.randn(ae.speckle_shape(z))
    assert noise.shape[2] == config.num_frames + 2  # jitter, prior, innovations
    mean = ae.decode(z, x0)
    sample = ae.decode(z, x0, speckle=noise).sample
    torch.testing.assert_close(sample, ae.speckle(mean.sample, noise, mean.flow, x0))
    with pytest.raises(ValueError, match=r"needs x0 \[B, C, H, W\]"):
        ae.speckle(mean.sample, noise, mean.flow)
    save_pretrained(tmp_path / "ckpt", models)
    loaded = from_pretrained(tmp_path / "ckpt")
    assert loaded.config.autoencoder.speckle_model == "retrieved"
    assert loaded.autoencoder.speckle.retrieve
    pipe = LDDMPipeline.from_pretrained(tmp_path / "ckpt")
    assert config.size == SIZE
    images = (torch.cat([_x0(3), _x0(5, "malignant")]) + 1) / 2  # phantom first frames
    both = pipe(images, steps=2, seed=[3, 4], output="float").videos
    second = pipe(images[1:], steps=2, seed=[4], output="float").videos
    # A video depends only on its seed. The retrieval's 1500 float32 conjugate-gradient
    # steps over batched FFTs round differently from a batch of one (measured 1e-3 at
    # most), so the check is one 8-bit gray level, 2 / 255.
    torch.testing.assert_close(both[1:], second, rtol=0, atol=2 / 255)
    assert torch.isfinite(both).all()


def test_with_speckle_records_the_retrieved_model():
    config = preset("tiny")
    config = dataclasses.replace(
        config, autoencoder=dataclasses.replace(config.autoencoder, warp=True)
    )
    torch.manual_seed(0)
    out = with_speckle(build_models(config), _module(), frames=config.num_frames)
    assert out.config.autoencoder.speckle_model == "retrieved"
