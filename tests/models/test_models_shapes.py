"""Shapes, input validation, memory format, conditioning and op dispatch of the models."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from lddm_fast import ops
from lddm_fast.models import (
    DiagonalGaussian,
    LatentDenoiser,
    VideoAutoencoder,
    build_models,
    preset,
)
from lddm_fast.models.layers import TemporalAttention

CL3D = torch.channels_last_3d


@pytest.mark.parametrize("channels", [1, 3])
def test_tiny_shapes_and_layout(channels, perturb, make_inputs):
    config = preset("tiny", channels=channels)
    torch.manual_seed(0)
    models = build_models(config)
    perturb(models.denoiser)
    x = make_inputs(config)
    with torch.no_grad():
        out = models.autoencoder(x["frames"], x["x0"])
        pred = models.denoiser(x["z"], x["t"], x["x0"])
    b, c, t, s = 2, channels, config.num_frames, config.size
    assert out.sample.shape == (b, c, t, s, s)
    assert out.latent_dist.mean.shape == (b, *config.latent_shape)
    assert out.latent_dist.kl().shape == (b,)
    assert pred.sample.shape == (b, *config.latent_shape)
    for y in (out.sample, out.latent_dist.mean, pred.sample):
        assert y.is_contiguous(memory_format=CL3D)
    # With one channel both layouts coincide; the latent (c_z = 4) tells them apart.
    assert not pred.sample.is_contiguous()


@pytest.mark.parametrize("name", ["phantom64", "busv128"])
def test_large_preset_shapes_with_fake_tensors(name):
    # Fake tensors run the whole forward shape-wise without allocating or computing.
    config = preset(name)
    b, c, t, s = 2, config.channels, config.num_frames, config.size
    with FakeTensorMode(), torch.no_grad():
        models = build_models(config)
        out = models.autoencoder(torch.empty(b, c, t, s, s), torch.empty(b, c, s, s))
        pred = models.denoiser(out.latent_dist.mode(), torch.zeros(b), torch.empty(b, c, s, s))
        assert out.sample.shape == (b, c, t, s, s)
        assert pred.sample.shape == (b, *config.latent_shape)
        assert pred.sample.is_contiguous(memory_format=CL3D)


def test_parameter_counts_per_preset():
    counts = {}
    for name in ("tiny", "phantom64", "busv128"):
        config = preset(name)
        with torch.device("meta"):
            models = build_models(config)
        counts[name] = sum(
            p.numel() for m in (models.autoencoder, models.denoiser) for p in m.parameters()
        )
    assert counts["tiny"] < 1_000_000
    assert 2_000_000 <= counts["phantom64"] <= 10_000_000  # "a few million"
    assert counts["busv128"] > 10 * counts["phantom64"]


def test_fresh_denoiser_predicts_zero(tiny_config, make_inputs):
    # Zero-initialised output projections: the model starts as a no-op predictor.
    x = make_inputs(tiny_config)
    with torch.no_grad():
        pred = LatentDenoiser(tiny_config.denoiser)(x["z"], x["t"], x["x0"]).sample
    assert torch.count_nonzero(pred) == 0


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("batch, threads", [(1, 1), (2, 2)])
def test_every_5d_activation_stays_channels_last(channels, batch, threads, make_inputs):
    # One channel is tricky (its contiguous strides also count as channels-last and
    # a conv reading them answers contiguous), and so are batch 1 and one thread
    # (ATen then takes native convolutions that answer contiguous).
    torch.set_num_threads(threads)
    config = preset("tiny", channels=channels)
    models = build_models(config)
    x = make_inputs(config, batch=batch)
    bad = []

    def check(module, inputs, output):
        # The top-level models take any layout and convert once.
        inputs = () if module in (models.autoencoder, models.denoiser) else inputs
        for role, t in [("in", i) for i in inputs] + [("out", output)]:
            if isinstance(t, torch.Tensor) and t.dim() == 5:
                if not t.is_contiguous(memory_format=CL3D):
                    bad.append(f"{type(module).__name__} {role}")

    handles = [
        m.register_forward_hook(check)
        for model in (models.autoencoder, models.denoiser)
        for m in model.modules()
    ]
    try:
        with torch.no_grad():
            models.autoencoder(x["frames"], x["x0"])
            models.denoiser(x["z"], x["t"], x["x0"])
    finally:
        for h in handles:
            h.remove()
    assert bad == []


def test_sinusoidal_frame_embedding_takes_any_clip_length(tiny_config, perturb, make_inputs):
    config = dataclasses.replace(tiny_config.denoiser, frame_embedding="sinusoidal")
    den = perturb(LatentDenoiser(config))
    assert not any("frame_pos" in name for name, _ in den.named_parameters())
    x = make_inputs(tiny_config, batch=1)
    z = torch.randn(1, 4, config.max_frames + 3, 4, 4)
    with torch.no_grad():
        pred = den(z, x["t"], x["x0"]).sample
    assert pred.shape == z.shape and torch.isfinite(pred).all()


def test_samples_are_independent_of_the_batch(tiny_models, make_inputs, tiny_config):
    x = make_inputs(tiny_config)
    with torch.no_grad():
        both = tiny_models.denoiser(x["z"], x["t"], x["x0"]).sample
        first = tiny_models.denoiser(x["z"][:1], x["t"][:1], x["x0"][:1]).sample
    torch.testing.assert_close(both[:1], first, atol=1e-5, rtol=1e-5)


def test_drop_cond_uses_the_null_encoding(tiny_models, make_inputs, tiny_config):
    x = make_inputs(tiny_config)
    other_x0 = torch.randn_like(x["x0"])
    drop = torch.tensor([True, False])
    den = tiny_models.denoiser
    with torch.no_grad():
        a = den(x["z"], x["t"], x["x0"], drop_cond=drop).sample
        b = den(x["z"], x["t"], other_x0, drop_cond=drop).sample
        cond = den.encode_condition(x["x0"], drop)
        c = den(x["z"], x["t"], cond=cond).sample
    torch.testing.assert_close(a[0], b[0], atol=0, rtol=0)  # dropped: x0 is ignored
    assert (a[1] - b[1]).abs().max() > 1e-3  # kept: x0 matters
    torch.testing.assert_close(a, c, atol=0, rtol=0)  # precomputed cond is the same path


def test_scalar_timestep_broadcasts(tiny_models, make_inputs, tiny_config):
    x = make_inputs(tiny_config)
    with torch.no_grad():
        a = tiny_models.denoiser(x["z"], 250, x["x0"]).sample
        b = tiny_models.denoiser(x["z"], torch.tensor([250, 250]), x["x0"]).sample
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_posterior_sample_is_seeded_and_kl_is_zero_at_the_prior():
    mean, logvar = torch.zeros(2, 4, 3, 2, 2), torch.zeros(2, 4, 3, 2, 2)
    dist = DiagonalGaussian(mean, logvar)
    assert torch.equal(dist.kl(), torch.zeros(2))
    a = dist.sample(torch.Generator().manual_seed(3))
    b = dist.sample(torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, dist.mode())
    shifted = DiagonalGaussian(mean + 1.0, logvar)
    torch.testing.assert_close(shifted.kl(), torch.full((2,), 0.5 * 4 * 3 * 2 * 2))


@pytest.fixture
def tiny_fresh(tiny_config):
    return VideoAutoencoder(tiny_config.autoencoder), LatentDenoiser(tiny_config.denoiser)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (
            lambda ae, dn: ae.encode(torch.zeros(1, 1, 4, 60, 64)),
            ValueError,
            r"frames height H=60 is not divisible by 8",
        ),
        (
            lambda ae, dn: ae.encode(torch.zeros(1, 1, 4, 64, 36)),
            ValueError,
            r"frames width W=36 is not divisible by 8",
        ),
        (
            lambda ae, dn: ae.encode(torch.zeros(1, 3, 4, 32, 32)),
            ValueError,
            "3 channels, the autoencoder expects 1",
        ),
        (
            lambda ae, dn: ae.encode(torch.zeros(1, 4, 32, 32)),
            ValueError,
            r"frames must be 5-D \[B, C, T, H, W\], got shape \(1, 4, 32, 32\)",
        ),
        (
            lambda ae, dn: ae.decode(torch.zeros(1, 4, 4, 4, 4), torch.zeros(1, 1, 30, 32)),
            ValueError,
            r"needs x0 of shape \(1, 1, 32, 32\)",
        ),
        (
            lambda ae, dn: dn(torch.zeros(1, 4, 4, 5, 4), 0, torch.zeros(1, 1, 40, 32)),
            ValueError,
            "latent height h=5 is not divisible by 2",
        ),
        (
            lambda ae, dn: dn(torch.zeros(1, 4, 4, 4, 4), 0, torch.zeros(1, 1, 24, 32)),
            ValueError,
            r"x0 has shape \(1, 1, 24, 32\).*H=32, W=32",
        ),
        (
            lambda ae, dn: dn(torch.zeros(1, 4, 9, 4, 4), 0, torch.zeros(1, 1, 32, 32)),
            ValueError,
            "T=9 frames, more than max_frames=8",
        ),
        (
            lambda ae, dn: dn(
                torch.zeros(1, 4, 4, 4, 4), torch.zeros(3), torch.zeros(1, 1, 32, 32)
            ),
            ValueError,
            r"timestep must be a scalar or have shape \(1,\)",
        ),
        (lambda ae, dn: dn(torch.zeros(1, 4, 4, 4, 4), 0), ValueError, "exactly one of x0"),
        (
            lambda ae, dn: dn(
                torch.zeros(2, 4, 4, 4, 4),
                0,
                torch.zeros(2, 1, 32, 32),
                drop_cond=torch.tensor([1, 0]),
            ),
            TypeError,
            "bool tensor",
        ),
        (lambda ae, dn: VideoAutoencoder(ae.config, in_channels=3), TypeError, "not both"),
    ],
)
def test_bad_inputs_raise_clear_errors(tiny_fresh, call, error, match):
    with pytest.raises(error, match=match):
        call(*tiny_fresh)


# The aten kernels that must only run inside an lddm_fast.ops call.
_ROUTED = {
    torch.ops.aten.native_group_norm.default,
    torch.ops.aten.native_layer_norm.default,
    torch.ops.aten.native_batch_norm.default,
    torch.ops.aten._native_batch_norm_legit_no_training.default,
    torch.ops.aten.silu.default,
    torch.ops.aten.silu_.default,
}


class _OutsideOps(TorchDispatchMode):
    """Records the norm and SiLU kernels that run while no lddm_fast.ops call is active."""

    def __init__(self):
        super().__init__()
        self.inside_ops = 0
        self.outside = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in _ROUTED and not self.inside_ops:
            self.outside.append(str(func))
        return func(*args, **(kwargs or {}))


def test_every_norm_activation_and_temporal_attention_goes_through_ops(
    tiny_models, make_inputs, tiny_config, monkeypatch
):
    detector = _OutsideOps()
    calls = {"group_norm": 0, "temporal_attention": 0, "silu": 0}

    def counting(name):
        inner = getattr(ops, name)

        def wrapper(*args, **kwargs):
            calls[name] += 1
            detector.inside_ops += 1
            try:
                return inner(*args, **kwargs)
            finally:
                detector.inside_ops -= 1

        monkeypatch.setattr(ops, name, wrapper)

    for name in calls:
        counting(name)
    x = make_inputs(tiny_config)
    # The texture code's layers and the flow head are off in the tiny preset.
    ae_config = dataclasses.replace(tiny_config.autoencoder, warp=True, texture_channels=2)
    textured = VideoAutoencoder(ae_config).eval()
    with torch.no_grad(), detector:
        torch.nn.functional.group_norm(torch.randn(1, 4, 3, 3), 2)  # the detector works
        torch.nn.SiLU()(torch.randn(3))
        assert detector.outside == ["aten.native_group_norm.default", "aten.silu.default"]
        detector.outside.clear()
        tiny_models.autoencoder(x["frames"], x["x0"])
        tiny_models.denoiser(x["z"], x["t"], x["x0"])
        assert calls["silu"] > 0  # the time MLP
        textured(x["frames"], x["x0"])
    assert detector.outside == []
    assert calls["group_norm"] > 0
    n_temporal = sum(isinstance(m, TemporalAttention) for m in tiny_models.denoiser.modules())
    assert n_temporal > 0 and calls["temporal_attention"] == n_temporal
    n_silu = sum(
        isinstance(m, torch.nn.SiLU) for m in [*tiny_models.denoiser.modules(), *textured.modules()]
    )
    assert n_silu == 0, "an nn.SiLU bypasses lddm_fast.ops"


@pytest.mark.parametrize("inplace", [False, True])
def test_ops_silu_matches_torch_and_keeps_the_layout(inplace):
    x = torch.randn(2, 5, 3, 4, 4).contiguous(memory_format=CL3D)
    want = torch.nn.functional.silu(x)
    y = ops.silu(x, inplace=inplace)
    torch.testing.assert_close(y, want, rtol=0, atol=0)
    assert y.is_contiguous(memory_format=CL3D)
    assert (y.data_ptr() == x.data_ptr()) == inplace
    g = torch.randn(3, requires_grad=True)
    (grad,) = torch.autograd.grad(ops.silu(g).sum(), g)
    torch.testing.assert_close(grad, torch.sigmoid(g) * (1 + g * (1 - torch.sigmoid(g))))
    with pytest.raises(ValueError, match="x must be a floating-point tensor"):
        ops.silu(torch.ones(3, dtype=torch.int64))
