"""Launch heuristics shared by the Triton kernels of :mod:`lddm_fast.kernels`."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable

import torch
import triton
import triton.language as tl

# Set from TRITON_INTERPRET when triton.jit wraps the kernels: under the interpreter
# the kernels take CPU tensors, and one config is launched instead of autotuning
# (every config costs a full interpreted run).
INTERPRET: bool = bool(triton.knobs.runtime.interpret)

# The interpreter truncates float32 -> bfloat16 casts where the GPU rounds to nearest
# even; cast_to emulates the GPU's rounding there so interpreted outputs match it.
_EMULATE_BF16_RNE = tl.constexpr(INTERPRET)

# CUDA launch limit of grid axis x (y and z stop at 65535, so the kernels use x only).
MAX_GRID_X = 2**31 - 1
# Element offsets inside one sample are int32 in the kernels; whole-tensor offsets are
# int64. Host code checks the per-sample extent against this bound.
MAX_INT32 = 2**31 - 1


@functools.cache
def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device; 1 for CPU tensors (the interpreter),
    where filling a GPU is not a goal and fewer, larger programs run faster."""
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


def pow2_block(n: int, max_block: int, min_block: int = 1, max_waste: float = 0.125) -> int:
    """A power-of-two tile width for ``n`` items: the largest ``b <= max_block`` whose
    tiles leave at most ``max_waste`` of the lanes masked off (``ceil(n / b) * b <=
    (1 + max_waste) * n``), else, among widths down to ``min_block``, the least wasteful.

    A plain ``next_power_of_2(n)`` pads C = 40 channels to 64 lanes or S = 175 positions
    to 256; a width that divides n (or nearly) keeps the lanes busy, and ``min_block``
    stops the search before tiles get too narrow to fill a warp.
    """
    top = min(triton.next_power_of_2(max(n, 1)), max_block)
    widths = [top >> i for i in range(top.bit_length()) if top >> i >= min(min_block, top)]
    padded = {b: cdiv(n, b) * b for b in widths}
    for b in widths:
        if padded[b] <= (1 + max_waste) * n:
            return b
    return min(widths, key=lambda b: (padded[b], -b))


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def check_grid_x(programs: int, what: str) -> tuple[int]:
    """A 1-D launch grid, after checking it fits grid axis x."""
    if programs > MAX_GRID_X:
        raise ValueError(f"{what}: {programs} programs exceed the CUDA grid limit {MAX_GRID_X}")
    return (programs,)


def prune(valid: Callable[[triton.Config, dict], bool] | None = None) -> dict:
    """``prune_configs_by`` for ``triton.autotune``: drop the configs ``valid`` rejects
    for this launch's arguments; under the interpreter keep only the first survivor."""

    def early_config_prune(configs, named_args, **kwargs):
        args = {**named_args, **kwargs}
        kept = [cfg for cfg in configs if valid is None or valid(cfg, args)]
        return kept[:1] if INTERPRET else kept

    return {"early_config_prune": early_config_prune}


def device_guard(t: torch.Tensor) -> contextlib.AbstractContextManager:
    """Make t's GPU current for the launch (Triton launches on the current device)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def poison_if_requested(*outputs: torch.Tensor) -> None:
    """With ``LDDM_POISON_OUTPUTS=1`` (set by the tests) fill freshly allocated outputs
    with NaN before the launch, so a test sees any element a kernel failed to write (as
    the C++ ops do, csrc/checks.h)."""
    if os.environ.get("LDDM_POISON_OUTPUTS") == "1":
        for t in outputs:
            t.fill_(float("nan"))


@triton.jit
def cast_to(y, dtype: tl.constexpr):
    """``y`` (float32) rounded to nearest even in ``dtype``, as the GPU's cvt.rn does."""
    if _EMULATE_BF16_RNE and dtype == tl.bfloat16:
        bits = y.to(tl.uint32, bitcast=True)
        bits += 0x7FFF + ((bits >> 16) & 1)
        return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    return y.to(dtype)
