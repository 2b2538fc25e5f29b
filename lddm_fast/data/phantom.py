"""Seeded B-mode ultrasound phantom: breast scenes with benign, malignant or no lesion.

One clip is simulated as a real scanner forms it:

* sub-resolution point scatterers fill the tissue: one per cell of a lattice finer
  than the PSF (``scatterer_spacing`` PSF sigmas), uniformly jittered within the
  cell, thinned where the tissue's scatterer density is lower (fat, malignant
  lesions), with Gaussian random amplitudes scaled by the tissue's echogenicity
  (:mod:`~lddm_fast.data.phantom_anatomy`). A jittered lattice keeps the number of
  scatterers under the PSF nearly constant, so speckle is fully developed with
  fewer scatterers than a Poisson field needs;
* each frame maps the scatterers through the clip's motion
  (:mod:`~lddm_fast.data.phantom_motion`) - compression, breathing, tilt and
  translation in plane - so the speckle tracks the tissue. Out-of-plane motion
  decorrelates the speckle: a Gaussian elevation beam displaced by ``d`` beam
  sigmas sees echoes correlated by ``exp(-d^2 / 4)``; each scatterer carries two
  independent amplitudes mixed as ``a cos(e / sqrt 2) + b sin(e / sqrt 2)`` at
  elevation ``e``, whose correlation ``cos(d / sqrt 2)`` matches it within 0.01
  up to d = 0.8 and within 0.03 at the largest drift the motion draws (d = 1.1);
* RF formation and envelope detection (:mod:`~lddm_fast.data.phantom_bmode`): PSF
  convolution and Hilbert transform in one FFT product;
* depth-dependent attenuation (0.5 dB/cm/MHz at 7.5 MHz, round trip, plus the
  lesion's excess, which casts a shadow or an enhancement below it), receiver
  noise, time-gain compensation with a small per-clip error, log compression to
  8-bit.

The same ``(label, seed, config)`` gives the same bytes on the same numpy/scipy.
Pixels are ``fov_mm / size`` millimetres; PSF widths are physical (0.2 mm axial,
0.45 mm lateral std) but never below 0.7 / 0.9 pixels, so at 64 or 128 pixels the
speckle is coarser than a real 7.5 MHz probe's, as it would look once resized.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, field

import numpy as np

from lddm_fast.data.phantom_anatomy import CLASSES, Anatomy, sample_anatomy, soft_step
from lddm_fast.data.phantom_bmode import BModeImager, Pulse, log_compress
from lddm_fast.data.phantom_motion import Deformation, Motion, sample_motion

__all__ = [
    "CLASSES",
    "PhantomClip",
    "PhantomConfig",
    "simulate_clip",
    "speckle_envelope",
    "true_flow",
]

# Background attenuation: 0.5 dB/cm/MHz x 7.5 MHz x 2 (round trip) = 0.75 dB/mm.
_ATTENUATION_NP_PER_MM = 0.75 / (20 * math.log10(math.e))
_NOISE_DB = -62.0  # receiver noise relative to the 0 dB tissue echo
_CALCIFICATION_DB = 18.0
_REFERENCE_SEED = 20240917


@dataclass(frozen=True)
class PhantomConfig:
    """Image geometry and display settings shared by all clips of a dataset.

    ``size``: output frames are ``size`` x ``size`` pixels (any size >= 16; 64,
    128 and 256 are typical). ``frames``: frames per clip (x0 plus T). ``fov_mm``:
    width and depth of the field of view. ``dynamic_range_db``: log-compression
    range mapped to 0..255. ``scatterer_spacing``: lattice step of the scatterers
    in PSF standard deviations (0.45 gives an envelope SNR within 1.5 % of the
    fully developed 1.91; the cost per frame grows as its inverse square).
    ``appearance_overlap``: how much the classes' lesion appearance overlaps (0: as
    BI-RADS describes them; 1: only stiffness, i.e. motion, separates them); see
    :func:`lddm_fast.data.phantom_anatomy.sample_anatomy`.
    """

    size: int = 64
    frames: int = 17
    fov_mm: float = 40.0
    dynamic_range_db: float = 60.0
    scatterer_spacing: float = 0.45
    appearance_overlap: float = 0.0

    def __post_init__(self):
        if not 0.0 <= self.appearance_overlap <= 1.0:
            raise ValueError(f"appearance_overlap must be in [0, 1], got {self.appearance_overlap}")
        if self.size < 16:
            raise ValueError(f"size must be at least 16 pixels, got {self.size}")
        if self.frames < 1:
            raise ValueError(f"frames must be at least 1, got {self.frames}")

    @property
    def px_mm(self) -> float:
        return self.fov_mm / self.size

    @property
    def pulse(self) -> Pulse:
        return Pulse(
            axial_sigma=max(0.7, 0.2 / self.px_mm), lateral_sigma=max(0.9, 0.45 / self.px_mm)
        )


@dataclass
class PhantomClip:
    """A simulated clip.

    ``frames``: uint8 ``[T, size, size]`` B-mode frames, 0..255. ``masks``: bool
    ``[T, size, size]`` lesion masks following the motion (all False for
    ``normal``). ``envelope``: float32 ``[T, size, size]`` detected envelope before
    attenuation, TGC and compression, when asked for, else None.
    """

    label: str
    seed: int
    frames: np.ndarray
    masks: np.ndarray
    anatomy: Anatomy = field(repr=False)
    motion: Motion = field(repr=False)
    gain_db: float = 0.0
    tgc_error: float = 0.0
    envelope: np.ndarray | None = field(default=None, repr=False)

    def describe(self) -> dict:
        """JSON-ready description: class, seed, lesion and motion parameters (mm, px)."""
        lesion = self.anatomy.lesion
        out = {
            "label": self.label,
            "seed": self.seed,
            "gain_db": round(self.gain_db, 4),
            "tgc_error": round(self.tgc_error, 4),
            "motion": {k: round(float(v), 5) for k, v in asdict(self.motion).items()},
            "lesion": None,
        }
        if lesion is not None:
            px_mm = self.anatomy.px_mm
            out["lesion"] = {
                "center_mm": [round(lesion.center_x * px_mm, 3), round(lesion.center_z * px_mm, 3)],
                "width_mm": round(2 * lesion.a * px_mm, 3),
                "height_mm": round(2 * lesion.b * px_mm, 3),
                "spicules": len(lesion.spike_angle),
                "echo_db": round(lesion.echo_db, 3),
                "compliance": round(lesion.compliance, 4),
                "excess_attenuation_np_per_mm": round(lesion.attenuation / px_mm, 5),
                "calcifications": len(lesion.calcifications),
            }
        return out


def simulate_clip(
    label: str,
    seed: int,
    config: PhantomConfig = PhantomConfig(),
    *,
    return_envelope: bool = False,
    redraw_speckle: int | None = None,
) -> PhantomClip:
    """Simulate one clip of class ``label`` (``benign``, ``malignant``, ``normal``).

    ``seed`` fixes everything (anatomy, motion, scatterers, noise). Returns a
    :class:`PhantomClip` with ``config.frames`` frames of ``config.size`` pixels;
    ``return_envelope`` also keeps the detected envelope of every frame.

    ``redraw_speckle``: another draw of the same clip given its first frame. Frame 0
    keeps its bytes; the scatterers' out-of-plane component (what the elevation drift
    mixes into frames 1..) and the receiver noise of frames 1.. are drawn again from
    this seed, so the clip keeps its anatomy, motion and frame 0 and only the speckle
    that frame 0 does not determine changes.
    """
    rng = np.random.default_rng(seed)
    size = config.size
    anatomy, motion, imager, domain, deformation = _scene(rng, label, config)

    x, z = _scatterers(rng, config.pulse, config.scatterer_spacing, domain)
    density = anatomy.density(x, z)
    keep = rng.random(x.size) < density
    x, z, density = x[keep], z[keep], density[keep]
    # Dividing by sqrt(density) keeps the mean echo power at the tissue's level.
    scale = 10.0 ** (anatomy.echo_db(x, z) / 20.0) / np.sqrt(density)
    in_plane, out_of_plane = rng.standard_normal((2, x.size)) * scale
    x, z, in_plane, out_of_plane = _add_calcifications(rng, anatomy, x, z, in_plane, out_of_plane)
    points = deformation.carry(x, z)
    outline = deformation.carry(*anatomy.lesion.outline()) if anatomy.lesion else None
    redraw = None if redraw_speckle is None else np.random.default_rng(redraw_speckle)
    if redraw is not None:
        # Rotate the amplitude pairs so frame 0's elevation sees only the first of them;
        # the second, orthogonal to what frame 0 shows, gets random signs: a new field
        # with the same echo power, independent of frame 0's speckle.
        first = motion.at(0.0).elevation / math.sqrt(2.0)
        shown = in_plane * math.cos(first) + out_of_plane * math.sin(first)
        hidden = out_of_plane * math.cos(first) - in_plane * math.sin(first)
        hidden = hidden * np.where(redraw.random(hidden.size) < 0.5, -1.0, 1.0)

    gain_db = float(rng.normal(0.0, 1.5))
    tgc_error = float(rng.uniform(-0.1, 0.1))
    alpha = _ATTENUATION_NP_PER_MM * config.px_mm
    depth = np.arange(size, dtype=np.float64)[:, None]
    tgc = np.exp(alpha * (1.0 + tgc_error) * depth)
    reference = _reference_level(config)
    noise_std = reference * 10 ** (_NOISE_DB / 20) / math.sqrt(2)
    pixel_z, pixel_x = np.mgrid[0:size, 0:size].astype(np.float64)

    frames = np.empty((config.frames, size, size), np.uint8)
    masks = np.zeros((config.frames, size, size), bool)
    envelopes = np.empty((config.frames, size, size), np.float32) if return_envelope else None
    for t in range(config.frames):
        pose = motion.at(t / max(config.frames - 1, 1))
        xi, zi = deformation.forward(points, pose)
        mix = pose.elevation / math.sqrt(2.0)
        if redraw is None or t == 0:
            weight = in_plane * math.cos(mix) + out_of_plane * math.sin(mix)
        else:
            weight = shown * math.cos(mix - first) + hidden * math.sin(mix - first)
        echo = imager.crop(imager.analytic(imager.splat(zi, xi, weight)))
        if envelopes is not None:
            envelopes[t] = np.abs(echo)
        path = np.full((size, size), alpha)
        if outline is not None:
            # Only pixels near the lesion's outline in this frame can be inside it.
            box = _bounding_box(*deformation.forward(outline, pose), size)
            inside = anatomy.lesion.excess(*deformation.inverse(pixel_x[box], pixel_z[box], pose))
            masks[t][box] = inside > 0
            path[box] += anatomy.lesion.attenuation * soft_step(inside, 0.05)
        # Round-trip attenuation accumulated from the probe down to each pixel.
        attenuation = np.exp(-(np.cumsum(path, axis=0) - path))
        noise = (redraw if redraw is not None and t > 0 else rng).normal(
            0.0, noise_std, (2, size, size)
        )
        received = echo * attenuation + (noise[0] + 1j * noise[1])
        frames[t] = log_compress(
            np.abs(received) * tgc,
            reference,
            dynamic_range_db=config.dynamic_range_db,
            gain_db=gain_db,
        )
    return PhantomClip(label, seed, frames, masks, anatomy, motion, gain_db, tgc_error, envelopes)


def true_flow(label: str, seed: int, config: PhantomConfig = PhantomConfig()) -> np.ndarray:
    """The tissue motion of the clip :func:`simulate_clip` makes from the same arguments,
    as the displacement that carries each frame back to the first one.

    Returns float32 ``[frames, 2, size, size]``: pixel ``(z, x)`` of frame ``t`` shows
    the tissue that frame 0 shows at ``(z + flow[t, 1], x + flow[t, 0])`` (pixels; the
    convention of :func:`lddm_fast.models.autoencoder.warp_image`, so warping frame 0
    by ``flow[t]`` moves its tissue to where frame ``t`` has it). Frame 0's flow is
    zero. Elevation motion has no place in it: it changes the speckle, not where the
    tissue is.
    """
    _, motion, _, _, deformation = _scene(np.random.default_rng(seed), label, config)
    size = config.size
    pixel_z, pixel_x = np.mgrid[0:size, 0:size].astype(np.float64)
    first = motion.at(0.0)
    flow = np.zeros((config.frames, 2, size, size), np.float32)
    for t in range(1, config.frames):
        pose = motion.at(t / max(config.frames - 1, 1))
        tissue = deformation.carry(*deformation.inverse(pixel_x, pixel_z, pose))
        x, z = deformation.forward(tissue, first)
        flow[t, 0] = x - pixel_x
        flow[t, 1] = z - pixel_z
    return flow


def _scene(rng: np.random.Generator, label: str, config: PhantomConfig):
    # The first draws of a clip's generator: what it shows and how it moves, and the
    # imager and tissue domain both simulate_clip and true_flow map that motion with.
    anatomy = sample_anatomy(rng, label, config.size, config.px_mm, config.appearance_overlap)
    motion = sample_motion(rng, config.size)
    imager = BModeImager(config.size, config.pulse)
    domain = _tissue_domain(imager)
    deformation = Deformation(anatomy, domain, step=max(1.0, config.size / 64))
    return anatomy, motion, imager, domain, deformation


def speckle_envelope(config: PhantomConfig, seed: int) -> np.ndarray:
    """Envelope of a static homogeneous 0 dB medium through the same imaging chain.

    Returns float64 ``[size, size]``, before attenuation, TGC and compression. Its
    mean/std is the speckle SNR (1.91 for fully developed speckle).
    """
    rng = np.random.default_rng(seed)
    imager = BModeImager(config.size, config.pulse)
    x, z = _scatterers(rng, config.pulse, config.scatterer_spacing, _tissue_domain(imager))
    amplitude = rng.standard_normal(x.size)
    return np.abs(imager.crop(imager.analytic(imager.splat(z, x, amplitude))))


@functools.lru_cache(maxsize=16)
def _reference_level(config: PhantomConfig) -> float:
    # RMS envelope of 0 dB tissue: the display reference, measured once per config
    # with a fixed seed so it is reproducible.
    return float(np.sqrt(np.mean(speckle_envelope(config, _REFERENCE_SEED) ** 2)))


def _bounding_box(x, z, size: int, margin: int = 2) -> tuple[slice, slice]:
    # The outline's polygon is sampled, so pad by a couple of pixels.
    z0, z1 = int(np.floor(z.min())) - margin, int(np.ceil(z.max())) + margin + 1
    x0, x1 = int(np.floor(x.min())) - margin, int(np.ceil(x.max())) + margin + 1
    return slice(min(max(z0, 0), size), min(max(z1, 0), size)), slice(
        min(max(x0, 0), size), min(max(x1, 0), size)
    )


def _tissue_domain(imager: BModeImager) -> tuple[float, float, float]:
    # Tissue that can reach the RF grid under the largest motion sample_motion
    # draws (shift + tremor + tilt + lateral expansion ~ 0.17 size, compression and
    # breathing ~ 0.17 size from below).
    size = imager.size
    mx = 0.17 * size + imager.pad_x
    return (-mx, size + mx, size * 1.17 + imager.pad_z)


def _scatterers(rng, pulse: Pulse, spacing: float, domain):
    # One scatterer per lattice cell, uniformly placed inside it.
    x_min, x_max, z_max = domain
    step_x, step_z = spacing * pulse.lateral_sigma, spacing * pulse.axial_sigma
    nx, nz = math.ceil((x_max - x_min) / step_x), math.ceil(z_max / step_z)
    row, col = np.divmod(np.arange(nx * nz), nx)
    jitter = rng.random((2, nx * nz))
    return x_min + (col + jitter[0]) * step_x, (row + jitter[1]) * step_z


def _add_calcifications(rng, anatomy, x, z, in_plane, out_of_plane):
    if anatomy.lesion is None or not anatomy.lesion.calcifications:
        return x, z, in_plane, out_of_plane
    points = np.array(anatomy.lesion.calcifications)
    n = len(points)
    strength = 10 ** (_CALCIFICATION_DB / 20) * rng.uniform(0.7, 1.3, n) * rng.choice([-1, 1], n)
    return (
        np.concatenate((x, points[:, 0])),
        np.concatenate((z, points[:, 1])),
        np.concatenate((in_plane, strength)),
        np.concatenate((out_of_plane, np.zeros(n))),
    )
