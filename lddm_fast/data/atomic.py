"""Atomic file and folder writes: write beside the destination, then ``os.replace``.

Readers (and a rerun of the batch engine after a crash) see either the old file or
the complete new one, never a partial write, because the temporary sits in the
destination's own folder and a rename within one filesystem is atomic.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator

# The process's umask, read once at import (setting it is process-wide, so not from
# the engine's writer threads): mkstemp makes 0600 files, and outputs should get the
# permissions any other new file of this user gets.
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path next to ``path``; move it onto ``path`` on success.

    The temporary keeps ``path``'s suffix, since encoders pick the format from it.
    On an exception the temporary is removed and ``path`` is left untouched.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    stem, suffix = os.path.splitext(os.path.basename(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".tmp{suffix}", dir=folder)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary folder next to ``path``; swap it in for ``path`` on success.

    A rename cannot replace a non-empty folder, so an existing ``path`` is first
    renamed aside and deleted after the swap: between those two renames ``path`` is
    briefly absent, but it is never seen half-written.
    """
    path = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=parent)
    try:
        yield tmp
        old = None
        if os.path.exists(path):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".old", dir=parent)
            os.replace(path, os.path.join(old, "content"))
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def fsync_dir(folder: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename into it) to disk."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: str | os.PathLike, data) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically and durably (the file and
    its folder entry are fsynced)."""
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(os.path.dirname(os.path.abspath(path)))
