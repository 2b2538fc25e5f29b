"""Ranks and shards for ``torchrun --nproc-per-node G -m lddm_fast.synth ...``.

Each rank reads the whole input listing (names only) and keeps the inputs whose
relative path hashes to it (:func:`shard_of`), so shards are disjoint, stable across
reruns and independent of the listing order; every rank appends to its own
``manifest.rank<r>.jsonl``. The only communication is barriers: before the ranks
start (rank 0 checks and records the run config and sweeps a crash's leftovers)
and at the end (rank 0 merges the parts). ``torch.distributed`` is initialised only
when ``WORLD_SIZE`` > 1: gloo for CPU runs, NCCL for CUDA devices.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

from lddm_fast.data.digest import text_hash64

__all__ = ["DistInfo", "ProcessGroup", "dist_info", "shard_of"]

# The final barrier waits for the slowest rank's whole shard: hours on a large run,
# far beyond torch.distributed's default timeout.
BARRIER_TIMEOUT = datetime.timedelta(days=7)


def shard_of(rel: str, world_size: int) -> int:
    """The rank (0 .. ``world_size - 1``) that makes the videos of input ``rel``.

    A hash of the relative path rather than a position in the listing, so a shard
    does not move when files are added or the listing order changes, and each rank
    decides alone.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be at least 1, got {world_size}")
    return text_hash64(f"lddm_fast/synth/shard/{rel}") % world_size


@dataclass(frozen=True)
class DistInfo:
    """This process's ``rank`` of ``world_size`` and its ``local_rank`` on the node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0


def dist_info(environ: dict[str, str] | None = None) -> DistInfo:
    """Rank, world size and local rank from torchrun's ``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK`` (0, 1, 0 when they are absent)."""
    env = os.environ if environ is None else environ
    try:
        info = DistInfo(
            int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0))
        )
    except ValueError as e:
        raise ValueError(f"bad torchrun environment (RANK/WORLD_SIZE/LOCAL_RANK): {e}") from e
    if info.world_size < 1 or not 0 <= info.rank < info.world_size:
        raise ValueError(f"bad torchrun environment: RANK={info.rank} WORLD_SIZE={info.world_size}")
    return info


class ProcessGroup:
    """Barriers across the ranks of a torchrun job; no-ops for a single process.

    Use as a context manager: the default process group is created on entry (only
    when ``world_size`` > 1) and destroyed on exit.

    Args:
        info: this process's rank and world size.
        device: the device this rank samples on; a CUDA device selects NCCL (and is
            made current, as NCCL needs), anything else gloo.
    """

    def __init__(self, info: DistInfo, device) -> None:
        self.info = info
        self._device = device
        self._active = False

    def __enter__(self) -> ProcessGroup:
        if self.info.world_size > 1:
            import torch
            import torch.distributed as dist

            if self._device.type == "cuda":
                torch.cuda.set_device(self._device)
                backend = "nccl"
            else:
                backend = "gloo"
            dist.init_process_group(
                backend,
                rank=self.info.rank,
                world_size=self.info.world_size,
                timeout=BARRIER_TIMEOUT,
            )
            self._active = True
        return self

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        if self._active:
            import torch.distributed as dist

            if self._device.type == "cuda":
                dist.barrier(device_ids=[self._device.index or 0])
            else:
                dist.barrier()

    def __exit__(self, *exc) -> None:
        if self._active:
            import torch.distributed as dist

            dist.destroy_process_group()
            self._active = False
