"""Speckle re-imaged from moving scatterers (``AutoencoderConfig.speckle_model =
"scatterers"``).

Why not a warp or an independent texture: speckle is the interference of unresolved
scatterers under the pulse. As tissue strains, the scatterers inside one resolution
cell move relative to each other and the pattern re-forms; a warp of x0 stretches its
grains instead, and log-speckle drawn over the decoder's mean does not move with the
tissue. Measured on the phantom's held-out set (docs/TRAINING.md): clips whose every
scatterer is drawn again (frame 0 kept) score FVD 34 against the real clips, at the
real-vs-real floor of 33, while x0 moved by the exact true motion scores 545. What a
rebuilt clip needs is speckle formed the way a scanner forms it, over the clip's
anatomy and motion, not x0's own speckle. (It halves the bundled model's FVDs but is not
bundled: bar 2's strain estimator tracks frames against x0 and reads speckle that is not
x0's as noise; docs/TRAINING.md.)

So this module images a field of point scatterers through the decoder's motion:

* a lattice covering the image and a margin (one scatterer per RF sample along depth,
  two per lateral PSF sigma across), each uniformly jittered inside its cell, with a
  complex Gaussian amplitude (the sum of many such echoes is a circular Gaussian:
  fully developed speckle at any lattice density);
* frame t places each scatterer where the decoder's displacement field carries its
  tissue (the field maps frame t's pixels back to frame 0; two fixed-point steps
  invert it) and lets its amplitude drift as an AR(1) with correlation ``rho``
  (out-of-plane motion mixing fresh scatterers into the beam);
* the scatterers are shared bilinearly onto an RF grid finer along depth, convolved
  with the analytic pulse-echo PSF (a Gaussian-modulated carrier along depth, a
  Gaussian across; :mod:`lddm_fast.data.phantom_bmode` forms the phantom's images the
  same way) in one FFT product, and sampled back at the pixels;
* the log of the echo intensity, standardised to unit mean power per frame, is added
  to the decoder's mean blurred by ``anatomy_sigma`` (the mean still carries some of
  x0's speckle where the warp kept it), in display units: a log-compressed display of
  ``dynamic_range_db`` over [-1, 1] moves by ``20 / dynamic_range_db / ln 10`` per unit
  of ln intensity.

With ``retrieve`` (``speckle_model = "retrieved"``) the scatterers are not drawn
afresh: they are x0's own, retrieved from its envelope
(:mod:`.scatterer_retrieval`), and a frame is their echo alone, moved by the decoder's
field (the decoder's mean is not used): frames that continue x0's speckle the way a
scanner's do, which the lesion strain of bar 2 tracks and I3D accepts.

``lddm_fast.train.speckle --model scatterers`` (or ``retrieved``) fits the PSF widths
and ``rho`` to a trained decoder's rebuilt clips (``anatomy_sigma`` is given: every
blur measured raised the FVD); a fresh module adds nothing (``dynamic_range_db`` 0
marks it unfitted).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lddm_fast.data.phantom_bmode import Pulse
from lddm_fast.models import scatterer_retrieval as retrieval
from lddm_fast.models.lattice_imaging import LatticeImager

__all__ = ["ScattererSpeckle", "gaussian_blur"]

# The lattice covers this fraction of the image beyond each edge: tissue the motion
# brings into view (the phantom's largest shifts reach 0.17 of the size).
_MARGIN = 0.2
_EULER_GAMMA = 0.5772156649015329


def _sample(image: torch.Tensor, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``image [B, C, H, W]`` bilinearly at pixel positions ``z, x [B, n]`` (edges
    replicated) -> ``[B, C, n]``."""
    h, w = image.shape[-2:]
    grid = torch.stack([(x + 0.5) * (2 / w) - 1, (z + 0.5) * (2 / h) - 1], dim=-1)
    return F.grid_sample(image, grid[:, None], padding_mode="border", align_corners=False)[:, :, 0]


def gaussian_blur(frames: torch.Tensor, sigma: float) -> torch.Tensor:
    """``frames [..., H, W]`` blurred by a Gaussian of std ``sigma`` pixels (edges
    replicated); ``sigma`` <= 0 returns them unchanged."""
    if sigma <= 0:
        return frames
    r = max(1, math.ceil(3 * sigma))
    k = torch.exp(-(torch.arange(-r, r + 1.0, device=frames.device) ** 2) / (2 * sigma**2))
    k = (k / k.sum()).to(frames.dtype)
    shape = frames.shape
    x = frames.reshape(-1, 1, *shape[-2:])
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return x.reshape(shape)


class ScattererSpeckle(nn.Module):
    """Adds speckle imaged from scatterers that move with the decoder's field.

    Buffers (set by :func:`lddm_fast.train.speckle.fit_scatterers`):
        axial_sigma, lateral_sigma: ``[]`` the pulse-echo PSF's Gaussian stds, pixels
            (fitted).
        rho: ``[]`` frame-to-frame correlation of each scatterer's amplitude (fitted).
        anatomy_sigma: ``[]`` std (pixels) of the blur applied to the decoder's mean
            (given).
        dynamic_range_db: ``[]`` the display's log-compression range; 0: unfitted, the
            module adds nothing.
    """

    def __init__(self, retrieve: bool = False) -> None:
        super().__init__()
        self.retrieve = retrieve
        for name, value in (
            ("axial_sigma", 0.7),
            ("lateral_sigma", 0.9),
            ("rho", 1.0),
            ("anatomy_sigma", 0.0),
            ("dynamic_range_db", 0.0),
        ):
            self.register_buffer(name, torch.tensor(float(value)))

    def pulse(self) -> Pulse:
        """The pulse-echo PSF of the buffers (the phantom's imager's, fitted widths)."""
        return Pulse(float(self.axial_sigma), float(self.lateral_sigma))

    # The RF grid and lattice follow from the PSF widths, as the phantom's imager lays
    # them out.
    def _geometry(self, h: int, w: int) -> dict:
        pulse = self.pulse()
        up, (pad_z, pad_x) = pulse.upsample, pulse.padding
        mz, mx = math.ceil(_MARGIN * h), math.ceil(_MARGIN * w)
        step_x = pulse.lateral_sigma / 2
        return {
            "up": up,
            "pad": (pad_z, pad_x),
            "rf": ((h + 2 * pad_z) * up, w + 2 * pad_x),
            "origin": (-mz, -mx),
            "step": (1.0 / up, step_x),
            "lattice": ((h + 2 * mz) * up, math.ceil((w + 2 * mx) / step_x)),
        }

    def noise_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of the N(0, 1) noise :meth:`forward` takes for frames of ``shape``
        ``(B, C, T, H, W)``, over the ``Nz x Nx`` lattice: ``(B, 2, T + 1, Nz, Nx)``,
        ``[:, :, 0]`` the scatterers' jitter (depth, lateral) and ``[:, :, 1 + t]`` the
        complex amplitude innovation of frame t (real, imaginary); with ``retrieve``,
        ``(B, 2, T + 2, Nz, Nx)``: the jitter, then the prior draw of x0's scatterers,
        then the innovations."""
        b, _, t, h, w = shape
        return (b, 2, t + 1 + int(self.retrieve), *self._geometry(h, w)["lattice"])

    def _lattice(self, jitter_noise: torch.Tensor, h: int, w: int):
        """Scatterer positions ``(z, x)``, each ``[B, Nz * Nx]`` pixels: lattice cell
        corners plus a uniform jitter (the normal's CDF of ``jitter_noise [B, 2, Nz,
        Nx]``)."""
        geo = self._geometry(h, w)
        nz, nx = geo["lattice"]
        b, dev = jitter_noise.shape[0], jitter_noise.device
        cell_z = geo["origin"][0] + torch.arange(nz, device=dev) * geo["step"][0]
        cell_x = geo["origin"][1] + torch.arange(nx, device=dev) * geo["step"][1]
        jitter = 0.5 * (1 + torch.erf(jitter_noise.float() / math.sqrt(2)))
        pz = (cell_z[:, None] + jitter[:, 0] * geo["step"][0]).reshape(b, -1)
        px = (cell_x[None, :] + jitter[:, 1] * geo["step"][1]).reshape(b, -1)
        return pz, px

    @staticmethod
    def _moved(flow_t: torch.Tensor, pz: torch.Tensor, px: torch.Tensor):
        """Where frame t shows the scatterers at frame-0 positions ``pz, px [B, n]``:
        ``q + flow_t(q) = p``, two fixed-point steps (``flow_t [B, 2, H, W]``)."""
        qz, qx = pz, px
        for _ in range(2):
            d = _sample(flow_t, qz, qx)
            qz, qx = pz - d[:, 1], px - d[:, 0]
        return qz, qx

    def log_intensity(self, flow: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The scatterers' echo through the motion ``flow [B, 2, T, H, W]`` (pixels; frame
        t's pixel (y, x) shows frame 0's tissue at (y + flow[:, 1], x + flow[:, 0]), as
        :func:`~lddm_fast.models.autoencoder.warp_image` reads it) from ``noise`` of
        :meth:`noise_shape`. Returns ``ln |echo|^2 + gamma`` per frame standardised to
        unit mean power, float32 ``[B, 1, T, H, W]`` (mean 0 for fully developed
        speckle)."""
        b, _, t, h, w = flow.shape
        geo = self._geometry(h, w)
        noise = noise.float()
        pz, px = self._lattice(noise[:, :, 0], h, w)
        flow = flow.float()
        rho = float(self.rho)
        fresh = math.sqrt(max(1.0 - rho * rho, 0.0))
        imager = LatticeImager(self.pulse(), geo["rf"], geo["pad"], (h, w), pz, px, baseband=False)
        amplitude = None
        out = []
        for i in range(t):
            innovation = torch.complex(noise[:, 0, 1 + i], noise[:, 1, 1 + i]).reshape(b, -1)
            amplitude = innovation if amplitude is None else rho * amplitude + fresh * innovation
            out.append(imager.moved(*self._moved(flow[:, :, i], pz, px)).A(amplitude))
        power = torch.stack(out, dim=1).abs().square()  # [B, T, H, W]
        power = power / power.mean(dim=(-1, -2), keepdim=True).clamp_min(1e-30)
        return (power.clamp_min(1e-30).log() + _EULER_GAMMA)[:, None]

    def retrieved_frames(self, x0: torch.Tensor, flow: torch.Tensor, noise: torch.Tensor):
        """Frames made of x0's own scatterers (:mod:`.scatterer_retrieval`) moved by
        ``flow [B, 2, T, H, W]`` and imaged again, display units, float32 ``[B, 1, T, H,
        W]``; ``x0 [B, C, H, W]`` (display units, channels averaged); ``noise`` of
        :meth:`noise_shape` (with ``retrieve``)."""
        b, _, t, h, w = flow.shape
        geo = self._geometry(h, w)
        pulse = self.pulse()
        scale = 20.0 / float(self.dynamic_range_db) / math.log(10.0)
        noise = noise.float()
        pz, px = self._lattice(noise[:, :, 0], h, w)
        gray = x0.float().mean(1)  # [B, H, W]
        intensity = torch.exp(gray / scale)
        local = gaussian_blur(intensity[:, None], retrieval.PRIOR_BLUR)
        sd = _sample(local, pz, px)[:, 0].sqrt()

        def draw(i: int) -> torch.Tensor:
            return torch.complex(noise[:, 0, i], noise[:, 1, i]).reshape(b, -1) / math.sqrt(2)

        imager = LatticeImager(pulse, geo["rf"], geo["pad"], (h, w), pz, px, baseband=True)
        prior = draw(1) * sd
        # Scaled so the prior's echo has x0's mean intensity.
        power = imager.A(prior).abs().square().mean((-1, -2))
        gain = (intensity.mean((-1, -2)) / power.clamp_min(1e-30)).sqrt()[:, None]
        prior, sd = prior * gain, sd * gain
        # Pixels clipped to black or white in x0 say only that the echo is beyond them.
        free = (gray <= -0.99) | (gray >= 0.99)
        amplitude = retrieval.retrieve_amplitudes(imager, intensity, free, prior, sd.square())
        rho = float(self.rho)
        fresh = math.sqrt(max(1.0 - rho * rho, 0.0))
        out = []
        for i in range(t):
            if fresh > 0:
                amplitude = rho * amplitude + fresh * sd * draw(2 + i)
            qz, qx = self._moved(flow[:, :, i].float(), pz, px)
            echo = imager.moved(qz, qx).A(amplitude)
            out.append(echo.abs().square().clamp_min(1e-30).log() * scale)
        return torch.stack(out, dim=1)[:, None]

    def forward(
        self,
        frames: torch.Tensor,
        noise: torch.Tensor,
        flow: torch.Tensor | None = None,
        x0: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """frames: decoded means ``[B, C, T, H, W]``; noise: N(0, 1) of
        :meth:`noise_shape`; flow: the decoder's field ``[B, 2, T, H, W]``; x0: the first
        frame ``[B, C, H, W]`` (needed with ``retrieve``) -> frames with speckle, same
        shape and dtype (every channel gets the same speckle: it belongs to the tissue,
        not to a colour). With ``retrieve`` the frames are x0's scatterers moved by the
        field and imaged again: the decoder's means are not used, its motion is."""
        want = self.noise_shape(frames.shape)
        if tuple(noise.shape) != want:
            raise ValueError(
                f"speckle noise has shape {tuple(noise.shape)}, frames {tuple(frames.shape)} "
                f"need {want} [B, 2, T+{1 + int(self.retrieve)}, Nz, Nx]"
            )
        b, c, t, h, w = frames.shape
        if flow is None or tuple(flow.shape) != (b, 2, t, h, w):
            got = None if flow is None else tuple(flow.shape)
            raise ValueError(
                f"scatterer speckle needs the decoder's field [B, 2, T, H, W] = "
                f"{(b, 2, t, h, w)}, got {got}"
            )
        if self.retrieve and (x0 is None or tuple(x0.shape) != (b, c, h, w)):
            got = None if x0 is None else tuple(x0.shape)
            raise ValueError(
                f"retrieved scatterer speckle needs x0 [B, C, H, W] = {(b, c, h, w)}, got {got}"
            )
        db = float(self.dynamic_range_db)
        if db <= 0:
            return frames
        if self.retrieve:
            out = self.retrieved_frames(x0, flow, noise)
            return out.expand(-1, c, -1, -1, -1).to(frames.dtype)
        scale = 20.0 / db / math.log(10.0)
        anatomy = gaussian_blur(frames.float(), float(self.anatomy_sigma))
        speckle = self.log_intensity(flow, noise)
        return (anatomy + scale * speckle).to(frames.dtype)
