"""pyiscsid driven in this process through :class:`Session`, the path NBD requests take
inside the daemon, without NBD: what the iSCSI side alone can do."""

from __future__ import annotations

import asyncio
import random
import time

import uvloop
from pyiscsid.daemon.busypoll import BusyPoll
from pyiscsid.daemon.driver import discover
from pyiscsid.daemon.session import Session
from pyiscsid.protocol import scsi
from pyiscsid.protocol.config import ConnectionConfig
from pyiscsid.protocol.discovery import parse_portal

from .procstat import CpuWindow
from .workloads import SECTOR, Run, Workload

INITIATOR = "iqn.2026-11.bench.pyiscsid:session-api"


def _session(portal: str, target: str, busy_poll: float = 0.0) -> Session:
    """``busy_poll``: seconds, as the daemon's ``iscsid.busy_poll`` (0: off, the default)."""
    config = ConnectionConfig(INITIATOR, target, isid=Session.new_isid(), noop_out_interval=0)
    return Session(
        1,
        target,
        parse_portal(portal),
        config,
        login_timeout=10,
        logout_timeout=10,
        busy_poll=BusyPoll(busy_poll) if busy_poll > 0 else None,
    )


async def _run(
    portal: str,
    target: str,
    lun: int,
    disk: int,
    workload: Workload,
    seconds: float,
    busy_poll: float,
) -> tuple[int, float]:
    session = _session(portal, target, busy_poll)
    await session.login()
    last = disk // SECTOR - workload.blocks
    next_lba = 0
    done = 0
    deadline = time.monotonic() + seconds

    async def reader() -> None:
        nonlocal next_lba, done
        buffer = memoryview(bytearray(workload.length))
        while time.monotonic() < deadline:
            if workload.random:
                lba = random.randrange(0, last) // workload.blocks * workload.blocks
            else:
                lba, next_lba = next_lba, (next_lba + workload.blocks) % last
            cdb = scsi.read16(lba, workload.blocks)
            (await session.execute(cdb, lun=lun, read_buffer=buffer)).check()
            done += 1

    try:
        started = time.monotonic()
        await asyncio.gather(*(reader() for _ in range(workload.in_flight)))
        return done, time.monotonic() - started
    finally:
        await session.logout()


def session_run(
    portal: str,
    target: str,
    lun: int,
    disk: int,
    workload: Workload,
    seconds: float,
    tgtd_pid: int | None,
    busy_poll: float = 0.0,
) -> Run:
    window = CpuWindow(tgtd=tgtd_pid)
    done, elapsed = uvloop.run(_run(portal, target, lun, disk, workload, seconds, busy_poll))
    window.stop()
    return Run(
        done / elapsed,
        workload.length,
        workload.in_flight,
        initiator_cpu=window.own / window.wall,  # login and logout included: a few ms
        target_cpu=window.share("tgtd"),
    )


async def _login(portal: str, target: str) -> float:
    started = time.perf_counter()
    found = await discover(parse_portal(portal), ConnectionConfig(INITIATOR))
    if target not in {t.name for t in found}:
        raise RuntimeError(f"discovery at {portal} did not find {target}: {found}")
    session = _session(portal, target)
    await session.login()
    await session.logout()
    return time.perf_counter() - started


def discover_login_logout(portal: str, target: str) -> float:
    """SendTargets discovery, login with the LUN scan (REPORT LUNS, INQUIRY, READ CAPACITY,
    VPD identity pages), logout; in this process, so no start-up cost."""
    return uvloop.run(_login(portal, target))
