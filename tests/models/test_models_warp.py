"""The warping decoder (``AutoencoderConfig.warp``): x0 moved by a predicted
displacement field and blended with the decoder's own frames."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lddm_fast.models import LDDMConfig, preset
from lddm_fast.models.autoencoder import VideoAutoencoder, warp_image
from lddm_fast.models.checkpoint import build_models, from_pretrained, save_pretrained
from lddm_fast.train.autoencoder import (
    FLOW_GRADIENT_SCALE,
    AutoencoderObjective,
    coarse_l1,
    flow_l1,
    load_autoencoder_init,
)


def _warp_config() -> LDDMConfig:
    config = preset("tiny")
    return dataclasses.replace(
        config, autoencoder=dataclasses.replace(config.autoencoder, warp=True)
    )


def _bilinear_float64(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """The same warp written out per pixel in float64, edges clamped."""
    b, c, h, w = image.shape
    t = flow.shape[2]
    image, flow = image.double(), flow.double()
    out = torch.empty(b, c, t, h, w, dtype=torch.float64)
    for n in range(b):
        for k in range(t):
            for y in range(h):
                for x in range(w):
                    sx = min(max(x + float(flow[n, 0, k, y, x]), 0.0), w - 1.0)
                    sy = min(max(y + float(flow[n, 1, k, y, x]), 0.0), h - 1.0)
                    x0, y0 = int(sx), int(sy)
                    x1, y1 = min(x0 + 1, w - 1), min(y0 + 1, h - 1)
                    fx, fy = sx - x0, sy - y0
                    top = image[n, :, y0, x0] * (1 - fx) + image[n, :, y0, x1] * fx
                    bottom = image[n, :, y1, x0] * (1 - fx) + image[n, :, y1, x1] * fx
                    out[n, :, k, y, x] = top * (1 - fy) + bottom * fy
    return out


def test_warp_image_matches_per_pixel_bilinear():
    image = torch.randn(2, 3, 7, 9)
    flow = torch.randn(2, 2, 3, 7, 9) * 3.0  # reaches past the edges too
    got = warp_image(image, flow)
    assert got.shape == (2, 3, 3, 7, 9)
    assert got.is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(got.double(), _bilinear_float64(image, flow), atol=1e-5, rtol=1e-5)


def test_warp_image_integer_shift_moves_pixels():
    image = torch.randn(1, 1, 6, 8)
    flow = torch.zeros(1, 2, 2, 6, 8)
    flow[:, 0, 0] = 2.0  # frame 0: content moves left by 2 (samples x + 2)
    flow[:, 1, 1] = -1.0  # frame 1: samples y - 1
    out = warp_image(image, flow)[0, 0]
    torch.testing.assert_close(out[0, :, :6], image[0, 0, :, 2:])
    torch.testing.assert_close(out[1, 1:], image[0, 0, :-1])


def test_warp_decoder_starts_at_zero_displacement_and_learns_it():
    config = _warp_config()
    torch.manual_seed(0)
    ae = VideoAutoencoder(config.autoencoder)
    x0 = torch.rand(2, 1, config.size, config.size) * 2 - 1
    frames = torch.rand(2, 1, config.num_frames, config.size, config.size) * 2 - 1
    z = ae.encode(frames).latent_dist.mode()
    out = ae.decode(z, x0)
    assert out.sample.shape == frames.shape
    assert out.flow.shape == (2, 2, config.num_frames, config.size, config.size)
    assert out.flow.abs().max() == 0
    torch.testing.assert_close(out.warped, x0[:, :, None].expand_as(frames))

    objective = AutoencoderObjective(ae, kl_weight=1e-4, ssim_weight=0.0)
    clip = torch.cat([x0[:, :, None], frames], dim=2)
    loss, parts = objective(clip, torch.randn_like(z))
    assert "warp_l1" in parts
    loss.backward()
    head = ae.decoder.flow_head[-1].weight.grad
    assert head is not None and head.abs().max() > 0, "the displacement head gets no gradient"


def test_warp_objective_off_for_plain_decoder():
    ae = VideoAutoencoder(preset("tiny").autoencoder)
    objective = AutoencoderObjective(ae, kl_weight=1e-4, ssim_weight=0.0, warp_weight=1.0)
    assert objective.warp_weight == 0.0
    assert ae.decode(torch.zeros(1, 4, 4, 4, 4), torch.zeros(1, 1, 32, 32)).warped is None


def test_coarse_l1_ignores_detail_below_the_pool():
    # A +-1 checkerboard averages to 0 in every 4x4 cell: the coarse L1 cannot see it.
    target = torch.zeros(1, 1, 2, 16, 16)
    board = (torch.arange(16)[:, None] + torch.arange(16)[None]) % 2 * 2.0 - 1.0
    video = target + board
    assert coarse_l1(video, target) == 0
    assert coarse_l1(video + 0.5, target) == pytest.approx(0.5)


def test_warp_checkpoint_round_trip(tmp_path):
    config = _warp_config()
    models = build_models(config)
    save_pretrained(tmp_path / "ckpt", models)
    loaded = from_pretrained(tmp_path / "ckpt")
    assert loaded.config.autoencoder.warp is True
    for name, p in models.autoencoder.state_dict().items():
        torch.testing.assert_close(loaded.autoencoder.state_dict()[name], p)


def test_warp_field_must_be_bool():
    with pytest.raises(ValueError, match="warp must be a bool"):
        dataclasses.replace(preset("tiny").autoencoder, warp=1)


def _level_config(level) -> LDDMConfig:
    config = _warp_config()
    return dataclasses.replace(
        config, autoencoder=dataclasses.replace(config.autoencoder, warp_level=level)
    )


@pytest.mark.parametrize("level", [None, 0, 1, 3])
def test_warp_level_sets_the_resolution_the_field_is_drawn_at(level):
    config = _level_config(level)
    expected = len(config.autoencoder.block_channels) - 2 if level is None else level
    assert config.autoencoder.flow_level == expected
    torch.manual_seed(0)
    ae = VideoAutoencoder(config.autoencoder)
    ae.decoder.flow_head[-1].weight.data.normal_(0, 1.0)
    seen = []
    hook = ae.decoder.flow_head.register_forward_hook(lambda m, i, out: seen.append(out.shape))
    x0 = torch.rand(1, 1, config.size, config.size) * 2 - 1
    frames = torch.rand(1, 1, config.num_frames, config.size, config.size) * 2 - 1
    out = ae.decode(ae.encode(frames).latent_dist.mode(), x0)
    hook.remove()
    side = config.size // 2**expected
    assert seen == [(1, 2, config.num_frames, side, side)]
    assert out.flow.shape == (1, 2, config.num_frames, config.size, config.size)
    assert out.flow.abs().max() > 0


@pytest.mark.parametrize("level", [-1, 4, True, 1.0])
def test_warp_level_out_of_range_is_refused(level):
    with pytest.raises(ValueError, match="warp_level must be None or a level 0..3"):
        _level_config(level)


def test_flow_l1_weighs_strain_errors_by_the_gradient_scale():
    target = torch.randn(2, 2, 3, 8, 8)
    assert flow_l1(target, target) == 0
    # A uniform offset has no strain: only the displacement term sees it.
    assert flow_l1(target + 0.25, target) == pytest.approx(0.25)
    # An axial ramp of slope s: displacement error |s (z - 3.5)|, axial difference s.
    s = 0.01
    ramp = s * (torch.arange(8.0) - 3.5)[:, None].expand(8, 8)
    moved = target.clone()
    moved[:, 1] += ramp
    displacement = 0.5 * float(ramp.abs().mean())  # one of the two components
    axial = 0.5 * s  # every axial difference of the axial component, none of the other
    expected = displacement + FLOW_GRADIENT_SCALE * axial
    assert flow_l1(moved, target) == pytest.approx(expected, rel=1e-5)


def test_flow_term_trains_the_field_towards_the_true_flow():
    config = _level_config(1)
    torch.manual_seed(0)
    ae = VideoAutoencoder(config.autoencoder)
    x0 = torch.rand(2, 1, config.size, config.size) * 2 - 1
    frames = torch.rand(2, 1, config.num_frames, config.size, config.size) * 2 - 1
    clip = torch.cat([x0[:, :, None], frames], dim=2)
    flow = torch.zeros(2, 2, config.num_frames, config.size, config.size)
    flow[:, 1] = 1.5
    objective = AutoencoderObjective(ae, kl_weight=1e-4, ssim_weight=0.0, flow_weight=1.0)
    eps = torch.randn(2, *config.latent_shape)
    with pytest.raises(ValueError, match="needs the clips' true flow"):
        objective(clip, eps)
    optimizer = torch.optim.Adam(ae.decoder.parameters(), lr=3e-3)
    first = None
    for _ in range(30):
        loss, parts = objective(clip, eps, flow=flow)
        first = float(parts["flow_l1"]) if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert first == pytest.approx(0.75, rel=1e-5)  # zero field: mean |0 - flow|
    assert float(parts["flow_l1"]) < 0.5 * first
    with pytest.raises(ValueError, match="flow_weight needs a warping decoder"):
        AutoencoderObjective(VideoAutoencoder(preset("tiny").autoencoder), 1e-4, 0.0, flow_weight=1)


def test_init_from_a_checkpoint_with_the_head_elsewhere_starts_that_head_fresh(tmp_path):
    source = build_models(_warp_config())
    torch.manual_seed(1)
    source.autoencoder.decoder.flow_head[-1].weight.data.normal_()
    save_pretrained(tmp_path / "ckpt", source)
    network = VideoAutoencoder(_level_config(0).autoencoder)
    fresh = load_autoencoder_init(network, tmp_path / "ckpt")
    assert fresh and all(n.startswith("decoder.flow_head.") for n in fresh)
    assert network.decoder.flow_head[-1].weight.abs().max() == 0  # zero displacement
    state, before = network.state_dict(), source.autoencoder.state_dict()
    for name in set(state) - set(fresh):
        assert torch.equal(state[name], before[name]), name
    # The same level: the head is the checkpoint's.
    same = VideoAutoencoder(_warp_config().autoencoder)
    assert load_autoencoder_init(same, tmp_path / "ckpt") == []
    assert torch.equal(same.decoder.flow_head[-1].weight, before["decoder.flow_head.1.weight"])


def test_init_leaves_fitted_speckle_out_of_a_config_without_it(tmp_path):
    config = _warp_config()
    with_speckle = dataclasses.replace(
        config, autoencoder=dataclasses.replace(config.autoencoder, speckle_frames=4)
    )
    source = build_models(with_speckle)
    for buffer in source.autoencoder.speckle.buffers():
        buffer.uniform_(0.2, 0.8)  # a fit, unlike a fresh module's values
    save_pretrained(tmp_path / "ckpt", source)
    network = VideoAutoencoder(config.autoencoder)
    assert load_autoencoder_init(network, tmp_path / "ckpt") == []
    assert network.speckle is None
    kept = VideoAutoencoder(with_speckle.autoencoder)
    assert load_autoencoder_init(kept, tmp_path / "ckpt") == []
    for name, tensor in source.autoencoder.speckle.state_dict().items():
        assert torch.equal(kept.speckle.state_dict()[name], tensor), name
