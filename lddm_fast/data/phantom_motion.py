"""Phantom dynamics: probe compression, translation, tilt, breathing, elevation drift.

Tissue points (scatterers) live in rest coordinates and are mapped to the image of
each frame, so the speckle they form moves and deforms with the tissue:

1. compression: the probe presses by a background strain ``strain(t)``; each
   column is a chain of springs between the probe and the chest wall, so the local
   axial strain is proportional to the compliance, normalized per column (a soft
   lesion takes more of the strain, a stiff one less). Lateral expansion follows
   from near-incompressibility (``POISSON`` times the axial strain, integrated from
   the probe centre);
2. breathing: the chest wall moves, dragging deep tissue more than shallow;
3. tilt: a small in-plane rotation about the probe's contact point that fades to
   zero at the skin (the skin stays on the probe face);
4. translation: the probe slides laterally.

Elevation (out-of-plane) motion is the beam's drift across the tissue in beam
sigmas; :mod:`lddm_fast.data.phantom` turns it into speckle decorrelation.

Times are fractions of the clip, so every clip shows one to one and a half
compression cycles whatever its frame count or frame rate: the dynamics carry
part of the class signal and must be visible in every clip.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from lddm_fast.data.phantom_anatomy import Anatomy

#: Lateral strain per unit axial strain (0.5 would be fully incompressible in plane
#: strain; slip at the probe face lowers it).
POISSON = 0.45


@dataclass(frozen=True)
class Pose:
    """Probe and tissue state at one instant (pixels, radians, elevation in beam sigmas)."""

    strain: float
    shift: float
    tilt: float
    breath_x: float  # displacement at the bottom of the tissue
    breath_z: float
    elevation: float


@dataclass(frozen=True)
class Motion:
    """Motion over a clip; ``at(tau)`` with tau in [0, 1] from first to last frame."""

    strain: float  # peak background strain of the compression cycles
    compression_cycles: float
    compression_phase: float
    shift: float  # lateral probe travel over the clip, pixels
    jitter: float  # hand tremor amplitude, pixels
    jitter_cycles: float
    jitter_phase: float
    tilt: float  # peak in-plane rotation, radians
    tilt_cycles: float
    tilt_phase: float
    breath_x: float  # breathing displacement at the bottom of the tissue, pixels
    breath_z: float
    breath_cycles: float
    breath_phase: float
    elevation_drift: float  # out-of-plane travel over the clip, beam sigmas
    elevation_wobble: float

    def at(self, tau: float) -> Pose:
        two_pi = 2 * np.pi
        press = 0.5 * (1 - np.cos(two_pi * self.compression_cycles * tau + self.compression_phase))
        tremor = np.sin(two_pi * self.jitter_cycles * tau + self.jitter_phase)
        breath = np.sin(two_pi * self.breath_cycles * tau + self.breath_phase)
        return Pose(
            strain=float(self.strain * press),
            shift=float(self.shift * tau + self.jitter * tremor),
            tilt=float(self.tilt * np.sin(two_pi * self.tilt_cycles * tau + self.tilt_phase)),
            breath_x=float(self.breath_x * breath),
            breath_z=float(self.breath_z * breath),
            elevation=float(
                self.elevation_drift * (tau - 0.5) + self.elevation_wobble * np.sin(two_pi * tau)
            ),
        )


def sample_motion(rng: np.random.Generator, size: int) -> Motion:
    """Draw the motion of one clip for a ``size`` px image (the same for every class)."""
    return Motion(
        strain=rng.uniform(0.04, 0.10),
        compression_cycles=rng.uniform(0.75, 1.5),
        compression_phase=rng.uniform(-0.5, 0.5),
        shift=rng.uniform(-0.08, 0.08) * size,
        jitter=rng.uniform(0.0, 0.008) * size,
        jitter_cycles=rng.uniform(1.0, 3.0),
        jitter_phase=rng.uniform(0, 2 * np.pi),
        tilt=np.deg2rad(rng.uniform(0.0, 2.0)) * rng.choice([-1, 1]),
        tilt_cycles=rng.uniform(0.3, 1.0),
        tilt_phase=rng.uniform(0, 2 * np.pi),
        breath_x=rng.uniform(-0.008, 0.008) * size,
        breath_z=rng.uniform(0.005, 0.02) * size,
        breath_cycles=rng.uniform(0.2, 0.5),
        breath_phase=rng.uniform(0, 2 * np.pi),
        elevation_drift=rng.uniform(-0.8, 0.8),
        elevation_wobble=rng.uniform(0.0, 0.15),
    )


@dataclass(frozen=True)
class TissuePoints:
    """Tissue points with their unit displacements and depth weights (float32 ``[N]``)."""

    x: np.ndarray
    z: np.ndarray
    ux: np.ndarray
    uz: np.ndarray
    depth_share: np.ndarray  # z / z_max, the share of breathing motion
    tilt_share: np.ndarray  # share of the tilt, 0 at the skin


class Deformation:
    """Tissue -> image mapping of one clip (anatomy fixed, pose per frame).

    ``domain`` is ``(x_min, x_max, z_max)`` of the tissue that can enter the image
    (pixels; tissue starts at the skin, ``z = 0``). The displacement per unit
    background strain is computed once on a grid of ``step`` pixels.
    """

    def __init__(self, anatomy: Anatomy, domain: tuple[float, float, float], step: float):
        self.size = anatomy.size
        self.x_min, x_max, self.z_max = domain
        self.step = step
        xs = np.arange(self.x_min, x_max + step, step)
        zs = np.arange(0.0, self.z_max + step, step)
        gz, gx = np.meshgrid(zs, xs, indexing="ij")
        compliance = anatomy.compliance(gx, gz)
        strain = compliance / compliance.mean(axis=0, keepdims=True)
        # Trapezoidal integrals from the probe face (axial) and the probe centre
        # (lateral), so the skin and the centre line stay put.
        axial = np.cumsum(strain, axis=0) - 0.5 * strain - 0.5 * strain[:1]
        lateral = np.cumsum(strain, axis=1) - 0.5 * strain
        centre = int(round((self.size / 2 - self.x_min) / step))
        self.unit_z = -step * axial
        self.unit_x = POISSON * step * (lateral - lateral[:, centre : centre + 1])

    def unit_displacement(self, x: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Displacement (x, z) of tissue points per unit background strain, pixels."""
        coords = np.stack((z / self.step, (x - self.x_min) / self.step))
        ux = ndimage.map_coordinates(self.unit_x, coords, order=1, mode="nearest")
        uz = ndimage.map_coordinates(self.unit_z, coords, order=1, mode="nearest")
        return ux, uz

    def carry(self, x: np.ndarray, z: np.ndarray) -> TissuePoints:
        """Precompute what :meth:`forward` needs per tissue point (float32, once per clip)."""
        ux, uz = self.unit_displacement(x, z)
        f32 = np.float32
        return TissuePoints(
            x=x.astype(f32),
            z=z.astype(f32),
            ux=ux.astype(f32),
            uz=uz.astype(f32),
            depth_share=(z / self.z_max).astype(f32),
            tilt_share=self._tilt_share(z).astype(f32),
        )

    def forward(self, points: TissuePoints, pose: Pose) -> tuple[np.ndarray, np.ndarray]:
        """Image positions ``(x, z)`` of tissue points in pose ``pose`` (float32 arrays)."""
        p = points
        dx = p.x + (pose.strain * p.ux + pose.breath_x * p.depth_share)
        dz = p.z + (pose.strain * p.uz + pose.breath_z * p.depth_share)
        angle = pose.tilt * p.tilt_share
        cos, sin = np.cos(angle), np.sin(angle)
        rx = dx - self.size / 2
        return (self.size / 2 - pose.shift) + (rx * cos - dz * sin), rx * sin + dz * cos

    def inverse(self, xi, zi, pose: Pose, iterations: int = 2) -> tuple[np.ndarray, np.ndarray]:
        """Tissue position of image points ``(xi, zi)``: the inverse of :meth:`forward`.

        The rotation is undone with the tilt share at the image depth instead of
        the tissue depth, and the elastic part by fixed-point iteration; both errors
        are second order in the (small) strain and tilt, far below a pixel.
        """
        angle = pose.tilt * self._tilt_share(zi)
        rx = xi + pose.shift - self.size / 2
        cos, sin = np.cos(angle), np.sin(angle)
        dx = self.size / 2 + rx * cos + zi * sin
        dz = -rx * sin + zi * cos
        x, z = dx, dz
        for _ in range(iterations):
            ux, uz = self.unit_displacement(x, z)
            share = z / self.z_max
            x = dx - pose.strain * ux - pose.breath_x * share
            z = dz - pose.strain * uz - pose.breath_z * share
        return x, z

    def _tilt_share(self, z):
        # Smoothstep in tissue depth from the skin (0) to a quarter of the image (1).
        t = np.clip(z / (0.25 * self.size), 0.0, 1.0)
        return t * t * (3 - 2 * t)
