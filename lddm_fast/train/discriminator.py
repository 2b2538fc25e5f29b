"""The adversarial term of stage 1: a 3-D patch discriminator and its hinge losses.

Ultrasound speckle decorrelates from frame to frame (out-of-plane motion), so no
decoder can rebuild the exact speckle of a held-out clip; under L1 (and SSIM) the
best it can do is the local mean, a smooth image that moves too little and that I3D
(FVD) tells apart at once. A discriminator that sees short windows of frames next to
x0 rewards speckle that looks and changes like the real one instead (the patch GAN of
the latent-diffusion autoencoders, made 3-D).

The generator's term goes through the discriminator with detached parameters and the
discriminator's term through detached frames, so one backward pass and one optimizer
train both players without either pushing the other's parameters the wrong way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

__all__ = ["PatchDiscriminator3d", "adaptive_weight", "discriminator_hinge", "generator_hinge"]


class PatchDiscriminator3d(nn.Module):
    """Real/fake logits per space-time patch of a clip seen next to its first frame.

    Args:
        channels: image channels C.
        width: channels of the first layer (doubled at each further level).
        levels: stride-2 (in H and W) levels; each logit sees about ``2 ** (levels + 2)``
            pixels square and 1 + 2 * (levels + 1) frames.

    ``forward(frames [B, C, T, H, W], x0 [B, C, H, W]) -> logits [B, 1, T, H / 2**levels,
    W / 2**levels]``.
    """

    def __init__(self, channels: int, width: int = 32, levels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in, c_out = 2 * channels, width
        for level in range(levels):
            layers.append(nn.Conv3d(c_in, c_out, (3, 4, 4), stride=(1, 2, 2), padding=1))
            if level > 0:
                layers.append(nn.GroupNorm(min(32, c_out // 4), c_out))
            layers.append(nn.LeakyReLU(0.2))
            c_in, c_out = c_out, 2 * c_out
        layers.append(nn.Conv3d(c_in, 1, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, frames: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        cond = x0[:, :, None].expand_as(frames)
        return self.net(torch.cat([frames, cond], dim=1))


def discriminator_hinge(
    disc: PatchDiscriminator3d, real: torch.Tensor, fake: torch.Tensor, x0: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hinge loss of the discriminator on detached clips ``[B, C, T, H, W]``.

    Returns the loss and the mean logit margin (real minus fake), detached."""
    real_logits = disc(real.detach(), x0.detach()).float()
    fake_logits = disc(fake.detach(), x0.detach()).float()
    loss = 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())
    return loss, (real_logits.mean() - fake_logits.mean()).detach()


def generator_hinge(
    disc: PatchDiscriminator3d, fake: torch.Tensor, x0: torch.Tensor
) -> torch.Tensor:
    """The generator's term, ``-mean(D(fake))``, through ``disc`` with detached
    parameters: its gradient reaches ``fake`` (the decoder) and nothing of ``disc``."""
    frozen = {name: p.detach() for name, p in disc.named_parameters()}
    return -functional_call(disc, frozen, (fake, x0)).float().mean()


def adaptive_weight(
    reconstruction: torch.Tensor, adversarial: torch.Tensor, last_layer: torch.Tensor
) -> torch.Tensor:
    """``|grad rec| / |grad adv|`` at the decoder's last layer (detached, at most 1e4).

    Balances the two terms by the gradients they send the decoder, so one weight works
    whatever the scales of the reconstruction loss and of the discriminator's logits."""
    g_rec = torch.autograd.grad(reconstruction, last_layer, retain_graph=True)[0]
    g_adv = torch.autograd.grad(adversarial, last_layer, retain_graph=True)[0]
    return (g_rec.norm() / (g_adv.norm() + 1e-4)).clamp(max=1e4).detach()
