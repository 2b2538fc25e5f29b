"""The texture code (``AutoencoderConfig.texture_channels``): a per-frame image-resolution
code, inferred from the clip for rebuilding and drawn from N(0, I) for generation;
adding it to a trained model and fine-tuning the decoder with the z encoder frozen."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lddm_fast.diffusion import LDDMPipeline, PerSampleNoise, video_seed
from lddm_fast.models import LDDMConfig, preset
from lddm_fast.models.autoencoder import VideoAutoencoder
from lddm_fast.models.checkpoint import build_models, from_pretrained, save_pretrained
from lddm_fast.models.layers import draw_zero_parameters
from lddm_fast.train.autoencoder import (
    AutoencoderObjective,
    load_autoencoder_init,
    reconstruction_metrics,
)


def _config(texture_channels: int = 2, warp: bool = True) -> LDDMConfig:
    config = preset("tiny")
    ae = dataclasses.replace(config.autoencoder, warp=warp, texture_channels=texture_channels)
    return dataclasses.replace(config, autoencoder=ae)


def _clip(config: LDDMConfig, batch: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (batch, 1, config.num_frames + 1, config.size, config.size)
    return torch.rand(shape, generator=g) * 2 - 1


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"texture_channels": -1}, "texture_channels must be an int >= 0"),
        ({"texture_channels": True}, "texture_channels must be an int >= 0"),
    ],
)
def test_config_checks(fields, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(preset("tiny").autoencoder, **fields)


@pytest.mark.parametrize("warp", [True, False])
def test_shapes_and_the_code_changes_the_frames(warp):
    config = _config(warp=warp)
    torch.manual_seed(0)
    ae = VideoAutoencoder(config.autoencoder).eval()
    draw_zero_parameters(ae)
    clip = _clip(config)
    x0, frames = clip[:, :, 0], clip[:, :, 1:]
    q = ae.encode_texture(frames, x0)
    z = ae.encode(frames).latent_dist.mode()
    shape = (2, 2, config.num_frames, config.size, config.size)
    assert q.mean.shape == shape == ae.texture_shape(z)
    a = ae.decode(z, x0, q.mode()).sample
    b = ae.decode(z, x0, torch.randn_like(q.mode())).sample
    assert a.shape == frames.shape
    assert (a - b).abs().max() > 1e-3, "the decoder ignores its texture code"
    # None decodes with the prior's mean.
    torch.testing.assert_close(ae.decode(z, x0).sample, ae.decode(z, x0, q.mode() * 0).sample)
    out = ae(frames, x0, sample_posterior=False)
    assert out.texture_dist is not None
    torch.testing.assert_close(out.sample, a)


def test_texture_arguments_are_checked():
    config = _config()
    ae = VideoAutoencoder(config.autoencoder)
    z = torch.zeros(1, *config.latent_shape)
    x0 = torch.zeros(1, 1, config.size, config.size)
    with pytest.raises(ValueError, match=r"texture has shape \(1, 2, 32, 32\)"):
        ae.decode(z, x0, torch.zeros(1, 2, config.size, config.size))
    plain = VideoAutoencoder(_config(0).autoencoder)
    with pytest.raises(ValueError, match="has no texture code"):
        plain.decode(z, x0, torch.zeros(ae.texture_shape(z)))
    with pytest.raises(ValueError, match="has no texture code"):
        plain.encode_texture(torch.zeros(1, 1, config.num_frames, 32, 32), x0)


def test_a_fresh_texture_head_leaves_a_trained_decoder_unchanged(tmp_path):
    """--init: the warp model's weights copied in, the texture modules fresh; its last
    conv is zero, so every code decodes to exactly the trained model's frames."""
    torch.manual_seed(1)
    trained = build_models(_config(0))
    draw_zero_parameters(trained.autoencoder)
    save_pretrained(tmp_path / "trained", trained)

    ae = VideoAutoencoder(_config(2).autoencoder)
    fresh = load_autoencoder_init(ae, tmp_path / "trained")
    assert fresh and all(n.startswith(("texture_encoder.", "decoder.texture_head.")) for n in fresh)
    for name, p in trained.autoencoder.state_dict().items():
        assert torch.equal(ae.state_dict()[name], p), name

    clip = _clip(_config(0))
    x0, frames = clip[:, :, 0], clip[:, :, 1:]
    with torch.no_grad():
        z = trained.autoencoder.encode(frames).latent_dist.mode()
        want = trained.autoencoder.decode(z, x0).sample
        got = ae.decode(z, x0, torch.randn(ae.texture_shape(z))).sample
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_init_refuses_a_checkpoint_of_another_architecture(tmp_path):
    target = VideoAutoencoder(_config(2).autoencoder)
    save_pretrained(tmp_path / "plain", build_models(preset("tiny")))  # no warp: no gate
    with pytest.raises(ValueError, match="'decoder.conv_out.weight' has shape"):
        load_autoencoder_init(target, tmp_path / "plain")
    save_pretrained(tmp_path / "texture", build_models(_config(2)))
    with pytest.raises(ValueError, match="texture.* has no place in this config"):
        load_autoencoder_init(VideoAutoencoder(_config(0).autoencoder), tmp_path / "texture")
    deeper = _config(2)
    deeper = dataclasses.replace(
        deeper, autoencoder=dataclasses.replace(deeper.autoencoder, layers_per_block=2)
    )
    with pytest.raises(ValueError, match="lacks autoencoder tensors this config needs"):
        load_autoencoder_init(VideoAutoencoder(deeper.autoencoder), tmp_path / "texture")


def test_objective_trains_the_code_and_a_frozen_encoder_stays_fixed():
    config = _config()
    torch.manual_seed(2)
    ae = VideoAutoencoder(config.autoencoder)
    draw_zero_parameters(ae)
    ae.encoder.requires_grad_(False)
    objective = AutoencoderObjective(ae, kl_weight=1e-4, ssim_weight=0.0, texture_kl_weight=0.1)
    clip = _clip(config)
    eps = torch.randn(2, *config.latent_shape)
    texture_eps = torch.randn(2, 2, config.num_frames, config.size, config.size)
    loss, parts = objective(clip, eps, texture_eps)
    assert parts["texture_kl"] > 0
    loss.backward()
    assert all(p.grad is None for p in ae.encoder.parameters())
    for module in (ae.texture_encoder, ae.decoder.texture_head):
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None for g in grads) and max(g.abs().max() for g in grads) > 0

    # The texture KL is KL(q(n) || N(0, I)) summed over the code, per pixel of the clip.
    q = ae.encode_texture(clip[:, :, 1:], clip[:, :, 0])
    mean, var = q.mean.double(), q.std.double() ** 2
    want = 0.5 * (mean**2 + var - 1 - var.log()).flatten(1).sum(1).mean()
    want = want / clip[0, :, 1:].numel()
    torch.testing.assert_close(parts["texture_kl"].double(), want, rtol=1e-5, atol=0)


def test_reconstruction_metrics_use_the_inferred_code():
    config = _config()
    torch.manual_seed(3)
    ae = VideoAutoencoder(config.autoencoder).eval()
    draw_zero_parameters(ae)
    clips = [(c, 0) for c in _clip(config, batch=3)]
    rebuilt = []
    metrics = reconstruction_metrics(ae, clips, torch.device("cpu"), rebuilt=rebuilt)
    clip = torch.stack([c for c, _ in clips])
    x0, frames = clip[:, :, 0], clip[:, :, 1:]
    with torch.no_grad():
        z = ae.encode(frames).latent_dist.mode()
        want = ae.decode(z, x0, ae.encode_texture(frames, x0).mode()).sample.clamp(-1, 1)
    torch.testing.assert_close(torch.stack(rebuilt)[:, :, 1:], want)
    assert metrics["clips"] == 3


def test_checkpoint_round_trip(tmp_path):
    models = build_models(_config())
    draw_zero_parameters(models.autoencoder)
    save_pretrained(tmp_path / "ckpt", models)
    loaded = from_pretrained(tmp_path / "ckpt")
    assert loaded.config.autoencoder.texture_channels == 2
    for name, p in models.autoencoder.state_dict().items():
        torch.testing.assert_close(loaded.autoencoder.state_dict()[name], p)


def test_pipeline_draws_the_code_last_from_each_videos_generator():
    """The code is each video's draw after the initial noise (ddim: no step noise), so
    a video is reproducible from its seed alone, alone or in a batch."""
    config = _config()
    torch.manual_seed(4)
    models = build_models(config)
    draw_zero_parameters(models.autoencoder)
    draw_zero_parameters(models.denoiser)
    pipe = LDDMPipeline(models, device="cpu")
    images = torch.randint(0, 256, (2, 1, config.size, config.size), dtype=torch.uint8)
    out = pipe(images, steps=2, sampler="ddim", seed=5, output="float").videos

    seeds = [video_seed(5, i) for i in range(2)]
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    latents = PerSampleNoise(gens, torch.empty(2, *config.latent_shape)).draw()
    shape = (2, 2, config.num_frames, config.size, config.size)
    texture = PerSampleNoise(gens, torch.empty(shape)).draw()
    with torch.no_grad():
        x0 = images.float() / 127.5 - 1
        denoiser = models.denoiser
        z = pipe.denoise(
            latents.contiguous(memory_format=torch.channels_last_3d),
            denoiser.encode_condition(x0),
            None,
            steps=2,
            sampler="ddim",
        )
        want = models.autoencoder.decode(z / config.latent_scale, x0, texture).sample
    torch.testing.assert_close(out[:, :, 1:], want.clamp(-1, 1), rtol=0, atol=1e-5)
    alone = pipe(images[1:], steps=2, sampler="ddim", seed=[seeds[1]], output="float").videos
    torch.testing.assert_close(alone[0], out[1], rtol=0, atol=1e-5)


def test_texture_kl_weight_ramps_over_its_warmup():
    config = _config()
    ae = VideoAutoencoder(config.autoencoder)
    objective = AutoencoderObjective(
        ae, kl_weight=1e-4, ssim_weight=0.0, texture_kl_weight=0.2, texture_kl_warmup=4
    ).train()
    clip = _clip(config, batch=1)
    eps = torch.randn(1, *config.latent_shape)
    texture_eps = torch.randn(1, 2, config.num_frames, config.size, config.size)
    weights = []
    for _ in range(6):
        weights.append(objective._texture_kl_weight())
        objective(clip, eps, texture_eps)
    assert weights == pytest.approx([0.05, 0.1, 0.15, 0.2, 0.2, 0.2])
    assert int(objective.state_dict()["steps_seen"]) == 6  # saved with the training state
    # Evaluation forwards do not advance the ramp.
    objective.eval()
    objective(clip, eps, texture_eps)
    assert int(objective.steps_seen) == 6
    no_ramp = AutoencoderObjective(ae, kl_weight=1e-4, ssim_weight=0.0, texture_kl_weight=0.2)
    assert no_ramp._texture_kl_weight() == 0.2 and not hasattr(no_ramp, "steps_seen")


def test_bundle_swaps_in_a_fine_tuned_autoencoder_and_keeps_the_denoiser(tmp_path):
    from lddm_fast.train.bundle import bundle

    torch.manual_seed(5)
    base = build_models(_config(0))
    draw_zero_parameters(base.autoencoder)
    draw_zero_parameters(base.denoiser)
    base.config = dataclasses.replace(base.config, latent_scale=0.5)
    save_pretrained(tmp_path / "stage2", base, meta={"denoiser_trained": True})

    tuned = build_models(_config(2))
    load_autoencoder_init(tuned.autoencoder, tmp_path / "stage2")
    with torch.no_grad():
        for p in tuned.autoencoder.decoder.parameters():
            p.add_(0.01)
    save_pretrained(tmp_path / "tuned", tuned)

    def swap(autoencoder: str, out: str) -> None:
        stage2 = tmp_path / "stage2"
        bundle(
            stage2,
            tmp_path / out,
            dtype=torch.float32,
            extra={},
            autoencoder=tmp_path / autoencoder,
        )

    swap("tuned", "out")
    got = from_pretrained(tmp_path / "out")
    assert got.config.autoencoder.texture_channels == 2
    assert got.config.latent_scale == 0.5  # the denoiser's latents keep their scale
    assert got.meta["autoencoder"]["replaces"] is None
    tuned_meta = from_pretrained(tmp_path / "tuned").meta
    assert got.meta["autoencoder"]["sha256"] == tuned_meta["sha256"]["autoencoder.safetensors"]
    assert got.meta["autoencoder"]["checkpoint"] == str((tmp_path / "tuned").resolve())
    for name, p in base.denoiser.state_dict().items():
        assert torch.equal(got.denoiser.state_dict()[name], p), name
    for name, p in tuned.autoencoder.state_dict().items():
        assert torch.equal(got.autoencoder.state_dict()[name], p), name

    # An autoencoder whose z encoder moved would silently break the denoiser: refused.
    with torch.no_grad():
        next(tuned.autoencoder.encoder.parameters()).add_(1e-3)
    save_pretrained(tmp_path / "moved", tuned)
    with pytest.raises(ValueError, match="z encoder differs"):
        swap("moved", "out2")
    assert not (tmp_path / "out2").exists()
