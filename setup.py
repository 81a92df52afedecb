"""Build script: the pure-Python package always installs; ``oxide.kernels`` comes from ``kernels/``.

C++/CUDA sources in ``csrc/`` are compiled into ``oxide._C`` only when torch is importable at build
time (``pip install --no-build-isolation -e .``) and a compiler is present; otherwise the package
installs without them and the ops use their PyTorch references.
"""

from __future__ import annotations

import os
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent


def _extensions() -> tuple[list, dict]:
    sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").glob("*.cpp"))
    if not sources or os.environ.get("OXIDE_NO_EXTENSIONS"):
        return [], {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        print("oxide: torch is not importable at build time; skipping the C++ extension")
        return [], {}
    ext = CppExtension("oxide._C", sources, extra_compile_args=["-O3", "-march=native", "-fopenmp"],
                       extra_link_args=["-fopenmp"])
    return [ext], {"build_ext": BuildExtension}


ext_modules, cmdclass = _extensions()
setup(
    packages=[*find_packages(include=["oxide", "oxide.*"]), "oxide.kernels"],
    package_dir={"oxide.kernels": "kernels"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
