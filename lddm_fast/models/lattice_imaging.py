"""Pulse-echo imaging of complex point scatterers on a padded RF grid, in torch.

:class:`LatticeImager` shares each scatterer bilinearly onto the RF grid (finer along
depth, ``Pulse.upsample`` samples a pixel), convolves with the pulse-echo PSF in one FFT
product and samples the analytic echo at the pixels, as
:mod:`lddm_fast.data.phantom_bmode` forms the phantom's images. Two ways to carry the
carrier:

* ``baseband=False``: the grid holds the amplitudes and the spectrum the carrier, as the
  phantom does. Bilinear splatting of the carrier halves a lone scatterer's echo power
  half an RF sample away: harmless for independent scatterers (the free scatterer model).
* ``baseband=True``: each scatterer's carrier phase rides on its amplitude and the
  spectrum is the envelope's, so the power stays within a few per cent of the PSF's at
  any offset: what a fitted, coherent field needs to keep its power as it moves (the
  retrieved model).
"""

from __future__ import annotations

import copy
import math

import torch

from lddm_fast.data.phantom_bmode import CARRIER, Pulse

__all__ = ["LatticeImager"]


class LatticeImager:
    """Imaging of complex scatterers at fixed positions (see the module docstring).

    Args:
        pulse: the PSF (Gaussian envelope stds, pixels) and its RF grid's upsampling.
        rf: the RF grid ``(rows, cols)``; pad: image offset on it ``(pad_z, pad_x)`` in
            pixels; size: the image ``(H, W)``.
        z, x: scatterer positions ``[B, n]``, pixels (scatterers off the grid are dropped).
        baseband: the carrier on the amplitudes (True) or in the spectrum (False).
    """

    def __init__(
        self, pulse: Pulse, rf, pad, size, z: torch.Tensor, x: torch.Tensor, *, baseband: bool
    ) -> None:
        self.rows, self.cols = rf
        self.h, self.w = size
        self.up = pulse.upsample
        self.pad = pad
        self.baseband = baseband
        z0 = pad[0] * self.up
        self.pixels = (slice(z0, z0 + self.h * self.up, self.up), slice(pad[1], pad[1] + self.w))
        if baseband:
            fz = torch.fft.fftfreq(self.rows, dtype=torch.float64, device=z.device)
            fx = torch.fft.fftfreq(self.cols, dtype=torch.float64, device=z.device)
            # The analytic PSF's spectrum moved down by its carrier: the envelope's.
            axial = 2 * torch.exp(-2 * (math.pi * pulse.axial_sigma * self.up) ** 2 * fz**2)
            lateral = torch.exp(-2 * (math.pi * pulse.lateral_sigma) ** 2 * fx**2)
            spectrum = axial[:, None] * lateral[None]
        else:
            spectrum = torch.from_numpy(pulse.spectrum(self.rows, self.cols)).to(z.device)
        self.spectrum = spectrum.to(torch.complex64)
        self._place(z, x)

    def moved(self, z: torch.Tensor, x: torch.Tensor) -> LatticeImager:
        """The same imager (grid, PSF) with the scatterers at ``z, x [B, n]``."""
        out = copy.copy(self)
        out._place(z, x)
        return out

    def _place(self, z: torch.Tensor, x: torch.Tensor) -> None:
        pad = self.pad
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
        self.weight = self.bilinear
        if self.baseband:
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
