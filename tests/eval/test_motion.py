"""Motion statistics and the baselines: checks on videos whose motion is known."""

import math

import torch
import torch.nn.functional as F

from lddm_fast.eval.motion import (
    axial_displacement,
    ellipse_mask,
    intensity_motion,
    random_warp,
    static_video,
    strain_ratio,
)


def speckle(size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 1, size, size, generator=g)
    x = F.avg_pool2d(x, 3, 1, 1)  # a few pixels of correlation, like speckle
    return (x - x.min()) / (x.max() - x.min()) * 2 - 1


def compress(image, compliance, frames):
    """Warp ``image`` [1, 1, H, W] by an axial compression whose local strain at pixel
    (z, x) is ``amount * compliance[z, x]``, amount rising linearly over the frames."""
    h, w = image.shape[-2:]
    z = torch.arange(h, dtype=torch.float64).view(h, 1)
    out = [image[0]]
    for t in range(1, frames + 1):
        amount = 0.04 * t / frames
        # displacement u(z, x) = -amount * integral over depth of the local strain
        u = -amount * torch.cumsum(compliance.double(), 0)
        src = (z - u).float()  # each output pixel samples the image at its rest depth
        ys = src / (h - 1) * 2 - 1
        xs = torch.linspace(-1, 1, w).view(1, w).expand(h, w)
        grid = torch.stack([xs, ys], -1)[None]
        out.append(F.grid_sample(image, grid, align_corners=True, padding_mode="border")[0])
    return torch.stack(out, dim=1)  # [1, T+1, H, W]


def test_static_video_has_no_motion_and_random_warp_moves_with_amplitude():
    x0 = speckle()[0]
    still = static_video(x0, 7)
    assert still.shape == (1, 8, 64, 64)
    assert intensity_motion(still) == {"frame_diff": 0.0, "x0_diff": 0.0}
    g = torch.Generator().manual_seed(0)
    none = random_warp(x0, 7, 0.0, g)
    torch.testing.assert_close(none, still, atol=1e-5, rtol=0)
    small = intensity_motion(random_warp(x0, 7, 1.0, torch.Generator().manual_seed(1)))
    large = intensity_motion(random_warp(x0, 7, 4.0, torch.Generator().manual_seed(1)))
    assert 0 < small["x0_diff"] < large["x0_diff"]
    u8 = random_warp(((x0 + 1) * 127.5).round().to(torch.uint8), 7, 2.0, g)
    assert u8.dtype == torch.uint8 and u8.shape == (1, 8, 64, 64)


def test_block_matching_recovers_a_known_axial_shift():
    image = speckle(seed=3)
    shifted = torch.roll(image, shifts=3, dims=2)  # content moves 3 px deeper
    disp = axial_displacement(image[0, 0] * 100, shifted[0] * 100)
    inner = disp[0, 10:-10, 10:-10]
    assert (inner - 3).abs().median() < 0.2


def test_a_soft_inclusion_has_a_higher_strain_ratio_than_a_stiff_one():
    image = speckle(seed=5)
    lesion = ellipse_mask(64, (32.0, 32.0), (12.0, 7.0))

    def ratio(compliance):
        video = compress(image, torch.where(lesion, compliance, 1.0), 8)
        return strain_ratio(video[0:1], lesion)

    soft, stiff = ratio(3.0), ratio(0.3)
    assert math.isfinite(soft) and math.isfinite(stiff)
    assert soft > 1.5 and stiff < 0.8 and soft > stiff
    assert math.isnan(strain_ratio(static_video(image[0], 4), lesion))
