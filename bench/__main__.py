"""`make bench`: pyiscsid against libiscsi's iscsi-perf, on one tgtd, in one run.

Prints a table of IOPS and MB/s for each workload and the ratio pyiscsid / libiscsi, then
the login latency of both. Speed targets (issue 6) are judged on these ratios, never in
tests. pyiscsid is driven through its session API (the path NBD requests take).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import uvloop
from pyiscsid.daemon.driver import open_connection
from pyiscsid.daemon.localtarget import TgtTarget
from pyiscsid.daemon.session import Session
from pyiscsid.protocol import scsi
from pyiscsid.protocol.config import ConnectionConfig
from pyiscsid.protocol.discovery import parse_portal

IQN = "iqn.2026-11.bench.pyiscsid:disk"
INITIATOR = "iqn.2026-11.bench.pyiscsid:initiator"
DISK = 1 << 30  # sparse: reads cost the target no disk I/O, for either initiator
SECTOR = 512


@dataclass(frozen=True)
class Workload:
    name: str
    blocks: int  # 512-byte blocks per request
    in_flight: int
    random: bool


WORKLOADS = (
    Workload("sequential 128 KiB reads, 32 in flight", 256, 32, False),
    Workload("random 4 KiB reads, 32 in flight", 8, 32, True),
    Workload("4 KiB reads, 1 in flight", 8, 1, False),
)


def libiscsi_iops(url: str, workload: Workload, seconds: int) -> float:
    argv = ["iscsi-perf", "-i", INITIATOR, "-m", str(workload.in_flight)]
    argv += ["-b", str(workload.blocks), "-t", str(seconds)]
    if workload.random:
        argv.append("-r")
    done = subprocess.run([*argv, url], capture_output=True, text=True, timeout=seconds + 30)
    found = re.findall(r"iops average (\d+)", done.stdout)
    if not found:
        raise RuntimeError(f"iscsi-perf said: {done.stdout[-500:]} {done.stderr[-500:]}")
    return float(found[-1])


async def pyiscsid_iops(portal: str, workload: Workload, seconds: float) -> float:
    config = ConnectionConfig(INITIATOR, IQN, isid=Session.new_isid(), noop_out_interval=0)
    session = Session(1, IQN, parse_portal(portal), config, login_timeout=10, logout_timeout=10)
    await session.login()
    last = DISK // SECTOR - workload.blocks
    length = workload.blocks * SECTOR
    next_lba = 0
    done = 0
    deadline = time.monotonic() + seconds

    async def reader() -> None:
        nonlocal next_lba, done
        buffer = memoryview(bytearray(length))
        while time.monotonic() < deadline:
            if workload.random:
                lba = random.randrange(0, last) // workload.blocks * workload.blocks
            else:
                lba, next_lba = next_lba, (next_lba + workload.blocks) % last
            cdb = scsi.read16(lba, workload.blocks)
            (await session.execute(cdb, lun=1, read_buffer=buffer)).check()
            done += 1

    started = time.monotonic()
    await asyncio.gather(*(reader() for _ in range(workload.in_flight)))
    elapsed = time.monotonic() - started
    await session.logout()
    return done / elapsed


async def pyiscsid_login(portal: str, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        config = ConnectionConfig(INITIATOR, IQN, isid=Session.new_isid(), noop_out_interval=0)
        conn = await open_connection(parse_portal(portal), config)
        await conn.logout()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def libiscsi_login(url: str, rounds: int) -> float:
    """iscsi-inq: a process that logs in, sends one INQUIRY and logs out."""
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        subprocess.run(["iscsi-inq", "-i", INITIATOR, url], capture_output=True, timeout=30)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(prog="make bench", description=__doc__)
    parser.add_argument("--seconds", type=int, default=5, help="per workload and initiator")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pyiscsid-bench-") as tmp, TgtTarget(tmp) as tgt:
        tgt.add_disk(1, IQN, Path(tmp) / "disk.img", DISK)
        url = tgt.url(IQN, 1)
        print(f"tgtd at {tgt.portal}, {DISK >> 20} MiB sparse LUN, {args.seconds} s per run\n")
        print(f"{'workload':42} {'libiscsi':>16} {'pyiscsid':>16} {'ratio':>6}")
        for workload in WORKLOADS:
            theirs = libiscsi_iops(url, workload, args.seconds)
            ours = uvloop.run(pyiscsid_iops(tgt.portal, workload, args.seconds))
            mb = workload.blocks * SECTOR / 1e6
            print(
                f"{workload.name:42} {theirs:7.0f} IOPS {theirs * mb:4.0f}MB/s"
                f" {ours:7.0f} IOPS {ours * mb:4.0f}MB/s {ours / theirs:6.2f}"
            )
        ours_login = uvloop.run(pyiscsid_login(tgt.portal, 20))
        theirs_login = libiscsi_login(url, 20)
        print(
            f"\nlogin + logout, median of 20: pyiscsid {ours_login * 1000:.2f} ms, "
            f"iscsi-inq (a whole process, with one INQUIRY) {theirs_login * 1000:.2f} ms"
        )


if __name__ == "__main__":
    main()
