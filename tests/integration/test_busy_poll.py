"""Busy polling (``iscsid.busy_poll``) against a real tgtd, through the session API: answers
read by the poll reach the right commands, a connection dropped under it is recovered as
always, and the count of commands in flight that gates it comes back to zero. The daemon's
NBD path with busy polling is in test_nbd_recovery.py."""

from __future__ import annotations

import asyncio
import time

import pytest
from pyiscsid.daemon.busypoll import BusyPoll
from pyiscsid.daemon.recovery import SessionState
from pyiscsid.protocol import scsi

from tests.conftest import TgtDisk
from tests.integration.sessions import make_session
from tests.writer import TIMEOUT, Writer, file_reader

pytestmark = pytest.mark.tgtd

INITIATOR = "iqn.2026-11.test.pyiscsid:busy-poll"
BUDGET = 0.05  # long enough that a loaded test machine still answers within it


async def test_one_writer_polled_loses_nothing_across_a_dropped_connection(tgt: TgtDisk) -> None:
    poll = BusyPoll(BUDGET)
    session = make_session(INITIATOR, tgt, nop=1, busy_poll=poll)
    await session.login()
    writer = Writer(session)
    writer.start(writers=1)  # one command at a time: the case that is polled
    try:
        await writer.wait_acks(50)
        assert poll.hits >= 40, (poll.hits, poll.misses)
        (nexus,) = tgt.sessions()
        await asyncio.to_thread(tgt.target.drop_connection, tgt.tid, nexus.sid)
        await session.recovery.wait_for(SessionState.FAILED, SessionState.REOPEN, timeout=TIMEOUT)
        await session.recovery.wait_for(SessionState.LOGGED_IN, timeout=TIMEOUT)
        hits = poll.hits
        await writer.finish(file_reader(tgt.backing))
        assert poll.hits > hits  # polling goes on on the new connection
    finally:
        await writer.halt()
        await session.logout()
    assert poll.outstanding == 0


async def test_reads_polled_bring_the_right_data_and_let_other_tasks_run(tgt: TgtDisk) -> None:
    """Each answer read by the poll lands in its own command's buffer; and a task that reads
    one block after another, each answered without the loop running, does not keep every
    other task from running (it once did, for ever)."""
    poll = BusyPoll(BUDGET)
    session = make_session(INITIATOR, tgt, nop=1, busy_poll=poll)
    await session.login()
    ticks = 0

    async def other_task() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0)
            ticks += 1

    ticker = asyncio.create_task(other_task())
    try:
        expected = file_reader(tgt.backing)
        for block in range(64):
            result = await session.execute(scsi.read10(block * 8, 8), lun=1, read_length=4096)
            assert bytes(result.check().data) == expected(block * 4096)
        assert poll.hits >= 60
        ticks_before = ticks
        started = time.perf_counter()
        while time.perf_counter() - started < 0.05:  # 50 ms of reads, each one polled
            await session.execute(scsi.read10(0, 8), lun=1, read_length=4096)
        assert ticks > ticks_before
    finally:
        ticker.cancel()
        await session.logout()
    assert poll.outstanding == 0


async def test_started_commands_are_polled_for_once_the_loop_runs(tgt: TgtDisk) -> None:
    """Session.start (the NBD server's path) returns at once: its caller may have more to
    send (an NBD client's requests come many to a read), and a spin for the first would
    serve them one by one. The poll comes once the loop runs, if the command is alone."""
    poll = BusyPoll(BUDGET)
    session = make_session(INITIATOR, tgt, nop=1, busy_poll=poll)
    await session.login()
    try:
        expected = file_reader(tgt.backing)
        buffers = [bytearray(4096) for _ in range(8)]
        answers = [
            session.start(scsi.read16(block * 8, 8), lun=1, read_buffer=memoryview(buffer))
            for block, buffer in enumerate(buffers)
        ]
        assert all(answer is not None and not answer.done() for answer in answers)
        async with asyncio.timeout(TIMEOUT):
            for block, answer in enumerate(answers):
                assert answer is not None and (await answer).status == 0
                assert bytes(buffers[block]) == expected(block * 4096)
        hits = poll.hits
        buffer = bytearray(4096)
        alone = session.start(scsi.read16(0, 8), lun=1, read_buffer=memoryview(buffer))
        assert alone is not None and not alone.done()
        async with asyncio.timeout(TIMEOUT):
            assert (await alone).status == 0
        assert poll.hits == hits + 1
    finally:
        await session.logout()
    assert poll.outstanding == 0
