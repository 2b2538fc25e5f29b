"""sha256 of files: the one helper every checksum in the package goes through
(checkpoints, bundled assets, metric weights, synthesized outputs, study inputs)."""

from __future__ import annotations

import hashlib
import os

__all__ = ["sha256_file"]

_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
