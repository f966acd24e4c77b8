"""Keeping one session alive: notice a lost connection, log in again, hold I/O meanwhile.

Error recovery level 0 as RFC 7143 section 6.3.5 and open-iscsi do it: close the connection,
wait DefaultTime2Wait, connect and log in again with the SAME ISID and TSIH 0 (session
reinstatement, so the target drops the old session instead of leaking it), back off
exponentially with jitter between attempts, and retry until logged out. Commands caught by
the outage, and commands submitted during it, wait and are issued again on the new
connection; after ``replacement_timeout`` they fail with :class:`ReplacementTimeout`, and
recovery goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pyiscsid.protocol.errors import ISCSIError, TargetProtocolError, TaskAborted
from pyiscsid.protocol.events import (
    AsyncMessageReceived,
    CommandCompleted,
    Event,
    LogoutCompleted,
)
from pyiscsid.protocol.pdu import AsyncEvent
from pyiscsid.protocol.stats import ConnectionStats

from .driver import CommandResult, ConnectionLostError, IscsiConnection
from .escalation import CommandTimedOut

BACKOFF_FIRST = 1.0  # seconds before the second attempt (the first waits Time2Wait)
BACKOFF_CAP = 30.0
LOG_EVERY_ATTEMPTS = 10  # during a long outage, one line per this many failed attempts
MAX_COMMAND_RETRIES = 5  # aborted commands issued again, as the Linux SCSI layer allows
MAX_TIME2WAIT = 3600  # seconds: the range of DefaultTime2Wait (RFC 7143 section 13.15)


class SessionState(enum.Enum):
    """What `pyiscsiadm -m session -P 1` shows as the session state."""

    FREE = "FREE"
    LOGGED_IN = "LOGGED_IN"
    FAILED = "FAILED"
    REOPEN = "REOPEN"
    LOGGED_OUT = "LOGGED_OUT"


# The one place that says which state may follow which.
_NEXT: dict[SessionState, frozenset[SessionState]] = {
    SessionState.FREE: frozenset({SessionState.LOGGED_IN, SessionState.LOGGED_OUT}),
    SessionState.LOGGED_IN: frozenset({SessionState.FAILED, SessionState.LOGGED_OUT}),
    SessionState.FAILED: frozenset({SessionState.REOPEN, SessionState.LOGGED_OUT}),
    SessionState.REOPEN: frozenset(
        {SessionState.LOGGED_IN, SessionState.FAILED, SessionState.LOGGED_OUT}
    ),
    SessionState.LOGGED_OUT: frozenset(),
}


class ReplacementTimeout(ISCSIError):
    """The session stayed down longer than node.session.timeo.replacement_timeout."""

    control_code = "timeout"


class SessionLoggedOut(ISCSIError):
    """The session was logged out while the command waited."""


def backoff(attempt: int, rng: Callable[[], float] = random.random) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1, 2, ...): doubling up to a cap,
    with +-25% jitter so that many sessions of one target do not retry in step."""
    base = min(BACKOFF_CAP, BACKOFF_FIRST * 2.0 ** (attempt - 1))
    return base * (0.75 + 0.5 * rng())


def _time2wait(seconds: int) -> float:
    """A Time2Wait the target sent (async message Parameter2, Logout Response), within
    the key's range (RFC 7143 section 13.15: 0..3600): a 16-bit field allows 18 hours,
    which no kick could shorten."""
    return float(min(seconds, MAX_TIME2WAIT))


class Recovery:
    """The connection of one session, replaced whenever it is lost, until logout."""

    def __init__(
        self,
        connect: Callable[[], Awaitable[IscsiConnection]],
        *,
        replacement_timeout: float,
        log: Any,
        reopen_max: int = 0,
        verify: Callable[[IscsiConnection], Awaitable[None]] | None = None,
        admit: Callable[[dict[str, Any]], None] | None = None,
        on_given_up: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._connect = connect
        self.reopen_max = reopen_max  # failed attempts before giving up; 0: never give up
        self._verify = verify  # after a relogin, before held I/O goes out again
        self._admit = admit  # may refuse a command before each (re)issue
        self.replacement_timeout = replacement_timeout
        self.log = log
        self._clock = clock
        self.state = SessionState.FREE
        self.connection: IscsiConnection | None = None
        self._up = asyncio.Event()
        self._kick = asyncio.Event()  # a link came back: retry now (linkwatch)
        self._closed = asyncio.Event()  # logged out: stop waiting
        self._replacement_timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self.failed_at: float | None = None
        self.reconnects = 0
        self.attempt = 0  # the reconnect attempt under way in this outage (1, 2, ...)
        self.last_error: str | None = None
        self._watchers: list[asyncio.Future[None]] = []
        self._time2wait: float | None = None
        self._early_events: list[tuple[IscsiConnection, Event]] = []
        self.totals = ConnectionStats()  # of the connections this session had before
        self._background: set[asyncio.Future[None]] = set()
        self.on_given_up = on_given_up  # called once recovery gives up after reopen_max

    @property
    def last_attempt(self) -> bool:
        """The reconnect attempt under way is the last: reopen_max gives the session up if
        it fails (``verify`` may then settle for less than a retry would wait for)."""
        return bool(self.reopen_max) and self.attempt >= self.reopen_max

    def _logged_out(self) -> bool:
        """Asked after an await: the state may have changed while we waited (a method, so
        that type checkers do not carry an earlier answer over)."""
        return self.state is SessionState.LOGGED_OUT

    def _move(self, new: SessionState) -> None:
        if new is not self.state and new not in _NEXT[self.state]:
            raise AssertionError(f"session state {self.state.name} -> {new.name}")
        self.state = new
        watchers, self._watchers = self._watchers, []
        for watcher in watchers:
            if not watcher.done():
                watcher.set_result(None)

    async def wait_for(self, *states: SessionState, timeout: float) -> None:
        """Until the session is in one of ``states``; TimeoutError after ``timeout``."""
        async with asyncio.timeout(timeout):
            while self.state not in states:
                watcher = asyncio.get_running_loop().create_future()
                self._watchers.append(watcher)
                await watcher

    # ---------------------------------------------------------------- lifecycle

    def attach(self, connection: IscsiConnection) -> None:
        """The first login succeeded: watch the connection from now on."""
        self._use(connection)
        self._move(SessionState.LOGGED_IN)
        self._up.set()
        self._task = asyncio.create_task(self._run(), name="session-recovery")

    async def _run(self) -> None:
        while self.state is not SessionState.LOGGED_OUT:
            connection = self.connection
            assert connection is not None
            await connection.wait_closed()
            if self._logged_out():
                return
            await self._recover(connection)

    def connection_lost(self, connection: IscsiConnection, reason: str) -> None:
        """Called by whoever notices first (the watcher, or a command that failed)."""
        if self.state is SessionState.LOGGED_IN and connection is self.connection:
            self._move(SessionState.FAILED)
            self._up.clear()
            self.failed_at = self._clock()
            self.last_error = reason
            self.log.warning("session failed", reason=reason, ISCSI_EVENT="session_failed")
            if self.replacement_timeout >= 0:
                self._replacement_timer = asyncio.get_running_loop().call_later(
                    self.replacement_timeout, self._replacement_expired
                )

    def _replacement_expired(self) -> None:
        """Logged once per outage: from now on held and new I/O fail until the relogin."""
        self._replacement_timer = None
        if self.state in (SessionState.FAILED, SessionState.REOPEN):
            self.log.error(
                "replacement timeout expired", seconds=self.replacement_timeout,
                reason=self.last_error, ISCSI_EVENT="replacement_timeout",
            )  # fmt: skip

    def _cancel_replacement_timer(self) -> None:
        if self._replacement_timer is not None:
            self._replacement_timer.cancel()
            self._replacement_timer = None

    def _use(self, connection: IscsiConnection) -> None:
        old = self.connection
        if old is not None and old is not connection and old.started:
            self.totals.add(old.core.stats)
        self.connection = connection
        self._listen(connection)

    def _listen(self, connection: IscsiConnection) -> None:
        connection.on_event = functools.partial(self._on_event, connection)

    def _replay_early_events(self) -> None:
        """Messages that came while a new connection was still being checked."""
        early, self._early_events = self._early_events, []
        for connection, event in early:
            self._on_event(connection, event)

    def _on_event(self, connection: IscsiConnection, event: Event) -> None:
        """Asynchronous Messages (RFC 7143 section 11.9.1) that concern the session."""
        if not isinstance(event, AsyncMessageReceived):
            return
        if connection is not self.connection:  # a relogin not finished yet: keep it
            self._early_events.append((connection, event))
            return
        code = event.async_event
        self.log.info(
            "async message", async_event=code, parameter1=event.parameter1,
            parameter2=event.parameter2, parameter3=event.parameter3, ISCSI_EVENT="async",
        )  # fmt: skip
        if self.state is not SessionState.LOGGED_IN:
            return
        if code in (AsyncEvent.LOGOUT_REQUESTED, AsyncEvent.NEGOTIATION_REQUESTED):
            # Log out within Parameter3 seconds, then log in again (we do not renegotiate
            # in full-feature phase): the target keeps serving what is in flight meanwhile.
            self.connection_lost(connection, f"target asked for a logout (event {code})")
            self.run_in_background(self._logout_for_recovery(connection, float(event.parameter3)))
        elif code in (AsyncEvent.CONNECTION_DROP, AsyncEvent.SESSION_DROP):
            # The target drops us; Parameter2 is the Time2Wait to honour before reconnecting.
            self._time2wait = _time2wait(event.parameter2)
            self.connection_lost(connection, f"target is dropping the connection (event {code})")
            connection.abort(f"target dropped the connection (async event {code})")

    def run_in_background(self, coroutine: Awaitable[None]) -> None:
        """Run ``coroutine`` for the session's lifetime: :meth:`close` cancels it."""
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _logout_for_recovery(self, connection: IscsiConnection, within: float) -> None:
        """Drain, then log out within the target's Parameter3; the relogin then waits the
        Time2Wait of the Logout Response (RFC 7143 11.15.2), not DefaultTime2Wait, since
        nothing of the old session is left to clean up."""
        await connection.wait_idle(max(within - 1.0, 0.0))
        answer = await _quiet_logout(connection, timeout=max(within, 1.0))
        if answer is not None:
            self._time2wait = _time2wait(answer.time2wait)

    async def _recover(self, lost: IscsiConnection) -> None:
        self.connection_lost(lost, lost.close_reason or "connection closed")
        params = lost.login_result.parameters if lost.login_result is not None else None
        delay = float(params.default_time2wait) if params is not None else 2.0
        if self._time2wait is not None:  # the target said how long, in an async message
            delay, self._time2wait = self._time2wait, None
        attempt = self.attempt = 0
        started = self._clock()
        # Time2Wait is a minimum (RFC 7143 section 13.15): a link that comes back sooner
        # does not cut it short. Later backoffs end early on a kick, including one that
        # came while an attempt was under way.
        self._kick.clear()
        await self._closing_or(asyncio.sleep(delay))
        delay = 0.0
        while self.state is not SessionState.LOGGED_OUT:
            if delay:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._kick.wait(), delay)
            self._kick.clear()
            if self._logged_out():
                return
            attempt += 1
            self.attempt = attempt
            self._move(SessionState.REOPEN)
            if attempt == 1 or attempt % LOG_EVERY_ATTEMPTS == 0:
                self.log.info("reconnecting", attempt=attempt, ISCSI_EVENT="reconnecting")
            try:
                connection = await self._attempt()
            except ISCSIError as exc:
                self.last_error = str(exc)
                self._move(SessionState.FAILED)
                if attempt == 1 or attempt % LOG_EVERY_ATTEMPTS == 0:
                    self.log.warning(
                        "reconnect failed", attempt=attempt, reason=str(exc),
                        ISCSI_EVENT="reconnect_failed",
                    )  # fmt: skip
                if self.reopen_max and attempt >= self.reopen_max:
                    self.log.error(
                        "session given up", attempts=attempt, reason=str(exc),
                        ISCSI_EVENT="given_up",
                    )  # fmt: skip
                    self.last_error = f"gave up after {attempt} reconnect attempts: {exc}"
                    self._move(SessionState.LOGGED_OUT)
                    self._closed.set()
                    self._up.set()  # held commands see LOGGED_OUT and fail
                    if self.on_given_up is not None:
                        self.on_given_up()
                    return
                delay = backoff(attempt)
                continue
            if self._logged_out():  # logged out while we logged in
                await _quiet_logout(connection)
                return
            self._use(connection)
            self._cancel_replacement_timer()
            self.reconnects += 1
            self._move(SessionState.LOGGED_IN)
            self._up.set()
            self._replay_early_events()
            self.log.info(
                "session recovered", attempts=attempt,
                seconds=round(self._clock() - started, 3), ISCSI_EVENT="recovered",
            )  # fmt: skip
            return

    async def _attempt(self) -> IscsiConnection:
        """One relogin and its check (``verify``). The new connection is logged out of and
        closed when the check fails or the session is closed meanwhile (close() cancels this,
        and waits): nothing may stay logged in on the target that no one watches."""
        connection = await self._connect()
        try:
            self._listen(connection)
            if self._verify is not None:
                await self._verify(connection)
        except BaseException as exc:
            connection.discard(f"relogin abandoned: {str(exc) or type(exc).__name__}")
            self._early_events = [e for e in self._early_events if e[0] is not connection]
            raise
        return connection

    def fail_now(self, reason: str) -> None:
        """Fail the connection at once instead of waiting for a NOP-Out timeout (for example
        because the address it uses went away); recovery then starts as for any loss."""
        connection = self.connection
        if self.state is SessionState.LOGGED_IN and connection is not None and connection.alive:
            self.connection_lost(connection, reason)
            connection.abort(reason)

    def stats(self) -> dict[str, Any]:
        """Counters over the session's whole life, every connection included."""
        total = ConnectionStats()
        total.add(self.totals)
        if self.connection is not None and self.connection.started:
            total.add(self.connection.core.stats)
        return {**total.snapshot(), "reconnects": self.reconnects}

    async def _closing_or(self, waiting: Awaitable[None]) -> None:
        """Wait for ``waiting``, or less if the session is logged out meanwhile."""
        closing = asyncio.ensure_future(self._closed.wait())
        other = asyncio.ensure_future(waiting)
        try:
            await asyncio.wait((closing, other), return_when=asyncio.FIRST_COMPLETED)
        finally:
            closing.cancel()
            other.cancel()

    def kick(self) -> None:
        """Retry at once instead of waiting for the backoff (a link came back up)."""
        self._kick.set()

    async def close(self) -> None:
        """Logged out (or giving up): stop recovering; waiting commands fail."""
        if self.state is not SessionState.LOGGED_OUT:
            self._move(SessionState.LOGGED_OUT)
        self._closed.set()
        self._cancel_replacement_timer()
        self._up.set()  # wake waiters so that they see LOGGED_OUT
        self._kick.set()
        for background in list(self._background):
            background.cancel()
        task = self._task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    # ---------------------------------------------------------------- I/O

    async def execute(self, **command: Any) -> CommandResult:
        """Run a SCSI command on the current connection, holding it through outages.

        A command is only reported done when the target said so; one that was in flight
        when the connection failed is issued again on the next connection.
        """
        retries = 0
        while True:
            connection = self.connection
            if not (
                self.state is SessionState.LOGGED_IN and connection is not None and connection.alive
            ):
                connection = await self._usable()
            if self._admit is not None:
                self._admit(command)
            try:
                return await connection.execute(**command)
            except (ConnectionLostError, TargetProtocolError) as exc:
                # The connection is gone. An InitiatorProtocolError (our own refusal, such
                # as an oversized CDB) is the caller's: the connection is fine.
                self.connection_lost(connection, str(exc))
            except (TaskAborted, CommandTimedOut) as exc:
                # Aborted (by our own escalation, or by a reset that took other tasks on the
                # LU with it) or ended by a logout: it did not complete, so issue it again,
                # a bounded number of times as the SCSI layer does.
                if not connection.alive:
                    self.connection_lost(connection, str(exc))
                    continue
                retries += 1
                if retries > MAX_COMMAND_RETRIES:
                    raise

    def start(self, **command: Any) -> asyncio.Future[CommandCompleted] | None:
        """Send a command now if the session is logged in and admits it: the target's answer
        to judge (:meth:`IscsiConnection.start`). None: :meth:`execute` must serve it, which
        holds it through an outage or says why it is refused."""
        connection = self.connection
        if self.state is not SessionState.LOGGED_IN or connection is None:
            return None
        if self._admit is not None:
            try:
                self._admit(command)
            except ISCSIError:
                return None
        return connection.start(**command)

    async def _usable(self) -> IscsiConnection:
        while True:
            if self.state is SessionState.LOGGED_OUT:
                raise SessionLoggedOut(
                    f"the session is over: {self.last_error}"
                    if self.last_error
                    else "the session was logged out"
                )
            connection = self.connection
            if self.state is SessionState.LOGGED_IN and connection is not None:
                if connection.alive:
                    return connection
                self.connection_lost(connection, connection.close_reason or "connection lost")
                continue
            remaining = self._replacement_remaining()
            if remaining is not None and remaining <= 0:
                raise ReplacementTimeout(
                    f"the session has been down for over {self.replacement_timeout:g} s "
                    f"(node.session.timeo.replacement_timeout); last error: {self.last_error}"
                )
            try:
                await asyncio.wait_for(self._up.wait(), remaining)
            except TimeoutError:
                continue

    def _replacement_remaining(self) -> float | None:
        """Seconds until held commands fail; None to hold them forever (a negative timeout)."""
        if self.replacement_timeout < 0:
            return None
        failed = self.failed_at if self.failed_at is not None else self._clock()
        return failed + self.replacement_timeout - self._clock()


async def _quiet_logout(
    connection: IscsiConnection, timeout: float = 15.0
) -> LogoutCompleted | None:
    try:
        return await connection.logout(timeout=timeout)
    except (ISCSIError, TimeoutError):
        connection.close()
        return None
