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
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import find_packages, setup

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


setup(
    packages=[*find_packages(include=["oxide", "oxide.*"]), "oxide.kernels"],
    package_dir={"oxide.kernels": "kernels"},
    ext_modules=_cpu_extension(),
)
