"""A LUN removed from the target, against tgtd: once relogins have found no logical unit
behind its number for long enough, that LUN alone is failed (its held and new I/O get
:class:`LunRemoved`, logged once) and the session comes back up serving the other LUNs,
instead of reconnecting until reopen_max gives the whole session up; back as the same disk,
it is served again. Every disk missing is a target being set up again: nothing is failed.
A LUN missing for one relogin only is checked again (test_recovery_verify.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pyiscsid.daemon.recovery import SessionState
from pyiscsid.daemon.session import LunRemoved, Session
from pyiscsid.protocol import scsi
from structlog.testing import capture_logs

from tests.conftest import TgtDisk
from tests.integration.conftest import SECOND_LUN
from tests.integration.sessions import make_session
from tests.writer import SECTORS, TIMEOUT, block_for, file_reader

pytestmark = pytest.mark.tgtd

INITIATOR = "iqn.2026-11.test.pyiscsid:lun-removed"
GONE = SECOND_LUN  # the LUN deleted (the second_lun fixture); LUN 1 (tgt.lun) stays
ABSENT_SECONDS = 1.0  # the session's lun_absent_seconds, 5 s by default


async def outage(tgt: TgtDisk, session: Session) -> None:
    """The target drops the session's connection; until the session is logged in again."""
    (nexus,) = await asyncio.to_thread(tgt.sessions)
    await asyncio.to_thread(tgt.target.drop_connection, tgt.tid, nexus.sid)
    await session.recovery.wait_for(SessionState.FAILED, SessionState.REOPEN, timeout=TIMEOUT)
    await session.recovery.wait_for(SessionState.LOGGED_IN, timeout=TIMEOUT)


async def test_a_lun_removed_for_good_is_failed_alone_and_the_others_are_served(
    tgt: TgtDisk, second_lun: Path
) -> None:
    session = make_session(INITIATOR, tgt, nop=1, reopen_max=10)
    session.lun_absent_seconds = ABSENT_SECONDS
    await session.login()
    try:
        assert {tgt.lun, GONE} <= {lun.lun for lun in session.luns}
        delete = ("--op", "delete", "--mode", "logicalunit", "--tid", str(tgt.tid))
        await asyncio.to_thread(tgt.target.tgtadm, *delete, "--lun", str(GONE))
        (nexus,) = await asyncio.to_thread(tgt.sessions)
        with capture_logs() as logs:
            await asyncio.to_thread(tgt.target.drop_connection, tgt.tid, nexus.sid)
            await session.recovery.wait_for(
                SessionState.FAILED, SessionState.REOPEN, timeout=TIMEOUT
            )
            data = block_for(48, 1)
            held_other = asyncio.ensure_future(
                session.execute(scsi.write10(48, SECTORS), lun=tgt.lun, data_out=data)
            )
            held_gone = asyncio.ensure_future(
                session.execute(scsi.read10(0, 1), lun=GONE, read_length=512)
            )
            await session.recovery.wait_for(SessionState.LOGGED_IN, timeout=TIMEOUT)
            # The other LUN: its held write went out on the new connection.
            (await asyncio.wait_for(held_other, TIMEOUT)).check()
            assert file_reader(tgt.backing)(48 * 512) == data
            # The LUN removed: held and new I/O fail, saying which LUN and why.
            with pytest.raises(LunRemoved, match=f"LUN {GONE} of {tgt.iqn} is gone"):
                await asyncio.wait_for(held_gone, TIMEOUT)
            with pytest.raises(LunRemoved):
                await session.execute(scsi.read10(0, 1), lun=GONE, read_length=512)
            read = await session.execute(scsi.read10(48, 1), lun=tgt.lun, read_length=512)
            assert bytes(read.check().data) == data[:512]
        assert session.state is SessionState.LOGGED_IN
        assert session.recovery.reconnects == 1  # came back once, well before reopen_max
        assert list(session.failed_luns) == [GONE]
        (removed,) = [line for line in logs if line.get("ISCSI_EVENT") == "lun_removed"]
        assert removed["log_level"] == "error" and removed["lun"] == GONE
        assert removed["ISCSI_TARGET"] == tgt.iqn
        assert removed["relogins"] >= session.lun_absent_checks
        assert removed["seconds"] >= ABSENT_SECONDS
        (shown,) = [lun for lun in session.details()["luns"] if lun["lun"] == GONE]
        assert "is gone" in shown["failed"]
    finally:
        await session.logout()


async def test_a_lun_removed_and_added_back_is_served_again_at_the_next_relogin(
    tgt: TgtDisk, second_lun: Path
) -> None:
    """A removed LUN is asked again at each relogin: back as the same disk (its serial
    unchanged), it is served again, and says so in the log."""
    session = make_session(INITIATOR, tgt, nop=1)
    session.lun_absent_seconds = ABSENT_SECONDS
    await session.login()
    try:
        delete = ("--op", "delete", "--mode", "logicalunit", "--tid", str(tgt.tid))
        await asyncio.to_thread(tgt.target.tgtadm, *delete, "--lun", str(GONE))
        await outage(tgt, session)  # LUN 2 failed as removed
        assert list(session.failed_luns) == [GONE]
        with pytest.raises(LunRemoved):
            await session.execute(scsi.read10(0, 1), lun=GONE, read_length=512)
        await asyncio.to_thread(tgt.target.add_lun, tgt.tid, GONE, second_lun)
        with capture_logs() as logs:
            await outage(tgt, session)
        assert session.failed_luns == {}
        read = await session.execute(scsi.read10(0, 1), lun=GONE, read_length=512)
        assert read.check().status == 0
        assert [line["lun"] for line in logs if line.get("ISCSI_EVENT") == "lun_back"] == [GONE]
        assert session.recovery.reconnects == 2
    finally:
        await session.logout()


async def test_a_lun_added_back_while_the_connection_stays_up_is_served_again(
    tgt: TgtDisk, second_lun: Path
) -> None:
    """No outage needed: a LUN failed as removed is asked again every lun_recheck_seconds
    on the live connection, and served again once it answers as the same disk."""
    session = make_session(INITIATOR, tgt, nop=1)
    session.lun_absent_seconds = ABSENT_SECONDS
    session.lun_recheck_seconds = 0.2
    await session.login()
    try:
        delete = ("--op", "delete", "--mode", "logicalunit", "--tid", str(tgt.tid))
        await asyncio.to_thread(tgt.target.tgtadm, *delete, "--lun", str(GONE))
        await outage(tgt, session)  # LUN 2 failed as removed
        assert list(session.failed_luns) == [GONE]
        with capture_logs() as logs:
            await asyncio.to_thread(tgt.target.add_lun, tgt.tid, GONE, second_lun)
            async with asyncio.timeout(TIMEOUT):
                while session.failed_luns:
                    await asyncio.sleep(0.05)
        read = await session.execute(scsi.read10(0, 1), lun=GONE, read_length=512)
        assert read.check().status == 0
        assert [line["lun"] for line in logs if line.get("ISCSI_EVENT") == "lun_back"] == [GONE]
        assert session.recovery.reconnects == 1  # the one outage that failed it, no other
    finally:
        await session.logout()


async def test_every_disk_missing_for_a_while_is_a_target_set_up_again_not_removed_luns(
    tgt: TgtDisk, second_lun: Path
) -> None:
    """A failover brings the target's portal up before its LUNs: with every disk absent,
    relogins go on (well past the bound that fails one LUN alone) and nothing is failed;
    once the LUNs are back, the session serves them all."""
    session = make_session(INITIATOR, tgt, nop=1)
    session.lun_absent_seconds = ABSENT_SECONDS
    await session.login()
    try:
        delete = ("--op", "delete", "--mode", "logicalunit", "--tid", str(tgt.tid))
        for number in (tgt.lun, GONE):
            await asyncio.to_thread(tgt.target.tgtadm, *delete, "--lun", str(number))
        (nexus,) = await asyncio.to_thread(tgt.sessions)
        await asyncio.to_thread(tgt.target.drop_connection, tgt.tid, nexus.sid)
        async with asyncio.timeout(TIMEOUT):  # past the bound for one LUN alone
            while session.recovery.attempt <= session.lun_absent_checks:
                await asyncio.sleep(0.05)
        assert session.state is not SessionState.LOGGED_IN
        assert session.failed_luns == {}
        await asyncio.to_thread(tgt.target.add_lun, tgt.tid, tgt.lun, tgt.backing)
        await asyncio.to_thread(tgt.target.add_lun, tgt.tid, GONE, second_lun)
        await session.recovery.wait_for(SessionState.LOGGED_IN, timeout=TIMEOUT)
        assert session.failed_luns == {}
        for number in (tgt.lun, GONE):
            read = await session.execute(scsi.read10(0, 1), lun=number, read_length=512)
            assert read.check().status == 0
    finally:
        await session.logout()


async def test_a_removed_lun_does_not_cost_the_session_at_reopen_max(
    tgt: TgtDisk, second_lun: Path
) -> None:
    """With node.session.reopen_max = 2, fewer relogins than the absence bound asks for: the
    last one allowed fails the absent LUN alone rather than giving the whole session up."""
    given_up: list[Session] = []
    session = make_session(INITIATOR, tgt, nop=1, reopen_max=2, on_given_up=given_up.append)
    assert session.lun_absent_checks > 2
    await session.login()
    try:
        delete = ("--op", "delete", "--mode", "logicalunit", "--tid", str(tgt.tid))
        await asyncio.to_thread(tgt.target.tgtadm, *delete, "--lun", str(GONE))
        with capture_logs() as logs:
            await outage(tgt, session)
        (removed,) = [line for line in logs if line.get("ISCSI_EVENT") == "lun_removed"]
        assert removed["relogins"] == 2
        assert given_up == [] and list(session.failed_luns) == [GONE]
        read = await session.execute(scsi.read10(0, 1), lun=tgt.lun, read_length=512)
        assert read.check().status == 0
    finally:
        await session.logout()
