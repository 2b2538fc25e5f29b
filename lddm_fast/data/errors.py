"""Errors for bad input files and the record of files a dataset scan skipped."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Generic, TypeVar

R = TypeVar("R")


class BadInputError(ValueError):
    """A file or folder that cannot be used, with the path and the reason.

    Subclasses :class:`ValueError` so callers that already guard input parsing keep
    working; ``path`` and ``reason`` let a scan record the skip without parsing the
    message.
    """

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True)
class Skipped:
    """One file or folder a scan left out, and why."""

    path: str
    reason: str

    @classmethod
    def from_error(cls, err: BadInputError) -> Skipped:
        return cls(err.path, err.reason)


@dataclass
class Scan(Generic[R]):
    """The result of scanning a dataset: usable records and skipped inputs."""

    records: list[R] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def summary(self, limit: int = 5) -> str:
        """One line of counts, then up to ``limit`` skipped paths with reasons."""
        lines = [f"{len(self.records)} usable, {len(self.skipped)} skipped"]
        lines += [f"  skipped {s.path}: {s.reason}" for s in self.skipped[:limit]]
        if len(self.skipped) > limit:
            lines.append(f"  ... and {len(self.skipped) - limit} more")
        return "\n".join(lines)
