"""The model and sample images that ship inside the package (``lddm_fast/assets/``).

:func:`bundled_checkpoint` checks every file of the bundled checkpoint against the
sha256 recorded here (meta.json included, so a damaged meta.json cannot vouch for
damaged weights) before anything loads it, and names the file and the expected hash
when one is missing or differs. How the model was made: ``docs/TRAINING.md`` and its
``meta.json``.
"""

from __future__ import annotations

from pathlib import Path

from lddm_fast.data.digest import sha256_file
from lddm_fast.models.checkpoint import CheckpointError

__all__ = ["BUNDLED_MODEL_DIR", "BUNDLED_SHA256", "SAMPLE_IMAGES_DIR", "bundled_checkpoint"]

ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"
BUNDLED_MODEL_DIR = ASSETS_DIR / "phantom64"
#: BUSI-layout phantom images (``benign/``, ``malignant/``) no training step saw.
SAMPLE_IMAGES_DIR = ASSETS_DIR / "samples"

#: sha256 of every file of the bundled checkpoint.
BUNDLED_SHA256: dict[str, str] = {
    "autoencoder.safetensors": "6c2c636ebc64e2018ec0fabc9f86ff2b465ca4cea68efec57ae6cb9826494398",
    "config.json": "09957d266fa175faafd2d3185f3a8d9fb65c15130977c341976b8853b82923cd",
    "denoiser.safetensors": "925a5e46deb8ebce659cde0520db1cfb322f3994dcad8f6eef4ecc5eccb9d3b5",
    "meta.json": "bf0644243906688493e4ddc6b74c48ef5823dae7b56f4f2c00666543e8cd8fa5",
}


def bundled_checkpoint(directory: Path | None = None, hashes: dict[str, str] | None = None) -> Path:
    """The bundled checkpoint directory, after checking each file's sha256.

    Raises:
        FileNotFoundError: a file is missing (the message names it and its sha256).
        CheckpointError: a file's content differs from the recorded sha256.
    """
    directory = BUNDLED_MODEL_DIR if directory is None else directory
    hashes = BUNDLED_SHA256 if hashes is None else hashes
    if not hashes:
        raise FileNotFoundError(f"this build of lddm_fast ships no bundled model ({directory})")
    for name, want in sorted(hashes.items()):
        path = directory / name
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: bundled model file missing (expected sha256 {want}); reinstall "
                "lddm_fast, or pass a checkpoint directory"
            )
        got = sha256_file(path)
        if got != want:
            raise CheckpointError(
                path,
                f"bundled model file is corrupt: expected sha256 {want}, the file hashes to "
                f"{got}; reinstall lddm_fast",
                key=name,
            )
    return directory
