"""LPIPS: backbone files (torch.save and safetensors, sha256), the lpips package's
linear layers, distances, and the "unavailable" reasons."""

import hashlib
import importlib.util
import sys
import types

import pytest
import safetensors.torch
import torch

from lddm_fast.eval.lpips import LPIPS, find_lpips_linear_weights, load_lpips, lpips_frames
from lddm_fast.eval.weights import MetricUnavailable, WeightsError

HAVE_LPIPS = importlib.util.find_spec("lpips") is not None
needs_lpips = pytest.mark.skipif(
    not HAVE_LPIPS, reason="the lpips package is not installed (pip install --no-deps lpips)"
)
# Convolution indices inside torchvision's `features` Sequential (alexnet, vgg16).
TORCHVISION_CONV_INDICES = {
    "alex": [0, 3, 6, 8, 10],
    "vgg": [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28],
}


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_backbone_keys_follow_torchvision(net):
    keys = [k for k in LPIPS(net).state_dict() if k.startswith("features.")]
    indices = sorted({int(k.split(".")[1]) for k in keys})
    assert indices == TORCHVISION_CONV_INDICES[net]
    assert len(keys) == 2 * len(indices)  # weight and bias each


def _torchvision_like_alexnet(seed=0):
    # What torchvision's alexnet().state_dict() holds: features.* and classifier.*
    torch.manual_seed(seed)
    state = {k: v for k, v in LPIPS("alex").state_dict().items() if k.startswith("features.")}
    state["classifier.1.weight"] = torch.randn(8, 4)
    return state


def _frames(seed, shape=(1, 5, 48, 40)):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8)


@needs_lpips
@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_random_backbone_file_loads_and_measures(tmp_path, fmt):
    state = _torchvision_like_alexnet()
    path = tmp_path / f"alexnet_random.{fmt}"
    if fmt == "pth":
        torch.save(state, path)
    else:
        safetensors.torch.save_file(state, str(path))
    model, infos = load_lpips(path, "alex")
    backbone, linear = infos
    assert backbone.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert not backbone.verified  # not torchvision's ImageNet file
    assert linear.path == find_lpips_linear_weights("alex") and linear.verified
    torch.testing.assert_close(model.features[0].weight, state["features.0.weight"])
    x, y = _frames(0), _frames(1)
    same = lpips_frames(model, x, x)
    assert tuple(same.shape) == (5,)
    torch.testing.assert_close(same, torch.zeros(5, dtype=torch.float64))
    assert (lpips_frames(model, x, y) > 0).all()


@needs_lpips
def test_hash_in_file_name_is_checked(tmp_path):
    path = tmp_path / "alexnet-owt-7be5be79.pth"  # torchvision's name, other content
    torch.save(_torchvision_like_alexnet(), path)
    with pytest.raises(WeightsError, match="does not start with 7be5be79"):
        load_lpips(path, "alex")


@needs_lpips
def test_wrong_backbone_is_refused(tmp_path):
    path = tmp_path / "vgg_random.pth"
    torch.save(_torchvision_like_alexnet(), path)
    with pytest.raises(WeightsError, match="not torchvision VGG16 features"):
        load_lpips(path, "vgg")


def test_unavailable_without_a_backbone_file():
    with pytest.raises(MetricUnavailable, match="pass --lpips-backbone FILE") as err:
        load_lpips(None, "alex")
    assert "alexnet-owt-7be5be79.pth" in err.value.reason


def test_unavailable_without_the_lpips_package(monkeypatch, tmp_path):
    path = tmp_path / "alex.pth"
    torch.save(_torchvision_like_alexnet(), path)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MetricUnavailable, match=r"pip install --no-deps lpips"):
        load_lpips(path, "alex")


def test_distance_by_hand_for_one_layer():
    # With every linear weight zero except layer 0's, the distance is that layer's
    # weighted, spatially averaged squared difference of unit-normalized features.
    torch.manual_seed(0)
    model = LPIPS("alex").eval()
    with torch.no_grad():
        for lin in model.lins[1:]:
            lin.weight.zero_()
    x, y = torch.rand(2, 3, 40, 40) * 2 - 1, torch.rand(2, 3, 40, 40) * 2 - 1
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    fx, fy = (torch.relu(model.features[0]((v - shift) / scale)) for v in (x, y))
    fx, fy = (f / (f.norm(dim=1, keepdim=True) + 1e-10) for f in (fx, fy))
    w = model.lins[0].weight.view(1, -1, 1, 1)
    expected = ((fx - fy) ** 2 * w).sum(dim=1).mean(dim=(1, 2))
    with torch.no_grad():
        torch.testing.assert_close(model(x, y), expected, rtol=1e-5, atol=1e-7)


class _StubBackbone:
    """What lpips asks torchvision for: an object whose `.features` is the backbone."""

    def __init__(self, features):
        self.features = features


@pytest.fixture
def lpips_with_stub_torchvision(monkeypatch):
    # The lpips package builds its backbone through torchvision (not usable beside
    # this torch); a stub module hands it our backbones, so the comparison below runs
    # the package's own scaling, normalization, linear layers and averaging.
    backbones = {}

    def build(net):
        def factory(pretrained=False, **kwargs):
            torch.manual_seed(0)
            backbones[net] = LPIPS(net).features
            return _StubBackbone(backbones[net])

        return factory

    models = types.SimpleNamespace(alexnet=build("alex"), vgg16=build("vgg"))
    stub = types.ModuleType("torchvision")
    stub.models = models
    monkeypatch.setitem(sys.modules, "torchvision", stub)
    monkeypatch.setitem(sys.modules, "torchvision.models", models)
    lpips = pytest.importorskip("lpips", reason="the lpips package does not import here")
    yield lpips, backbones
    for name in [n for n in sys.modules if n == "lpips" or n.startswith("lpips.")]:
        del sys.modules[name]  # bound to the stub


@needs_lpips
@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_matches_the_lpips_package(lpips_with_stub_torchvision, tmp_path, net):
    lpips, backbones = lpips_with_stub_torchvision
    reference = lpips.LPIPS(net=net, verbose=False).eval()
    path = tmp_path / f"{net}_backbone.pth"
    torch.save({f"features.{k}": v for k, v in backbones[net].state_dict().items()}, path)
    model, _ = load_lpips(path, net)
    gen = torch.Generator().manual_seed(1)
    x, y = (torch.rand(3, 3, 48, 56, generator=gen) * 2 - 1 for _ in range(2))
    with torch.no_grad():
        torch.testing.assert_close(model(x, y), reference(x, y).flatten(), rtol=1e-5, atol=1e-7)


@needs_lpips
def test_linear_layers_must_be_lpips_0_1_4s(tmp_path, monkeypatch):
    import lddm_fast.eval.lpips as lpips_module

    altered = tmp_path / "alex.pth"
    lins = torch.load(find_lpips_linear_weights("alex"), map_location="cpu", weights_only=True)
    torch.save({k: v * 2 for k, v in lins.items()}, altered)
    monkeypatch.setattr(lpips_module, "find_lpips_linear_weights", lambda net: str(altered))
    backbone = tmp_path / "alex_random.pth"
    torch.save(_torchvision_like_alexnet(), backbone)
    with pytest.raises(WeightsError, match="is not that of lpips 0.1.4's v0.1 alex weights"):
        load_lpips(backbone, "alex")
