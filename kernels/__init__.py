"""Triton kernels for :mod:`lddm_fast.ops` (installed as ``lddm_fast.kernels``).

One module per op, each holding its ``@triton.jit`` kernels and the host function that
picks blocks and launches them: :func:`group_norm.group_norm` and
:func:`temporal_attention.temporal_attention` (plus its pure launch-grid function
:func:`temporal_attention.attention_grid`). The ``triton`` backend
(:mod:`lddm_fast.ops.triton_backend`) calls the host functions.
"""

from . import group_norm, temporal_attention
from .utils import INTERPRET

__all__ = ["INTERPRET", "group_norm", "temporal_attention"]
