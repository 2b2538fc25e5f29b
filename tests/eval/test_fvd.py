"""Fréchet distance (closed forms, scipy cross-check, rank deficiency) and FVD
preprocessing (resize conventions, channels, value range)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lddm_fast.eval.fvd import (
    RESIZE_ALIGN_CORNERS,
    RESIZE_TF_LEGACY,
    extract_features,
    feature_statistics,
    frechet_distance,
    frechet_from_features,
    preprocess_i3d,
    resize_bilinear,
)


def _spd(rng, dim, rank=None):
    a = rng.standard_normal((dim, rank or dim))
    return a @ a.T / (rank or dim) + (0.0 if rank else 0.1 * np.eye(dim))


def test_matches_scipy_sqrtm_on_well_conditioned_covariances():
    linalg = pytest.importorskip("scipy.linalg", reason="scipy is the cross-check")
    rng = np.random.default_rng(0)
    for dim in (3, 17, 64):
        mu1, mu2 = rng.standard_normal(dim), rng.standard_normal(dim)
        s1, s2 = _spd(rng, dim), _spd(rng, dim)
        covmean = linalg.sqrtm(s1 @ s2)  # SciPy 1.18 removed disp=; plain call only
        expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * np.real(covmean))
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_closed_forms():
    rng = np.random.default_rng(1)
    dim = 12
    sigma = _spd(rng, dim)
    mu = rng.standard_normal(dim)
    # Same Gaussian: zero.
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-9)
    # Identity covariances: only the means count.
    m = rng.standard_normal(dim)
    eye = np.eye(dim)
    assert frechet_distance(np.zeros(dim), eye, m, eye) == pytest.approx(m @ m, rel=1e-12)
    # Diagonal covariances: sum of (sqrt(a) - sqrt(b))^2 per axis.
    a, b = rng.uniform(0.1, 3, dim), rng.uniform(0.1, 3, dim)
    expected = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet_distance(np.zeros(dim), np.diag(a), np.zeros(dim), np.diag(b))
    assert got == pytest.approx(expected, rel=1e-10)


def test_symmetric():
    rng = np.random.default_rng(2)
    s1, s2 = _spd(rng, 20), _spd(rng, 20)
    mu1, mu2 = rng.standard_normal(20), rng.standard_normal(20)
    forward = frechet_distance(mu1, s1, mu2, s2)
    assert forward == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-10)


def test_rank_deficient_covariances_stay_finite_and_symmetric():
    # 10 samples in 64 dimensions: covariances of rank 9, as FVD on tens of videos.
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((10, 64)), rng.standard_normal((10, 64)) + 0.5
    mu1, s1 = feature_statistics(x)
    mu2, s2 = feature_statistics(y)
    assert np.linalg.matrix_rank(s1) == 9
    d12, d21 = frechet_distance(mu1, s1, mu2, s2), frechet_distance(mu2, s2, mu1, s1)
    assert np.isfinite(d12) and d12 > 0
    assert d12 == pytest.approx(d21, rel=1e-8)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)


def test_statistics_use_n_minus_one_and_report_n():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((7, 5))
    mu, sigma = feature_statistics(x)
    centered = x - x.mean(axis=0)
    np.testing.assert_allclose(sigma, centered.T @ centered / 6)
    result = frechet_from_features(x, x + 1.0)
    assert (result.n_real, result.n_fake, result.dim) == (7, 7, 5)
    assert result.value == pytest.approx(5.0)  # shift of 1 in 5 dimensions
    assert "rank-deficient" not in result.to_dict().get("note", "")
    assert "strongly biased" in frechet_from_features(x[:3], x[3:6]).to_dict()["note"]
    with pytest.raises(ValueError, match="N >= 2"):
        feature_statistics(x[:1])


def test_tf_legacy_resize_samples_at_i_times_in_over_out():
    # tf.compat.v1.image.resize_bilinear([0, 10, 20, 30] -> 8 samples): coordinate
    # i * 4 / 8 = i / 2, clamped at the last pixel.
    row = torch.tensor([[0.0, 10.0, 20.0, 30.0]])
    got = resize_bilinear(row, (1, 8), RESIZE_TF_LEGACY)
    expected = torch.tensor([[0.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 30.0]])
    torch.testing.assert_close(got, expected)
    # Downscaling 4 -> 2 picks pixels 0 and 2 (no averaging of neighbours).
    torch.testing.assert_close(resize_bilinear(row, (1, 2), RESIZE_TF_LEGACY), row[:, [0, 2]])


def test_align_corners_resize_matches_torch():
    x = torch.rand(2, 3, 13, 29)
    expected = F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=True)
    torch.testing.assert_close(resize_bilinear(x, (224, 224), RESIZE_ALIGN_CORNERS), expected)


def test_preprocess_grayscale_uint8_clip():
    clip = torch.full((1, 20, 40, 30), 255, dtype=torch.uint8)
    clip[0, :, :, :15] = 0
    out = preprocess_i3d(clip)
    assert tuple(out.shape) == (3, 16, 224, 224) and out.dtype == torch.float32
    torch.testing.assert_close(out[0], out[2])  # gray repeated to 3 channels
    assert out.min() == -1.0 and out.max() == 1.0
    # uint8 and the equivalent [-1, 1] floats give the same input.
    torch.testing.assert_close(preprocess_i3d(clip.float() / 127.5 - 1), out)
    with pytest.raises(ValueError, match="clip has 20 frames, 32 needed"):
        preprocess_i3d(clip, frames=32)


class _MeanEmbedding(torch.nn.Module):
    """[B, 3, T, H, W] -> [B, 6]: per-channel mean and std: a cheap stand-in for I3D."""

    def forward(self, x):
        return torch.cat([x.mean(dim=(2, 3, 4)), x.std(dim=(2, 3, 4))], dim=1)


def test_fvd_of_a_set_with_itself_is_zero_and_grows_with_a_shift():
    gen = torch.Generator().manual_seed(0)
    clips = [
        torch.randint(0, 256, (1, 16, 24, 32), generator=gen, dtype=torch.uint8) for _ in range(6)
    ]
    kwargs = dict(convention=RESIZE_TF_LEGACY, batch_size=4)
    feats = extract_features(_MeanEmbedding(), clips, **kwargs)
    assert feats.shape == (6, 6) and feats.dtype == np.float64
    assert frechet_from_features(feats, feats).value == pytest.approx(0.0, abs=1e-9)
    brighter = [(c.int() + 40).clamp(max=255).to(torch.uint8) for c in clips]
    shifted = extract_features(_MeanEmbedding(), brighter, **kwargs)
    assert frechet_from_features(feats, shifted).value > 0.01
