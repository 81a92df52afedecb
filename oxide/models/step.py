"""Decode steps: one token in, the next position's logits out, replayed by the compiled core where it can.

A decode step of a small model is ~300 op calls, and on the CPU each costs 3-5 µs of Python around
its C++ kernel. :class:`DecodeStep` records the model's own forward for one step into a C++ program
(:mod:`oxide.ops.cpu.program`) and replays it for every later step: one call per token. The forward
stays the model's one definition; the program is a trace of it, bound to one KV cache.
"""

from __future__ import annotations

import torch

from ..cache import KVCache
from ..log import get_logger
from ..ops import cpu
from ..ops.cpu.program import NotRecordable, recording
from .decoder import DecoderLM

log = get_logger("step")


class DecodeStep:
    """``step(token)`` runs ``token`` at the next position of ``cache`` and returns that position's float32
    logits (V,), as ``lm.forward(tensor([[token]]), cache, last_only=True)[0, -1]`` does.

    On the CPU with the compiled core, the first step runs the Python forward while recording it, and
    later steps write the token and its position into the step's input buffers and replay the program.
    Where the forward cannot be recorded (another device, ``OXIDE_IMPL=torch``, a weight type the
    compiled core lacks, a layer that computes with torch between ops) every step runs the Python
    forward; :attr:`compiled` says which. The program is recorded again if the thread count changes.

    The logits returned are a buffer that the next step overwrites: sample from it (or copy it) first.
    """

    def __init__(self, lm: DecoderLM, cache: KVCache) -> None:
        self.lm, self.cache = lm, cache
        self.compiled = lm.device.type == "cpu" and cpu.available()
        self._ids = torch.zeros((1, 1), dtype=torch.long)          # the token, (1, 1), on the CPU
        self._positions = torch.zeros(1, dtype=torch.long)         # its position, (1,)
        self._ids_view, self._positions_view = self._ids.numpy().reshape(-1), self._positions.numpy()
        self._program = None                                      # the recorded oxide._cpu.StepProgram
        self._threads = 0                                         # the thread count it was recorded with
        self._kept: list[torch.Tensor] = []                       # the step's activations, which it writes
        self._logits: torch.Tensor | None = None                  # its output buffer, (V,)

    def __call__(self, token: int) -> torch.Tensor:
        if not self.compiled:
            return self.lm.forward(torch.tensor([[token]], device=self.lm.device), self.cache, last_only=True)[0, -1]
        self.lm.check_token(token)
        self.cache.check_room(1)
        self._ids_view[0] = token
        self._positions_view[0] = self.cache.seq_len
        self.lm.prepare_ropes(self.cache.seq_len + 1)   # a scaling whose frequencies follow the length
        if self._program is None or self._threads != cpu.threads():
            logits = self._record()
        else:
            self._program.run()
            logits = self._logits
        self.cache.advance(1)
        return logits

    def _record(self) -> torch.Tensor:
        """Run this step's forward while recording it; keep the program if the whole step was recorded."""
        program = cpu.extension().StepProgram()
        slots = {layer.k.data_ptr(): layer.size for layer in self.cache.layers}
        try:
            with recording(program, slots) as recorded:
                logits = self.lm.run(self._ids, self._positions, self.cache, last_only=True)
        except NotRecordable as e:
            return self._give_up(str(e))
        if logits.data_ptr() not in recorded.addresses:
            return self._give_up("its logits are not written by the compiled core")
        self._program, self._threads, self._kept = program, cpu.threads(), recorded.kept
        self._logits = logits[0, -1]
        log.debug("decode step recorded: %d compiled calls", len(program))
        return self._logits

    def _give_up(self, why: str) -> torch.Tensor:
        """Run the step in Python, now and from now on (the keys it stores overwrite any the recording stored)."""
        log.info("decode steps run the Python forward: %s", why)
        self.compiled, self._program, self._kept = False, None, []
        return self.lm.run(self._ids, self._positions, self.cache, last_only=True)[0, -1]
