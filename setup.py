"""Build script: setuptools drives CMake, which builds the extension ``lddm_fast._C``.

Install with ``pip install --no-build-isolation -e .`` so the extension compiles
against the installed torch. Environment knobs:

- ``LDDM_BUILD_CUDA=auto|0|1``: build the CUDA kernels when torch has CUDA and nvcc
  is found (auto), never (0), or fail loudly when that is impossible (1).
- ``TORCH_CUDA_ARCH_LIST``: e.g. ``"8.0;9.0a"``; default sm_80 + sm_90a.
- ``MAX_JOBS``: parallel compile jobs (default: CPU count).
- ``CMAKE_ARGS``: extra arguments for the CMake configure step.
- ``LDDM_BUILD_TYPE``: CMake build type (default Release).
"""

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    """An extension with no sources of its own: CMake knows them."""

    def __init__(self, name: str, cmake_lists_dir: Path = ROOT) -> None:
        super().__init__(name, sources=[])
        self.cmake_lists_dir = str(cmake_lists_dir)


def _cmake_executable() -> str:
    # Prefer the cmake next to this interpreter (pip's cmake package) so the build
    # uses the version pyproject asks for, then whatever is on PATH.
    local = Path(sys.executable).parent / "cmake"
    if local.exists():
        return str(local)
    found = shutil.which("cmake")
    if found is None:
        raise RuntimeError("cmake not found: `pip install cmake ninja` (see README.md)")
    return found


class cmake_build_ext(build_ext):
    def build_extensions(self) -> None:
        for ext in self.extensions:
            self._build_one(ext)

    def _build_one(self, ext: CMakeExtension) -> None:
        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_temp = Path(self.build_temp).resolve() / ext.name
        build_temp.mkdir(parents=True, exist_ok=True)
        jobs = os.environ.get("MAX_JOBS") or str(os.cpu_count() or 1)
        cmake_args = [
            "-G",
            "Ninja",
            f"-DCMAKE_BUILD_TYPE={os.environ.get('LDDM_BUILD_TYPE', 'Release')}",
            f"-DLDDM_PYTHON_EXECUTABLE={sys.executable}",
            f"-DLDDM_OUTPUT_DIR={out_dir}",
            f"-DLDDM_BUILD_CUDA={os.environ.get('LDDM_BUILD_CUDA', 'auto')}",
            f"-DCMAKE_JOB_POOLS=compile={jobs}",
            "-DCMAKE_JOB_POOL_COMPILE=compile",
        ]
        ninja = Path(sys.executable).parent / "ninja"
        if ninja.exists():
            cmake_args.append(f"-DCMAKE_MAKE_PROGRAM={ninja}")
        cmake_args += shlex.split(os.environ.get("CMAKE_ARGS", ""))
        cmake = _cmake_executable()
        subprocess.check_call([cmake, ext.cmake_lists_dir, *cmake_args], cwd=build_temp)
        subprocess.check_call([cmake, "--build", ".", "--target", "_C"], cwd=build_temp)


setup(
    packages=find_packages(include=["lddm_fast", "lddm_fast.*"]) + ["lddm_fast.kernels"],
    # Triton kernels live in kernels/ at the top (Liger-Kernel style) but install as
    # lddm_fast.kernels: PyPI already has a package called `kernels`.
    package_dir={"lddm_fast.kernels": "kernels"},
    package_data={"lddm_fast": ["assets/*", "assets/**/*"]},
    ext_modules=[CMakeExtension("lddm_fast._C")],
    cmdclass={"build_ext": cmake_build_ext},
    zip_safe=False,
)
