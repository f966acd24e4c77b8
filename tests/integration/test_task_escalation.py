"""A command that gets no answer: ABORT TASK, then LOGICAL UNIT RESET, then a dropped
connection and a relogin, each step after its own timeout; the command is then issued
again and completes. These use the scripted target (tests/fake_target.py): tgt answers
every command, so it cannot produce a command that is silently never answered."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from pyiscsid.daemon.busypoll import BusyPoll
from pyiscsid.daemon.recovery import SessionState
from pyiscsid.daemon.session import Session
from pyiscsid.protocol import scsi
from pyiscsid.protocol.errors import CommandRejected, TaskAborted
from pyiscsid.protocol.pdu import AsyncEvent, RejectReason
from pyiscsid.protocol.pdu import TaskManagementFunction as TMF

from tests.fake_target import FakeTarget
from tests.integration.sessions import make_session

INITIATOR = "iqn.2026-11.test.pyiscsid:escalation"
TIMEOUT = 1.0  # command, abort and LU reset timeouts alike
LBA = 2048


@pytest.fixture
async def target() -> AsyncIterator[FakeTarget]:
    async with FakeTarget() as fake:
        yield fake


def session_for(target: FakeTarget) -> Session:
    return make_session(
        INITIATOR, target, command_timeout=TIMEOUT, abort_timeout=TIMEOUT, lu_reset_timeout=TIMEOUT
    )


def swallow_first_write_to(lba: int) -> object:
    """A ``swallow`` that eats the first WRITE(10) to ``lba`` and lets the rest through."""
    eaten: list[bool] = []

    def swallow(cdb: bytes) -> bool:
        if cdb[0] == 0x2A and int.from_bytes(cdb[2:6], "big") == lba and not eaten:
            eaten.append(True)
            return True
        return False

    return swallow


async def write_through(session: Session, target: FakeTarget) -> float:
    """Write one block to LBA; returns how long until the target said GOOD."""
    data = bytes(range(256)) * 2
    started = time.monotonic()
    result = await session.execute(scsi.write10(LBA, 1), lun=target.lun, data_out=data)
    result.check()
    assert bytes(target.disk[LBA * 512 : LBA * 512 + 512]) == data
    return time.monotonic() - started


async def test_an_unanswered_command_is_aborted_then_issued_again(target: FakeTarget) -> None:
    session = session_for(target)
    await session.login()
    try:
        target.swallow = swallow_first_write_to(LBA)  # type: ignore[assignment]
        took = await write_through(session, target)
        assert target.task_management == [TMF.ABORT_TASK]
        assert TIMEOUT <= took < 3 * TIMEOUT
        assert target.errors == []
        print(f"\nabort: command answered {took:.2f} s after it was sent")
    finally:
        await session.logout()


async def test_a_command_started_without_a_task_is_under_the_same_timeout(
    target: FakeTarget,
) -> None:
    """Session.start (the NBD server's hot path) watches its command as execute() does:
    unanswered, it is aborted and its answer says so; and while the session is down it
    sends nothing (None: the caller goes the full way, which holds the command)."""
    session = session_for(target)
    await session.login()
    try:
        target.swallow = swallow_first_write_to(LBA)  # type: ignore[assignment]
        answer = session.start(scsi.write10(LBA, 1), lun=target.lun, data_out=bytes(512))
        assert answer is not None
        with pytest.raises(TaskAborted):
            await asyncio.wait_for(answer, 5 * TIMEOUT)
        assert target.task_management == [TMF.ABORT_TASK]
        await write_through(session, target)  # the full way, as the NBD server goes then
        target.current.abort()
        await session.recovery.wait_for(SessionState.FAILED, SessionState.REOPEN, timeout=10)
        assert session.start(scsi.write10(LBA, 1), lun=target.lun, data_out=bytes(512)) is None
        await write_through(session, target)  # held until the relogin
    finally:
        await session.logout()


async def test_a_started_command_whose_caller_left_is_forgotten_at_its_timeout(
    target: FakeTarget,
) -> None:
    """An NBD client dropped while its command was out cancels the command's answer. If
    the target never answers, the command is forgotten at its timeout: no longer in flight
    (busy polling counts on that), and not aborted, since no one waits for its outcome."""
    poll = BusyPoll(0.001)
    session = make_session(INITIATOR, target, busy_poll=poll, command_timeout=TIMEOUT)
    await session.login()
    try:
        target.swallow = swallow_first_write_to(LBA)  # type: ignore[assignment]
        answer = session.start(scsi.write10(LBA, 1), lun=target.lun, data_out=bytes(512))
        assert answer is not None and poll.outstanding == 1
        answer.cancel()
        async with asyncio.timeout(5 * TIMEOUT):
            while poll.outstanding:
                await asyncio.sleep(TIMEOUT / 20)
        assert target.task_management == []
        await write_through(session, target)  # the session goes on
    finally:
        await session.logout()


async def test_an_unanswered_abort_is_followed_by_a_lu_reset(target: FakeTarget) -> None:
    session = session_for(target)
    await session.login()
    try:
        target.swallow = swallow_first_write_to(LBA)  # type: ignore[assignment]
        target.ignore_task_management = {TMF.ABORT_TASK}
        took = await write_through(session, target)
        assert target.task_management == [TMF.ABORT_TASK, TMF.LOGICAL_UNIT_RESET]
        assert 2 * TIMEOUT <= took < 4 * TIMEOUT
        print(f"\nLU reset: command answered {took:.2f} s after it was sent")
    finally:
        await session.logout()


async def test_a_timed_out_abort_does_not_count_as_in_flight(target: FakeTarget) -> None:
    """The ABORT TASK given up on stays unanswered; a logout the target then asks for must
    not wait for it (nor spin the loop until Parameter3 runs out, as it once did)."""
    session = session_for(target)
    await session.login()
    try:
        target.swallow = swallow_first_write_to(LBA)  # type: ignore[assignment]
        target.ignore_task_management = {TMF.ABORT_TASK}
        await write_through(session, target)
        started = time.monotonic()
        await target.send_async(AsyncEvent.LOGOUT_REQUESTED, parameter3=20)
        await target.wait_until(lambda: target.logouts >= 1, timeout=10)
        assert time.monotonic() - started < 5  # not the 19 s Parameter3 allows
    finally:
        await session.logout()


async def test_unanswered_task_management_drops_the_connection_and_recovers(
    target: FakeTarget,
) -> None:
    session = session_for(target)
    await session.login()
    try:
        target.swallow = swallow_first_write_to(LBA)  # type: ignore[assignment]
        target.ignore_task_management = {TMF.ABORT_TASK, TMF.LOGICAL_UNIT_RESET}
        took = await write_through(session, target)
        assert target.task_management == [TMF.ABORT_TASK, TMF.LOGICAL_UNIT_RESET]
        assert len(target.logins) == 2  # the connection was dropped and the session relogged in
        assert target.logins[0][0] == target.logins[1][0]  # with the same ISID
        assert session.recovery.reconnects == 1
        print(f"\ndropped: command answered {took:.2f} s after it was sent")
    finally:
        await session.logout()


def reject_first_write_to(lba: int, reason: int) -> object:
    """A ``reject`` that refuses the first WRITE(10) to ``lba`` with ``reason``."""
    done: list[bool] = []

    def reject(cdb: bytes) -> int | None:
        if cdb[0] == 0x2A and int.from_bytes(cdb[2:6], "big") == lba and not done:
            done.append(True)
            return reason
        return None

    return reject


@pytest.mark.parametrize("reason", [RejectReason.DATA_DIGEST_ERROR, RejectReason.PROTOCOL_ERROR])
async def test_a_reject_that_needs_recovery_drops_the_connection_and_reissues(
    target: FakeTarget, reason: RejectReason
) -> None:
    session = session_for(target)
    await session.login()
    try:
        target.reject = reject_first_write_to(LBA, reason)  # type: ignore[assignment]
        await write_through(session, target)
        assert len(target.logins) == 2 and session.recovery.reconnects == 1
    finally:
        await session.logout()


async def test_a_command_level_reject_fails_only_that_command(target: FakeTarget) -> None:
    session = session_for(target)
    await session.login()
    try:
        target.reject = reject_first_write_to(LBA, RejectReason.COMMAND_NOT_SUPPORTED)  # type: ignore[assignment]
        with pytest.raises(CommandRejected, match="command not supported"):
            await write_through(session, target)
        assert len(target.logins) == 1  # the connection stayed up
        await write_through(session, target)  # and the next try goes through
    finally:
        await session.logout()


async def test_commands_caught_by_an_outage_are_issued_again_in_their_order() -> None:
    """Eight writes are in flight (the target takes them and does not answer) when the
    connection drops: after the relogin they reach the target again in submission order.
    (Without the new session's unit attention, whose retry would come after the rest.)"""
    async with FakeTarget(unit_attention=False) as target:
        await _reissued_in_order(target)


async def _reissued_in_order(target: FakeTarget) -> None:
    session = session_for(target)
    await session.login()
    try:
        lbas = [4096 + 8 * i for i in range(8)]
        seen: list[int] = []
        first = target.current

        def swallow_on_first_connection(cdb: bytes) -> bool:
            if cdb[0] != 0x2A:
                return False
            if target.current is first:
                return True  # in flight when the connection drops
            seen.append(int.from_bytes(cdb[2:6], "big"))
            return False

        target.swallow = swallow_on_first_connection  # type: ignore[assignment]
        writes = [
            asyncio.ensure_future(
                session.execute(scsi.write10(lba, 1), lun=target.lun, data_out=bytes([i]) * 512)
            )
            for i, lba in enumerate(lbas)
        ]
        await target.wait_until(lambda: first.in_progress >= len(lbas), 10)
        first.abort()  # the connection is lost with all eight outstanding
        for write in writes:
            (await asyncio.wait_for(write, 20)).check()
        assert seen == lbas
    finally:
        await session.logout()
