"""Where this machine's CUDA toolkit and host compiler are, for the tests that compile
csrc/cuda without a GPU (tests/test_build.py, tests/kernels/emulated_cuda.py); on
sys.path through pytest's ``pythonpath`` setting (pyproject.toml)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

NVCC = shutil.which("nvcc")
CXX = shutil.which("c++") or shutil.which("g++")


def cuda_include() -> Path | None:
    """A CUDA toolkit include folder (cuda_runtime.h), or None."""
    candidates = [os.environ.get("CUDA_HOME", ""), "/usr/local/cuda"]
    if NVCC:
        candidates += [Path(NVCC).parents[1], Path(os.path.realpath(NVCC)).parents[1]]
    for root in candidates:
        if root and (Path(root) / "include" / "cuda_runtime.h").is_file():
            return Path(root) / "include"
    return None
