"""LDDMPipeline on the ``tiny`` preset (fp32, CPU): shapes, dtypes, ranges, inputs,
errors, seeds, batch invariance, non-finite reporting, loading."""

from __future__ import annotations

import dataclasses
import hashlib
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

import lddm_fast
from lddm_fast import ops
from lddm_fast.diffusion import LDDMPipeline, LDDMPipelineOutput, PerSampleNoise, video_seed
from lddm_fast.models import build_models, preset, save_pretrained

STEPS = 3  # enough to exercise first-, second-order and final steps of every sampler


@pytest.fixture(scope="module")
def pipe() -> LDDMPipeline:
    return LDDMPipeline.from_preset("tiny", seed=0, device="cpu")


def _images(batch: int = 3, seed: int = 0, channels: int = 1, size: int = 32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, channels, size, size), generator=gen, dtype=torch.uint8)


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m", "ddpm"])
def test_uint8_output_shape_and_first_frame(pipe, sampler):
    images = _images()
    out = pipe(images, steps=STEPS, sampler=sampler)
    cfg = pipe.config
    assert isinstance(out, LDDMPipelineOutput)
    assert out.videos.shape == (3, 1, cfg.num_frames + 1, cfg.size, cfg.size)
    assert out.videos.dtype == torch.uint8
    assert torch.equal(out.videos[:, :, 0], images)  # x0 first, unchanged
    assert out.nonfinite.tolist() == [False] * 3
    assert out.videos[:, :, 1:].float().std() > 1  # generated frames are not constant


def test_float_output_and_num_frames(pipe):
    images = _images()
    out = pipe(images, num_frames=6, steps=STEPS, output="float", return_dict=False)
    videos, nonfinite = out
    assert videos.shape == (3, 1, 7, 32, 32) and videos.dtype == torch.float32
    assert videos.min() >= -1 and videos.max() <= 1
    torch.testing.assert_close(videos[:, :, 0], images.float() / 127.5 - 1)
    assert not nonfinite.any()
    as_uint8 = pipe(images, num_frames=6, steps=STEPS, output="uint8").videos
    # The same video either way: uint8 is the float video rounded to 256 levels.
    assert torch.equal(as_uint8, ((videos + 1) * 127.5).round().to(torch.uint8))


def test_float_tensor_input_equals_uint8_input(pipe):
    images = _images()
    a = pipe(images, steps=STEPS, output="float").videos
    b = pipe(images.float() / 127.5 - 1, steps=STEPS, output="float").videos
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_pil_and_numpy_inputs(pipe):
    from PIL import Image

    images = _images()
    gray = [Image.fromarray(im[0].numpy(), mode="L") for im in images]
    from_pil = pipe(gray, steps=STEPS).videos
    assert torch.equal(from_pil, pipe(images, steps=STEPS).videos)
    # RGB and odd-sized PIL images are converted to grayscale, resized and cropped.
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (40, 57, 3), dtype=np.uint8), mode="RGB")
    mixed = [rgb, np.asarray(gray[1]), rng.uniform(-1, 1, (64, 64)).astype(np.float32)]
    out = pipe(mixed, steps=STEPS)
    assert out.videos.shape == (3, 1, 5, 32, 32)
    # Luma conversion, then the shorter side to 32 (57 x 0.8 = 45.6 -> 46 wide) and a
    # center crop: PIL's own convert + antialiased bilinear resize, up to rounding.
    expected = np.asarray(rgb.convert("L").resize((46, 32), Image.BILINEAR))[:, 7:39]
    assert np.abs(out.videos[0, 0, 0].numpy().astype(int) - expected).max() <= 2


def test_rgb_model_takes_gray_images():
    pipe = LDDMPipeline.from_preset("tiny", channels=3, device="cpu")
    gray = np.full((32, 32), 200, dtype=np.uint8)
    out = pipe([gray], steps=2)
    assert out.videos.shape == (1, 3, 5, 32, 32)
    assert (out.videos[0, :, 0] == 200).all()  # replicated into the three channels


@pytest.mark.parametrize(
    "images,match",
    [
        (torch.zeros(0, 1, 32, 32), "empty batch"),
        ([], "empty list"),
        (torch.zeros(2, 3, 32, 32), "3 channels but the model expects 1"),
        (torch.zeros(1, 32, 32), r"\[B, C, H, W\] tensor, got shape \(1, 32, 32\)"),
        (
            torch.zeros(3, 1, 32, 32).index_fill_(0, torch.tensor([1]), torch.inf),
            r"images \[1\] contain NaN or Inf",
        ),
        (torch.full((2, 1, 32, 32), float("nan")), r"images \[0, 1\] contain NaN or Inf"),
        (torch.full((1, 1, 32, 32), 255.0), r"values in \[255, 255\]; float images must be"),
        (torch.zeros(1, 1, 32, 32, dtype=torch.int32), "uint8 in \\[0, 255\\] or float"),
        ([np.zeros((32, 32, 4), np.uint8)], "drop an alpha channel"),
        ([np.full((32, 32), np.inf, np.float32)], r"images\[0\] contains NaN or Inf"),
        ([3], r"images\[0\] is a int; list entries must be file paths"),
        (["missing.png"], "missing.png: file not found"),  # paths are read, DICOM too
        (np.zeros((1, 1, 32, 32)), "got ndarray"),
    ],
)
def test_bad_images_raise(pipe, images, match):
    with pytest.raises(ValueError, match=match):
        pipe(images, steps=1)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"steps": 0}, r"steps must be an int in \[1, 1000\]"),
        ({"steps": 1001}, r"steps must be an int in \[1, 1000\]"),
        ({"sampler": "euler"}, "unknown sampler 'euler'"),
        ({"sampler": "dpmpp_2m", "eta": 0.5}, "eta applies to the 'ddim' sampler only"),
        ({"output": "uint16"}, "output must be one of"),
        ({"num_frames": 9}, "exceeds this model's max_frames=8"),
        ({"seed": [1, 2]}, "seed has 2 entries for 3 images"),
        ({"guidance": float("nan")}, "guidance must be a finite number"),
        ({"timestep_spacing": "linspace"}, "timestep_spacing must be one of"),
    ],
)
def test_bad_arguments_raise(pipe, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pipe(_images(), **{"steps": 1, **kwargs})


def test_seeds_reproducible_and_distinct(pipe):
    images = _images()
    a = pipe(images, steps=STEPS, sampler="ddpm", seed=7, output="float").videos
    b = pipe(images, steps=STEPS, sampler="ddpm", seed=7, output="float").videos
    c = pipe(images, steps=STEPS, sampler="ddpm", seed=8, output="float").videos
    assert torch.equal(a, b)
    assert (a[:, :, 1:] - c[:, :, 1:]).abs().amax(dim=(1, 2, 3, 4)).min() > 1e-3
    # Same image twice in a batch: different per-video noise, different videos.
    twice = pipe(images[:1].expand(2, -1, -1, -1), steps=STEPS, output="float").videos
    assert (twice[0, :, 1:] - twice[1, :, 1:]).abs().max() > 1e-3


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_video_independent_of_batch(pipe, sampler):
    """Each video alone (seeded with its per-video seed) against the batch of 3.

    The per-video noise is bit-identical by construction (checked directly). The
    network's conv / matmul kernels block differently for batch 1 and batch 3 (the
    videos differ by ~1.4e-6 here), so they are compared at 1e-5 instead of bitwise."""
    images, seed = _images(), 11
    batch = pipe(images, steps=STEPS, sampler=sampler, seed=seed, output="float").videos
    like = torch.empty(1, *pipe.config.latent_shape)
    for i in range(3):
        alone_seed = [video_seed(seed, i)]
        alone = pipe(
            images[i : i + 1], steps=STEPS, sampler=sampler, seed=alone_seed, output="float"
        ).videos
        torch.testing.assert_close(alone[0], batch[i], rtol=0, atol=1e-5)
        gens = [torch.Generator().manual_seed(video_seed(seed, j)) for j in range(3)]
        noise_in_batch = PerSampleNoise(gens, torch.empty(3, *like.shape[1:])).draw()[i]
        gen_alone = [torch.Generator().manual_seed(alone_seed[0])]
        assert torch.equal(PerSampleNoise(gen_alone, like).draw()[0], noise_in_batch)


def test_guidance_changes_the_video(pipe):
    images = _images(2)
    plain = pipe(images, steps=STEPS, output="float").videos
    guided = pipe(images, steps=STEPS, guidance=3.0, output="float").videos
    assert guided.shape == plain.shape
    assert (guided[:, :, 1:] - plain[:, :, 1:]).abs().max() > 1e-3


def test_nonfinite_videos_are_reported(pipe, monkeypatch):
    denoise = pipe.denoise

    def poisoned(*args, **kwargs):
        z = denoise(*args, **kwargs)
        z[1, 0, 0, 0, 0] = float("nan")
        return z

    monkeypatch.setattr(pipe, "denoise", poisoned)
    with pytest.warns(RuntimeWarning, match=r"1 of 3 videos contain NaN/Inf \(indices \[1\]\)"):
        out = pipe(_images(), steps=1, output="float")
    assert out.nonfinite.tolist() == [False, True, False]
    assert torch.isnan(out.videos[1]).any() and torch.isfinite(out.videos[[0, 2]]).all()
    with pytest.warns(RuntimeWarning, match="written as zeros in uint8"):
        out = pipe(_images(), steps=1)
    assert (out.videos[1] == 0).all() and out.videos[0].any()


def test_no_warning_for_finite_videos(pipe):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipe(_images(1), steps=1)


def test_v_prediction_cosine_model():
    config = dataclasses.replace(preset("tiny"), prediction_type="v", beta_schedule="cosine")
    pipe = LDDMPipeline.from_preset("tiny", device="cpu")
    v_pipe = LDDMPipeline(build_models(config), device="cpu")
    v_pipe.models.denoiser.load_state_dict(pipe.models.denoiser.state_dict())
    v_pipe.models.autoencoder.load_state_dict(pipe.models.autoencoder.state_dict())
    out = v_pipe(_images(), steps=STEPS, sampler="dpmpp_2m", output="float")
    assert torch.isfinite(out.videos).all()
    eps_out = pipe(_images(), steps=STEPS, sampler="dpmpp_2m", output="float")
    assert (out.videos - eps_out.videos).abs().max() > 1e-3  # the adapter is in play


def test_reference_backend_matches_default(pipe):
    ref = LDDMPipeline(pipe.models, device="cpu", backend="reference")
    images = _images()
    a = pipe(images, steps=STEPS, sampler="dpmpp_2m", output="float").videos
    b = ref(images, steps=STEPS, sampler="dpmpp_2m", output="float").videos
    torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
    with pytest.raises(ops.BackendError, match="unknown backend 'fastest'"):
        LDDMPipeline(pipe.models, device="cpu", backend="fastest")


def test_from_preset_is_seeded_and_leaves_global_rng():
    state = torch.get_rng_state()
    a = LDDMPipeline.from_preset("tiny", seed=3, device="cpu")
    b = LDDMPipeline.from_preset("tiny", seed=3, device="cpu")
    c = LDDMPipeline.from_preset("tiny", seed=4, device="cpu")
    assert torch.equal(torch.get_rng_state(), state)
    wa, wb, wc = (p.models.denoiser.conv_out.weight for p in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    assert wa.abs().max() > 0  # the zero-initialised projection was drawn too
    assert a.dtype == torch.float32 and a.device.type == "cpu"


def _bundle_here(monkeypatch, directory):
    """Point the bundled-model lookup at ``directory`` with its files' current hashes."""
    from lddm_fast.models import bundled

    hashes = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.iterdir()}
    monkeypatch.setattr(bundled, "BUNDLED_MODEL_DIR", directory)
    monkeypatch.setattr(bundled, "BUNDLED_SHA256", hashes)
    return hashes


def test_from_pretrained_loads_checkpoint_and_bundled_dir(pipe, monkeypatch, tmp_path):
    save_pretrained(tmp_path / "phantom64", pipe.models)
    loaded = LDDMPipeline.from_pretrained(tmp_path / "phantom64", device="cpu")
    images = _images(2)
    a = pipe(images, steps=STEPS, output="float").videos
    torch.testing.assert_close(loaded(images, steps=STEPS, output="float").videos, a)
    _bundle_here(monkeypatch, tmp_path / "phantom64")
    bundled = LDDMPipeline.from_pretrained(None, device="cpu")
    torch.testing.assert_close(bundled(images, steps=STEPS, output="float").videos, a)


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_a_damaged_bundled_file_is_named_with_its_expected_sha256(
    pipe, monkeypatch, tmp_path, damage
):
    from lddm_fast.models import CheckpointError

    save_pretrained(tmp_path / "phantom64", pipe.models)
    hashes = _bundle_here(monkeypatch, tmp_path / "phantom64")
    victim = tmp_path / "phantom64" / "denoiser.safetensors"
    if damage == "missing":
        victim.unlink()
        error = FileNotFoundError
    else:
        data = bytearray(victim.read_bytes())
        data[-1] ^= 0xFF
        victim.write_bytes(bytes(data))
        error = CheckpointError
    with pytest.raises(error) as info:
        LDDMPipeline.from_pretrained(None, device="cpu")
    assert str(victim) in str(info.value)
    assert hashes["denoiser.safetensors"] in str(info.value)


def test_the_shipped_bundled_model_verifies_and_loads_as_float32():
    from lddm_fast.models.bundled import BUNDLED_SHA256, bundled_checkpoint

    if not BUNDLED_SHA256:
        pytest.skip("this build ships no bundled model (BUNDLED_SHA256 is empty)")
    pipe = LDDMPipeline.from_pretrained(None, device="cpu")
    assert bundled_checkpoint().is_dir()
    assert all(p.dtype == torch.float32 for p in pipe.models.denoiser.parameters())
    assert pipe.models.meta["denoiser_trained"] is True
    # The shipped model's own held-out reports (meta.json) say it meets every bar.
    reports = [pipe.models.meta["heldout_report"]]
    reports += pipe.models.meta.get("heldout_reports_other_seeds", [])
    for report in reports:
        assert report["n_per_set"] >= 256
        failed = [bar for bar, met in report["bars"].items() if not met]
        assert not failed, (report["sampler"], failed)


def test_lazy_top_level_export():
    code = (
        "import sys, lddm_fast; "
        "assert 'lddm_fast.diffusion' not in sys.modules, 'imported eagerly'; "
        "from lddm_fast.diffusion import LDDMPipeline; "
        "assert lddm_fast.LDDMPipeline is LDDMPipeline"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert lddm_fast.LDDMPipeline is LDDMPipeline
    with pytest.raises(AttributeError, match="no attribute 'Pipeline'"):
        lddm_fast.Pipeline  # noqa: B018
