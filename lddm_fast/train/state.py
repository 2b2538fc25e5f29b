"""Training state on disk: what ``--resume`` needs to continue at the exact step.

Each save is a folder ``RUN/state/step-<8 digits>/`` holding

- ``tensors.safetensors``: the trained modules (``model.*``), the EMA copy (``ema.*``),
  the optimizer's tensors (``optim.<param>.<name>``) and torch's RNG states
  (``rng.cpu``, ``rng.cuda``);
- ``state.json``: the step, the optimizer's hyperparameters, the learning-rate
  schedule, the data seed and hash, the wall time so far.

The folder is written beside its final name and renamed into place (an atomic
rename), so a run killed at any moment leaves only complete saves under their real
names; a half-written one keeps its temporary dot-name and is removed by the next
save. The newest ``keep`` saves are kept. Nothing is pickled.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from lddm_fast.data.atomic import atomic_folder

__all__ = ["latest_state", "load_state", "optimizer_from_flat", "optimizer_to_flat", "save_state"]

STATE_DIR = "state"
TENSORS_FILE = "tensors.safetensors"
INFO_FILE = "state.json"
_STEP_DIR = re.compile(r"^step-(\d{8})$")


def optimizer_to_flat(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``optimizer.state_dict()`` into tensors (``optim.<param>.<name>``) and the
    JSON rest (param_groups and non-tensor per-parameter entries)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for param, entries in state_dict["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{param}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(param), {})[name] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def optimizer_from_flat(tensors: dict[str, torch.Tensor], info: dict) -> dict:
    """Inverse of :func:`optimizer_to_flat`: a dict for ``optimizer.load_state_dict``."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, param, name = key.split(".", 2)
            state.setdefault(int(param), {})[name] = value
    for param, entries in info.get("scalars", {}).items():
        state.setdefault(int(param), {}).update(entries)
    return {"state": state, "param_groups": info["param_groups"]}


def _saves(run: Path) -> list[tuple[int, Path]]:
    root = run / STATE_DIR
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        match = _STEP_DIR.match(entry.name)
        if match and (entry / INFO_FILE).is_file():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def latest_state(run: str | os.PathLike) -> Path | None:
    """The newest complete save under ``run``, or None."""
    saves = _saves(Path(run))
    return saves[-1][1] if saves else None


def save_state(
    run: str | os.PathLike,
    step: int,
    tensors: dict[str, torch.Tensor],
    info: dict[str, Any],
    *,
    keep: int = 2,
) -> Path:
    """Write one save for ``step`` atomically, then keep only the newest ``keep``.

    Args:
        run: the run folder.
        step: optimizer steps taken so far.
        tensors: everything tensor-valued (CPU copies are made).
        info: JSON-serialisable rest (``step`` is added).
    """
    root = Path(run) / STATE_DIR
    root.mkdir(parents=True, exist_ok=True)
    for leftover in root.glob(".step-*"):  # a save a kill interrupted
        shutil.rmtree(leftover, ignore_errors=True)
    final = root / f"step-{step:08d}"
    with atomic_folder(final) as tmp:
        cpu = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        safetensors.torch.save_file(cpu, os.path.join(tmp, TENSORS_FILE))
        with open(os.path.join(tmp, INFO_FILE), "w") as f:
            json.dump({**info, "step": step}, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
    for _, old in _saves(Path(run))[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_state(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a save folder: ``(tensors, info)``. Raises ValueError naming the file when
    it is unreadable."""
    path = Path(path)
    try:
        info = json.loads((path / INFO_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path / INFO_FILE}: cannot read the training state: {e}") from None
    try:
        tensors = safetensors.torch.load_file(path / TENSORS_FILE)
    except Exception as e:  # safetensors raises several types for a damaged file
        raise ValueError(f"{path / TENSORS_FILE}: cannot read the training state: {e}") from None
    return tensors, info
