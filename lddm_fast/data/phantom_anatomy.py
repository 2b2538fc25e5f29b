"""Breast anatomy for the phantom: tissue layers, a lesion, echogenicity, stiffness.

All lengths are output pixels in tissue (rest) coordinates: ``z`` depth below the
skin at the probe face, ``x`` lateral. Layers from the top: skin (bright), subcutaneous
fat (dark, crossed by bright Cooper's ligaments), fibroglandular tissue (the 0 dB
reference, with a smooth heterogeneous texture), retromammary fat and pectoral
muscle (striated). Echogenicity is the scatterer amplitude in dB relative to the
glandular tissue; compliance is strain per unit stress relative to it.

Lesion classes, as the BI-RADS descriptors have them:

``benign``
    oval, circumscribed (smooth margin, gently lobulated), wider than tall, mildly
    hypoechoic and homogeneous, often a thin echogenic capsule, soft (compliance
    2.2-3.5: it flattens under probe pressure), lower attenuation than the
    surroundings (mild posterior enhancement).
``malignant``
    irregular, spiculated margin, taller than wide, markedly hypoechoic and
    heterogeneous, an echogenic halo in some, microcalcifications, stiff
    (compliance 0.15-0.35: it barely deforms), strongly attenuating (posterior
    acoustic shadowing).
``normal``
    no lesion.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from lddm_fast.data.labels import CLASSES

# Echogenicity in dB relative to glandular tissue.
_SKIN_DB, _FAT_DB, _MUSCLE_DB, _LIGAMENT_DB = 6.0, -9.0, -8.0, 8.0
# Per layer (skin, fat, gland, retromammary fat, muscle): mean echo and texture std, dB.
_LAYER_DB = np.array([_SKIN_DB, _FAT_DB, 0.0, _FAT_DB, _MUSCLE_DB])
_LAYER_TEXTURE_DB = np.array([0.0, 2.5, 3.5, 2.5, 0.0])
# Compliance relative to glandular tissue (fat is softer, skin and muscle stiffer).
_SKIN_C, _FAT_C, _MUSCLE_C = 0.5, 1.6, 0.7
_LAYER_COMPLIANCE = np.array([_SKIN_C, _FAT_C, 1.0, _FAT_C, _MUSCLE_C])
# Scatterer number density relative to glandular tissue: sparse scatterers in fat
# give its coarser, partially developed speckle.
_LAYER_DENSITY = np.array([1.0, 0.35, 1.0, 0.35, 0.8])
# Smooth random texture: correlation length and grid spacing in mm.
_TEXTURE_MM, _TEXTURE_GRID_MM = 1.2, 0.4


@dataclass(frozen=True, eq=False)
class Lesion:
    """A lesion in tissue coordinates (pixels) and its acoustic/elastic properties.

    The margin is ``rho = r(theta)`` in the lesion's normalized polar frame
    (semi-axes ``a`` lateral, ``b`` axial, tilted by ``angle`` radians):
    ``r = 1 + sum(harmonics) + sum(spicules)``.
    """

    center_x: float
    center_z: float
    a: float
    b: float
    angle: float
    harmonic_amp: tuple[float, ...]  # for k = 2, 3, ...
    harmonic_phase: tuple[float, ...]
    spike_angle: tuple[float, ...]
    spike_length: tuple[float, ...]
    spike_width: tuple[float, ...]
    echo_db: float
    texture_db: float  # std of the internal heterogeneity
    density: float  # scatterer number density relative to glandular tissue
    rim_db: float  # capsule (benign) or halo (malignant) brightness, 0 if none
    rim_width: float  # in normalized radius
    compliance: float
    attenuation: float  # excess round-trip attenuation, nepers per pixel
    calcifications: tuple[tuple[float, float], ...]  # (x, z) of bright points

    def polar(self, x: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Normalized radius and angle of points ``(x, z)`` in the lesion frame."""
        dx, dz = x - self.center_x, z - self.center_z
        c, s = np.cos(self.angle), np.sin(self.angle)
        u = (c * dx + s * dz) / self.a
        v = (-s * dx + c * dz) / self.b
        return np.hypot(u, v), np.arctan2(v, u)

    def margin(self, theta: np.ndarray) -> np.ndarray:
        """Boundary radius ``r(theta)`` (1 for a plain ellipse)."""
        table_theta, table_r = self._margin_table
        return np.interp(theta, table_theta, table_r)

    @functools.cached_property
    def _margin_table(self) -> tuple[np.ndarray, np.ndarray]:
        # r(theta) tabulated once: evaluating the spicule sum per point and frame
        # dominated the clip's run time. 2048 steps resolve the narrowest spicule
        # (0.07 rad) with 22 samples.
        # Both ends (-pi and pi, the range of arctan2) are tabulated, so np.interp
        # needs no periodic mode (which sorts the table on every call).
        theta = np.linspace(-np.pi, np.pi, 2049)
        r = np.ones_like(theta)
        for k, (amp, phase) in enumerate(
            zip(self.harmonic_amp, self.harmonic_phase, strict=True), start=2
        ):
            r += amp * np.cos(k * theta + phase)
        for angle, length, width in zip(
            self.spike_angle, self.spike_length, self.spike_width, strict=True
        ):
            gap = (theta - angle + np.pi) % (2 * np.pi) - np.pi
            r += length * np.exp(-0.5 * (gap / width) ** 2)
        return theta, r

    def outline(self, count: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """``count`` points ``(x, z)`` on the outer edge of the lesion and its rim."""
        theta = np.linspace(-np.pi, np.pi, count, endpoint=False)
        r = self.margin(theta) + self.rim_width
        u, v = r * np.cos(theta) * self.a, r * np.sin(theta) * self.b
        c, s = np.cos(self.angle), np.sin(self.angle)
        return self.center_x + c * u - s * v, self.center_z + s * u + c * v

    def excess(self, x: np.ndarray, z: np.ndarray) -> np.ndarray:
        """``r(theta) - rho`` at points ``(x, z)``: positive inside the lesion."""
        rho, theta = self.polar(x, z)
        return self.margin(theta) - rho

    def inside(self, x: np.ndarray, z: np.ndarray, softness: float = 0.0) -> np.ndarray:
        """Membership of points in the lesion, in [0, 1].

        ``softness`` 0 gives a hard 0/1 mask; otherwise a logistic ramp whose width
        is ``softness`` in normalized radius (used for smooth stiffness and
        attenuation maps).
        """
        return soft_step(self.excess(x, z), softness)


def soft_step(excess: np.ndarray, softness: float) -> np.ndarray:
    """0/1 step of ``excess > 0`` (``softness`` 0) or a logistic ramp of that width."""
    if softness == 0.0:
        return (excess > 0).astype(np.float64)
    return 0.5 * (1.0 + np.tanh(excess / (2.0 * softness)))


@dataclass(frozen=True, eq=False)
class Anatomy:
    """One breast scene: layer depths (functions of ``x``), texture, ligaments, lesion."""

    size: int
    px_mm: float
    layers: tuple[tuple[float, tuple[float, ...], tuple[float, ...], tuple[float, ...]], ...]
    ligaments: np.ndarray  # [L, 5]: x0, z0, direction x, direction z, length
    ligament_half_width: float
    texture: np.ndarray  # smooth N(0, 1) field on a coarse grid
    texture_origin: tuple[float, float]  # (x, z) of texture[0, 0], pixels
    texture_step: float  # pixels between texture samples
    muscle_period: float
    muscle_angle: float
    lesion: Lesion | None

    def boundary(self, index: int, x: np.ndarray) -> np.ndarray:
        """Depth of the bottom of layer ``index`` (skin 0, fat 1, gland 2, retro-fat 3)."""
        base, amp, wavelength, phase = self.layers[index]
        z = np.full_like(x, base, dtype=np.float64)
        for a, w, p in zip(amp, wavelength, phase, strict=True):
            z += a * np.sin(2 * np.pi * x / w + p)
        return z

    def texture_at(self, x: np.ndarray, z: np.ndarray, offset: int = 0) -> np.ndarray:
        """Smooth N(0, 1) texture at ``(x, z)``; ``offset`` picks an independent copy."""
        field = self.texture[offset]
        coords = np.stack(
            (
                (z - self.texture_origin[1]) / self.texture_step,
                (x - self.texture_origin[0]) / self.texture_step,
            )
        )
        return ndimage.map_coordinates(field, coords, order=1, mode="nearest")

    def layer_index(self, x: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Layer of each point: 0 skin, 1 fat, 2 gland, 3 retromammary fat, 4 muscle."""
        table_x, table_z = self._boundary_table
        index = np.zeros(x.shape, np.int8)
        for depth in table_z:
            index += z > np.interp(x, table_x, depth)
        return index

    @functools.cached_property
    def _boundary_table(self) -> tuple[np.ndarray, np.ndarray]:
        # Boundaries undulate over >= 10 mm, so half-pixel samples interpolate them
        # exactly enough and cost less than the sines per scatterer.
        x = np.arange(-0.5 * self.size, 1.5 * self.size, 0.5)
        return x, np.stack([self.boundary(k, x) for k in range(4)])

    def echo_db(self, x: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Echogenicity (dB) of scatterers at ``(x, z)``."""
        layer = self.layer_index(x, z)
        db = _LAYER_DB[layer] + _LAYER_TEXTURE_DB[layer] * self.texture_at(x, z)
        db = np.where(layer == 4, db + 14.0 * self._striation(x, z), db)
        db = np.where(self._on_ligament(x, z) & (layer >= 1) & (layer <= 2), _LIGAMENT_DB, db)
        if self.lesion is not None:
            db = self._lesion_echo(x, z, db)
        return db

    def density(self, x: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Scatterer number density at ``(x, z)`` relative to glandular tissue, in (0, 1]."""
        d = _LAYER_DENSITY[self.layer_index(x, z)]
        if self.lesion is not None:
            d = np.where(self.lesion.inside(x, z) > 0, self.lesion.density, d)
        return d

    def compliance(self, x: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Compliance (relative strain per stress) at ``(x, z)``."""
        layer = self.layer_index(x, z)
        c = _LAYER_COMPLIANCE[layer]
        if self.lesion is not None:
            w = self.lesion.inside(x, z, softness=0.08)
            c = (1 - w) * c + w * self.lesion.compliance
        return c

    def _striation(self, x, z):
        # Thin bright fascia lines (in [0, 1]) across the hypoechoic muscle.
        along = -np.sin(self.muscle_angle) * x + np.cos(self.muscle_angle) * z
        return np.maximum(np.cos(2 * np.pi * along / self.muscle_period), 0.0) ** 6

    def _on_ligament(self, x, z):
        hit = np.zeros(x.shape, bool)
        for x0, z0, dx, dz, length in self.ligaments:
            t = np.clip((x - x0) * dx + (z - z0) * dz, 0.0, length)
            hit |= np.hypot(x - x0 - t * dx, z - z0 - t * dz) < self.ligament_half_width
        return hit

    def _lesion_echo(self, x, z, db):
        lesion = self.lesion
        rho, theta = lesion.polar(x, z)
        r = lesion.margin(theta)
        inside = rho < r
        internal = lesion.echo_db + lesion.texture_db * self.texture_at(x, z, offset=1)
        db = np.where(inside, internal, db)
        if lesion.rim_db:
            rim = (rho >= r) & (rho < r + lesion.rim_width)
            db = np.where(rim, np.maximum(db, lesion.rim_db), db)
        return db


def sample_anatomy(
    rng: np.random.Generator, label: str, size: int, px_mm: float, appearance_overlap: float = 0.0
) -> Anatomy:
    """Draw a scene of class ``label`` (see :data:`CLASSES`) for a ``size`` px image.

    ``appearance_overlap`` in [0, 1]: the chance that a lesion looks like a lesion
    of the other class is half of it (shape, echo, margin, halo, calcifications,
    shadowing); its stiffness always follows ``label``. 0 gives the classes as the
    module docstring has them; 1 makes appearance independent of the class, so only
    the way a lesion deforms under the probe tells the classes apart.
    """
    if label not in CLASSES:
        raise ValueError(f"unknown class {label!r}; expected one of {CLASSES}")
    mm = 1.0 / px_mm  # pixels per mm
    skin = rng.uniform(1.2, 2.2)
    fat = skin + rng.uniform(3.0, 8.0)
    gland = fat + rng.uniform(10.0, 18.0)
    retro = gland + rng.uniform(1.5, 4.0)
    layers = tuple(
        (
            depth * mm,
            tuple(rng.uniform(0.0, 0.2 + 0.1 * k, 2) * mm),
            tuple(rng.uniform(10.0, 40.0, 2) * mm),
            tuple(rng.uniform(0, 2 * np.pi, 2)),
        )
        for k, depth in enumerate((skin, fat, gland, retro))
    )
    # Texture covers the tissue domain with margin for motion (see phantom_motion).
    step = _TEXTURE_GRID_MM * mm
    extent = 1.6 * size
    n = int(np.ceil(extent / step)) + 1
    sigma = _TEXTURE_MM / _TEXTURE_GRID_MM
    noise = rng.standard_normal((2, n, n))
    texture = np.stack([ndimage.gaussian_filter(plane, sigma) for plane in noise])
    texture /= texture.std(axis=(1, 2), keepdims=True)
    ligaments = _sample_ligaments(rng, size, fat * mm, mm)
    lesion = None
    if label != "normal":
        lesion = _sample_lesion(rng, label, size, (fat * mm, gland * mm), mm, appearance_overlap)
    return Anatomy(
        size=size,
        px_mm=px_mm,
        layers=layers,
        ligaments=ligaments,
        ligament_half_width=max(0.15 * mm, 0.35),
        texture=texture,
        texture_origin=(-0.3 * size, -0.3 * size),
        texture_step=step,
        muscle_period=max(2.5 * mm, 4.0),
        muscle_angle=rng.uniform(-0.25, 0.25),
        lesion=lesion,
    )


def _sample_ligaments(rng, size, fat_bottom, mm) -> np.ndarray:
    count = rng.integers(2, 5)
    rows = []
    for _ in range(count):
        angle = rng.choice([-1, 1]) * rng.uniform(0.4, 1.1)
        length = rng.uniform(4.0, 10.0) * mm
        x0 = rng.uniform(0.0, size)
        # Start inside the fat and run down into the gland, as Cooper's ligaments do.
        z0 = rng.uniform(0.3, 0.8) * fat_bottom
        rows.append((x0, z0, np.cos(angle), abs(np.sin(angle)), length))
    return np.array(rows)


_COMPLIANCE = {"benign": (2.2, 3.5), "malignant": (0.15, 0.35)}


def _sample_lesion(rng, label, size, gland_span, mm, appearance_overlap=0.0) -> Lesion:
    if not 0.0 <= appearance_overlap <= 1.0:
        raise ValueError(f"appearance_overlap must be in [0, 1], got {appearance_overlap}")
    top, bottom = gland_span
    looks = label
    # Drawn only when asked for, so appearance_overlap=0 keeps every earlier dataset.
    if appearance_overlap > 0 and rng.random() < appearance_overlap / 2:
        looks = "malignant" if label == "benign" else "benign"
    if looks == "benign":
        width = rng.uniform(8.0, 14.0) * mm
        aspect = rng.uniform(1.4, 2.0)  # wider than tall
        angle = rng.uniform(-0.26, 0.26)
        harmonics = rng.uniform(0.0, 0.04, 3)
        spikes = 0
        echo, texture, density = rng.uniform(-18.0, -13.0), 1.0, 1.0
        rim_db, rim_width = (6.0, 0.07) if rng.random() < 0.7 else (0.0, 0.0)
        compliance = rng.uniform(*_COMPLIANCE["benign"])
        attenuation = rng.uniform(-0.03, -0.01) / mm
        n_calc = 0
    else:
        width = rng.uniform(6.0, 11.0) * mm
        aspect = rng.uniform(0.6, 0.85)  # taller than wide
        angle = rng.uniform(-0.35, 0.35)
        harmonics = rng.uniform(0.04, 0.11, 6) / np.sqrt(np.arange(2, 8))
        spikes = int(rng.integers(5, 11))
        echo, texture, density = rng.uniform(-28.0, -21.0), 5.0, rng.uniform(0.4, 0.7)
        rim_db, rim_width = (4.0, 0.25) if rng.random() < 0.6 else (0.0, 0.0)
        compliance = rng.uniform(*_COMPLIANCE["malignant"])
        attenuation = rng.uniform(0.07, 0.14) / mm
        n_calc = int(rng.poisson(3.0))
    if looks != label:
        compliance = rng.uniform(*_COMPLIANCE[label])
    a = width / 2
    b = a / aspect
    center_z = top + b + rng.uniform(0.15, 0.85) * max(bottom - top - 2 * b, 0.0)
    center_x = rng.uniform(0.3, 0.7) * size
    calc = []
    for _ in range(n_calc):
        rr, tt = 0.7 * np.sqrt(rng.random()), rng.uniform(0, 2 * np.pi)
        u, v = rr * np.cos(tt) * a, rr * np.sin(tt) * b
        calc.append(
            (
                center_x + np.cos(angle) * u - np.sin(angle) * v,
                center_z + np.sin(angle) * u + np.cos(angle) * v,
            )
        )
    return Lesion(
        center_x=center_x,
        center_z=center_z,
        a=a,
        b=b,
        angle=angle,
        harmonic_amp=tuple(harmonics),
        harmonic_phase=tuple(rng.uniform(0, 2 * np.pi, len(harmonics))),
        spike_angle=tuple(rng.uniform(0, 2 * np.pi, spikes)),
        spike_length=tuple(rng.uniform(0.3, 0.9, spikes)),
        spike_width=tuple(rng.uniform(0.07, 0.14, spikes)),
        echo_db=echo,
        texture_db=texture,
        density=density,
        rim_db=rim_db,
        rim_width=rim_width,
        compliance=compliance,
        attenuation=attenuation,
        calcifications=tuple(calc),
    )
