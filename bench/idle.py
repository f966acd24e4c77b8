"""Many idle sessions: N more targets in the one tgtd, a fresh daemon logs in to all of
them at once, then sits idle (pinging each connection with a NOP-Out every
noop_out_interval seconds without traffic); its memory, and its CPU per minute."""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass
from typing import Any

from pyiscsid.daemon.localtarget import make_sparse_file, parse_target_show

from .procstat import CpuWindow, Memory, memory
from .rig import TARGET, Rig

PREFIX = "iqn.2026-11.bench.pyiscsid:idle-"
FIRST_TID = 1000  # the bench's own target is tid 1
LUN_SIZE = 1 << 20
NOP_KEY = "node.conn[0].timeo.noop_out_interval"


@dataclass(frozen=True)
class Idle:
    sessions: int
    failed: list[str]
    seen_by_tgtd: int  # I_T nexuses of the idle targets, once logged in
    left_in_tgtd: int  # and after the logout
    setup_seconds: float  # tgtadm: N targets, LUNs and ACLs
    discovery_seconds: float  # discovery.sendtargets answering N + 1 targets
    login_seconds: float  # node.login all: N concurrent logins, LUN scans, NBD exports
    logout_seconds: float
    nop_interval: str  # as the daemon's node records say
    idle_seconds: float
    daemon_cpu: float
    tgtd_cpu: float | None
    nops: int  # NOP-Outs sent by the daemon during the idle window
    empty: Memory  # the daemon, started, no session
    logged_in: Memory  # after the logins
    after_idle: Memory
    after_logout: Memory

    def per_minute(self, value: float) -> float:
        return value / self.idle_seconds * 60


def _nop_outs(daemon_sessions: Any) -> int:
    return sum(int(s["stats"]["noptx_pdus"]) for s in daemon_sessions["sessions"])


def run(rig: Rig, count: int, idle_seconds: float) -> Idle:
    tgt = rig.tgt
    tids = range(FIRST_TID, FIRST_TID + count)
    with contextlib.ExitStack() as stack:
        # tgt lets LUNs of many targets share one backing file (checked with tgt 1.0.85).
        backing = make_sparse_file(rig.root / "idle.img", LUN_SIZE)
        print(f"  idle: {count} targets in tgtd", file=sys.stderr, flush=True)
        started = time.perf_counter()
        for tid in tids:
            stack.callback(_delete_target, rig, tid)
            tgt.add_target(tid, f"{PREFIX}{tid - FIRST_TID + 1:03d}")
            tgt.add_lun(tid, 1, backing)
            tgt.bind_all(tid)
        setup = time.perf_counter() - started

        daemon = stack.enter_context(rig.daemon("idle-daemon"))
        time.sleep(1)  # let start-up settle before the empty daemon's memory
        empty = memory(daemon.pid)
        print(f"  idle: logging in to {count} targets", file=sys.stderr, flush=True)
        started = time.perf_counter()
        daemon.request("discovery.sendtargets", {"portal": rig.portal})
        discovery = time.perf_counter() - started
        daemon.request("node.delete", {"target": TARGET})  # only the idle targets
        started = time.perf_counter()
        logins = daemon.request("node.login", {"all": "all"}, timeout=600)["logins"]
        login = time.perf_counter() - started
        failed = [f"{e['target']}: {e['error']['message']}" for e in logins if not e["ok"]]
        nop_interval = daemon.request("node.show", {"target": f"{PREFIX}001"})["nodes"][0][
            "settings"
        ][NOP_KEY]
        logged_in = memory(daemon.pid)
        seen = _tgtd_sessions(rig, tids)

        print(f"  idle: {idle_seconds:.0f} s of idle", file=sys.stderr, flush=True)
        nops_before = _nop_outs(daemon.request("session.show"))
        window = CpuWindow(daemon=daemon.pid, tgtd=rig.tgtd_pid)
        time.sleep(idle_seconds)
        window.stop()
        nops = _nop_outs(daemon.request("session.show")) - nops_before
        after_idle = memory(daemon.pid)

        started = time.perf_counter()
        daemon.request("node.logout", {"all": "all"}, timeout=600)
        logout = time.perf_counter() - started
        after_logout = memory(daemon.pid)
        left = _tgtd_sessions(rig, tids)
        daemon_cpu = window.seconds("daemon")
        assert daemon_cpu is not None
        return Idle(
            sessions=len(logins) - len(failed),
            failed=failed,
            seen_by_tgtd=seen,
            left_in_tgtd=left,
            setup_seconds=setup,
            discovery_seconds=discovery,
            login_seconds=login,
            logout_seconds=logout,
            nop_interval=str(nop_interval),
            idle_seconds=window.wall,
            daemon_cpu=daemon_cpu,
            tgtd_cpu=window.seconds("tgtd"),
            nops=nops,
            empty=empty,
            logged_in=logged_in,
            after_idle=after_idle,
            after_logout=after_logout,
        )


def _tgtd_sessions(rig: Rig, tids: range) -> int:
    """How many sessions tgtd itself has on the idle targets (one ``tgtadm`` call)."""
    shown = parse_target_show(rig.tgt.tgtadm("--op", "show", "--mode", "target").stdout)
    return sum(len(sessions) for tid, (_, sessions) in shown.items() if tid in tids)


def _delete_target(rig: Rig, tid: int) -> None:
    """After the daemon has logged out; if it did not, tgtd's own stop deals with the rest."""
    rig.tgt.tgtadm(
        "--op", "delete", "--mode", "target", "--tid", str(tid), "--force", check=False
    )  # fmt: skip
