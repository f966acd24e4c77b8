"""The three read workloads through every path, interleaved (each workload runs through
every path before the next workload starts, so that a busy moment on the machine hurts all
paths alike rather than one)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from . import libiscsi, session_api
from .fio import FioResult, QemuNbd, fio_workload, require_fio
from .procstat import CpuWindow
from .rig import DISK, READ_LUN, TARGET, Rig
from .workloads import Run, Workload

LIBISCSI = "libiscsi iscsi-perf"
SESSION_API = "pyiscsid session API"
NBD = "pyiscsid daemon, NBD (fio)"
BRIDGE = "fio -> qemu-nbd -> libiscsi (C)"
REFERENCE = "fio -> qemu-nbd, no iSCSI"
REFERENCE_SIZE = 256 << 20


@dataclass(frozen=True)
class Row:
    workload: Workload
    path: str
    run: Run


def _nbd_run(
    fio: FioResult, window: CpuWindow, workload: Workload, initiator: str | None, target: str
) -> Run:
    """CPU shares over fio's own runtime: the servers are idle outside it. ``initiator`` and
    ``target`` name the processes of ``window`` that play each part."""

    def share(name: str | None) -> float | None:
        seconds = window.seconds(name) if name is not None else None
        return seconds / fio.seconds if seconds is not None else None

    return Run(
        fio.iops,
        workload.length,
        workload.in_flight,
        initiator_cpu=share(initiator),
        target_cpu=share(target),
        client_cpu=fio.cpu,
    )


def _reference_file(rig: Rig) -> os.PathLike[str]:
    """What qemu-nbd serves: real data, not holes. For a sparse file qemu-nbd answers a read
    with a hole chunk (structured replies, which fio's libnbd asks for) and moves no data,
    while pyiscsid's simple replies always carry the bytes."""
    path = rig.root / "reference.img"
    block = os.urandom(1 << 20)
    with path.open("wb") as file:
        for _ in range(REFERENCE_SIZE >> 20):
            file.write(block)
    return path


def run(
    rig: Rig,
    paths: Sequence[str],
    workloads: Sequence[Workload],
    seconds: float,
    busy_poll_us: int = 0,
) -> list[Row]:
    """``busy_poll_us``: the daemon's ``iscsid.busy_poll`` and the session API's alike."""
    rows: list[Row] = []
    with contextlib.ExitStack() as stack:
        daemon = reference = bridge = None
        if NBD in paths or REFERENCE in paths or BRIDGE in paths:
            require_fio()
        if NBD in paths:
            config = f"iscsid.busy_poll = {busy_poll_us}\n"
            daemon = stack.enter_context(rig.daemon("nbd-daemon", config))
            daemon.login(rig.portal, TARGET)
        if REFERENCE in paths:
            served = _reference_file(rig)
            reference = stack.enter_context(QemuNbd(served, rig.root / "qemu-nbd.sock"))
        if BRIDGE in paths:
            bridge = stack.enter_context(QemuNbd(rig.url(), rig.root / "bridge.sock", "bridge"))
        for workload in workloads:
            for path in paths:
                print(f"  {workload.name}: {path}", file=sys.stderr, flush=True)
                if path == LIBISCSI:
                    result = libiscsi.iscsi_perf(rig.url(), workload, seconds, rig.tgtd_pid)
                elif path == SESSION_API:
                    result = session_api.session_run(
                        rig.portal,
                        TARGET,
                        READ_LUN,
                        DISK,
                        workload,
                        seconds,
                        rig.tgtd_pid,
                        busy_poll_us / 1e6,
                    )
                elif path == NBD and daemon is not None:
                    window = CpuWindow(daemon=daemon.pid, tgtd=rig.tgtd_pid)
                    fio = fio_workload(daemon.nbd_uri(rig.export()), workload, seconds)
                    result = _nbd_run(fio, window.stop(), workload, "daemon", "tgtd")
                elif path == BRIDGE and bridge is not None:
                    window = CpuWindow(qemu=bridge.pid, tgtd=rig.tgtd_pid)
                    fio = fio_workload(bridge.uri, workload, seconds)
                    result = _nbd_run(fio, window.stop(), workload, "qemu", "tgtd")
                elif path == REFERENCE and reference is not None:
                    window = CpuWindow(qemu=reference.pid)
                    fio = fio_workload(reference.uri, workload, seconds)
                    result = _nbd_run(fio, window.stop(), workload, None, "qemu")
                else:
                    raise ValueError(f"unknown path {path!r}")
                rows.append(Row(workload, path, result))
    return rows
