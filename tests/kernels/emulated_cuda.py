"""Builds and calls the host emulation of the CUDA kernels (emulated_cuda/): the
csrc/cuda sources, their launches rewritten for emulated_cuda/emulation.h, compiled by
the host compiler under the address and undefined-behaviour sanitizers, or the thread
sanitizer, into one harness program (emulated_cuda/harness.cpp) that runs a
framework-free entry point on files.

A machine without a GPU thereby runs the kernels' own code: indexing, reductions,
shared-memory use, block synchronisation, launch shapes and workspace sizes. It cannot
show what only a GPU has (timing, memory ordering between blocks, the fast-math
intrinsics' exact results); the ``gpu`` tests do that where a device is lent."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from cuda_toolkit import CXX, cuda_include

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent / "emulated_cuda"
CUDA_DIR = ROOT / "csrc" / "cuda"

_LAUNCH = re.compile(r"([A-Za-z_]\w*(?:<[^<>;(){}]*>)?)\s*<<<(.*?)>>>", re.S)
_EXTERN_SHARED = re.compile(
    r"extern\s+__shared__\s+(?:__align__\(\d+\)\s+)?(\w[\w:\s]*?)\s+(\w+)\[\];"
)


def unavailable() -> str | None:
    """Why the emulation cannot be built here, or None."""
    if CXX is None:
        return "no C++ compiler (c++, g++) on PATH"
    if cuda_include() is None:
        return "no CUDA toolkit headers (cuda_runtime.h, cuda_bf16.h)"
    return None


def rewrite(text: str, name: str) -> str:
    """A .cu source as emulation.h takes it: launches through lddm_emu::launcher, the
    dynamic shared array through lddm_emu::dynamic_shared, block-scope ``__shared__``
    arrays as statics (one copy, shared by the block's threads: blocks run in turn)."""
    out, launches = _LAUNCH.subn(r"::lddm_emu::launcher(\1, \2)", text)
    out, _ = _EXTERN_SHARED.subn(r"\1* \2 = ::lddm_emu::dynamic_shared<\1>();", out)
    out = re.sub(r"\b__shared__\b", "static", out)
    if launches != text.count("<<<") or "<<<" in out:
        raise RuntimeError(f"{name}: a launch the rewrite does not recognise")
    return out


# address: every access past a buffer (global or shared) and undefined behaviour;
# thread: data races, such as shared memory read without the barrier that orders it
# after its writes (reported whether or not the timing of that run exposed it).
SANITIZERS = {
    "address": ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"],
    "thread": ["-fsanitize=thread"],
}


def build(out_dir: Path, sanitizer: str = "address") -> Path:
    """Compiles the harness into out_dir under one of SANITIZERS; returns its path."""
    include = cuda_include()
    flags = [
        "-std=c++20", "-O1", "-g", "-pthread", "-fno-omit-frame-pointer",
        *SANITIZERS[sanitizer],
        f"-I{ROOT / 'csrc'}", f"-I{include}", "-include", str(HERE / "emulation.h"),
    ]  # fmt: skip
    for header in CUDA_DIR.glob("*.cuh"):  # included as they are, not rewritten
        if re.search(r"__shared__|<<<", header.read_text()):
            raise RuntimeError(f"{header.name}: shared memory or a launch outside a .cu file")
    units = []
    for source in sorted(CUDA_DIR.glob("*.cu")):
        unit = out_dir / f"{source.name}.cpp"
        unit.write_text(rewrite(source.read_text(), source.name))
        units.append(unit)
    units.append(HERE / "harness.cpp")

    def compile_unit(unit: Path) -> Path:
        obj = out_dir / f"{unit.name}.o"
        done = subprocess.run(
            [CXX, *flags, "-c", str(unit), "-o", str(obj)], capture_output=True, text=True
        )
        if done.returncode != 0:
            raise RuntimeError(f"compiling {unit.name} failed:\n{done.stderr[-6000:]}")
        return obj

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        objects = list(pool.map(compile_unit, units))
    program = out_dir / "harness"
    done = subprocess.run(
        [CXX, *flags, *map(str, objects), "-o", str(program)], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"linking the harness failed:\n{done.stderr[-6000:]}")
    return program


class Harness:
    """Runs one entry point per call in a fresh folder under ``work``."""

    def __init__(self, program: Path, work: Path, env: dict | None = None):
        self.program, self.work, self.env = program, work, env or {}

    def __call__(self, args: dict, inputs: dict, outputs: dict, *, env: dict | None = None):
        """args: the entry point's sizes and flags; inputs: name -> CPU tensor (its
        bytes in storage order from its first element) or None; outputs: name ->
        (dtype, shape) of the dense buffers to read back. Returns name -> tensor, or
        raises EmulationError with the harness's stderr (an entry point's error code,
        a sanitizer report)."""
        folder = Path(tempfile.mkdtemp(dir=self.work))
        lines = [f"{key} {value}" for key, value in args.items()]
        (folder / "args.txt").write_text("\n".join(lines) + "\n")
        for name, tensor in inputs.items():
            if tensor is not None:
                (folder / f"{name}.in").write_bytes(span_bytes(tensor))
        done = subprocess.run(
            [str(self.program), str(folder)],
            capture_output=True,
            text=True,
            timeout=600,
            env={
                **os.environ,
                "ASAN_OPTIONS": "detect_leaks=0",
                "TSAN_OPTIONS": "halt_on_error=1",
                **self.env,
                **(env or {}),
            },
        )
        if done.returncode != 0:
            raise EmulationError(done.stderr[-8000:])
        result = {}
        for name, (dtype, shape) in outputs.items():
            raw = bytearray((folder / f"{name}.out").read_bytes())
            result[name] = torch.frombuffer(raw, dtype=dtype).reshape(shape)
        shutil.rmtree(folder)
        return result


class EmulationError(RuntimeError):
    pass


def span_bytes(t: torch.Tensor) -> bytes:
    """The bytes a kernel may read through t's strides (non-negative): from its first
    element to its last, gaps included, so q/k/v views of one tensor keep their strides."""
    if t.numel() == 0:
        return b""
    span = 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride(), strict=True))
    flat = torch.as_strided(t, (span,), (1,))
    return flat.contiguous().view(torch.uint8).numpy().tobytes()
