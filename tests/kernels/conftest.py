"""Fixtures of the kernel tests: NaN-poisoned outputs and the CPU kernel builds."""

import pytest


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            line = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return set()
    return set(line.split(":", 1)[-1].split())


# What each CPU kernel build needs (csrc/cpu/dispatch.h decides the same at run time).
_ISA_FLAGS = {
    "default": set(),
    "avx2": {"avx2", "fma"},
    "avx512": {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16"},
}


def _isa_param(name: str):
    missing = sorted(_ISA_FLAGS[name] - _cpu_flags())
    return pytest.param(
        name, marks=pytest.mark.skipif(bool(missing), reason=f"this CPU lacks {missing}")
    )


@pytest.fixture
def poisoned_outputs(monkeypatch):
    """Kernels fill their outputs with NaN before the launch: an unwritten element fails."""
    monkeypatch.setenv("LDDM_POISON_OUTPUTS", "1")


@pytest.fixture(params=[_isa_param(name) for name in _ISA_FLAGS])
def isa(request, monkeypatch):
    """Each CPU kernel build this CPU runs: the portable one, AVX2 and AVX-512, forced by
    LDDM_CPU_ISA; the extension confirms which one the ops call, so a build that is not
    there fails instead of testing another one twice."""
    monkeypatch.setenv("LDDM_CPU_ISA", request.param)
    from lddm_fast import _C

    assert _C.cpu_isa() == request.param
    return request.param
