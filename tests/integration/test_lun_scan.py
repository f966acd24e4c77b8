"""The LUN scan at login: each command has its own bound (node.conn[0].timeo.login_timeout),
a LUN whose scan fails is left out with a warning that names it and says why, and the rest of
the scan goes on; a session lost during the scan stops it with one warning (and keeps
recovering), and one given up meanwhile fails the login. The scripted target
(tests/fake_target.py) answers slowly, never or with a Reject on demand; tgtd does none of
that, and serves the rest."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from pyiscsid.daemon.recovery import SessionLoggedOut, SessionState
from pyiscsid.daemon.session import LunIdentityChanged, Session
from pyiscsid.protocol import scsi
from pyiscsid.protocol.pdu import RejectReason
from structlog.testing import capture_logs

from tests.conftest import TgtDisk
from tests.fake_target import FakeTarget
from tests.integration.conftest import SECOND_LUN
from tests.integration.sessions import before_lun_scan, make_session
from tests.writer import TIMEOUT

INITIATOR = "iqn.2026-11.test.pyiscsid:scan"
LOGIN_TIMEOUT = 1.0


def warnings(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line for line in logs if line["log_level"] == "warning"]


async def test_a_scan_longer_than_login_timeout_still_finds_every_lun() -> None:
    """Six commands at 0.4 s each: the bound is per command, not for the whole scan."""
    async with FakeTarget(latency=0.4) as target:
        session = make_session(INITIATOR, target, login_timeout=LOGIN_TIMEOUT)
        with capture_logs() as logs:
            await session.login()
        try:
            assert [lun.lun for lun in session.luns] == [target.lun]
            assert session.luns[0].identity and session.luns[0].size > 0
            assert warnings(logs) == []
        finally:
            await session.logout()


async def test_a_lun_that_does_not_answer_is_left_out_with_a_warning() -> None:
    async with FakeTarget() as target:
        target.swallow = lambda cdb: cdb[0] == scsi.Opcode.INQUIRY and not cdb[1] & 1
        session = make_session(INITIATOR, target, login_timeout=LOGIN_TIMEOUT)
        with capture_logs() as logs:
            await session.login()
        try:
            assert session.state is SessionState.LOGGED_IN and session.luns == []
            (warning,) = warnings(logs)
            assert warning["lun"] == target.lun
            assert f"did not answer INQUIRY in {LOGIN_TIMEOUT:g} s" in warning["reason"]
        finally:
            await session.logout()


async def test_a_rejected_report_luns_falls_back_to_lun_zero() -> None:
    async with FakeTarget() as target:

        def reject(cdb: bytes) -> int | None:
            if cdb[0] == scsi.Opcode.REPORT_LUNS:
                return RejectReason.COMMAND_NOT_SUPPORTED
            return None

        target.reject = reject
        session = make_session(INITIATOR, target, login_timeout=LOGIN_TIMEOUT)
        with capture_logs() as logs:
            await session.login()
        try:
            assert [lun.lun for lun in session.luns] == [0]
            (warning,) = warnings(logs)
            assert "REPORT LUNS failed" in warning["event"]
            assert "rejected" in warning["reason"]
        finally:
            await session.logout()


# ---------------------------------------------------------------- the session lost mid-scan
# tgtd from here on: killing it is the outage, and a second LUN (tests/integration/conftest.py)
# makes LUNs left to scan.


GIVE_UP = 10.0  # Time2Wait (2 s) and one refused attempt, well short of login_timeout


def scan_warnings(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line for line in warnings(logs) if line.get("ISCSI_EVENT") == "lun_scan"]


@pytest.mark.tgtd
async def test_a_session_lost_mid_scan_stops_the_scan_with_one_warning_and_recovers(
    tgt: TgtDisk, second_lun: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = make_session(INITIATOR, tgt, login_timeout=LOGIN_TIMEOUT)
    begun = before_lun_scan(monkeypatch, lambda: asyncio.to_thread(tgt.target.kill))
    with capture_logs() as logs:
        async with asyncio.timeout(3 * LOGIN_TIMEOUT):  # one command's bound, not one per LUN
            await session.login()
    try:
        assert begun == [0]  # the first LUN was being scanned, and no other was tried
        assert session.luns == []
        (warning,) = scan_warnings(logs)
        assert warning["event"].startswith("LUN scan stopped, the session is down")
        assert warning["luns"] == [0, tgt.lun, SECOND_LUN] and warning["ISCSI_TARGET"] == tgt.iqn
        assert session.state in (SessionState.FAILED, SessionState.REOPEN)  # still recovering
        await asyncio.to_thread(tgt.target.restart)
        await session.recovery.wait_for(SessionState.LOGGED_IN, timeout=TIMEOUT)
        read = await session.execute(scsi.read10(0, 1), lun=tgt.lun, read_length=512)
        assert read.check().status == 0
    finally:
        await session.logout()
    assert await asyncio.to_thread(tgt.sessions) == []


@pytest.mark.tgtd
async def test_a_session_given_up_during_its_login_scan_fails_the_login(
    tgt: TgtDisk, second_lun: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """node.session.reopen_max runs out while the login scans the LUNs: the login fails and
    says why; it does not hand back a session that is already over, nor wait for each LUN."""
    given_up: list[Session] = []
    session = make_session(
        INITIATOR, tgt, login_timeout=TIMEOUT, reopen_max=1, on_given_up=given_up.append
    )
    before_lun_scan(monkeypatch, lambda: asyncio.to_thread(tgt.target.kill))
    gave_up = pytest.raises(SessionLoggedOut, match="gave up after 1 reconnect attempts")
    try:
        with capture_logs() as logs, gave_up:
            async with asyncio.timeout(GIVE_UP):  # the give-up ends the login, not a timeout
                await session.login()
        assert given_up == [session]
        assert session.state is SessionState.LOGGED_OUT
        assert session.connection is not None and not session.connection.alive
        assert scan_warnings(logs) == []  # no LUN "left out": the session is over
        errors = [line["ISCSI_EVENT"] for line in logs if line["log_level"] == "error"]
        assert errors == ["given_up"]
    finally:
        await session.logout()  # as the supervisor does after a failed login


@pytest.mark.tgtd
async def test_a_relogin_during_the_scan_checks_the_luns_already_scanned(
    tgt: TgtDisk, second_lun: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LUN 1 is scanned, then shows another serial and the connection drops before LUN 2 is:
    the relogin's identity check covers LUN 1, which is failed rather than served as the disk
    the scan saw."""

    async def other_disk_then_outage() -> None:
        await asyncio.to_thread(
            tgt.target.tgtadm, "--op", "update", "--mode", "logicalunit", "--tid",
            str(tgt.tid), "--lun", str(tgt.lun), "--params", "scsi_sn=OTHERDISK1",
        )  # fmt: skip
        (nexus,) = await asyncio.to_thread(tgt.sessions)
        await asyncio.to_thread(tgt.target.drop_connection, tgt.tid, nexus.sid)

    session = make_session(INITIATOR, tgt, login_timeout=TIMEOUT)
    before_lun_scan(monkeypatch, other_disk_then_outage, lun=SECOND_LUN)
    await session.login()
    try:
        assert session.recovery.reconnects == 1  # during the scan, which went on after it
        assert [lun.lun for lun in session.luns] == [0, tgt.lun, SECOND_LUN]
        assert list(session.failed_luns) == [tgt.lun]
        with pytest.raises(LunIdentityChanged, match="OTHERDISK1"):
            await session.execute(scsi.read10(0, 1), lun=tgt.lun, read_length=512)
        read = await session.execute(scsi.read10(0, 1), lun=SECOND_LUN, read_length=512)
        assert read.check().status == 0
    finally:
        await session.logout()
