"""Recording one decode step of a model into a compiled ``oxide._cpu.StepProgram``.

A decode step calls into ``oxide._cpu`` about 300 times, each call behind a Python wrapper that checks
its tensors and lays out its arguments (3-5 µs a call, a fifth of a step on a small model).
:func:`recording` runs the model's own Python forward once with a recorder standing in for the module
(:func:`oxide.ops.cpu.extension` returns it on the recording thread): every call is made as usual and
also appended to the program with the same arguments. ``program.run()`` then replays the whole step in
one C++ call. The model keeps one definition, its forward; the program is a trace of it.

A replay is only valid if three things hold, and the recorder checks the last two:

- every address a recorded call uses outlives the program: weights and the KV cache belong to the model
  and the cache, and the step's activations are kept in :attr:`Recording.kept`;
- what changes from step to step is read from memory by the calls themselves (the token id and its
  position, which the caller writes into the step's input buffers), and an attention over a cache is
  recorded as ``attention_over_cache``, whose key count follows the position;
- nothing between two recorded calls computes with torch, since a replay would not redo it. A torch
  function mode watches the forward and notes the memory each torch op computes into (or writes in
  place); a recorded call that reads such memory, or a module function whose result goes back to
  Python, stops the recording with :class:`NotRecordable`, and the caller runs the Python forward.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from . import _recording, extension

# Module functions that only compute into memory, with the arguments they are given: these are recorded.
RECORDED = frozenset({"gemv", "dequantize_rows", "rms_norm", "add_rms_norm", "rope_cos_sin", "rope", "kv_store",
                      "attention", "gated_activation", "add", "scale", "softcap"})
# Module attributes that do no work of a step (building a GEMV plan, queries): passed through unrecorded.
PASSED_THROUGH = frozenset({"GemvPlan", "quant_types", "isa", "isas", "layer_isa", "openmp"})
# Torch functions that allocate without computing: the recorded calls fill what they return.
ALLOCATORS = frozenset({"empty", "empty_like", "new_empty"})
_LOWEST_ADDRESS = 1 << 16   # integer arguments below this are sizes, strides or flags, not addresses


class NotRecordable(Exception):
    """The forward did something a replay would not repeat; the message says what."""


class Recording:
    """What one recording produced besides the program: the tensors its calls use, and every address
    they were given (to check that the step's output was written by a recorded call)."""

    def __init__(self) -> None:
        self.kept: list[torch.Tensor] = []
        self.addresses: set[int] = set()
        self.computed: list[tuple[int, int, str]] = []   # [start, end) bytes that a torch op computed, and its name


@contextmanager
def recording(program: Any, cache_slots: dict[int, int]) -> Iterator[Recording]:
    """Record into ``program`` (an ``oxide._cpu.StepProgram``) every call this thread makes into the
    module inside the ``with`` block. ``cache_slots`` maps the address of each KV cache's key buffer to
    its slot count: an attention over it is recorded as ``attention_over_cache``."""
    result = Recording()
    recorder = _Recorder(extension(), program, cache_slots, result)
    _recording.recorder = recorder
    try:
        with _TorchWatch(result):
            yield result
    finally:
        _recording.recorder = None


class _Recorder:
    """Stands in for ``oxide._cpu``: each step function runs, then is appended to the program."""

    def __init__(self, module: Any, program: Any, cache_slots: dict[int, int], result: Recording) -> None:
        self._module, self._program, self._cache_slots, self._result = module, program, cache_slots, result

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._module, name)
        if name in PASSED_THROUGH:
            return attribute
        if name not in RECORDED:
            raise NotRecordable(f"oxide._cpu.{name} returns its result to Python, so a replay cannot repeat it")

        def call(*args: Any) -> Any:
            self._check_inputs(name, args)
            out = attribute(*args)
            self._record(name, args)
            return out
        return call

    def _check_inputs(self, name: str, args: tuple) -> None:
        for arg in args:
            if type(arg) is int and arg >= _LOWEST_ADDRESS:
                for start, end, op in self._result.computed:
                    if start <= arg < end:
                        raise NotRecordable(f"{name} reads memory that torch's {op} computed between the compiled "
                                            f"calls; a replay would not compute it again")

    def _record(self, name: str, args: tuple) -> None:
        self._result.addresses.update(a for a in args if type(a) is int and a >= _LOWEST_ADDRESS)
        if name == "attention" and args[3] in self._cache_slots:     # args[3]: the keys' address
            self._program.attention_over_cache(self._cache_slots[args[3]], *args)
        else:
            getattr(self._program, name)(*args)


class _TorchWatch(TorchFunctionMode):
    """Keeps every tensor made while recording alive (the program writes into them at each replay) and
    notes the memory each torch op computes into: new memory that is not a view or a bare allocation,
    an in-place op's target, or an ``out=`` argument."""

    def __init__(self, result: Recording) -> None:
        super().__init__()
        self._result = result

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", repr(func))
        produced = list(_tensors(out))
        self._result.kept.extend(produced)
        in_place = _writes_in_place(name)
        if in_place and args and isinstance(args[0], torch.Tensor):
            self._note(args[0], name)
        if "out" in kwargs:
            for t in _tensors(kwargs["out"]):
                self._note(t, name)
        if produced and name not in ALLOCATORS and not in_place:
            inputs = {_storage(t) for t in _tensors((args, kwargs))}
            for t in produced:
                if _storage(t) not in inputs:   # new memory that torch filled
                    self._note(t, name)
        return out

    def _note(self, t: torch.Tensor, op: str) -> None:
        storage = t.untyped_storage()
        start = storage.data_ptr()
        self._result.computed.append((start, start + storage.nbytes(), op))


_IN_PLACE_OPERATORS = frozenset(f"__i{op}__" for op in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow",
                                                        "matmul", "and", "or", "xor", "lshift", "rshift"))


def _writes_in_place(name: str) -> bool:
    """``add_``, ``copy_``, ``__setitem__``, ``__iadd__``: torch's names for ops that write their first argument."""
    dunder = name.startswith("__") and name.endswith("__")
    return (name.endswith("_") and not dunder) or name == "__setitem__" or name in _IN_PLACE_OPERATORS


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
