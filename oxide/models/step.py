"""Decode steps: one token in, the next position's logits out, replayed where the device allows.

A decode step of a small model is ~300 op calls, and each costs a few µs of Python (and, on a GPU, a
kernel launch) around a kernel that may itself take less. :class:`DecodeStep` runs the model's own
forward once and replays it for every later step:

- on the CPU with the compiled core, recorded into a C++ program (:mod:`oxide.ops.cpu.program`): one
  call per token;
- on a CUDA device, captured into a CUDA graph (:class:`CudaGraphStep`): one graph launch per token,
  over the KV cache's static views (every slot, the empty ones masked).

The forward stays the model's one definition; the program or graph is a trace of it, bound to one KV
cache.
"""

from __future__ import annotations

import os

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
        self.graph = CudaGraphStep(lm, cache) if CudaGraphStep.wanted(lm) else None
        self.compiled = lm.device.type == "cpu" and cpu.available()
        self._ids = torch.zeros((1, 1), dtype=torch.long)          # the token, (1, 1), on the CPU
        self._positions = torch.zeros(1, dtype=torch.long)         # its position, (1,)
        self._ids_view, self._positions_view = self._ids.numpy().reshape(-1), self._positions.numpy()
        self._program = None                                      # the recorded oxide._cpu.StepProgram
        self._threads = 0                                         # the thread count it was recorded with
        self._kept: list[torch.Tensor] = []                       # the step's activations, which it writes
        self._logits: torch.Tensor | None = None                  # its output buffer, (V,)

    def __call__(self, token: int) -> torch.Tensor:
        if self.graph is not None:
            return self.graph(token)
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


class CudaGraphStep:
    """A decode step on a CUDA device, captured into a CUDA graph and replayed per token.

    The token and its position live in device buffers the graph reads; the KV cache gives every layer's
    full buffers (:meth:`KVCache.use_static_views`), so no shape depends on the position. The first step
    runs the forward eagerly (compiling any Triton kernel and warming the allocator), then captures it;
    later steps fill the buffers and replay. The graph is captured again when a RoPE scaling changes its
    regime (its frequencies are constants of the graph). A forward that cannot be captured (an op that
    reads a value back to the host, as the reference expert op does) is run eagerly from then on, with a
    log line. ``OXIDE_CUDA_GRAPHS=0`` turns graphs off.
    """

    def __init__(self, lm: DecoderLM, cache: KVCache) -> None:
        self.lm, self.cache = lm, cache
        cache.use_static_views()
        self._ids = torch.zeros((1, 1), dtype=torch.long, device=lm.device)
        self._positions = torch.zeros(1, dtype=torch.long, device=lm.device)
        self._graph: torch.cuda.CUDAGraph | None = None
        self._logits: torch.Tensor | None = None              # the graph's output buffer, (V,)
        self._regimes: tuple | None = None                    # the RoPE regimes it was captured with
        self.failed = False

    @staticmethod
    def wanted(lm: DecoderLM) -> bool:
        return lm.device.type == "cuda" and os.environ.get("OXIDE_CUDA_GRAPHS", "1") != "0"

    def __call__(self, token: int) -> torch.Tensor:
        self.lm.check_token(token)
        self.cache.check_room(1)
        self._ids.fill_(token)
        self._positions.fill_(self.cache.seq_len)
        self.lm.prepare_ropes(self.cache.seq_len + 1)
        if self._graph is not None and self._regimes == self.lm.rope_regimes():
            self._graph.replay()
            logits = self._logits
        else:
            logits = self.lm.run(self._ids, self._positions, self.cache, last_only=True)[0, -1]
            if not self.failed:
                self._capture()
        self.cache.advance(1)
        return logits

    def _capture(self) -> None:
        """Capture this step's forward (its kernels are recorded, not run: the cache is left as the eager
        run wrote it)."""
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                out = self.lm.run(self._ids, self._positions, self.cache, last_only=True)
        except RuntimeError as e:
            log.info("decode steps run without a CUDA graph: the forward cannot be captured (%s)", e)
            self.failed, self._graph = True, None
            return
        self._graph, self._logits, self._regimes = graph, out[0, -1], self.lm.rope_regimes()
