"""4 KiB reads with 1 in flight under fixed CPU placements, libiscsi and pyiscsid alike.

On 2 CPUs the scheduler sometimes runs the initiator on tgtd's CPU and sometimes not, and
the latency of one request at a time depends on that more than on the initiator: a hand-off
on one CPU is a context switch, across CPUs a wake-up of an idle CPU. The unpinned figure
of the main table is whichever the scheduler chose; these rows fix the choice for both
initiators, so that the 1-in-flight ratio can be read for each case.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from . import libiscsi, session_api
from .rig import DISK, READ_LUN, TARGET, Rig
from .workloads import Run, Workload

PLACEMENTS = (
    ("tgtd on CPU 0, initiator on CPU 1", 0, 1),
    ("tgtd and initiator both on CPU 0", 0, 0),
)


@dataclass(frozen=True)
class PlacementRow:
    placement: str
    libiscsi: Run
    pyiscsid: Run


@contextmanager
def _pinned(tgtd_pid: int, target_cpu: int, initiator_cpu: int) -> Iterator[None]:
    """tgtd on one CPU, this process (the session API runs in it, and iscsi-perf inherits
    its affinity) on another; both back on every CPU afterwards."""
    everywhere = os.sched_getaffinity(0)
    os.sched_setaffinity(tgtd_pid, {target_cpu})
    os.sched_setaffinity(0, {initiator_cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, everywhere)
        os.sched_setaffinity(tgtd_pid, everywhere)


def run(rig: Rig, workload: Workload, seconds: float) -> list[PlacementRow]:
    tgtd = rig.tgtd_pid
    if tgtd is None or len(os.sched_getaffinity(0)) < 2:
        return []
    rows = []
    for name, target_cpu, initiator_cpu in PLACEMENTS:
        print(f"  placement: {name}", file=sys.stderr, flush=True)
        with _pinned(tgtd, target_cpu, initiator_cpu):
            theirs = libiscsi.iscsi_perf(rig.url(), workload, seconds, tgtd)
            ours = session_api.session_run(
                rig.portal, TARGET, READ_LUN, DISK, workload, seconds, tgtd
            )
        rows.append(PlacementRow(name, theirs, ours))
    return rows
