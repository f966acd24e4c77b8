"""Asynchronous Messages from the target (RFC 7143 section 11.9.1), with I/O running.

These run against the small scripted target of ``tests/fake_target.py``, not tgtd: tgt cannot
send an Async Message, so a target that asks for a logout (event 1), drops the connection or
the session with a Time2Wait of its own (events 2 and 3), asks for renegotiation (event 4) or
reports a SCSI event (event 0) can only be played by the test. Everything else about recovery
is tested against tgtd in ``test_recovery.py``.

As there, a writer writes checksummed blocks continuously with several commands in flight,
and at the end every write the target acknowledged must be in the target's disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from pyiscsid.daemon import recovery
from pyiscsid.daemon.recovery import SessionState
from pyiscsid.daemon.session import Session
from pyiscsid.protocol import scsi
from pyiscsid.protocol.config import ConnectionConfig
from pyiscsid.protocol.discovery import parse_portal
from pyiscsid.protocol.pdu import AsyncEvent

from tests.fake_target import UNIT_ATTENTION, FakeTarget, fixed_sense
from tests.writer import BLOCK, Writer

INITIATOR = "iqn.2026-11.test.pyiscsid:async"
LUN = 0
WRITERS = 8
LATENCY = 0.01  # the target answers each command 10 ms late, so that commands are in flight
LOGOUT_WITHIN = 5  # Parameter3 of event 1: seconds the target gives us to log out
TIMEOUT = 20.0
# libuv keeps time in whole milliseconds, so a 1 s timer can fire up to 1 ms early as seen
# by time.monotonic().
TIMER_SLACK = 0.002


def make_session(target: FakeTarget, operational: dict[str, str] | None = None) -> Session:
    config = ConnectionConfig(
        INITIATOR,
        target.name,
        isid=Session.new_isid(),
        noop_out_interval=0,  # no pings: the tests are about what the target says
        operational=operational or {},
    )
    return Session(
        1,
        target.name,
        parse_portal(target.portal),
        config,
        login_timeout=3,
        logout_timeout=5,
        timeouts={"replacement_timeout": 60},
    )


@dataclass
class Running:
    target: FakeTarget
    session: Session
    writer: Writer
    tasks: list[asyncio.Task[None]]

    async def finish(self) -> None:
        """More writes after the event, then stop: no error, nothing lost."""
        disk = self.target.disk
        await self.writer.finish(lambda offset: bytes(disk[offset : offset + BLOCK]))
        assert self.target.errors == []


@contextlib.asynccontextmanager
async def running(**target_options: Any) -> AsyncIterator[Running]:
    """A fake target, a session logged in to it, and the writer going."""
    async with FakeTarget(latency=LATENCY, **target_options) as target:
        session = make_session(target)
        await session.login()
        writer = Writer(session, lun=LUN)
        tasks = writer.start(WRITERS)
        try:
            await writer.wait_acks(50)
            yield Running(target, session, writer, tasks)
        finally:
            writer.stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            await session.logout()


class LogSpy:
    """Keeps what the session logs (and still logs it)."""

    def __init__(self, log: Any) -> None:
        self._log = log
        self.records: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        method = getattr(self._log, level)

        def record(event: str, **fields: Any) -> Any:
            self.records.append((level, event, fields))
            return method(event, **fields)

        return record

    def find(self, event: str) -> list[dict[str, Any]]:
        return [fields for _, name, fields in self.records if name == event]


def moment(target: FakeTarget, prefix: str) -> float:
    """When the target first noted something starting with ``prefix``."""
    return next(when for when, what in target.history if what.startswith(prefix))


@pytest.mark.parametrize(
    ("event", "within"),
    [
        (AsyncEvent.LOGOUT_REQUESTED, LOGOUT_WITHIN),
        (AsyncEvent.NEGOTIATION_REQUESTED, LOGOUT_WITHIN),
        # No time to drain: the logout ends the commands in flight, which are issued again.
        (AsyncEvent.LOGOUT_REQUESTED, 0),
    ],
    ids=["1", "4", "1-at-once"],
)
async def test_target_asks_for_logout_session_logs_out_and_in_again(
    event: AsyncEvent, within: int
) -> None:
    async with running() as run:
        target, session, writer = run.target, run.session, run.writer
        first = target.current
        # Several commands in flight when the message comes (the target answers 10 ms late).
        await target.wait_until(lambda: first.in_progress >= WRITERS // 2, TIMEOUT)
        relogin = target.next_login()
        sent = await target.send_async(event, parameter3=within)
        await session.recovery.wait_for(SessionState.FAILED, SessionState.REOPEN, timeout=TIMEOUT)
        second = await asyncio.wait_for(relogin, TIMEOUT)
        await session.recovery.wait_for(SessionState.LOGGED_IN, timeout=TIMEOUT)
        await writer.wait_acks(1)
        logged_out = moment(target, "logout")
        resumed = writer.first_ack_after(second.logged_in_at or 0.0)
        print(
            f"\nasync event {event} (Parameter3 = {within} s): logout "
            f"{logged_out - sent:.3f} s after the message with {target.logout_in_progress[0]} "
            "commands unanswered, "
            f"logged in again after {(second.logged_in_at or 0.0) - sent:.3f} s, "
            f"I/O resumed after {resumed - sent:.3f} s"
        )
        # A clean logout within Parameter3 seconds, once what was in flight had its answer
        # (when there was time for that).
        assert target.logouts == 1
        if within > 1:
            assert target.logout_in_progress == [0]
        assert logged_out - sent < max(within, 1)
        assert first.closed.done() and second is not first
        # Then a relogin with the same ISID and TSIH 0 (session reinstatement, RFC 7143 6.3.5).
        isid = session.config.isid
        assert target.logins == [(isid, 0), (isid, 0)]
        assert target.reinstatements == 0  # the old session had already logged out
        assert session.recovery.reconnects == 1
        await run.finish()


@pytest.mark.parametrize(
    "event", [AsyncEvent.CONNECTION_DROP, AsyncEvent.SESSION_DROP], ids=["2", "3"]
)
async def test_target_drops_us_session_waits_parameter2_then_recovers(event: AsyncEvent) -> None:
    # DefaultTime2Wait=3 (the target's answer wins, the rule is Max): reconnecting after
    # about 1 s shows that Parameter2 was honoured rather than the negotiated value.
    async with running(answers={"DefaultTime2Wait": "3"}) as run:
        target, session, writer = run.target, run.session, run.writer
        assert session.connection is not None and session.connection.login_result is not None
        assert session.connection.login_result.parameters.default_time2wait == 3
        first = target.current
        await target.wait_until(lambda: first.in_progress >= WRITERS // 2, TIMEOUT)
        relogin = target.next_login()
        sent = await target.send_async(event, parameter1=0, parameter2=1, parameter3=0)
        await first.wait_closed(TIMEOUT)
        dropped = (first.closed_at or 0.0) - sent
        second = await asyncio.wait_for(relogin, TIMEOUT)
        await session.recovery.wait_for(SessionState.LOGGED_IN, timeout=TIMEOUT)
        await writer.wait_acks(1)
        reconnected = second.connected_at - sent
        resumed = writer.first_ack_after(second.logged_in_at or 0.0) - sent
        print(
            f"\nasync event {event} (Parameter2 = 1 s): connection dropped after "
            f"{dropped:.3f} s, reconnected after {reconnected:.3f} s, "
            f"I/O resumed after {resumed:.3f} s"
        )
        assert dropped < 1.0  # at once, not at the next ping or timeout
        assert reconnected >= 1.0 - TIMER_SLACK  # not before Parameter2 seconds
        assert reconnected < 3.0  # and not DefaultTime2Wait either
        assert target.logouts == 0  # dropped, not logged out
        isid = session.config.isid
        assert target.logins == [(isid, 0), (isid, 0)]
        await run.finish()


async def test_a_time2wait_beyond_its_range_is_cut_to_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Parameter2 is 16 bits: 65535 s (18 hours, which no kick shortens) is cut to the
    key's range, here made 1 s so that the test sees it."""
    monkeypatch.setattr(recovery, "MAX_TIME2WAIT", 1)
    async with running() as run:
        target, session = run.target, run.session
        relogin = target.next_login()
        sent = await target.send_async(
            AsyncEvent.CONNECTION_DROP, parameter1=0, parameter2=65535, parameter3=0
        )
        second = await asyncio.wait_for(relogin, TIMEOUT)
        await session.recovery.wait_for(SessionState.LOGGED_IN, timeout=TIMEOUT)
        assert second.connected_at - sent >= 1.0 - TIMER_SLACK
        await run.finish()


async def test_scsi_async_event_is_logged_and_changes_nothing() -> None:
    async with running() as run:
        target, session, writer = run.target, run.session, run.writer
        spy = LogSpy(session.recovery.log)
        session.recovery.log = spy
        before = session.connection
        serving = target.current
        # REPORTED LUNS DATA HAS CHANGED (SPC-4 annex F): a SCSI event, not an iSCSI one.
        sense = fixed_sense(UNIT_ATTENTION, 0x3F, 0x0E)
        await target.send_async(AsyncEvent.SCSI_ASYNC_EVENT, lun=LUN, sense=sense)
        # The answers to these writes follow the message on the same TCP stream: once they
        # are in, the session has seen it.
        await writer.wait_acks(2 * WRITERS)
        (logged,) = spy.find("async message")
        assert logged["async_event"] == AsyncEvent.SCSI_ASYNC_EVENT
        assert session.state is SessionState.LOGGED_IN
        assert session.connection is before and before is not None and before.alive
        assert target.current is serving and serving.alive
        assert len(target.logins) == 1 and target.logouts == 0
        assert session.recovery.reconnects == 0
        await run.finish()


@pytest.mark.parametrize(
    ("answers", "operational"),
    [
        ({}, {}),
        ({"InitialR2T": "Yes", "ImmediateData": "No", "MaxBurstLength": "65536"}, {}),
        (
            {"FirstBurstLength": "20000", "MaxBurstLength": "100000"},
            {
                "MaxRecvDataSegmentLength": "4096",
                "HeaderDigest": "CRC32C,None",
                "DataDigest": "CRC32C,None",
            },
        ),
    ],
    ids=["defaults", "r2t-only", "small-bursts-digests"],
)
async def test_fake_target_reads_and_writes_on_every_data_path(
    answers: dict[str, str], operational: dict[str, str]
) -> None:
    """The scripted target is a harness: check that its data paths are right, so that the
    tests above can trust its disk."""
    async with FakeTarget(answers=answers) as target:
        session = make_session(target, operational)
        await session.login()
        try:
            (lun,) = session.luns
            assert (lun.vendor, lun.product, lun.size) == ("PYISCSID", "FAKE", len(target.disk))
            data = os.urandom(1 << 20)
            (
                await session.execute(scsi.write16(40, len(data) // 512), lun=LUN, data_out=data)
            ).check()
            assert target.disk[40 * 512 : 40 * 512 + len(data)] == data
            read = await session.execute(
                scsi.read10(40, len(data) // 512), lun=LUN, read_length=len(data)
            )
            assert bytes(read.check().data) == data
            beyond = await session.execute(scsi.read16(1 << 20, 1), lun=LUN, read_length=512)
            assert beyond.status == scsi.ScsiStatus.CHECK_CONDITION
            assert beyond.sense is not None and beyond.sense.asc == 0x21
            assert target.errors == []
        finally:
            await session.logout()
