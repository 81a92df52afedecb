"""Build script: the pure-Python package always installs; ``oxide.kernels`` comes from ``kernels/``.

The CPU core ``oxide._cpu`` is a pybind11 module compiled from ``csrc/cpu/*.cpp``. It takes raw
buffers (data pointers, shapes, strides) rather than torch tensors, so it needs no torch at build
time and no torch ABI match: the ordinary isolated build (``pip install .``) compiles it with the
pybind11 that ``pyproject.toml`` lists as a build requirement.

It is compiled for the baseline of the target (no ``-march=native``): AVX2/FMA/F16C and AVX-512
code lives in translation units of their own (``#pragma GCC target``) and is chosen at run time
from the CPU's features, so the binary runs on any x86-64. The extension is optional: where no
compiler works, the install still succeeds and every op runs its PyTorch reference;
``oxide info`` then says so. ``OXIDE_NO_EXTENSIONS=1`` skips the build on purpose.

The CUDA kernels ``oxide._cuda`` (``csrc/cuda``) are built only where they can run: the installed torch
has CUDA (``torch.version.cuda``; an isolated build sees no torch, so install with
``--no-build-isolation`` on a GPU machine) and the CUDA toolkit is found (``CUDA_HOME``, else ``nvcc`` on the
PATH, else ``/usr/local/cuda``). The ``.cu`` files are compiled by nvcc for ``OXIDE_CUDA_ARCHS``
(default ``80;90``, plus PTX of the last for newer GPUs), the bindings by the C++ compiler with pybind11,
linked with the static CUDA runtime; no torch headers are used. It is optional like the CPU core.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CompileError

ROOT = Path(__file__).parent


def _cpu_extension() -> list:
    sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc" / "cpu").glob("*.cpp"))
    if not sources or os.environ.get("OXIDE_NO_EXTENSIONS"):
        return []
    try:
        from pybind11.setup_helpers import Pybind11Extension
    except ImportError:
        print("oxide: pybind11 is not importable at build time; skipping the C++ CPU core", file=sys.stderr)
        return []
    openmp = [] if sys.platform == "darwin" else ["-fopenmp"]   # Apple clang has no OpenMP of its own
    ext = Pybind11Extension(
        "oxide._cpu",
        sources,
        include_dirs=["csrc/cpu"],
        depends=sorted(str(p.relative_to(ROOT)) for pattern in ("*.h", "*.inc") for p in (ROOT / "csrc" / "cpu").glob(pattern)),
        cxx_std=17,
        extra_compile_args=["-O3", "-fno-math-errno", *openmp],
        extra_link_args=openmp,
    )
    ext.optional = True   # a failed compile leaves the pure-Python package installed
    return [ext]


def _cuda_home() -> Path | None:
    """The CUDA toolkit: ``CUDA_HOME`` (or ``CUDA_PATH``), else the one holding ``nvcc`` on the PATH, else
    ``/usr/local/cuda``; None when none has ``bin/nvcc`` and ``include/cuda_runtime.h``."""
    named = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    nvcc = shutil.which("nvcc")
    candidates = [Path(named)] if named else [*([Path(nvcc).resolve().parent.parent] if nvcc else []),
                                               Path("/usr/local/cuda")]
    return next((home for home in candidates
                 if (home / "bin" / "nvcc").exists() and (home / "include" / "cuda_runtime.h").exists()), None)


def _torch_cuda() -> str | None:
    """The CUDA version the installed torch was built with (None: no torch here, or a CPU-only build)."""
    if importlib.util.find_spec("torch") is None:
        return None
    import torch

    return torch.version.cuda


def _cuda_extension() -> list:
    if os.environ.get("OXIDE_NO_EXTENSIONS"):
        return []
    home = _cuda_home()
    if home is None:
        return []
    if not _torch_cuda():
        print("oxide: torch has no CUDA here (or is not importable at build time); skipping oxide._cuda",
              file=sys.stderr)
        return []
    try:
        from pybind11.setup_helpers import Pybind11Extension
    except ImportError:
        print("oxide: pybind11 is not importable at build time; skipping oxide._cuda", file=sys.stderr)
        return []
    folder = ROOT / "csrc" / "cuda"
    ext = Pybind11Extension(
        "oxide._cuda",
        ["csrc/cuda/module.cpp", *sorted(str(p.relative_to(ROOT)) for p in folder.glob("*.cu"))],
        include_dirs=["csrc/cuda"],
        depends=sorted(str(p.relative_to(ROOT)) for pattern in ("*.h", "*.cuh") for p in folder.glob(pattern)),
        library_dirs=[str(home / "lib64")],
        libraries=["cudart_static", "dl", "rt", "pthread"],
        cxx_std=17,
        extra_compile_args=["-O3"],
    )
    ext.optional = True   # a failed compile leaves the package (and oxide._cpu) installed
    ext.cuda_home = home
    return [ext]


def _gencode() -> list[str]:
    """nvcc's targets: a cubin per architecture of ``OXIDE_CUDA_ARCHS`` and PTX of the last one."""
    archs = [a.strip() for a in os.environ.get("OXIDE_CUDA_ARCHS", "80;90").split(";") if a.strip()]
    flags = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    return [*flags, f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}"]


class BuildExt(build_ext):
    """``build_ext`` that compiles an extension's ``.cu`` sources with nvcc and links their objects in."""

    def build_extension(self, ext) -> None:
        cuda_sources = [s for s in ext.sources if s.endswith(".cu")]
        if cuda_sources:
            ext.sources = [s for s in ext.sources if not s.endswith(".cu")]
            ext.extra_objects = [*ext.extra_objects, *(self._nvcc(src, ext) for src in cuda_sources)]
        super().build_extension(ext)

    def _nvcc(self, source: str, ext) -> str:
        obj = Path(self.build_temp) / (source.replace("/", "_") + ".o")
        obj.parent.mkdir(parents=True, exist_ok=True)
        command = [str(ext.cuda_home / "bin" / "nvcc"), "-c", source, "-o", str(obj), "-std=c++17", "-O3",
                   "-Xcompiler", "-fPIC", *(f"-I{d}" for d in ext.include_dirs), *_gencode()]
        print(" ".join(command), file=sys.stderr)
        if subprocess.run(command).returncode != 0:
            raise CompileError(f"nvcc failed on {source}")
        return str(obj)


setup(
    packages=[*find_packages(include=["oxide", "oxide.*"]), "oxide.kernels"],
    package_dir={"oxide.kernels": "kernels"},
    ext_modules=[*_cpu_extension(), *_cuda_extension()],
    cmdclass={"build_ext": BuildExt},
)
