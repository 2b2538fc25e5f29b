"""Phantom: determinism, speckle statistics, imaging chain, class statistics, motion.

Class statistics are measured on generated clips the way one would measure a real
scan: gray levels in regions, lesion shape from the masks, tissue displacement by
block matching of the speckle between frames.
"""

import numpy as np
import pytest
import scipy.signal
from numpy.lib.stride_tricks import sliding_window_view
from scipy import ndimage

from lddm_fast.data.phantom import PhantomConfig, simulate_clip, speckle_envelope, true_flow
from lddm_fast.data.phantom_bmode import CARRIER, BModeImager, Pulse

RAYLEIGH_SNR = np.sqrt(np.pi / (4 - np.pi))  # 1.913
CONFIG = PhantomConfig(size=64, frames=17)
SEEDS = range(8)


@pytest.fixture(scope="module")
def clips():
    return {
        label: [simulate_clip(label, seed, CONFIG) for seed in SEEDS]
        for label in ("benign", "malignant")
    }


def test_same_seed_gives_identical_clips_and_other_seeds_differ():
    a = simulate_clip("malignant", 7, CONFIG)
    b = simulate_clip("malignant", 7, CONFIG)
    assert a.frames.tobytes() == b.frames.tobytes()
    assert a.masks.tobytes() == b.masks.tobytes()
    assert a.describe() == b.describe()
    c = simulate_clip("malignant", 8, CONFIG)
    assert np.abs(a.frames.astype(int) - c.frames).mean() > 10


@pytest.mark.parametrize("size", [64, 128, 256])
def test_any_size_gives_frames_and_masks_of_that_size(size):
    clip = simulate_clip("benign", 1, PhantomConfig(size=size, frames=2))
    assert clip.frames.shape == (2, size, size) and clip.frames.dtype == np.uint8
    assert clip.masks.shape == (2, size, size) and clip.masks.dtype == bool
    # The lesion covers a similar share of the image at every size (4-12 mm in 40 mm).
    assert 0.005 < clip.masks[0].mean() < 0.1
    assert 40 < clip.frames.mean() < 200


def test_normal_clips_have_no_lesion_and_unknown_classes_are_refused():
    clip = simulate_clip("normal", 3, CONFIG)
    assert not clip.masks.any() and clip.describe()["lesion"] is None
    with pytest.raises(ValueError, match="unknown class 'cyst'"):
        simulate_clip("cyst", 0, CONFIG)


def test_envelope_of_homogeneous_tissue_has_rayleigh_speckle():
    config = PhantomConfig(size=128)
    envelopes = [speckle_envelope(config, seed) for seed in range(4)]
    snr = np.mean([e.mean() / e.std() for e in envelopes])
    assert abs(snr - RAYLEIGH_SNR) < 0.04, snr
    # Intensity (envelope squared) of fully developed speckle is exponential: std = mean.
    contrast = np.mean([(e**2).std() / (e**2).mean() for e in envelopes])
    assert abs(contrast - 1.0) < 0.06, contrast


def test_envelope_is_the_hilbert_transform_of_the_rf():
    imager = BModeImager(48, Pulse(axial_sigma=0.8, lateral_sigma=1.2))
    rng = np.random.default_rng(0)
    z, x = rng.uniform(0, 48, (2, 3000))
    analytic = imager.analytic(imager.splat(z, x, rng.standard_normal(3000)))
    rf = analytic.real
    np.testing.assert_allclose(
        np.abs(analytic), np.abs(scipy.signal.hilbert(rf, axis=0)), atol=1e-9
    )
    assert np.abs(analytic.imag).max() > 0.1 * np.abs(rf).max()


def test_point_spread_function_is_a_gaussian_pulse_on_a_carrier():
    pulse = Pulse(axial_sigma=1.0, lateral_sigma=2.0)
    imager = BModeImager(64, pulse)
    centre = 32.0
    analytic = imager.analytic(imager.splat(np.array([centre]), np.array([centre]), np.ones(1)))
    column = analytic[:, imager.pad_x + 32]
    # Carrier: the analytic signal's phase turns CARRIER cycles per RF sample.
    peak = int(np.argmax(np.abs(column)))
    phase = np.unwrap(np.angle(column[peak - 3 : peak + 4]))
    cycles_per_sample = np.polyfit(np.arange(7), phase, 1)[0] / (2 * np.pi)
    assert cycles_per_sample == pytest.approx(CARRIER, rel=0.03)
    assert np.count_nonzero(np.diff(np.sign(column.real[peak - 4 : peak + 4]))) >= 3

    # Envelope widths (std of |h|^2 / 2 as a distribution) match the pulse, in pixels.
    def sigma(profile, step):
        weights = np.abs(profile) ** 2
        coords = np.arange(len(profile)) * step
        mean = (weights * coords).sum() / weights.sum()
        return np.sqrt(2 * (weights * (coords - mean) ** 2).sum() / weights.sum())

    assert sigma(column, 1 / imager.upsample) == pytest.approx(pulse.axial_sigma, rel=0.05)
    assert sigma(analytic[peak], 1.0) == pytest.approx(pulse.lateral_sigma, rel=0.05)


def _echogenicity_and_shadow(frame, mask):
    gray = frame.astype(float)
    inner = ndimage.binary_erosion(mask)
    ring = ndimage.binary_dilation(mask, iterations=4) & ~ndimage.binary_dilation(mask)
    echogenicity = gray[inner].mean() - gray[ring].mean()
    rows, cols = np.nonzero(mask)
    c0, c1 = np.percentile(cols, [25, 75]).astype(int)
    r0 = rows.max() + 2
    r1 = min(frame.shape[0], r0 + max(8, rows.max() - rows.min()))
    beside = np.ones(frame.shape[1], bool)
    half = (cols.max() - cols.min()) // 2
    beside[max(0, cols.min() - half) : cols.max() + half + 1] = False
    shadow = gray[r0:r1, c0 : c1 + 1].mean() - gray[r0:r1][:, beside].mean()
    return echogenicity, shadow


def test_malignant_lesions_are_darker_and_cast_shadows(clips):
    stats = {
        label: np.array([_echogenicity_and_shadow(c.frames[0], c.masks[0]) for c in group])
        for label, group in clips.items()
    }
    benign, malignant = stats["benign"], stats["malignant"]
    # Gray levels (60 dB over 255: 4.25 levels per dB). Both hypoechoic...
    assert (benign[:, 0] < -20).all() and (malignant[:, 0] < -20).all()
    # ... malignant markedly more so.
    assert malignant[:, 0].mean() < benign[:, 0].mean() - 10
    # Posterior acoustic shadowing below malignant lesions, none below benign ones.
    assert (malignant[:, 1] < -20).all()
    assert benign[:, 1].mean() > -5
    assert malignant[:, 1].max() < benign[:, 1].min()


def _axial_spread(mask):
    return np.nonzero(mask)[0].std()


def test_benign_lesions_deform_under_compression_and_malignant_barely(clips):
    amplitude = {}
    for label, group in clips.items():
        spreads = [np.array([_axial_spread(m) for m in c.masks]) for c in group]
        amplitude[label] = np.array([(s.max() - s.min()) / s.max() for s in spreads])
    assert amplitude["benign"].mean() > 0.12
    assert amplitude["malignant"].mean() < 0.08
    assert amplitude["benign"].mean() > 2 * amplitude["malignant"].mean()


def _match(ref, cur, rows, cols, search):
    # Normalized cross-correlation block matching; returns (dz, dx, ncc) with a
    # parabolic sub-pixel refinement along depth.
    sz, sx = search
    block = ref[rows, cols].astype(float)
    block -= block.mean()
    region = cur[rows.start - sz : rows.stop + sz, cols.start - sx : cols.stop + sx].astype(float)
    windows = sliding_window_view(region, block.shape)
    windows = windows - windows.mean(axis=(2, 3), keepdims=True)
    norm = np.linalg.norm(windows, axis=(2, 3)) * np.linalg.norm(block) + 1e-9
    ncc = (windows * block).sum(axis=(2, 3)) / norm
    i, j = np.unravel_index(np.argmax(ncc), ncc.shape)
    dz = float(i - sz)
    if 0 < i < ncc.shape[0] - 1:
        a, b, c = ncc[i - 1, j], ncc[i, j], ncc[i + 1, j]
        if a - 2 * b + c < 0:
            dz += 0.5 * (a - c) / (a - 2 * b + c)
    return dz, j - sx, ncc[i, j]


def _tracked_lesion_strain(clip, window=6):
    frames, mask = clip.frames, clip.masks[0]
    rows, cols = np.nonzero(mask)
    top, bottom = rows.min(), rows.max()
    c0, c1 = np.percentile(cols, [20, 80]).astype(int)
    cols = slice(max(c0, 8), min(max(c1, c0 + 6) + 1, 56))
    above = slice(max(top - window - 1, 5), max(top - 1, 5 + 3))
    below = slice(bottom + 2, min(bottom + 2 + window, 59))
    strains = []
    for t in range(1, len(frames)):
        dz_above = _match(frames[0], frames[t], above, cols, (4, 7))[0]
        dz_below = _match(frames[0], frames[t], below, cols, (4, 7))[0]
        strains.append((dz_below - dz_above) / (below.start - above.stop + 1))
    return np.abs(strains).max()


def test_speckle_tracking_sees_soft_benign_and_stiff_malignant_lesions(clips):
    strain = {
        label: np.array([_tracked_lesion_strain(c) for c in group])
        for label, group in clips.items()
    }
    assert strain["benign"].mean() > 1.5 * strain["malignant"].mean()
    assert np.median(strain["benign"]) > np.median(strain["malignant"])


def test_lesion_shapes_follow_the_class(clips):
    def aspect(mask):  # lateral over axial extent
        rows, cols = np.nonzero(mask)
        return cols.std() / rows.std()

    def irregularity(mask):  # boundary pixels relative to a disc of the same area
        boundary = mask & ~ndimage.binary_erosion(mask)
        return boundary.sum() / (2 * np.sqrt(np.pi * mask.sum()))

    benign = [c.masks[0] for c in clips["benign"]]
    malignant = [c.masks[0] for c in clips["malignant"]]
    assert min(aspect(m) for m in benign) > 1.2  # wider than tall
    assert np.mean([aspect(m) for m in malignant]) < 0.95  # taller than wide
    assert np.mean([irregularity(m) for m in malignant]) > np.mean(
        [irregularity(m) for m in benign]
    )


def test_speckle_moves_with_the_tissue():
    rows, cols = slice(14, 30), slice(20, 44)  # above the lesions' depth range
    errors, consecutive, unrelated = [], [], []
    for seed in range(4):
        clip = simulate_clip("normal", seed, CONFIG)
        frames = clip.frames
        for t in range(1, CONFIG.frames):
            dx = _match(frames[0], frames[t], rows, cols, (4, 9))[1]
            expected = clip.motion.at(0).shift - clip.motion.at(t / (CONFIG.frames - 1)).shift
            errors.append(dx - expected)
            consecutive.append(_match(frames[t - 1], frames[t], rows, cols, (3, 4))[2])
        other = simulate_clip("normal", seed + 100, CONFIG).frames[0]
        unrelated.append(_match(frames[0], other, rows, cols, (3, 4))[2])
    # Integer block matching: within half a pixel on average of the probe's travel.
    assert np.mean(np.abs(errors)) < 0.8 and np.max(np.abs(errors)) < 2.0
    # Consecutive frames keep their speckle (partly decorrelated out of plane);
    # independent tissue does not match beyond chance.
    assert min(consecutive) > 0.5
    assert max(unrelated) < 0.35


def test_appearance_overlap_swaps_looks_but_never_stiffness():
    """With appearance_overlap=1 half the lesions look like the other class (taller
    than wide for benign, spiculated...), yet every lesion's compliance stays in its
    own class's range: only the motion still tells the classes apart."""
    from lddm_fast.data.phantom_anatomy import _COMPLIANCE, sample_anatomy

    for label in ("benign", "malignant"):
        looks_other = []
        for seed in range(200):
            lesion = sample_anatomy(np.random.default_rng(seed), label, 64, 40 / 64, 1.0).lesion
            lo, hi = _COMPLIANCE[label]
            assert lo <= lesion.compliance <= hi
            looks_other.append((len(lesion.spike_angle) > 0) == (label == "benign"))
        assert 0.38 < np.mean(looks_other) < 0.62, label
    plain = [sample_anatomy(np.random.default_rng(s), "benign", 64, 40 / 64) for s in range(50)]
    assert all(len(a.lesion.spike_angle) == 0 for a in plain)


def test_appearance_overlap_zero_keeps_earlier_clips_and_bad_values_are_refused():
    base = simulate_clip("malignant", 3, CONFIG)
    same = simulate_clip("malignant", 3, PhantomConfig(size=64, frames=17, appearance_overlap=0.0))
    np.testing.assert_array_equal(base.frames, same.frames)
    with pytest.raises(ValueError, match="appearance_overlap"):
        PhantomConfig(appearance_overlap=1.5)


def _warp(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """``image [H, W]`` sampled at ``(z + flow[1], x + flow[0])``, bilinear, edges clamped."""
    size = image.shape[0]
    z, x = np.mgrid[0:size, 0:size].astype(np.float64)
    coords = np.stack((z + flow[1], x + flow[0]))
    return ndimage.map_coordinates(image.astype(np.float64), coords, order=1, mode="nearest")


def test_true_flow_carries_frame_0_onto_every_frame():
    ious, static_ious, gains = [], [], []
    for label in ("benign", "malignant"):
        for seed in range(3):
            clip = simulate_clip(label, seed, CONFIG)
            flow = true_flow(label, seed, CONFIG)
            assert flow.shape == (CONFIG.frames, 2, 64, 64) and flow.dtype == np.float32
            assert not flow[0].any()
            for t in range(4, CONFIG.frames, 4):
                moved = _warp(clip.masks[0], flow[t]) > 0.5
                truth = clip.masks[t]
                ious.append((moved & truth).sum() / (moved | truth).sum())
                static_ious.append((clip.masks[0] & truth).sum() / (clip.masks[0] | truth).sum())
                # Speckle moves with the tissue: frame 0 moved by the flow matches frame t
                # better than frame 0 where it was (elevation motion decorrelates both).
                frame0, frame = clip.frames[0].astype(np.float64), clip.frames[t]
                moved_r = np.corrcoef(_warp(frame0, flow[t]).ravel(), frame.ravel())[0, 1]
                static_r = np.corrcoef(frame0.ravel(), frame.ravel())[0, 1]
                gains.append(moved_r - static_r)
    assert min(ious) > 0.8 and np.mean(ious) > 0.88
    assert np.mean(ious) > np.mean(static_ious) + 0.1
    assert min(gains) > 0.0 and np.mean(gains) > 0.1


def test_true_flow_strains_soft_lesions_more_than_stiff_ones():
    def ratio(label, seed):
        clip = simulate_clip(label, seed, CONFIG)
        flow = true_flow(label, seed, CONFIG)
        strain = np.gradient(flow[:, 1], axis=1)  # d(axial displacement)/d(depth)
        inside = clip.masks[0]
        ring = ndimage.binary_dilation(inside, iterations=6) & ~inside
        a, b = strain[1:, inside].mean(axis=1), strain[1:, ring].mean(axis=1)
        return float((a * b).sum() / (b * b).sum())

    benign = [ratio("benign", s) for s in range(4)]
    malignant = [ratio("malignant", s) for s in range(4)]
    assert min(benign) > max(malignant)
    assert np.median(malignant) < 0.6


def test_redraw_speckle_keeps_frame_0_and_redraws_only_what_it_leaves_open():
    clip = simulate_clip("benign", 6, CONFIG)  # elevation drift 0.72 beam sigmas
    again = simulate_clip("benign", 6, CONFIG, redraw_speckle=1)
    other = simulate_clip("benign", 6, CONFIG, redraw_speckle=2)
    assert again.frames[0].tobytes() == clip.frames[0].tobytes()
    assert again.masks.tobytes() == clip.masks.tobytes()
    assert (
        again.frames.tobytes()
        == simulate_clip("benign", 6, CONFIG, redraw_speckle=1).frames.tobytes()
    )
    assert np.abs(again.frames[1:].astype(int) - other.frames[1:]).mean() > 0.5
    # The redraw differs from the clip as much as the elevation has left frame 0:
    # frames at frame 0's elevation show the same speckle (receiver noise apart).
    first = clip.motion.at(0.0).elevation
    drift, change = [], []
    for t in range(1, CONFIG.frames):
        elevation = clip.motion.at(t / (CONFIG.frames - 1)).elevation
        drift.append(abs(np.sin((elevation - first) / np.sqrt(2))))
        change.append(np.abs(again.frames[t].astype(int) - clip.frames[t]).mean())
    assert np.corrcoef(drift, change)[0, 1] > 0.9
    assert change[int(np.argmin(drift))] < 0.3 * max(change)
    # Same echo power: the gray levels of the redrawn frames match the clip's.
    assert abs(again.frames[1:].mean() - clip.frames[1:].mean()) < 2.0
