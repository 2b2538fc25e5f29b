"""What this machine is: library versions, CPU, GPU (through nvidia-ml-py when there
is one). Shared by ``lddm-fast info`` and the benchmark harness, which records it
next to every result."""

from __future__ import annotations

import os
import platform
import subprocess
from typing import Any

import torch

import lddm_fast


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _compiler() -> str:
    try:
        out = subprocess.run(["c++", "--version"], capture_output=True, text=True, timeout=10)
        return out.stdout.splitlines()[0] if out.returncode == 0 and out.stdout else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "not found"


def _triton_version() -> str:
    try:
        import triton
    except ImportError as exc:
        return f"not installed ({exc})"
    return triton.__version__


def cpu_kernels() -> str:
    """The build of the extension's CPU kernels the ops call ("avx512", "avx2", "default",
    or why there is none): benchmark figures depend on it."""
    try:
        from lddm_fast import _C
    except ImportError as exc:
        return f"none (extension not built: {exc})"
    try:
        return _C.cpu_isa()
    except RuntimeError as exc:  # a bad LDDM_CPU_ISA
        return f"none ({exc})"


def gpu_info() -> list[dict[str, Any]] | str:
    """One dict per GPU from NVML (name, memory, driver, clocks, power limit), or a
    string saying why there is none."""
    try:
        import pynvml
    except ImportError:
        if torch.cuda.is_available():
            return [
                {"name": torch.cuda.get_device_name(i)} for i in range(torch.cuda.device_count())
            ]
        return "no GPU information: nvidia-ml-py not installed and torch sees no CUDA device"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return f"no NVIDIA GPU ({exc})"
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            info: dict[str, Any] = {
                "name": pynvml.nvmlDeviceGetName(h),
                "memory_gib": round(mem.total / 2**30, 1),
                "driver": driver,
            }
            queries = (
                ("sm_clock_mhz", pynvml.nvmlDeviceGetClockInfo, (pynvml.NVML_CLOCK_SM,), 1),
                ("max_sm_clock_mhz", pynvml.nvmlDeviceGetMaxClockInfo, (pynvml.NVML_CLOCK_SM,), 1),
                ("mem_clock_mhz", pynvml.nvmlDeviceGetClockInfo, (pynvml.NVML_CLOCK_MEM,), 1),
                ("power_limit_w", pynvml.nvmlDeviceGetPowerManagementLimit, (), 1000),
            )
            for key, query, extra, divisor in queries:
                try:
                    info[key] = query(h, *extra) / divisor
                except pynvml.NVMLError:
                    info[key] = None
            gpus.append(info)
        return gpus
    finally:
        pynvml.nvmlShutdown()


def environment() -> dict[str, Any]:
    """Versions and hardware, as a JSON-ready dict."""
    return {
        "lddm_fast": lddm_fast.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda or "none (CPU build)",
        "triton": _triton_version(),
        "compiler": _compiler(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_kernels": cpu_kernels(),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu_info(),
    }
