"""How much CPU time other processes took while a measurement ran (Linux ``/proc``).

On a machine shared with other work, a throughput figure means little without this: ``others_share`` is the
fraction of all cores' time, over the measured interval, spent by processes other than the ones measured
(the server and the benchmark's own client).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (``/proc/stat``: everything but idle and iowait)."""
    user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in Path("/proc/stat").read_text()
                                                              .split("\n", 1)[0].split()[1:9])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def process_seconds(pid: int) -> float:
    """User plus system CPU seconds of process ``pid`` (all its threads) since it started."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()   # fields from the 3rd (state) on
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS                     # the 14th and 15th: utime, stime


class CpuMeter:
    """Started on creation; :meth:`stop` gives the interval's wall time, the measured processes' CPU seconds and
    the share of all cores' time that the other processes took."""

    def __init__(self, pids: Sequence[int]) -> None:
        self.pids = list(pids)
        self.wall, self.busy, self.ours = time.perf_counter(), busy_seconds(), self._ours()

    def _ours(self) -> float:
        return sum(process_seconds(pid) for pid in self.pids)

    def stop(self) -> dict[str, float]:
        wall = time.perf_counter() - self.wall
        busy, ours = busy_seconds() - self.busy, self._ours() - self.ours
        return {"measured_cpu_s": ours, "others_cpu_s": max(busy - ours, 0.0),
                "others_share": max(busy - ours, 0.0) / (wall * (os.cpu_count() or 1))}
