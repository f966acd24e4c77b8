"""Login latency: discovery + login + logout, by each initiator, median of several rounds."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from . import libiscsi, session_api
from .daemon import BIN, BenchDaemon
from .rig import TARGET, Rig

BASELINE = "libiscsi iscsi-ls -s"


@dataclass(frozen=True)
class LoginRow:
    path: str
    what: str
    times: tuple[float, ...]

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times) * 1000

    @property
    def min_ms(self) -> float:
        return min(self.times) * 1000


def _daemon_round(daemon: BenchDaemon, portal: str) -> float:
    started = time.perf_counter()
    daemon.login(portal, TARGET)
    daemon.logout(TARGET)
    return time.perf_counter() - started


def _pyiscsiadm_round(daemon: BenchDaemon, portal: str) -> float:
    env = {**os.environ, "PYISCSID_SOCKET": str(daemon.socket)}
    adm = str(BIN / "pyiscsiadm")
    started = time.perf_counter()
    for argv in (
        [adm, "-m", "discovery", "-t", "st", "-p", portal],
        [adm, "-m", "node", "-T", TARGET, "-p", portal, "--login"],
        [adm, "-m", "node", "-T", TARGET, "-p", portal, "--logout"],
    ):
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[1:])}: exit {done.returncode}: {done.stderr}")
    return time.perf_counter() - started


def run(rig: Rig, rounds: int) -> list[LoginRow]:
    portal, url = rig.portal, rig.url()
    with rig.daemon("login-daemon") as daemon:
        measures: list[tuple[str, str, Callable[[], float]]] = [
            (
                BASELINE,
                "1 process: discovery, login, LUN scan, logout",
                lambda: libiscsi.discover_and_scan(portal),
            ),
            (
                "libiscsi iscsi-ls + iscsi-inq",
                "2 processes: discovery; login, INQUIRY, logout",
                lambda: libiscsi.discover_then_inquire(portal, url),
            ),
            (
                "pyiscsid session API",
                "in process: discovery, login, LUN scan, logout",
                lambda: session_api.discover_login_logout(portal, TARGET),
            ),
            (
                "pyiscsid daemon, control socket",
                "discovery, login (LUN scan, NBD export), logout",
                lambda: _daemon_round(daemon, portal),
            ),
            (
                "pyiscsiadm -> daemon",
                "3 processes: -m discovery, --login, --logout",
                lambda: _pyiscsiadm_round(daemon, portal),
            ),
        ]
        rows = []
        for path, what, measure in measures:
            print(f"  login: {path}", file=sys.stderr, flush=True)
            measure()  # warm-up: page cache, imports, the node record
            rows.append(LoginRow(path, what, tuple(measure() for _ in range(rounds))))
    return rows
