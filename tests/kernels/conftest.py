"""Fixtures of the kernel tests: NaN-poisoned outputs and the CPU kernel builds."""

import pytest


def _has_avx2() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return " avx2" in flags and " fma" in flags


@pytest.fixture
def poisoned_outputs(monkeypatch):
    """Kernels fill their outputs with NaN before the launch: an unwritten element fails."""
    monkeypatch.setenv("LDDM_POISON_OUTPUTS", "1")


@pytest.fixture(
    params=[
        "default",
        pytest.param(
            "auto", marks=pytest.mark.skipif(not _has_avx2(), reason="this CPU has no AVX2+FMA")
        ),
    ]
)
def isa(request, monkeypatch):
    """Each CPU kernel build: the portable one, and ("auto") the one selected at run time
    (AVX2 where the CPU has it)."""
    if request.param == "default":
        monkeypatch.setenv("LDDM_CPU_ISA", "default")
    else:
        monkeypatch.delenv("LDDM_CPU_ISA", raising=False)
    return request.param
