"""libiscsi, the reference initiator: ``iscsi-perf`` for the workloads, ``iscsi-ls`` and
``iscsi-inq`` for login latency. Each tool is a whole process per run."""

from __future__ import annotations

import re
import subprocess
import time

from .procstat import CpuWindow
from .workloads import Run, Workload

INITIATOR = "iqn.2026-11.bench.pyiscsid:libiscsi"


def iscsi_perf(url: str, workload: Workload, seconds: float, tgtd_pid: int | None) -> Run:
    """iscsi-perf prints an "iops average" line per second and a last one for the whole run."""
    argv = ["iscsi-perf", "-i", INITIATOR, "-m", str(workload.in_flight)]
    argv += ["-b", str(workload.blocks), "-t", str(max(1, round(seconds)))]
    if workload.random:
        argv.append("-r")
    window = CpuWindow(tgtd=tgtd_pid)
    done = subprocess.run([*argv, url], capture_output=True, text=True, timeout=seconds + 60)
    window.stop()
    found = re.findall(r"iops average (\d+)", done.stdout)
    if not found:
        raise RuntimeError(f"iscsi-perf said: {done.stdout[-500:]} {done.stderr[-500:]}")
    return Run(
        float(found[-1]),
        workload.length,
        workload.in_flight,
        initiator_cpu=window.children / window.wall,
        target_cpu=window.share("tgtd"),
    )


def _timed(argv: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited {done.returncode}: {done.stdout}{done.stderr}")
    return elapsed


def discover_and_scan(portal: str) -> float:
    """``iscsi-ls -s``: SendTargets discovery, then for each target a login, REPORT LUNS,
    INQUIRY and READ CAPACITY of each LUN, and a logout."""
    return _timed(["iscsi-ls", "-i", INITIATOR, "-s", f"iscsi://{portal}"])


def discover_then_inquire(portal: str, url: str) -> float:
    """``iscsi-ls`` (discovery) then ``iscsi-inq`` (login, one INQUIRY, logout)."""
    return _timed(["iscsi-ls", "-i", INITIATOR, f"iscsi://{portal}"]) + _timed(
        ["iscsi-inq", "-i", INITIATOR, url]
    )
