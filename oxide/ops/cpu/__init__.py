"""The compiled CPU core, ``oxide._cpu``, seen from Python: loading it, and what runs and why.

The module is built from ``csrc/cpu`` by the ordinary install. It is optional: where it is missing
(no compiler at install time, ``OXIDE_NO_EXTENSIONS=1``) every op runs its PyTorch reference and
:func:`status` says why. ``OXIDE_CPU_ISA=generic|avx2|avx512|avx512vnni`` picks an instruction set below the
best one the CPU has (for comparisons and tests); one the CPU lacks is an error.
"""

from __future__ import annotations

import os
import threading
from types import ModuleType

import torch

from ...errors import InvalidOptionError
from ...once import once


@once
def _load() -> tuple[ModuleType | None, str]:
    try:
        from ... import _cpu
    except ImportError as e:
        return None, f"the compiled CPU core is not built ({e}); reinstall oxide with a C++ compiler present"
    wanted = os.environ.get("OXIDE_CPU_ISA")
    if wanted:
        if wanted not in _cpu.isas():
            raise InvalidOptionError(f"OXIDE_CPU_ISA={wanted!r} is not supported here; this CPU runs: "
                                     f"{', '.join(_cpu.isas())}")
        _cpu.set_isa(wanted)
    return _cpu, ""


_recording = threading.local()   # .recorder: this thread's oxide.ops.cpu.program recorder, while one records


def extension() -> ModuleType:
    """The loaded ``oxide._cpu`` module (call only when :func:`available`); while this thread records a
    decode step (:mod:`oxide.ops.cpu.program`), the recorder that stands in for it."""
    recorder = getattr(_recording, "recorder", None)
    if recorder is not None:
        return recorder
    module, why = _load()
    if module is None:
        raise ImportError(why)
    return module


def available() -> bool:
    return _load()[0] is not None


def threads() -> int:
    """Threads the kernels use: torch's intra-op setting, so one knob governs both."""
    return torch.get_num_threads()


def status() -> str:
    """One line for ``oxide info``: which CPU implementation runs, and why."""
    module, why = _load()
    if module is None:
        return f"PyTorch reference ({why})"
    pool = "OpenMP" if module.openmp else "single-threaded (built without OpenMP)"
    return f"compiled core oxide._cpu, {module.isa()} kernels (CPU supports {', '.join(module.isas())}), {pool}, {threads()} threads"
