"""x0's own scatterers, retrieved from its envelope (``speckle_model = "retrieved"``).

Why: measured on the phantom's held-out clips (docs/TRAINING.md, "What bounds bar 1"),
frames made of x0's own scatterers moved in plane are what both the video FVD and the
lesion strain (which tracks every frame against x0) accept; speckle drawn afresh
fails the strain, and speckle added in the log domain over a mean cannot get the FVD
below twice the real-vs-real floor even over the exact anatomy. x0 shows only its
scatterers' echo envelope, so they are retrieved as a posterior sample:

* prior: a complex Gaussian amplitude per lattice scatterer, variance x0's intensity
  blurred ``PRIOR_BLUR`` pixels where the scatterer sits, scaled to x0's mean intensity;
* Matheron's rule: with ``y`` the echo that has x0's envelope and the phases of the
  current amplitudes' echo, the amplitudes become ``prior + D A^H v``, where ``D`` is the
  prior's variance and ``(A D A^H + lambda) v = y - A prior`` is solved by conjugate
  gradients with a Jacobi preconditioner; pixels clipped to black or white constrain
  nothing. ``lambda`` falls from 0.3 to ``FLOOR`` (in units of the normal operator's
  mean response to a flat image) by 0.8 a round, over ``ROUNDS`` rounds; below that
  the solver stops converging on the PSF's weak lateral frequencies and the fit gets
  worse, not better.

Imaging here is at baseband: each scatterer's carrier phase rides on its amplitude and
the RF grid carries only the envelope. Bilinear splatting of the carrier itself (as
the phantom and the free scatterer model do) halves a lone scatterer's echo power at
half an RF sample: harmless for independent scatterers, but it attenuates a fitted,
coherent field wherever the field moves it; at baseband the power stays within a few
per cent of the PSF's at any offset.
"""

from __future__ import annotations

import math

import torch

from lddm_fast.data.phantom_bmode import CARRIER, Pulse

__all__ = ["BasebandImager", "retrieve_amplitudes", "ROUNDS", "FLOOR", "CG_ITERATIONS"]

PRIOR_BLUR = 2.0
ROUNDS = 25
FLOOR = 0.002
CG_ITERATIONS = 60


class BasebandImager:
    """Pulse-echo imaging of complex scatterers at fixed positions, at baseband.

    Args:
        pulse: the PSF (Gaussian envelope stds, pixels) and its RF grid's upsampling.
        rf: the RF grid ``(rows, cols)``; pad: image offset on it ``(pad_z, pad_x)`` in
            pixels; size: the image ``(H, W)``.
        z, x: scatterer positions ``[B, n]``, pixels (scatterers off the grid are dropped).
    """

    def __init__(self, pulse: Pulse, rf, pad, size, z: torch.Tensor, x: torch.Tensor) -> None:
        self.rows, self.cols = rf
        self.h, self.w = size
        self.up = pulse.upsample
        z0 = pad[0] * self.up
        self.pixels = (slice(z0, z0 + self.h * self.up, self.up), slice(pad[1], pad[1] + self.w))
        fz = torch.fft.fftfreq(self.rows, dtype=torch.float64, device=z.device)
        fx = torch.fft.fftfreq(self.cols, dtype=torch.float64, device=z.device)
        # The analytic PSF's spectrum moved down by its carrier: the envelope's.
        axial = 2 * torch.exp(-2 * (math.pi * pulse.axial_sigma * self.up) ** 2 * fz**2)
        lateral = torch.exp(-2 * (math.pi * pulse.lateral_sigma) ** 2 * fx**2)
        self.spectrum = (axial[:, None] * lateral[None]).to(torch.complex64)
        gz, gx = (z + pad[0]) * self.up, x + pad[1]
        inside = (gz >= 0) & (gz < self.rows - 1) & (gx >= 0) & (gx < self.cols - 1)
        gz, gx = gz.clamp(0, self.rows - 1.001), gx.clamp(0, self.cols - 1.001)
        iz, ix = gz.floor(), gx.floor()
        fz_, fx_ = gz - iz, gx - ix
        base = (iz * self.cols + ix).long()
        self.index = (base, base + 1, base + self.cols, base + self.cols + 1)
        self.bilinear = tuple(
            w * inside for w in ((1 - fz_) * (1 - fx_), (1 - fz_) * fx_, fz_ * (1 - fx_), fz_ * fx_)
        )
        carrier = torch.polar(torch.ones_like(gz), -2 * math.pi * CARRIER * gz)
        self.weight = tuple(w * carrier for w in self.bilinear)

    def _splat(self, values: torch.Tensor, weights, dtype) -> torch.Tensor:
        grid = torch.zeros(
            (values.shape[0], self.rows * self.cols), dtype=dtype, device=values.device
        )
        for index, weight in zip(self.index, weights, strict=True):
            grid.scatter_add_(1, index, values * weight)
        return grid.view(-1, self.rows, self.cols)

    def A(self, amplitude: torch.Tensor) -> torch.Tensor:
        """Amplitudes ``[B, n]`` complex -> the echo at the pixels ``[B, H, W]`` complex."""
        grid = self._splat(amplitude, self.weight, torch.complex64)
        echo = torch.fft.ifft2(torch.fft.fft2(grid) * self.spectrum)
        return echo[(slice(None), *self.pixels)]

    def AH(self, residual: torch.Tensor) -> torch.Tensor:
        """The adjoint of :meth:`A`: ``[B, H, W]`` complex -> ``[B, n]`` complex."""
        grid = torch.zeros(
            (residual.shape[0], self.rows, self.cols), dtype=torch.complex64, device=residual.device
        )
        grid[(slice(None), *self.pixels)] = residual
        spread = torch.fft.ifft2(torch.fft.fft2(grid) * self.spectrum.conj()).flatten(1)
        return sum(
            torch.gather(spread, 1, index) * weight.conj()
            for index, weight in zip(self.index, self.weight, strict=True)
        )

    def power(self, variance: torch.Tensor) -> torch.Tensor:
        """About the diagonal of ``A diag(variance) A^H``: each pixel's expected echo power
        from independent amplitudes of ``variance [B, n]``, each scatterer's power shared
        bilinearly (the envelope varies little across one cell of the grid). Real
        ``[B, H, W]``; the conjugate gradients' preconditioner."""
        grid = self._splat(variance, self.bilinear, torch.float32)
        psf_power = torch.fft.fft2(torch.fft.ifft2(self.spectrum).abs().square())
        spread = torch.fft.ifft2(torch.fft.fft2(grid) * psf_power).real
        return spread[(slice(None), *self.pixels)].clamp_min(0)


def _conjugate_gradients(apply, rhs, precondition, iterations: int) -> torch.Tensor:
    """Preconditioned conjugate gradients for a Hermitian positive ``apply``, one system
    per image of ``rhs [B, H, W]``."""
    x = torch.zeros_like(rhs)
    r = rhs.clone()
    z = precondition * r
    p = z.clone()
    rz = (r.conj() * z).real.sum((-1, -2), keepdim=True)
    for _ in range(iterations):
        ap = apply(p)
        alpha = rz / (p.conj() * ap).real.sum((-1, -2), keepdim=True).clamp_min(1e-30)
        x = x + alpha * p
        r = r - alpha * ap
        z = precondition * r
        rz_next = (r.conj() * z).real.sum((-1, -2), keepdim=True)
        p = z + (rz_next / rz.clamp_min(1e-30)) * p
        rz = rz_next
    return x


@torch.no_grad()
def retrieve_amplitudes(
    imager: BasebandImager,
    intensity: torch.Tensor,
    free: torch.Tensor,
    prior: torch.Tensor,
    variance: torch.Tensor,
    *,
    rounds: int = ROUNDS,
    floor: float = FLOOR,
    cg_iterations: int = CG_ITERATIONS,
) -> torch.Tensor:
    """Amplitudes ``[B, n]`` whose echo has the envelope ``sqrt(intensity)``.

    Args:
        imager: the scatterers' positions and the PSF.
        intensity: x0's echo intensity ``[B, H, W]`` (exp of its display level).
        free: bool ``[B, H, W]``, pixels that constrain nothing (clipped in x0).
        prior: the prior draw ``[B, n]`` complex; variance: its variance ``[B, n]``.
    """
    envelope = intensity.sqrt()
    mask = (~free).to(torch.complex64)
    var = variance.to(torch.complex64)

    def normal(v: torch.Tensor) -> torch.Tensor:
        return mask * imager.A(var * imager.AH(mask * v))

    # Per image, so a video depends on its own x0 and noise only, not on its batch.
    unit = normal(torch.ones_like(mask)).real.mean((-1, -2), keepdim=True)
    diagonal = imager.power(variance)
    diagonal = torch.where(free, diagonal.mean((-1, -2), keepdim=True), diagonal)
    amplitude = prior
    for i in range(rounds):
        lam = unit * max(0.3 * 0.8**i, floor)
        echo = imager.A(amplitude)
        target = envelope * echo / echo.abs().clamp_min(1e-12)
        v = _conjugate_gradients(
            lambda u, lam=lam: normal(u) + lam * u,
            mask * (target - imager.A(prior)),
            1.0 / (diagonal + lam),
            cg_iterations,
        )
        amplitude = prior + var * imager.AH(mask * v)
    return amplitude
