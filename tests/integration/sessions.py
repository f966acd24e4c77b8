"""The one way the integration tests build a :class:`Session` by hand (without the supervisor),
against tgtd or the scripted target alike, and a hook to act at a precise point of a login."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from pyiscsid.daemon.busypoll import BusyPoll
from pyiscsid.daemon.session import Execute, LunInfo, Session
from pyiscsid.protocol.config import ConnectionConfig
from pyiscsid.protocol.discovery import parse_portal

from tests.conftest import TgtDisk
from tests.fake_target import FakeTarget

REPLACEMENT_TIMEOUT = 60.0


def make_session(
    initiator: str,
    target: TgtDisk | FakeTarget,
    *,
    nop: float = 0,
    login_timeout: float = 3,
    logout_timeout: float = 5,
    busy_poll: BusyPoll | None = None,
    on_given_up: Callable[[Session], None] | None = None,
    **timeouts: float,
) -> Session:
    """A session (SID 1) of ``initiator`` to the tgtd disk or the scripted target.

    ``nop`` is both the NOP-Out interval and its timeout (0: no pings); ``timeouts`` are the
    session's (``replacement_timeout``, 60 s unless given; ``reopen_max``,
    ``command_timeout``...), as the supervisor passes them from the node settings."""
    name = target.iqn if isinstance(target, TgtDisk) else target.name
    config = ConnectionConfig(
        initiator, name, isid=Session.new_isid(), noop_out_interval=nop, noop_out_timeout=nop
    )
    return Session(
        1,
        name,
        parse_portal(target.portal),
        config,
        login_timeout=login_timeout,
        logout_timeout=logout_timeout,
        timeouts={"replacement_timeout": REPLACEMENT_TIMEOUT, **timeouts},
        busy_poll=busy_poll,
        on_given_up=on_given_up,
    )


def before_lun_scan(
    monkeypatch: pytest.MonkeyPatch,
    action: Callable[[], Awaitable[None]],
    *,
    lun: int | None = None,
) -> list[int]:
    """Have ``action`` run once, as the login's LUN scan begins with LUN ``lun`` (the first
    one after REPORT LUNS if None); returns the numbers of the LUNs whose scan began."""
    begun: list[int] = []
    scan_lun = Session._scan_lun

    async def scan_lun_after(self: Session, execute: Execute, number: int) -> LunInfo | None:
        begun.append(number)
        first = len(begun) == 1
        if (number == lun) if lun is not None else first:
            await action()
        return await scan_lun(self, execute, number)

    monkeypatch.setattr(Session, "_scan_lun", scan_lun_after)
    return begun
