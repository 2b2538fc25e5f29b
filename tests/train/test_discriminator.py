"""The adversarial term of stage 1: each player's loss moves only its own parameters
and the balance is the gradient-norm ratio it claims (a whole run with the term on:
tests/train/test_train_resume.py)."""

import pytest
import torch

from lddm_fast.train.discriminator import (
    PatchDiscriminator3d,
    adaptive_weight,
    discriminator_hinge,
    generator_hinge,
)


def test_patch_logits_cover_every_frame_and_an_eighth_of_each_side():
    disc = PatchDiscriminator3d(channels=1, width=8)
    logits = disc(torch.randn(2, 1, 7, 24, 40), torch.randn(2, 1, 24, 40))
    assert logits.shape == (2, 1, 7, 3, 5)


def test_each_hinge_term_reaches_only_its_own_player():
    disc = PatchDiscriminator3d(channels=1, width=8)
    source = torch.randn(2, 1, 4, 16, 16, requires_grad=True)
    fake = 2.0 * source
    real, x0 = torch.randn(2, 1, 4, 16, 16), torch.randn(2, 1, 16, 16)

    generator_hinge(disc, fake, x0).backward()
    assert source.grad is not None and source.grad.abs().sum() > 0
    assert all(p.grad is None for p in disc.parameters())

    source.grad = None
    loss, margin = discriminator_hinge(disc, real, fake, x0)
    loss.backward()
    assert source.grad is None
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in disc.parameters())
    assert not margin.requires_grad


def test_adaptive_weight_is_the_ratio_of_the_gradient_norms_at_the_layer():
    layer = torch.nn.Linear(5, 3)
    x = torch.randn(4, 5)
    out = layer(x)
    rec, adv = out.square().mean(), 3.0 * out.sum()
    g_rec = torch.autograd.grad(rec, layer.weight, retain_graph=True)[0]
    g_adv = torch.autograd.grad(adv, layer.weight, retain_graph=True)[0]
    want = g_rec.norm() / (g_adv.norm() + 1e-4)
    got = adaptive_weight(rec, adv, layer.weight)
    torch.testing.assert_close(got, want)
    assert not got.requires_grad


def test_the_critic_is_clipped_apart_from_the_network():
    """A large critic gradient must not shrink the autoencoder's step."""
    from lddm_fast.models import preset
    from lddm_fast.models.autoencoder import VideoAutoencoder
    from lddm_fast.train.autoencoder import AutoencoderObjective
    from lddm_fast.train.loop import clip_gradients, gradient_clip_groups

    ae = VideoAutoencoder(preset("tiny").autoencoder)
    ae.encoder.requires_grad_(False)
    objective = AutoencoderObjective(ae, kl_weight=1e-4, ssim_weight=0.0, adv_weight=0.5)
    network, critic = gradient_clip_groups(objective)
    assert {id(p) for p in critic} == {id(p) for p in objective.discriminator.parameters()}
    assert {id(p) for p in network} == {id(p) for p in ae.parameters() if p.requires_grad}
    for p in network:
        p.grad = torch.full_like(p, 1e-4)
    for p in critic:
        p.grad = torch.full_like(p, 10.0)
    want = [p.grad.clone() for p in network]
    norm = clip_gradients([network, critic], 1.0)
    assert norm == pytest.approx(1e-4 * sum(p.numel() for p in network) ** 0.5, rel=1e-4)
    for p, g in zip(network, want, strict=True):
        assert torch.equal(p.grad, g)  # below the limit: untouched
    critic_norm = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in critic]))
    assert critic_norm == pytest.approx(1.0, rel=1e-3)  # float32 sum of 10s
    plain = AutoencoderObjective(ae, kl_weight=1e-4, ssim_weight=0.0)
    assert len(gradient_clip_groups(plain)) == 1
