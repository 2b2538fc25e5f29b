"""Build checks: the CUDA sources compile with nvcc alone (they are framework-free)
with no register spills, and the installed distribution exposes the Triton kernels
only as lddm_fast.kernels."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cuda_toolkit import CXX, NVCC, cuda_include

ROOT = Path(__file__).resolve().parents[1]
CUDA_SOURCES = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))


def test_there_are_cuda_sources():
    assert CUDA_SOURCES, "csrc/cuda has no .cu files"


@pytest.mark.skipif(NVCC is None, reason="nvcc not on PATH")
@pytest.mark.parametrize("source", CUDA_SOURCES, ids=lambda p: p.name)
def test_cuda_source_compiles_for_sm90a_without_spills(source, tmp_path):
    cmd = [
        NVCC,
        "-c",
        "-std=c++17",
        f"-I{ROOT / 'csrc'}",
        "-gencode=arch=compute_90a,code=sm_90a",
        "-Xptxas",
        "-v",
        "-O3",
        str(source),
        "-o",
        str(tmp_path / "out.o"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr}"
    report = proc.stderr
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", report)
    assert spills, f"no ptxas report in:\n{report}"
    assert all(s == ("0", "0") for s in spills), f"register spills in {source.name}:\n{report}"


CUDA_INCLUDE = cuda_include()


@pytest.mark.slow
@pytest.mark.skipif(CXX is None, reason="no C++ compiler on PATH")
@pytest.mark.skipif(CUDA_INCLUDE is None, reason="no CUDA toolkit headers (cuda_runtime.h)")
@pytest.mark.parametrize(
    "launcher", sorted((ROOT / "csrc" / "cuda").glob("*_launcher.cpp")), ids=lambda p: p.name
)
def test_cuda_launcher_compiles_against_the_installed_torch_headers(launcher, tmp_path):
    """The torch-side CUDA launchers are only built where torch has CUDA; here their
    syntax and types are checked against the installed torch's headers, so a CPU
    machine catches what would otherwise fail first on a lent GPU. A CPU build of
    torch lacks one generated header, c10/cuda/impl/cuda_cmake_macros.h: a stub
    defining what a shared-library build defines stands in for it."""
    import sysconfig

    from torch.utils.cpp_extension import include_paths

    stub = tmp_path / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h"
    stub.parent.mkdir(parents=True)
    stub.write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    command = [
        CXX, "-std=c++20", "-fsyntax-only", "-Wall", "-Werror=return-type",
        "-DLDDM_WITH_CUDA=1", '-DLDDM_CUDA_STATUS="test"',
        f"-I{ROOT / 'csrc'}", f"-I{tmp_path}", f"-I{sysconfig.get_paths()['include']}",
        *(f"-I{p}" for p in include_paths()), f"-I{CUDA_INCLUDE}", str(launcher),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]


def test_cuda_sources_include_no_torch_headers():
    for source in [*CUDA_SOURCES, *(ROOT / "csrc" / "cuda").glob("*.h")]:
        text = source.read_text()
        assert not re.search(r"#include\s*[<\"](torch|ATen|c10)/", text), source.name


@pytest.mark.skipif(shutil.which("nm") is None, reason="nm (binutils) not on PATH")
def test_extension_brings_no_copy_of_the_cpp_runtime():
    """The extension must use the process's one libstdc++: a second, private copy
    (linked in from a static archive such as the static CUDA runtime) has its own
    std::locale, uninitialised, and formatting a number in an error message crashes."""
    import lddm_fast._C

    out = subprocess.run(
        ["nm", "-D", "--defined-only", "--demangle", lddm_fast._C.__file__],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    runtime = ("std::locale::classic", "std::ios_base::Init::Init", "std::codecvt<char16_t")
    copied = [line for line in out.splitlines() if any(name in line for name in runtime)]
    assert not copied, f"{lddm_fast._C.__file__} defines C++ runtime symbols: {copied[:5]}"


def test_kernels_only_installed_as_lddm_fast_kernels(tmp_path):
    code = (
        "import importlib.util as u; "
        "print(u.find_spec('kernels') is None, u.find_spec('lddm_fast.kernels') is not None)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True"], out.stdout


def test_the_bundled_model_and_samples_are_package_data(tmp_path):
    from lddm_fast.models.bundled import ASSETS_DIR, BUNDLED_SHA256

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_py", "-d", str(tmp_path)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    built = tmp_path / "lddm_fast" / "assets"
    wanted = [p.relative_to(ASSETS_DIR) for p in ASSETS_DIR.rglob("*") if p.is_file()]
    assert wanted and all((built / rel).is_file() for rel in wanted)
    assert set(BUNDLED_SHA256) <= {rel.name for rel in wanted}
    size = sum((built / rel).stat().st_size for rel in wanted)
    assert size <= 30 * 2**20, f"assets are {size / 2**20:.1f} MiB, the budget is 30"
