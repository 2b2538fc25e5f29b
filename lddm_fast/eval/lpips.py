"""LPIPS (Zhang et al. 2018, v0.1) without torchvision and without downloads.

Two weight files are needed:

* the linear layers calibrated on human judgments, shipped by the ``lpips`` package
  (``lpips/weights/v0.1/{alex,vgg}.pth``; install with ``pip install --no-deps lpips``,
  its dependencies pull in torchvision). The package is located, never imported;
* the ImageNet AlexNet or VGG16 backbone, which no package ships (torchvision
  downloads it): the user passes torchvision's checkpoint file
  (``alexnet-owt-7be5be79.pth``, ``vgg16-397923af.pth``) or any file with the same
  ``features.N.weight`` / ``features.N.bias`` keys, in torch.save (read with
  ``weights_only=True``) or safetensors format.

The linear layers must hash to lpips 0.1.4's files. A backbone file named
``<name>-<hex>.<ext>`` must, as torch.hub checks, have a sha256 starting with
``<hex>``; :class:`~lddm_fast.eval.weights.WeightsInfo` records the full hash and
whether it is torchvision's ImageNet release (only then are values comparable with
published LPIPS).

The distance: images ``[B, 3, H, W]`` in [-1, 1] are shifted and scaled per channel,
passed through the backbone; at five ReLU outputs the features are unit-normalized
over channels, their squared difference weighted by the 1x1 linear layer and
averaged over space; the five values are summed.
"""

from __future__ import annotations

import importlib.util
import os
import re

import torch
from torch import nn

from lddm_fast.data.digest import sha256_file
from lddm_fast.eval.clips import signed_unit
from lddm_fast.eval.weights import (
    MetricUnavailable,
    WeightsError,
    WeightsInfo,
    read_state_dict,
)

__all__ = ["LPIPS", "find_lpips_linear_weights", "load_lpips", "lpips_frames"]

#: Backbone layers: ``features`` indices of torchvision's AlexNet / VGG16 (the
#: convolutions hold weights; the others are ReLU "R" and max-pool "M").
_ALEX = [
    ("C", 3, 64, 11, 4, 2), ("R",), ("M",),
    ("C", 64, 192, 5, 1, 2), ("R",), ("M",),
    ("C", 192, 384, 3, 1, 1), ("R",),
    ("C", 384, 256, 3, 1, 1), ("R",),
    ("C", 256, 256, 3, 1, 1), ("R",),
]  # fmt: skip
_VGG16_WIDTHS = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
#: ``features`` indices whose outputs LPIPS compares (relu1 .. relu5 of each network).
_TAPS = {"alex": (1, 4, 7, 9, 11), "vgg": (3, 8, 15, 22, 29)}
_CHANNELS = {"alex": (64, 192, 384, 256, 256), "vgg": (64, 128, 256, 512, 512)}
#: sha256 prefixes torchvision publishes in its ImageNet checkpoint names.
TORCHVISION_SHA256_PREFIX = {"alex": "7be5be79", "vgg": "397923af"}
TORCHVISION_FILE = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}
#: sha256 of ``lpips/weights/v0.1/*.pth`` in lpips 0.1.4.
LPIPS_LINEAR_SHA256 = {
    "alex": "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",
    "vgg": "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868",
}
# torch.hub's rule: the hex run between the last '-' and the next '.' is a sha256 prefix.
_HASH_IN_NAME = re.compile(r"-([a-f0-9]+)\.")
# Per-channel input shift and scale of LPIPS v0.1 (ImageNet statistics in [-1, 1]).
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


def _backbone_layers(net: str) -> list[nn.Module]:
    if net == "alex":
        spec = _ALEX
    elif net == "vgg":
        spec, channels = [], 3
        for width in _VGG16_WIDTHS:
            if width == "M":
                spec.append(("M",))
            else:
                spec += [("C", channels, width, 3, 1, 1), ("R",)]
                channels = width
    else:
        raise ValueError(f"net must be 'alex' or 'vgg', got {net!r}")
    layers: list[nn.Module] = []
    for kind, *args in spec:
        if kind == "C":
            c_in, c_out, k, s, p = args
            layers.append(nn.Conv2d(c_in, c_out, k, s, p))
        elif kind == "R":
            layers.append(nn.ReLU())
        else:
            # AlexNet and VGG pool differently; torchvision uses 3/2 and 2/2.
            layers.append(nn.MaxPool2d(3, 2) if net == "alex" else nn.MaxPool2d(2, 2))
    return layers[: _TAPS[net][-1] + 1]


class LPIPS(nn.Module):
    """LPIPS v0.1 distance with an AlexNet (``"alex"``) or VGG16 (``"vgg"``) backbone.

    State-dict keys: ``features.N.weight``/``features.N.bias`` (torchvision's) and
    ``lins.K.weight`` ``[1, C_K, 1, 1]``. Weights are random until loaded
    (:func:`load_lpips`).
    """

    def __init__(self, net: str = "alex") -> None:
        super().__init__()
        self.net = net
        self.features = nn.Sequential(*_backbone_layers(net))
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in _CHANNELS[net])
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps, wanted = [], set(_TAPS[self.net])
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in wanted:
                taps.append(x)
        return taps

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` in [-1, 1] (both the same shape) -> distances ``[B]``."""
        if x.shape != y.shape or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(
                f"expected two [B, 3, H, W] batches, got {tuple(x.shape)}, {tuple(y.shape)}"
            )
        both = (torch.cat([x, y]) - self.shift) / self.scale
        total = x.new_zeros(x.shape[0])
        for feats, lin in zip(self._taps(both), self.lins, strict=True):
            # Unit length over channels (eps as the reference).
            feats = feats / (feats.square().sum(dim=1, keepdim=True).sqrt() + 1e-10)
            fx, fy = feats.chunk(2)
            total = total + lin((fx - fy).square()).mean(dim=(1, 2, 3))
        return total


def find_lpips_linear_weights(net: str) -> str:
    """Path of ``lpips/weights/v0.1/<net>.pth`` without importing ``lpips`` (whose
    ``__init__`` imports torchvision). Raises :class:`MetricUnavailable` if absent."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        raise MetricUnavailable(
            "LPIPS needs the linear-layer weights shipped by the lpips package: "
            "install it with `pip install --no-deps lpips`"
        )
    for folder in spec.submodule_search_locations:
        path = os.path.join(folder, "weights", "v0.1", f"{net}.pth")
        if os.path.isfile(path):
            return path
    raise MetricUnavailable(f"the lpips package has no weights/v0.1/{net}.pth: reinstall lpips")


def load_lpips(
    backbone: str | os.PathLike | None, net: str = "alex"
) -> tuple[LPIPS, list[WeightsInfo]]:
    """An LPIPS network with both weight files loaded, in eval mode, and their identities.

    ``backbone``: torchvision's ``features.*`` checkpoint for ``net`` (``classifier.*``
    keys are ignored). Raises :class:`MetricUnavailable` when ``backbone`` is None or
    the lpips package is missing, :class:`WeightsError` for a file that does not fit.
    """
    if net not in _TAPS:
        raise ValueError(f"net must be 'alex' or 'vgg', got {net!r}")
    if backbone is None:
        raise MetricUnavailable(
            f"LPIPS needs the ImageNet {'AlexNet' if net == 'alex' else 'VGG16'} backbone, "
            "which no package ships: pass --lpips-backbone FILE (torchvision's "
            f"{TORCHVISION_FILE[net]}); nothing is downloaded"
        )
    lin_path = find_lpips_linear_weights(net)
    backbone = os.fspath(backbone)
    if not os.path.isfile(backbone):
        raise WeightsError(f"{backbone}: LPIPS backbone file not found")
    digest = sha256_file(backbone)
    named = _HASH_IN_NAME.findall(os.path.basename(backbone))
    if named and not digest.startswith(named[-1]):
        raise WeightsError(
            f"{backbone}: sha256 {digest} does not start with {named[-1]}, the hash in its "
            "name: the file is corrupt or renamed"
        )
    model = LPIPS(net)
    expected = model.state_dict()
    state = {k: v for k, v in read_state_dict(backbone).items() if not k.startswith("classifier.")}
    lin_digest = sha256_file(lin_path)
    if lin_digest != LPIPS_LINEAR_SHA256[net]:
        raise WeightsError(
            f"{lin_path}: sha256 {lin_digest} is not that of lpips 0.1.4's v0.1 {net} "
            f"weights ({LPIPS_LINEAR_SHA256[net]}): reinstall `pip install --no-deps lpips==0.1.4`"
        )
    # lpips names them lin<K>.model.1.weight (a Dropout sits at model.0).
    for key, value in read_state_dict(lin_path).items():
        state[re.sub(r"^lin(\d+)\.model\.1\.", r"lins.\1.", key)] = value
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or mismatched:
        raise WeightsError(
            f"{backbone}: not torchvision {'AlexNet' if net == 'alex' else 'VGG16'} features "
            f"(missing {missing[:8]}, unexpected {unexpected[:8]}, wrong shape {mismatched[:8]})"
        )
    model.load_state_dict({k: v.float() for k, v in state.items()})
    official = digest.startswith(TORCHVISION_SHA256_PREFIX[net])
    infos = [
        WeightsInfo(
            backbone,
            digest,
            f"LPIPS backbone ({'torchvision ImageNet ' if official else 'user '}{net})",
            verified=official,
        ),
        WeightsInfo(lin_path, lin_digest, f"lpips 0.1.4 v0.1 {net} linear layers", verified=True),
    ]
    return model.eval(), infos


def lpips_frames(
    model: LPIPS, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 32
) -> torch.Tensor:
    """Per-frame LPIPS of two clips ``[C, T, H, W]`` (C = 1 or 3, uint8 or [-1, 1])
    -> float64 ``[T]``. Grayscale is repeated to 3 channels."""
    device = next(model.parameters()).device
    # [C, T, H, W] -> frames [T, 3, H, W]
    a, b = (signed_unit(v).to(device).expand(3, -1, -1, -1).transpose(0, 1) for v in (x, y))
    with torch.inference_mode():
        out = [
            model(a[i : i + batch_size], b[i : i + batch_size])
            for i in range(0, a.shape[0], batch_size)
        ]
    return torch.cat(out).double().cpu()
