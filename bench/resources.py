"""What moving data costs the daemon: CPU seconds per GB and resident memory, over NBD
sequential writes and reads (128 KiB, 32 in flight) of a fresh daemon."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from .fio import fio_nbd, require_fio
from .procstat import CpuWindow, Memory, memory
from .rig import SCRATCH, TARGET, WRITE_LUN, Rig

BLOCK = 128 * 1024
IN_FLIGHT = 32


@dataclass(frozen=True)
class Phase:
    name: str
    bytes: int
    seconds: float
    daemon_cpu: float
    tgtd_cpu: float | None
    memory: Memory  # the daemon's, after the phase

    @property
    def gb(self) -> float:
        return self.bytes / 1e9

    @property
    def cpu_per_gb(self) -> float:
        return self.daemon_cpu / self.gb

    @property
    def mb_per_s(self) -> float:
        return self.bytes / self.seconds / 1e6


@dataclass(frozen=True)
class Resources:
    logged_in: Memory  # before any I/O
    phases: tuple[Phase, ...]


def run(rig: Rig, size: int) -> Resources:
    require_fio()
    size = min(size, SCRATCH)
    with rig.daemon("resources-daemon") as daemon:
        daemon.login(rig.portal, TARGET)
        uri = daemon.nbd_uri(rig.export(WRITE_LUN))
        before = memory(daemon.pid)
        phases = []
        for name, rw in (("sequential writes", "write"), ("sequential reads", "read")):
            print(f"  resources: {size >> 20} MiB of {name}", file=sys.stderr, flush=True)
            window = CpuWindow(daemon=daemon.pid, tgtd=rig.tgtd_pid)
            fio = fio_nbd(uri, rw=rw, block_size=BLOCK, in_flight=IN_FLIGHT, size=size)
            window.stop()
            daemon_cpu = window.seconds("daemon")
            assert daemon_cpu is not None
            phases.append(
                Phase(
                    name,
                    fio.bytes,
                    fio.seconds,
                    daemon_cpu,
                    window.seconds("tgtd"),
                    memory(daemon.pid),
                )
            )
    return Resources(before, tuple(phases))
