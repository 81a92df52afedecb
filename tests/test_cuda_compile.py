"""The CUDA sources compile, warnings as errors, wherever nvcc exists (no GPU needed): CI's check on them.

Every ``csrc/cuda/*.cu`` is compiled by nvcc (``-c``) for sm_80 and sm_90 with nvcc's, the host compiler's and
ptxas's warnings (register spills, local memory) as errors; ``module.cpp`` by the C++ compiler with the
pybind11 and Python headers, ``-Wall -Wextra -Werror``. The compiles run in parallel in a temporary folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CUDA = ROOT / "csrc" / "cuda"
ARCHS = (80, 90)


def _nvcc() -> str | None:
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and (Path(home) / "bin" / "nvcc").exists():
        return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc") or next((str(p) for p in [Path("/usr/local/cuda/bin/nvcc")] if p.exists()), None)


NVCC = _nvcc()
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc (the CUDA toolkit) is not installed")


def _nvcc_command(source: Path, out: Path) -> list[str]:
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in ARCHS]
    return [NVCC, "-c", str(source), "-o", str(out), "-std=c++17", "-O3", f"-I{CUDA}", *gencode,
            "-Werror", "all-warnings", "-Xcompiler", "-Wall,-Wextra,-Werror",
            "-Xptxas", "-warn-spills,-warn-lmem-usage"]


def _cxx_command(source: Path, out: Path) -> list[str]:
    import pybind11

    cxx = os.environ.get("CXX") or shutil.which("c++") or "g++"
    return [cxx, "-c", str(source), "-o", str(out), "-std=c++17", "-O1", "-fPIC", "-Wall", "-Wextra", "-Werror",
            f"-I{CUDA}", f"-I{pybind11.get_include()}", f"-I{sysconfig.get_paths()['include']}"]


def _run(command: list[str]) -> tuple[list[str], subprocess.CompletedProcess]:
    return command, subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_cuda_sources_compile_without_warnings(tmp_path: Path) -> None:
    sources = sorted(CUDA.glob("*.cu"))
    assert sources, "csrc/cuda holds no .cu files"
    commands = [_nvcc_command(s, tmp_path / f"{s.stem}.o") for s in sources]
    commands.append(_cxx_command(CUDA / "module.cpp", tmp_path / "module.o"))
    with ThreadPoolExecutor(max_workers=len(commands)) as pool:
        results = list(pool.map(_run, commands))
    failures = [f"$ {' '.join(cmd)}\n{res.stdout}{res.stderr}" for cmd, res in results if res.returncode != 0]
    assert not failures, "\n\n".join(failures)
    noisy = [f"$ {' '.join(cmd)}\n{res.stderr}" for cmd, res in results if res.stderr.strip()]
    assert not noisy, "compilers printed diagnostics:\n" + "\n\n".join(noisy)
