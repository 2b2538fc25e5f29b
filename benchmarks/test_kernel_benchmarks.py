"""The kernels suite under pytest-benchmark, for comparing runs over time:

    pytest benchmarks --benchmark-only --benchmark-autosave
    pytest benchmarks --benchmark-only --benchmark-compare      # against the last save

The cases are the suite's own (benchmarks/suites/kernels.py: the shape table, every
layout, the fast backends and the eager / SDPA baselines; quick shapes on CPU, full on
CUDA; no torch.compile baseline). Each row also checks parity against the float64
result with the suite's rule. ``benchmarks/run.py`` stays the suite of record: it
reports ratios within one run, roofline shares and page faults.
"""

import pytest
import torch

from harness import PARITY_FLOOR, parity
from suites import kernels

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float32
CASES = kernels.cases(DEVICE, DTYPE, quick=DEVICE == "cpu", compile_=False)


def _synced(fn):
    if DEVICE != "cuda":
        return fn

    def call(*args):
        out = fn(*args)
        torch.cuda.synchronize()  # the timer must see the kernels, not their launch
        return out

    return call


@pytest.mark.parametrize(
    "case,provider",
    [
        pytest.param(case, name, id=f"{case.op}[{case.label}]-{name}")
        for case in CASES
        for name in case.providers
    ],
)
def test_kernel(benchmark, case, provider):
    benchmark.group = f"{case.op} {case.label}"
    inputs = case.make_inputs()
    out = benchmark(_synced(case.providers[provider]), *inputs)
    expected = case.expected(*inputs)
    _, err = parity(out, expected)
    _, baseline = parity(next(iter(case.providers.values()))(*inputs), expected)
    floor = case.parity_floor if case.parity_floor is not None else PARITY_FLOOR[case.dtype]
    assert err <= max(floor, 2 * baseline), f"max-rel {err:.3e}, baseline {baseline:.3e}"
