"""CPU time and memory of processes, from /proc (what `ps` and `top` read)."""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (every thread), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # Fields after "(comm)": state is field 3 of proc(5), utime 14 and stime 15.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


@dataclass(frozen=True)
class Memory:
    rss_mib: float  # VmRSS: resident now
    peak_mib: float  # VmHWM: the most it was ever resident


def memory(pid: int) -> Memory:
    values: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024  # kB
    return Memory(values["VmRSS"], values["VmHWM"])


def own_cpu_seconds() -> float:
    return time.process_time()


def children_cpu_seconds() -> float:
    """CPU of the children this process has waited for (iscsi-perf, iscsi-inq...)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class CpuWindow:
    """CPU used by some processes over a stretch of wall time::

    window = CpuWindow(daemon=pid, tgtd=tgt_pid)
    ... work ...
    window.stop()
    window.seconds("daemon"), window.share("tgtd")  # share: of one core, over the window
    """

    def __init__(self, **pids: int | None) -> None:
        self._pids = {name: pid for name, pid in pids.items() if pid is not None}
        self._start = {name: cpu_seconds(pid) for name, pid in self._pids.items()}
        self._end: dict[str, float] = {}
        self._own = own_cpu_seconds()
        self._children = children_cpu_seconds()
        self._wall = time.monotonic()
        self.wall = 0.0
        self.own = 0.0
        self.children = 0.0

    def stop(self) -> CpuWindow:
        self._end = {name: cpu_seconds(pid) for name, pid in self._pids.items()}
        self.wall = time.monotonic() - self._wall
        self.own = own_cpu_seconds() - self._own
        self.children = children_cpu_seconds() - self._children
        return self

    def seconds(self, name: str) -> float | None:
        if name not in self._end:
            return None
        return self._end[name] - self._start[name]

    def share(self, name: str) -> float | None:
        used = self.seconds(name)
        return used / self.wall if used is not None and self.wall > 0 else None
