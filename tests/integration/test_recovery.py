"""Faults against a real tgtd while a writer writes checksummed blocks through a session:
the session must notice, log in again with the same ISID, reissue what was in flight, and
every write the target acknowledged must be in the backing file."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from pyiscsid.daemon.recovery import ReplacementTimeout, SessionLoggedOut, SessionState
from pyiscsid.daemon.session import LunIdentityChanged, Session
from pyiscsid.protocol import scsi

from tests.conftest import TgtDisk
from tests.integration.sessions import make_session
from tests.writer import BLOCK, SECTORS, TIMEOUT, Writer, block_for, file_reader

pytestmark = pytest.mark.tgtd

INITIATOR = "iqn.2026-11.test.pyiscsid:recovery"
NOP_INTERVAL = 1.0
NOP_TIMEOUT = 1.0


class _Recorder:
    """Keeps the names of the events a session logs (a logger stand-in for assertions)."""

    def __init__(self, events: list[str]) -> None:
        self.events = events

    def _record(self, event: str, **fields: object) -> None:
        self.events.append(event)

    info = warning = error = _record


@pytest.fixture
async def running(tgt: TgtDisk) -> AsyncIterator[tuple[Session, Writer]]:
    session = make_session(INITIATOR, tgt, nop=NOP_INTERVAL)
    await session.login()
    writer = Writer(session)
    writer.start()
    await writer.wait_acks(50)
    try:
        yield session, writer
    finally:
        await writer.halt()
        await session.logout()


async def in_thread(function: object, *args: object) -> None:
    await asyncio.to_thread(function, *args)  # type: ignore[arg-type]


async def test_frozen_target_fails_by_nop_timeout_and_recovers(
    tgt: TgtDisk, running: tuple[Session, Writer]
) -> None:
    session, writer = running
    fault = time.monotonic()
    await in_thread(tgt.target.freeze)
    await session.recovery.wait_for(SessionState.FAILED, SessionState.REOPEN, timeout=TIMEOUT)
    detected = time.monotonic() - fault
    assert detected < NOP_INTERVAL + NOP_TIMEOUT + 2  # a ping, then its timeout
    await asyncio.sleep(max(0.0, 2 * NOP_TIMEOUT - detected))  # the outage lasts 2x the timeout
    await in_thread(tgt.target.thaw)
    thawed = time.monotonic()
    await session.recovery.wait_for(SessionState.LOGGED_IN, timeout=TIMEOUT)
    await writer.wait_acks(1)
    print(
        f"\nfrozen: detected in {detected:.2f} s, "
        f"I/O resumed {writer.acks[-1] - thawed:.2f} s after thaw"
    )
    await writer.finish(file_reader(tgt.backing))
    assert session.recovery.reconnects >= 1


async def test_killed_and_restarted_target_loses_no_write(
    tgt: TgtDisk, running: tuple[Session, Writer]
) -> None:
    session, writer = running
    fault = time.monotonic()
    await in_thread(tgt.target.kill)
    await session.recovery.wait_for(SessionState.FAILED, SessionState.REOPEN, timeout=TIMEOUT)
    detected = time.monotonic() - fault
    await in_thread(tgt.target.restart)
    restarted = time.monotonic()
    await session.recovery.wait_for(SessionState.LOGGED_IN, timeout=TIMEOUT)
    await writer.wait_acks(1)
    print(
        f"\nkilled: detected in {detected:.2f} s, "
        f"I/O resumed {writer.acks[-1] - restarted:.2f} s after restart"
    )
    await writer.finish(file_reader(tgt.backing))


async def test_connection_dropped_by_the_target_recovers_with_one_nexus(
    tgt: TgtDisk, running: tuple[Session, Writer]
) -> None:
    session, writer = running
    (nexus,) = tgt.sessions()
    fault = time.monotonic()
    await in_thread(tgt.target.drop_connection, tgt.tid, nexus.sid)
    await session.recovery.wait_for(SessionState.FAILED, SessionState.REOPEN, timeout=TIMEOUT)
    detected = time.monotonic() - fault
    await session.recovery.wait_for(SessionState.LOGGED_IN, timeout=TIMEOUT)
    await writer.wait_acks(1)
    print(
        f"\ndropped: detected in {detected:.2f} s, "
        f"I/O resumed {writer.acks[-1] - fault:.2f} s after the drop"
    )
    await writer.finish(file_reader(tgt.backing))
    sessions = await asyncio.to_thread(tgt.sessions)
    assert len(sessions) == 1 and sessions[0].sid != nexus.sid  # reinstated, nothing leaked
    stats = session.recovery.stats()
    assert stats["reconnects"] == 1
    assert stats["scsicmd_pdus"] >= len(writer.acks)  # counted across both connections


async def test_outage_longer_than_replacement_timeout_fails_held_io_then_recovers(
    tgt: TgtDisk,
) -> None:
    session = make_session(INITIATOR, tgt, nop=NOP_INTERVAL, replacement_timeout=2)
    events: list[str] = []
    session.recovery.log = _Recorder(events)
    await session.login()
    try:
        await in_thread(tgt.target.freeze)
        started = time.monotonic()
        with pytest.raises(ReplacementTimeout, match="replacement_timeout"):
            await asyncio.wait_for(
                session.execute(scsi.write10(0, SECTORS), lun=1, data_out=block_for(0, 0)),
                TIMEOUT,
            )
        held = time.monotonic() - started
        assert 2 <= held < NOP_INTERVAL + NOP_TIMEOUT + 2 + 2
        await in_thread(tgt.target.thaw)
        await session.recovery.wait_for(SessionState.LOGGED_IN, timeout=TIMEOUT)
        data = block_for(8, 1)
        (await session.execute(scsi.write10(8, SECTORS), lun=1, data_out=data)).check()
        with open(tgt.backing, "rb") as f:
            f.seek(8 * 512)
            assert f.read(BLOCK) == data
        print(f"\nreplacement timeout: held I/O failed after {held:.2f} s")
        assert events.count("replacement timeout expired") == 1  # once per outage
        assert events.index("session failed") < events.index("session recovered")
    finally:
        await session.logout()


async def test_a_lun_that_changed_identity_after_relogin_is_failed_not_written(
    tgt: TgtDisk,
) -> None:
    session = make_session(INITIATOR, tgt, nop=NOP_INTERVAL)
    await session.login()
    try:
        (lun,) = [lun for lun in session.luns if lun.lun == 1]
        (serial,) = [part[7:] for part in lun.identity if part.startswith("serial ")]

        async def present_serial(serial: str) -> None:
            await in_thread(
                tgt.target.tgtadm, "--lld", "iscsi", "--op", "update", "--mode", "logicalunit",
                "--tid", str(tgt.tid), "--lun", "1", "--params", f"scsi_sn={serial}",
            )  # fmt: skip

        async def outage() -> None:
            (nexus,) = tgt.sessions()
            await in_thread(tgt.target.drop_connection, tgt.tid, nexus.sid)
            await session.recovery.wait_for(
                SessionState.FAILED, SessionState.REOPEN, timeout=TIMEOUT
            )
            await session.recovery.wait_for(SessionState.LOGGED_IN, timeout=TIMEOUT)

        await present_serial("OTHERDISK1")  # another disk under the same LUN number
        await outage()
        with pytest.raises(LunIdentityChanged, match="OTHERDISK1"):
            await session.execute(scsi.write10(16, SECTORS), lun=1, data_out=block_for(16, 0))
        # The old serial again, and another relogin: nothing vouches for what was between,
        # so the LUN stays failed (never another disk's data served as this one).
        await present_serial(serial)
        await outage()
        with pytest.raises(LunIdentityChanged, match="OTHERDISK1"):
            await session.execute(scsi.write10(16, SECTORS), lun=1, data_out=block_for(16, 0))
        with open(tgt.backing, "rb") as f:
            f.seek(16 * 512)
            assert f.read(BLOCK) == bytes(BLOCK)  # nothing was written
        # The session itself is fine: other commands (LUN 0, the controller) still work.
        assert (await session.execute(scsi.test_unit_ready(), lun=0)).status == 0
        assert session.recovery.reconnects == 2
    finally:
        await session.logout()


async def test_reopen_max_gives_the_session_up_and_fails_held_io(tgt: TgtDisk) -> None:
    """With node.session.reopen_max = 2 and the target gone for good, the session stops
    trying after two failed reconnects, and what it held fails with a clear error."""
    session = make_session(INITIATOR, tgt, nop=NOP_INTERVAL, reopen_max=2)
    await session.login()
    try:
        await in_thread(tgt.target.kill)
        with pytest.raises(SessionLoggedOut, match="gave up after 2 reconnect attempts"):
            await asyncio.wait_for(
                session.execute(scsi.write10(0, SECTORS), lun=1, data_out=block_for(0, 0)),
                TIMEOUT,
            )
        assert session.recovery.state is SessionState.LOGGED_OUT
    finally:
        await session.logout()


@pytest.mark.parametrize("replacement_timeout", [0, -1], ids=["fail-at-once", "hold-forever"])
async def test_replacement_timeout_zero_fails_at_once_and_negative_holds(
    tgt: TgtDisk, replacement_timeout: int
) -> None:
    session = make_session(
        INITIATOR, tgt, nop=NOP_INTERVAL, replacement_timeout=replacement_timeout
    )
    await session.login()
    try:
        await in_thread(tgt.target.freeze)
        await session.recovery.wait_for(SessionState.FAILED, SessionState.REOPEN, timeout=TIMEOUT)
        data = block_for(24, 7)
        write = asyncio.ensure_future(
            session.execute(scsi.write10(24, SECTORS), lun=1, data_out=data)
        )
        if replacement_timeout == 0:
            with pytest.raises(ReplacementTimeout):
                await asyncio.wait_for(write, 1.0)  # at once, not after a wait
            await in_thread(tgt.target.thaw)
        else:
            done, _ = await asyncio.wait({write}, timeout=3.0)  # the outage goes on...
            assert not done  # ...and the write is still held, not failed
            await in_thread(tgt.target.thaw)
            (await asyncio.wait_for(write, TIMEOUT)).check()
            assert file_reader(tgt.backing)(24 * 512) == data
    finally:
        await session.logout()
