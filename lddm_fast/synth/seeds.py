"""Deterministic per-video seeds from ``--seed``, an input's relative path and k.

A video's seed depends only on ``--seed``, the input's relative path and k, never on
the batch it ran in, the rank that made it or the order of the input listing: a rerun,
a resumed run or a run on another number of GPUs gives the same videos.
"""

from __future__ import annotations

from lddm_fast.data.digest import text_hash64

__all__ = ["input_video_seed"]


def input_video_seed(seed: int, rel: str, k: int) -> int:
    """The generator seed of video ``k`` of the input at relative path ``rel``.

    A 63-bit hash (``torch.Generator.manual_seed`` accepts it on every device) of all
    three, so neighbouring ``seed`` or ``k`` values give unrelated noise streams.
    ``rel`` is the POSIX relative path that :mod:`lddm_fast.synth.inputs` assigns.
    """
    return text_hash64(f"lddm_fast/synth/seed/{int(seed)}/{int(k)}/{rel}") & (2**63 - 1)
