"""Pulse-echo B-mode image formation: scatterers -> RF -> envelope -> 8-bit display.

Coordinates are output pixels: depth ``z`` down the rows (0 at the probe face),
lateral ``x`` along the columns, pixel ``(i, j)`` sampled at ``z = i``, ``x = j``.
The RF grid is finer axially (``upsample`` samples per pixel) so the carrier is
resolved, and padded on every side by three PSF widths so the circular FFT
convolution cannot wrap echoes from one edge onto the other.

The pulse-echo point spread function is separable: axially a Gaussian-modulated
cosine (carrier ``CARRIER`` cycles per RF sample, envelope std ``axial_sigma``
pixels), laterally a Gaussian (std ``lateral_sigma`` pixels). Convolution and the
Hilbert transform are one multiplication in the Fourier domain: the RF spectrum
times the Hilbert weights (1 at DC and Nyquist, 2 for positive axial frequencies, 0
for negative), which is exactly what ``scipy.signal.hilbert`` does along the axial
axis. The real part of the result is the RF image, its modulus the envelope.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.fft

#: Carrier frequency in cycles per RF sample. A real 7.5 MHz pulse cannot be
#: sampled on a 64-pixel image; the envelope statistics depend only on the
#: bandwidth, so the carrier is placed mid-band on the RF grid instead.
CARRIER = 0.25

# Smallest envelope std in RF samples that keeps the pulse band inside
# (0, Nyquist) with the carrier at 0.25: the spectrum std is 1 / (2 pi sigma).
_MIN_RF_SIGMA = 1.6


@dataclass(frozen=True)
class Pulse:
    """Pulse-echo PSF widths in output pixels (Gaussian standard deviations)."""

    axial_sigma: float
    lateral_sigma: float

    @property
    def upsample(self) -> int:
        """RF samples per output pixel along depth."""
        return max(1, math.ceil(_MIN_RF_SIGMA / self.axial_sigma))

    @property
    def padding(self) -> tuple[int, int]:
        """Output pixels of RF grid around the image (depth, lateral): three PSF widths,
        so a circular FFT convolution cannot wrap echoes from one edge onto the other."""
        return math.ceil(3 * self.axial_sigma) + 1, math.ceil(3 * self.lateral_sigma) + 1

    def spectrum(self, rows: int, cols: int) -> np.ndarray:
        """The analytic pulse-echo PSF's spectrum on an RF grid of ``rows x cols``
        (``upsample`` samples per pixel along depth): Fourier transform of the
        Gaussian-modulated carrier times the Hilbert weights, times the lateral
        Gaussian's. float64 ``[rows, cols]``."""
        fz = scipy.fft.fftfreq(rows)
        fx = scipy.fft.fftfreq(cols)
        sz = self.axial_sigma * self.upsample
        # Fourier transform of exp(-z^2 / 2 sz^2) cos(2 pi f0 z): two Gaussians at +-f0.
        axial = np.exp(-2 * (np.pi * sz) ** 2 * (fz - CARRIER) ** 2) + np.exp(
            -2 * (np.pi * sz) ** 2 * (fz + CARRIER) ** 2
        )
        lateral = np.exp(-2 * (np.pi * self.lateral_sigma) ** 2 * fx**2)
        return (axial * hilbert_weights(rows))[:, None] * lateral[None, :]


class BModeImager:
    """Forms envelope images of ``size`` x ``size`` pixels from point scatterers.

    Holds the padded RF grid geometry and the PSF spectrum, both fixed for a size
    and pulse, so a clip pays for them once.
    """

    def __init__(self, size: int, pulse: Pulse):
        self.size = size
        self.pulse = pulse
        self.upsample = pulse.upsample
        self.pad_z, self.pad_x = pulse.padding
        rows = scipy.fft.next_fast_len((size + 2 * self.pad_z) * self.upsample)
        cols = scipy.fft.next_fast_len(size + 2 * self.pad_x)
        self.shape = (rows, cols)
        self.spectrum = pulse.spectrum(rows, cols)

    def splat(self, z: np.ndarray, x: np.ndarray, amplitude: np.ndarray) -> np.ndarray:
        """Scatterers at depths ``z``, laterals ``x`` (pixels), real ``amplitude``.

        Returns the RF-grid scatter map, float64 ``[rows, cols]``; each scatterer is
        shared bilinearly between its four neighbouring grid samples, so sub-pixel
        motion changes the speckle smoothly. Scatterers off the grid are dropped.
        """
        rows, cols = self.shape
        gz = (z + self.pad_z) * self.upsample
        gx = x + self.pad_x
        keep = (gz >= 0) & (gz < rows - 1) & (gx >= 0) & (gx < cols - 1)
        gz, gx, amplitude = gz[keep], gx[keep], amplitude[keep]
        iz = gz.astype(np.intp)
        ix = gx.astype(np.intp)
        fz = gz - iz
        fx = gx - ix
        base = iz * cols + ix
        upper = amplitude * (1 - fz)
        lower = amplitude * fz
        n = rows * cols
        # One bincount per corner, shifting the output rather than the indices,
        # saves building a 4N index array.
        grid = np.bincount(base, upper * (1 - fx), minlength=n)
        grid[1:] += np.bincount(base, upper * fx, minlength=n)[:-1]
        grid[cols:] += np.bincount(base, lower * (1 - fx), minlength=n)[:-cols]
        grid[cols + 1 :] += np.bincount(base, lower * fx, minlength=n)[: -cols - 1]
        return grid.reshape(rows, cols)

    def analytic(self, scatter_map: np.ndarray) -> np.ndarray:
        """Analytic RF signal, complex128 ``[rows, cols]`` on the RF grid.

        ``real`` is the RF image (scatter map convolved with the PSF), ``abs`` the
        envelope (Hilbert transform along depth).
        """
        return scipy.fft.ifft2(scipy.fft.fft2(scatter_map) * self.spectrum)

    def crop(self, grid: np.ndarray) -> np.ndarray:
        """The output pixels ``[size, size]`` of an RF-grid array."""
        u = self.upsample
        z0 = self.pad_z * u
        return grid[z0 : z0 + self.size * u : u, self.pad_x : self.pad_x + self.size]


def hilbert_weights(n: int) -> np.ndarray:
    """FFT weights turning a real signal of length ``n`` into its analytic signal."""
    weights = np.zeros(n)
    weights[0] = 1.0
    if n % 2 == 0:
        weights[n // 2] = 1.0
        weights[1 : n // 2] = 2.0
    else:
        weights[1 : (n + 1) // 2] = 2.0
    return weights


def log_compress(
    envelope: np.ndarray, reference: float, *, dynamic_range_db: float = 60.0, gain_db: float = 0.0
) -> np.ndarray:
    """Map an envelope (float ``[H, W]``, >= 0) to 8-bit display gray levels.

    An envelope at ``reference`` (the RMS echo of 0 dB tissue) plus ``gain_db``
    lands at 62 % of full scale; ``dynamic_range_db`` spans black to white. Returns
    uint8 ``[H, W]``.
    """
    level_db = 20.0 * np.log10(np.maximum(envelope / reference, 1e-12)) + gain_db
    gray = (level_db / dynamic_range_db + 0.62) * 255.0
    return np.clip(np.rint(gray), 0, 255).astype(np.uint8)
