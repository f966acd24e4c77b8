"""The LUN scan at login: each command has its own bound (node.conn[0].timeo.login_timeout),
a LUN whose scan fails is left out with a warning that names it and says why, and the rest of
the scan goes on. The scripted target (tests/fake_target.py) answers slowly, never or with a
Reject on demand; tgtd does none of that."""

from __future__ import annotations

from typing import Any

from pyiscsid.daemon.recovery import SessionState
from pyiscsid.daemon.session import Session
from pyiscsid.protocol import scsi
from pyiscsid.protocol.config import ConnectionConfig
from pyiscsid.protocol.discovery import parse_portal
from pyiscsid.protocol.pdu import RejectReason
from structlog.testing import capture_logs

from tests.fake_target import FakeTarget

INITIATOR = "iqn.2026-11.test.pyiscsid:scan"
LOGIN_TIMEOUT = 1.0


def session_for(target: FakeTarget) -> Session:
    config = ConnectionConfig(INITIATOR, target.name, isid=Session.new_isid(), noop_out_interval=0)
    return Session(
        1, target.name, parse_portal(target.portal), config, login_timeout=LOGIN_TIMEOUT,
        logout_timeout=3, timeouts={"replacement_timeout": 60},
    )  # fmt: skip


def warnings(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line for line in logs if line["log_level"] == "warning"]


async def test_a_scan_longer_than_login_timeout_still_finds_every_lun() -> None:
    """Six commands at 0.4 s each: the bound is per command, not for the whole scan."""
    async with FakeTarget(latency=0.4) as target:
        session = session_for(target)
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
        session = session_for(target)
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
        session = session_for(target)
        with capture_logs() as logs:
            await session.login()
        try:
            assert [lun.lun for lun in session.luns] == [0]
            (warning,) = warnings(logs)
            assert "REPORT LUNS failed" in warning["event"]
            assert "rejected" in warning["reason"]
        finally:
            await session.logout()
