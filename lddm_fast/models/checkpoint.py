"""Checkpoint directories: ``save_pretrained`` / ``from_pretrained``.

A checkpoint is a directory holding

- ``config.json``: :meth:`LDDMConfig.to_dict` (architecture, schedule, data layout);
- ``autoencoder.safetensors`` and ``denoiser.safetensors``: the state dicts;
- ``meta.json``: ``format_version``, ``lddm_fast_version``, ``sha256`` of the three
  files above, and whatever the trainer adds (training data, steps, metrics).

Only JSON and safetensors are read: nothing is unpickled. Loading checks, in order,
that the files exist, are complete and match their recorded sha256, that the config
has only known fields and valid values, and that each state dict has exactly the
model's keys with the model's shapes. Every failure raises :class:`CheckpointError`
naming the file and the offending key or field.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import nn

from lddm_fast import __version__
from lddm_fast.data.atomic import atomic_file
from lddm_fast.models.autoencoder import VideoAutoencoder
from lddm_fast.models.config import ConfigFieldError, LDDMConfig
from lddm_fast.models.denoiser import LatentDenoiser

__all__ = [
    "CheckpointError",
    "LDDMModels",
    "build_models",
    "carried_meta",
    "from_pretrained",
    "save_pretrained",
]

CONFIG_FILE = "config.json"
AUTOENCODER_FILE = "autoencoder.safetensors"
DENOISER_FILE = "denoiser.safetensors"
META_FILE = "meta.json"
FORMAT_VERSION = 1
_RESERVED_META = ("format_version", "lddm_fast_version", "sha256")
# At most this many keys are spelled out per category in an error message.
_MAX_LISTED = 8


class CheckpointError(ValueError):
    """A checkpoint directory cannot be loaded.

    Attributes:
        path: the offending file.
        key: the state-dict key, config field or file entry at fault (None when the
            whole file is).
    """

    def __init__(self, path: Path, message: str, *, key: str | None = None) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.key = key


@dataclass
class LDDMModels:
    """Both networks with the config they were built from.

    ``meta`` is the content of ``meta.json`` for a loaded checkpoint (empty for a
    fresh model).
    """

    config: LDDMConfig
    autoencoder: VideoAutoencoder
    denoiser: LatentDenoiser
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.autoencoder.config != self.config.autoencoder:
            raise ValueError("autoencoder.config differs from config.autoencoder")
        if self.denoiser.config != self.config.denoiser:
            raise ValueError("denoiser.config differs from config.denoiser")


def build_models(config: LDDMConfig) -> LDDMModels:
    """Freshly initialised networks for ``config`` (on the current default device)."""
    return LDDMModels(config, VideoAutoencoder(config.autoencoder), LatentDenoiser(config.denoiser))


def _write_atomic(path: Path, data: bytes) -> None:
    with atomic_file(path) as tmp:
        Path(tmp).write_bytes(data)


def _state_bytes(module: nn.Module) -> bytes:
    # safetensors stores row-major data: channels_last weights are made contiguous.
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    return safetensors.torch.save(
        state, metadata={"format": "pt", "lddm_fast_version": __version__}
    )


def carried_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """A loaded checkpoint's ``meta.json`` entries without those the format writes
    itself (format version, library version, sha256), for rewriting the checkpoint
    with :func:`save_pretrained` (which refuses them)."""
    return {k: v for k, v in meta.items() if k not in _RESERVED_META}


def save_pretrained(
    directory: str | os.PathLike, models: LDDMModels, *, meta: dict[str, Any] | None = None
) -> Path:
    """Write ``models`` as a checkpoint directory (created if needed).

    Args:
        directory: target folder; existing checkpoint files in it are replaced, each
            atomically (temp file + rename), ``meta.json`` last.
        models: the config and both networks.
        meta: extra JSON-serialisable entries for ``meta.json`` (training data,
            steps, metrics); the keys format_version, lddm_fast_version and sha256
            are reserved.

    Returns:
        The directory path.
    """
    meta = dict(meta or {})
    clash = [k for k in _RESERVED_META if k in meta]
    if clash:
        raise ValueError(f"meta keys {clash} are reserved for the checkpoint format")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        CONFIG_FILE: json.dumps(models.config.to_dict(), indent=2).encode() + b"\n",
        AUTOENCODER_FILE: _state_bytes(models.autoencoder),
        DENOISER_FILE: _state_bytes(models.denoiser),
    }
    for name, data in files.items():
        _write_atomic(out / name, data)
    record = {
        "format_version": FORMAT_VERSION,
        "lddm_fast_version": __version__,
        "sha256": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
        **meta,
    }
    _write_atomic(out / META_FILE, json.dumps(record, indent=2).encode() + b"\n")
    return out


def _read(path: Path) -> bytes:
    if not path.is_file():
        raise CheckpointError(
            path,
            "missing file (a checkpoint needs config.json, "
            "autoencoder.safetensors, denoiser.safetensors, meta.json)",
        )
    return path.read_bytes()


def _read_json(path: Path, data: bytes) -> Any:
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(path, f"not valid JSON (truncated or corrupt?): {exc}") from None


def _check_complete(path: Path, data: bytes) -> None:
    """Compare a safetensors file's size with what its header declares."""
    if len(data) < 8:
        raise CheckpointError(
            path, f"truncated: {len(data)} bytes, shorter than the 8-byte safetensors header length"
        )
    header_len = int.from_bytes(data[:8], "little")
    if 8 + header_len > len(data):
        raise CheckpointError(
            path, f"truncated: the header needs {8 + header_len} bytes, the file has {len(data)}"
        )
    header = _read_json(path, data[8 : 8 + header_len])
    if not isinstance(header, dict):
        raise CheckpointError(path, "corrupt safetensors header (not a JSON object)")
    held = len(data) - 8 - header_len
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        try:
            end = int(entry["data_offsets"][1])
        except (TypeError, KeyError, IndexError, ValueError):
            raise CheckpointError(
                path, f"corrupt safetensors header entry for {key!r}", key=key
            ) from None
        if end > held:
            raise CheckpointError(
                path,
                f"truncated: tensor {key!r} ends at byte {end} of the data section but "
                f"the file holds only {held} bytes of tensor data",
                key=key,
            )


def _check_sha256(path: Path, data: bytes, recorded: dict[str, Any], meta_path: Path) -> None:
    want = recorded.get(path.name)
    if want is None:
        raise CheckpointError(meta_path, f"no sha256 recorded for {path.name}", key=path.name)
    got = hashlib.sha256(data).hexdigest()
    if got != want:
        raise CheckpointError(
            path,
            f"sha256 mismatch: meta.json records {want}, the file "
            f"hashes to {got} (modified or corrupt)",
            key=path.name,
        )


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    more = len(keys) - _MAX_LISTED
    return shown + (f", ... and {more} more" if more > 0 else "")


def _load_state(path: Path, data: bytes, model: nn.Module) -> None:
    """Check ``data`` against the (meta-device) ``model``'s keys and shapes, then assign
    the tensors to it."""
    try:
        state = safetensors.torch.load(data)
    except safetensors.SafetensorError as exc:
        raise CheckpointError(path, f"corrupt safetensors file: {exc}") from None
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k in expected if k in state and tuple(state[k].shape) != expected[k]]
    not_float = [k for k in expected if k in state and not state[k].is_floating_point()]
    if missing or unexpected or mismatched or not_float:
        parts = []
        if missing:
            parts.append(f"missing keys: {_listed(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_listed(unexpected)}")
        if mismatched:
            parts.append(
                "shape mismatches: "
                + _listed(
                    [
                        f"{k} (checkpoint {list(state[k].shape)}, model {list(expected[k])})"
                        for k in mismatched
                    ]
                )
            )
        if not_float:
            parts.append(
                "non-floating tensors: " + _listed([f"{k} ({state[k].dtype})" for k in not_float])
            )
        first = (missing + unexpected + mismatched + not_float)[0]
        raise CheckpointError(
            path,
            "state dict does not match the model built from config.json; "
            + "; ".join(parts)
            + ". Was it written for another config or version?",
            key=first,
        )
    # Weights may be stored in fp16/bf16 to save space; the model gets its own dtype.
    dtypes = {k: v.dtype for k, v in model.state_dict().items()}
    state = {k: v.to(dtypes[k]) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)


def from_pretrained(
    directory: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    verify_sha256: bool = True,
) -> LDDMModels:
    """Load a checkpoint directory written by :func:`save_pretrained`.

    The networks are built on the meta device (no weight initialisation), filled from
    the safetensors files, moved to ``device`` / ``dtype`` and put in eval mode.

    Args:
        directory: the checkpoint folder.
        device: where the weights go.
        dtype: cast floating weights to this dtype (None: as stored).
        verify_sha256: check every file against meta.json (and require meta.json).

    Raises:
        CheckpointError: a file is missing, truncated, corrupt or fails its sha256; the
            config has an unknown field or a bad value; a state dict has missing,
            unexpected or mis-shaped keys.
    """
    root = Path(directory)
    if not root.is_dir():
        raise CheckpointError(root, "not a checkpoint directory")
    meta_path = root / META_FILE
    meta: dict[str, Any] = {}
    if verify_sha256 or meta_path.is_file():
        meta = _read_json(meta_path, _read(meta_path))
        if not isinstance(meta, dict) or not isinstance(meta.get("sha256"), dict):
            raise CheckpointError(
                meta_path, "meta.json must be an object with a 'sha256' table", key="sha256"
            )
        version = meta.get("format_version")
        if version != FORMAT_VERSION:
            raise CheckpointError(
                meta_path,
                f"format_version {version!r} is not supported "
                f"(this lddm_fast reads {FORMAT_VERSION})",
                key="format_version",
            )

    blobs: dict[str, bytes] = {}
    for name in (CONFIG_FILE, AUTOENCODER_FILE, DENOISER_FILE):
        path = root / name
        blobs[name] = _read(path)
        if name != CONFIG_FILE:
            _check_complete(path, blobs[name])
        if verify_sha256:
            _check_sha256(path, blobs[name], meta["sha256"], meta_path)

    config_path = root / CONFIG_FILE
    try:
        config = LDDMConfig.from_dict(_read_json(config_path, blobs[CONFIG_FILE]))
    except ConfigFieldError as exc:
        raise CheckpointError(config_path, str(exc), key=exc.path or None) from None
    except (TypeError, ValueError) as exc:
        raise CheckpointError(config_path, f"invalid config: {exc}") from None

    with torch.device("meta"):
        autoencoder = VideoAutoencoder(config.autoencoder)
        denoiser = LatentDenoiser(config.denoiser)
    _load_state(root / AUTOENCODER_FILE, blobs[AUTOENCODER_FILE], autoencoder)
    _load_state(root / DENOISER_FILE, blobs[DENOISER_FILE], denoiser)
    for model in (autoencoder, denoiser):
        model.to(device=device, dtype=dtype).eval()
    return LDDMModels(config, autoencoder, denoiser, meta)
