"""sha256 of files and of names: the one place every checksum in the package comes
from (checkpoints, bundled assets, metric weights, synthesized outputs, study inputs)
and every seed or shard derived from a name."""

from __future__ import annotations

import hashlib
import os

__all__ = ["sha256_file", "text_hash64"]

_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def text_hash64(text: str) -> int:
    """The first 8 bytes of sha256(``text`` in UTF-8) as an unsigned little-endian int:
    the stable hash behind per-video seeds and rank shards."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")
