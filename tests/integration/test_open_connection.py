"""open_connection hands its caller a logged-in connection, or leaves nothing of it behind.
An open cancelled at the worst moments: as the TCP connection is made (inside the loop's
create_connection, which uvloop then closes without telling the protocol), or when the Login
Response has arrived but the opening coroutine has not resumed yet. Either way the connection
it made is logged out where it can be, closed, and over on our side too (no timer left
running), and no session stays on the target with no one to watch or log it out."""

from __future__ import annotations

import asyncio
import os

import pytest
from pyiscsid.daemon.driver import ConnectionLostError, IscsiConnection, open_connection
from pyiscsid.protocol.config import ConnectionConfig
from pyiscsid.protocol.discovery import parse_portal
from pyiscsid.protocol.events import Event, LoginCompleted
from pyiscsid.protocol.login import random_isid

from tests.conftest import TgtDisk
from tests.fake_target import FakeTarget
from tests.writer import TIMEOUT

INITIATOR = "iqn.2026-11.test.pyiscsid:open"


async def open_cancelled_at(
    point: str, monkeypatch: pytest.MonkeyPatch, target: str, portal: str
) -> IscsiConnection:
    """Open a connection and cancel the opening task at ``point``: ``"connection_made"`` or
    ``"login_response"`` (once the Login Response is handled, before open_connection can
    resume). Returns the connection it had made, once that is over on our side."""
    opening: asyncio.Future[IscsiConnection] | None = None
    made: list[IscsiConnection] = []

    def cancel_opening(connection: IscsiConnection) -> None:
        assert opening is not None
        made.append(connection)
        opening.cancel()  # its wake-up is queued, not run: the cancellation lands first

    connection_made, dispatch = IscsiConnection.connection_made, IscsiConnection._dispatch

    def connection_made_then_cancel(
        self: IscsiConnection, transport: asyncio.BaseTransport
    ) -> None:
        connection_made(self, transport)
        cancel_opening(self)

    def dispatch_then_cancel(self: IscsiConnection, event: Event) -> None:
        dispatch(self, event)
        if isinstance(event, LoginCompleted):
            cancel_opening(self)

    if point == "connection_made":
        monkeypatch.setattr(IscsiConnection, "connection_made", connection_made_then_cancel)
    else:
        monkeypatch.setattr(IscsiConnection, "_dispatch", dispatch_then_cancel)
    config = ConnectionConfig(
        INITIATOR, target, isid=random_isid(os.urandom), noop_out_interval=1, noop_out_timeout=1
    )
    opening = asyncio.ensure_future(open_connection(parse_portal(portal), config, login_timeout=5))
    with pytest.raises(asyncio.CancelledError):
        await opening
    (connection,) = made
    await asyncio.wait_for(connection.wait_closed(), TIMEOUT)
    assert (not connection.alive and connection._timer is None) or connection._timer.cancelled()
    with pytest.raises(ConnectionLostError, match="abandoned"):
        await connection.ping()  # over on our side: nothing more goes out
    return connection


@pytest.mark.tgtd
@pytest.mark.parametrize("point", ["connection_made", "login_response"])
async def test_an_open_cancelled_midway_leaves_no_session_on_the_target(
    tgt: TgtDisk, monkeypatch: pytest.MonkeyPatch, point: str
) -> None:
    connection = await open_cancelled_at(point, monkeypatch, tgt.iqn, tgt.portal)
    if point == "login_response":
        assert connection.login_result is not None  # the target had logged us in
    await asyncio.to_thread(
        tgt.target.wait_for_sessions, tgt.tid, lambda sessions: not sessions, TIMEOUT,
        "the abandoned session to end",
    )  # fmt: skip
    assert await asyncio.to_thread(tgt.connections) == []


async def test_an_open_cancelled_as_the_login_response_arrives_logs_out() -> None:
    """What tgtd does not show: the Logout Request reached the target before the close.
    (The scripted target runs on this loop: the opening task is always past
    create_connection when its Login Response comes.)"""
    async with FakeTarget() as target:
        with pytest.MonkeyPatch.context() as monkeypatch:
            connection = await open_cancelled_at(
                "login_response", monkeypatch, target.name, target.portal
            )
        assert connection.login_result is not None
        await target.wait_until(lambda: not target.connections, TIMEOUT)
        assert len(target.logins) == 1 and target.logouts == 1
        assert target.errors == []
