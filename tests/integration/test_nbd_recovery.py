"""An NBD client must not notice an outage shorter than replacement_timeout, and must get
EIO, not a hang, for a longer one.

Everything is real: the pyiscsid daemon process (tests/daemon_process.py) logged in to a
real tgtd, and qemu-io as the NBD client on the daemon's NBD socket, driven command by
command on its stdin while a fault happens: it writes blocks whose pattern changes with
every write (alternating with 1.5 MiB writes, which the export splits into several SCSI
commands) and reads back, with qemu-io's own pattern check, a block it wrote before. Faults:
tgtd frozen (SIGSTOP) for longer than the NOP-Out timeout, the connection dropped by
``tgtadm``, and tgtd frozen for longer than replacement_timeout. Waits are on states
(the daemon's ``session.list``/``session.show``, qemu-io's answers), each bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import TgtDisk
from tests.daemon_process import Daemon
from tests.nbd_clients import WAIT, QemuIo

pytestmark = [
    pytest.mark.tgtd,
    pytest.mark.skipif(
        not all(shutil.which(tool) for tool in ("qemu-io", "nbdinfo")),
        reason="needs qemu-utils and libnbd-bin",
    ),
]

REPLACEMENT_TIMEOUT = 2
FAST_PINGS = "node.conn[0].timeo.noop_out_interval = 1\nnode.conn[0].timeo.noop_out_timeout = 1\n"
KiB, MiB = 1024, 1024 * 1024
SLOT = 2 * MiB  # the workload's blocks start every SLOT bytes...
SLOTS = 16  # ...in the first 32 MiB of the 64 MiB disk
SIZES = (4 * KiB, 4 * KiB, 4 * KiB, 1536 * KiB)  # by slot: mostly small, some split in pieces


@dataclass
class Workload:
    """Writes and read-backs through qemu-io until stopped; remembers the pattern of every
    acknowledged write and every error qemu-io reported."""

    io: QemuIo
    acked: dict[int, tuple[int, int]] = field(default_factory=dict)  # offset -> (size, pattern)
    errors: list[str] = field(default_factory=list)
    ops: int = 0
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    progress: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())
        self.task.add_done_callback(lambda _: self.progress.set())  # wakes wait_ops to fail

    async def _run(self) -> None:
        sequence = 0
        while not self.stop.is_set():
            slot = sequence % SLOTS
            offset, size, pattern = slot * SLOT, SIZES[slot % len(SIZES)], sequence % 255 + 1
            answer = await self.io.command(f"write -P {pattern} {offset} {size}")
            if f"wrote {size}/{size} bytes at offset {offset}" in answer:
                self.acked[offset] = (size, pattern)
            else:
                self.errors.append(answer.strip())
                self.acked.pop(offset, None)  # unknown now
            earlier = (slot * 7 + 3) % SLOTS * SLOT  # some other block written before
            if earlier in self.acked:
                size, pattern = self.acked[earlier]
                answer = await self.io.command(f"read -P {pattern} {earlier} {size}")
                if "Pattern verification failed" in answer or "read failed" in answer:
                    self.errors.append(answer.strip())
            sequence += 1
            self.ops += 1
            self.progress.set()

    async def wait_ops(self, count: int) -> None:
        """Until ``count`` more write/read rounds have completed (bounded)."""
        goal = self.ops + count
        async with asyncio.timeout(WAIT):
            while self.ops < goal:
                if self.task is not None and self.task.done():
                    self.task.result()  # qemu-io died: say why
                    raise AssertionError("the workload stopped")
                self.progress.clear()
                await self.progress.wait()

    async def halt(self) -> None:
        self.stop.set()
        if self.task is not None:
            async with asyncio.timeout(WAIT):
                await self.task

    def check_backing(self, disk: TgtDisk) -> None:
        """Every acknowledged write is in the target's backing file, byte for byte."""
        assert self.acked
        with open(disk.backing, "rb") as file:
            for offset, (size, pattern) in self.acked.items():
                file.seek(offset)
                assert file.read(size) == bytes([pattern]) * size, f"lost the write at {offset}"


@pytest.fixture
def make_daemon(tmp_path: Path) -> Iterator[list[Daemon]]:
    daemons: list[Daemon] = []
    try:
        yield daemons
    finally:
        for daemon in daemons:
            daemon.stop()


async def logged_in(tgt: TgtDisk, daemons: list[Daemon], root: Path, config: str) -> Daemon:
    """A daemon with ``config``, logged in to ``tgt``; returns once the LUN is exported."""
    daemon = Daemon(root, config_text=config)
    daemons.append(daemon)
    await asyncio.to_thread(daemon.start)
    await daemon.login_all(tgt.portal)
    return daemon


async def wait_for(daemon: Daemon, *states: str) -> None:
    await asyncio.to_thread(daemon.wait_state, states, WAIT)


async def reconnects(daemon: Daemon) -> int:
    reply = await asyncio.to_thread(daemon.request, "session.show")
    return int(reply["result"]["sessions"][0]["stats"]["reconnects"])


@contextlib.asynccontextmanager
async def workload_across_a_fault(daemon: Daemon, tgt: TgtDisk) -> AsyncIterator[Workload]:
    """qemu-io writes and reads back through the export before, during and after what the
    body does (the fault); once the session is back, as much again. Then: no error seen by
    the client, and every acknowledged write is in the target's backing file."""
    io = await QemuIo.open(daemon.nbd_uri(f"{tgt.iqn}/{tgt.lun}"))
    load = Workload(io)
    try:
        load.start()
        await load.wait_ops(2 * SLOTS)
        yield load
        await wait_for(daemon, "LOGGED IN")
        await load.wait_ops(2 * SLOTS)
    finally:
        await load.halt()
        await io.close()
    assert load.errors == []
    load.check_backing(tgt)


async def test_frozen_target_is_invisible_to_the_nbd_client(
    tgt: TgtDisk, make_daemon: list[Daemon], tmp_path: Path
) -> None:
    daemon = await logged_in(tgt, make_daemon, tmp_path / "daemon", FAST_PINGS)
    async with workload_across_a_fault(daemon, tgt) as load:
        await asyncio.to_thread(tgt.target.freeze)
        try:
            await wait_for(daemon, "FAILED", "REOPEN")  # the NOP-Out timeout went by
            stalled = load.ops
            await wait_for(daemon, "REOPEN")  # a relogin waits on the frozen target
            assert load.ops == stalled  # the client waits: no progress, and no error
        finally:
            await asyncio.to_thread(tgt.target.thaw)
    (failed,) = daemon.events("session failed")
    assert "NOP-Out" in str(failed["reason"])
    assert await reconnects(daemon) == 1


@pytest.mark.parametrize("busy_poll", [0, 1000], ids=["sleeping", "busy_poll"])
async def test_dropped_connection_is_invisible_to_the_nbd_client(
    tgt: TgtDisk, make_daemon: list[Daemon], tmp_path: Path, busy_poll: int
) -> None:
    """qemu-io has one request in flight at a time: with ``iscsid.busy_poll`` the daemon
    polls for both the target's answers and qemu-io's requests, across the drop too."""
    config = FAST_PINGS + f"iscsid.busy_poll = {busy_poll}\n"
    daemon = await logged_in(tgt, make_daemon, tmp_path / "daemon", config)
    async with workload_across_a_fault(daemon, tgt):
        (nexus,) = await asyncio.to_thread(tgt.sessions)
        await asyncio.to_thread(tgt.target.drop_connection, tgt.tid, nexus.sid)
        async with asyncio.timeout(WAIT):
            while await reconnects(daemon) < 1:
                await asyncio.sleep(0.05)  # polling the daemon's counter
    sessions = await asyncio.to_thread(tgt.sessions)
    assert len(sessions) == 1 and sessions[0].sid != nexus.sid  # reinstated, one nexus


async def test_outage_beyond_replacement_timeout_is_eio_then_the_export_serves_again(
    tgt: TgtDisk, make_daemon: list[Daemon], tmp_path: Path
) -> None:
    config = FAST_PINGS + f"node.session.timeo.replacement_timeout = {REPLACEMENT_TIMEOUT}\n"
    daemon = await logged_in(tgt, make_daemon, tmp_path / "daemon", config)
    io = await QemuIo.open(daemon.nbd_uri(f"{tgt.iqn}/{tgt.lun}"))
    try:
        assert "wrote 4096/4096" in await io.command("write -P 0x11 0 4k")
        await asyncio.to_thread(tgt.target.freeze)
        try:
            started = time.monotonic()
            # 3 MiB: several SCSI commands, all held, all failed, one answer
            held = await io.command("write -P 0x22 1M 3M", timeout=WAIT)
            waited = time.monotonic() - started
            assert "write failed: Input/output error" in held
            assert waited >= REPLACEMENT_TIMEOUT  # held first, failed only after the timeout
            # While the target is still away, new requests fail at once, not after a wait.
            assert "read failed: Input/output error" in await io.command("read 0 4k", timeout=10)
            assert (await asyncio.to_thread(daemon.wait_state, ("FAILED", "REOPEN"), 1)) in (
                "FAILED",
                "REOPEN",
            )
        finally:
            await asyncio.to_thread(tgt.target.thaw)
        await wait_for(daemon, "LOGGED IN")
        # The same connection serves again, and so does a new client.
        assert "wrote 3145728/3145728" in await io.command("write -P 0x33 1M 3M")
        answer = await io.command("read -P 0x33 1M 3M")
        assert "read 3145728/3145728" in answer and "verification failed" not in answer
        answer = await io.command("read -P 0x11 0 4k")
        assert "read 4096/4096" in answer and "verification failed" not in answer
    finally:
        await io.close()
    with open(tgt.backing, "rb") as file:
        assert file.read(4 * KiB) == b"\x11" * (4 * KiB)
        file.seek(MiB)
        assert file.read(3 * MiB) == b"\x33" * (3 * MiB)
    check = await asyncio.create_subprocess_exec(
        "nbdinfo", "--size", daemon.nbd_uri(f"{tgt.iqn}/{tgt.lun}"), stdout=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(WAIT):
        out, _ = await check.communicate()
    assert int(out) == tgt.size
    assert len(daemon.events("replacement timeout expired")) == 1
    failures = [e for e in daemon.events("nbd request failed") if e["command"] == 1]
    assert failures and "replacement" in str(failures[0]["error"])
