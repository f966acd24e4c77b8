"""The LUN identity check after a relogin (Session._verify_luns, run by recovery before held
I/O goes out again): only a GOOD answer naming another disk fails a LUN for good. A LUN that
is busy, missing for a while or silent fails that attempt instead, within a bound, and the
new connection is closed; recovery tries again after its backoff.

The missing LUN runs on tgtd. A BUSY or TASK SET FULL answer, and a VPD INQUIRY that is never
answered while NOP-Outs are, need the scripted target (tests/fake_target.py): tgtd does
neither on demand."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from pyiscsid.daemon.recovery import SessionState
from pyiscsid.protocol import scsi
from pyiscsid.protocol.scsi import ScsiStatus

from tests.conftest import TgtDisk
from tests.fake_target import FakeTarget
from tests.integration.sessions import make_session
from tests.writer import SECTORS, TIMEOUT, block_for, file_reader

INITIATOR = "iqn.2026-11.test.pyiscsid:verify"


def is_vpd_inquiry(cdb: bytes) -> bool:
    return cdb[0] == scsi.Opcode.INQUIRY and bool(cdb[1] & 1)


def first_vpd_inquiry_answered(status: int) -> Callable[[bytes], int | None]:
    """A FakeTarget ``status`` hook: the next VPD INQUIRY gets ``status``, the rest run."""
    used: list[bool] = []

    def hook(cdb: bytes) -> int | None:
        if is_vpd_inquiry(cdb) and not used:
            used.append(True)
            return status
        return None

    return hook


@pytest.mark.tgtd
async def test_a_lun_missing_during_the_relogin_is_checked_again_not_failed(
    tgt: TgtDisk,
) -> None:
    """tgt answers GOOD with peripheral qualifier 3 (and its controller's serial) for a LUN
    that is not there: that is no disk at all, not another disk."""
    session = make_session(INITIATOR, tgt, nop=1)
    await session.login()
    try:
        target, tid, lun = tgt.target, str(tgt.tid), str(tgt.lun)
        delete = ("--op", "delete", "--mode", "logicalunit", "--tid", tid, "--lun", lun)
        await asyncio.to_thread(target.tgtadm, *delete)
        (nexus,) = tgt.sessions()
        await asyncio.to_thread(target.drop_connection, tgt.tid, nexus.sid)
        await session.recovery.wait_for(SessionState.REOPEN, timeout=TIMEOUT)
        await session.recovery.wait_for(SessionState.FAILED, timeout=TIMEOUT)  # that attempt
        assert "no logical unit behind it" in (session.recovery.last_error or "")
        await asyncio.to_thread(target.add_lun, tgt.tid, tgt.lun, tgt.backing)  # same serial
        session.recovery.kick()
        await session.recovery.wait_for(SessionState.LOGGED_IN, timeout=TIMEOUT)
        assert session.failed_luns == {}
        data = block_for(40, 1)
        write = scsi.write10(40, SECTORS)
        (await session.execute(write, lun=tgt.lun, data_out=data)).check()
        assert file_reader(tgt.backing)(40 * 512) == data
    finally:
        await session.logout()


STATUSES = [ScsiStatus.BUSY, ScsiStatus.TASK_SET_FULL]


@pytest.mark.parametrize("status", STATUSES, ids=[status.name for status in STATUSES])
async def test_a_busy_identity_answer_fails_the_attempt_not_the_lun(status: ScsiStatus) -> None:
    async with FakeTarget() as target:
        session = make_session(INITIATOR, target)
        await session.login()
        try:
            assert session.luns[0].identity
            target.status = first_vpd_inquiry_answered(status)
            target.current.abort()  # a plain connection loss: the disk is the same disk
            await session.recovery.wait_for(SessionState.REOPEN, timeout=TIMEOUT)
            await session.recovery.wait_for(SessionState.FAILED, timeout=TIMEOUT)
            assert status.text in (session.recovery.last_error or "")
            session.recovery.kick()
            await session.recovery.wait_for(SessionState.LOGGED_IN, timeout=TIMEOUT)
            assert session.failed_luns == {}
            read = await session.execute(scsi.read10(0, 1), lun=target.lun, read_length=512)
            assert read.check().status == ScsiStatus.GOOD
            assert len(target.logins) == 3  # the first login, the refused check, the good one
        finally:
            await session.logout()


async def test_an_unanswered_identity_check_fails_the_attempt_and_closes_its_connection() -> None:
    async with FakeTarget() as target:
        session = make_session(INITIATOR, target, login_timeout=1)
        await session.login()
        try:
            target.swallow = is_vpd_inquiry  # NOP-Outs and the rest are still answered
            target.current.abort()
            candidate = await target.wait_login(2, timeout=TIMEOUT)
            await candidate.wait_closed(timeout=TIMEOUT)  # given up within login_timeout
            assert "did not answer INQUIRY in 1 s" in (session.recovery.last_error or "")
            target.swallow = None
            session.recovery.kick()
            await session.recovery.wait_for(SessionState.LOGGED_IN, timeout=TIMEOUT)
            assert session.failed_luns == {}
        finally:
            await session.logout()


async def test_a_logout_during_the_identity_check_closes_the_new_connection() -> None:
    async with FakeTarget() as target:
        session = make_session(INITIATOR, target, login_timeout=TIMEOUT)
        await session.login()
        target.swallow = is_vpd_inquiry
        target.current.abort()
        candidate = await target.wait_login(2, timeout=TIMEOUT)
        await target.wait_until(lambda: candidate.in_progress > 0, timeout=TIMEOUT)
        await session.logout()  # while the check waits for its answer
        await candidate.wait_closed(timeout=TIMEOUT)
        assert target.connections == []
        assert target.logouts == 1  # the candidate logged out: its session ends on the target
