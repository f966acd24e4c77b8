"""A thin asyncio driver around the sans-IO :class:`~pyiscsid.protocol.connection.Connection`.

It opens the TCP connection, feeds bytes and ``loop.time()`` to the core, writes what the
core returns with one ``writelines`` per batch, keeps exactly one timer at the core's next
deadline (aioquic's ``QuicConnectionProtocol`` is the model), and turns events into awaited
results. Supervision and recovery build on it (``session.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, cast

import structlog
from pyiscsid.protocol.config import ConnectionConfig
from pyiscsid.protocol.connection import Connection, ConnectionState
from pyiscsid.protocol.discovery import (
    DiscoveredTarget,
    Portal,
    parse_send_targets,
    send_targets_request,
)
from pyiscsid.protocol.errors import ISCSIError, TargetProtocolError, TaskAborted
from pyiscsid.protocol.events import (
    CommandCompleted,
    CommandFailed,
    Event,
    LoginCompleted,
    LoginFailed,
    LoginRedirected,
    LogoutCompleted,
    PingCompleted,
    PingTimedOut,
    RejectReceived,
    TaskManagementCompleted,
    TextExchangeCompleted,
)
from pyiscsid.protocol.pdu import (
    Buffer,
    LogoutReason,
    RejectReason,
    TaskAttribute,
    TaskManagementFunction,
)
from pyiscsid.protocol.record import record
from pyiscsid.protocol.scsi import ScsiCommandError, ScsiStatus, lun_to_field
from pyiscsid.protocol.sense import Sense, SenseFormatError, parse_sense

from .batching import IterationBatch
from .busypoll import BusyPoll
from .escalation import TaskTimeouts, rescue, timed_out

DEFAULT_LOGIN_TIMEOUT = 15.0  # open-iscsi's node.conn[0].timeo.login_timeout
DEFAULT_LOGOUT_TIMEOUT = 15.0
MAX_REDIRECTS = 8
UNIT_ATTENTION_RETRIES = 8


# Reject reasons after which the connection must go (RFC 7143 sections 7.1.4 and 11.17.1).
_REJECTS_THAT_END_THE_CONNECTION = frozenset(
    {RejectReason.DATA_DIGEST_ERROR, RejectReason.PROTOCOL_ERROR, RejectReason.WAITING_FOR_LOGOUT}
)


class ConnectionLostError(ISCSIError):
    """The TCP connection closed or failed before the exchange finished."""


class LoginTimeoutError(ISCSIError):
    """The target did not finish the login within the login timeout (iscsiadm exit 8)."""


class LoginRedirectedError(ISCSIError):
    """Raised inside the driver to follow a redirect; carries the new portal."""

    def __init__(self, address: str, port: int, permanent: bool) -> None:
        self.address = address
        self.port = port
        self.permanent = permanent
        super().__init__(f"redirected to {address}:{port}")


@record
class CommandResult:
    """A SCSI command's outcome: its status, sense and, for reads, the data received."""

    status: int
    sense: Sense | None
    data: memoryview
    residual_count: int = 0

    def check(self) -> CommandResult:
        """Raise :class:`ScsiCommandError` unless the status is GOOD."""
        if self.status != ScsiStatus.GOOD:
            raise ScsiCommandError(self.status, self.sense)
        return self


def command_result(event: CommandCompleted) -> CommandResult:
    """The outcome of a command, its sense decoded."""
    sense = _sense_or_none(event.sense) if event.sense else None
    return CommandResult(event.status, sense, event.data, event.residual_count)


def _sense_or_none(raw: bytes) -> Sense | None:
    """Sense data, or None when there is none or it cannot be decoded.

    Bad sense bytes spoil one command's diagnosis, not the connection: the status still
    says the command failed.
    """
    if not raw:
        return None
    try:
        return parse_sense(raw)
    except SenseFormatError:
        return None


@dataclass(slots=True, eq=False)
class _Watched:
    """A command under its timeout (``node.session.err_timeo.command_timeout``)."""

    deadline: float
    initiator_task_tag: int
    lun: int
    pending: asyncio.Future[Any]
    timeouts: TaskTimeouts
    rescue: asyncio.Task[None] | None = None  # task management under way


_FULL_FEATURE = ConnectionState.FULL_FEATURE  # tested for every command


class IscsiConnection(asyncio.Protocol):
    """One logged-in iSCSI connection (and so one session) on the event loop."""

    def __init__(
        self, config: ConnectionConfig, portal: Portal, busy_poll: BusyPoll | None = None
    ) -> None:
        self.config = config
        self.portal = portal
        self._busy_poll = busy_poll
        self._fd = -1  # the socket's, for busy polling
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._core: Connection | None = None
        self._login: asyncio.Future[LoginCompleted] = self._loop.create_future()
        self._waiters: dict[int, asyncio.Future[Any]] = {}
        self._logout: asyncio.Future[LogoutCompleted] | None = None
        self._closed: asyncio.Future[None] = self._loop.create_future()
        self._timer: asyncio.TimerHandle | None = None
        self._watched: dict[int, _Watched] = {}  # commands with a timeout, by ITT
        self._watchdog: asyncio.TimerHandle | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self._batch = IterationBatch(self._loop, self._write)  # commands of one iteration
        self._error: ISCSIError | None = None
        self.on_event: Callable[[Event], None] | None = None  # async messages etc.
        # News in a unit attention other than power-on (its session's, once logged in).
        self.on_unit_attention: Callable[[int, Sense], None] | None = None
        self.log = structlog.get_logger("pyiscsid.connection").bind(
            ISCSI_PORTAL=portal.address_port, ISCSI_TARGET=config.target_name
        )

    # ---------------------------------------------------------- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._fd = sock.fileno()
        self._core = Connection(self.config, rng=os.urandom, now=self._loop.time())
        self._flush()

    def data_received(self, data: bytes) -> None:
        core = self._core
        assert core is not None
        try:
            events = core.receive_data(data, self._loop.time())
        except TargetProtocolError as exc:
            self._abort(exc)
            return
        for event in events:
            self._dispatch(event)
        self._write()
        if self._timer is None:
            # What a target sends only moves the core's deadline later (or ends it), so a
            # timer already set stands: see _arm_timer.
            self._arm_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(exc)

    def _finish(self, exc: Exception | None) -> None:
        """The connection is over: timers stop and every waiter fails. Harmless if run again
        (:meth:`discard` runs it without waiting for the transport's connection_lost)."""
        if self._timer is not None:
            self._timer.cancel()
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._core is not None:
            self._core.fail()
        error = self._error or ConnectionLostError(
            f"connection to {self.portal.address_port} closed"
            + (f": {exc}" if exc is not None else " by the target")
        )
        self._fail_all(error)
        self._writable.set()  # a writer waiting for buffer space must see the loss, not hang
        if not self._closed.done():
            self._closed.set_result(None)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # ---------------------------------------------------------- plumbing

    def _flush(self) -> None:
        """Write what the core has to send and set the timer to its next deadline."""
        self._write()
        self._arm_timer()

    def _write(self) -> None:
        """Write what the core has to send. Sending a command leaves the core's deadline
        where it was; only a ping (:meth:`ping`) can bring it earlier."""
        core = self._core
        if core is None or self._transport is None:
            return
        out = core.data_to_send()
        if out and not self._transport.is_closing():
            self._transport.writelines(out)

    def _arm_timer(self) -> None:
        """Have :meth:`_on_timer` run by the core's next deadline.

        Every PDU received moves the NOP-Out deadline later; a timer already set earlier is
        kept (when it fires, nothing is due yet and it is set again), so that a busy
        connection does not cancel and create a timer per PDU.
        """
        assert self._core is not None
        deadline = self._core.next_deadline()
        timer = self._timer
        if deadline is None:
            if timer is not None:
                timer.cancel()
                self._timer = None
            return
        if timer is not None:
            if timer.when() <= deadline:
                return
            timer.cancel()
        self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        assert self._core is not None
        for event in self._core.handle_timer(self._loop.time()):
            self._dispatch(event)
        self._flush()

    def _abort(self, error: ISCSIError) -> None:
        """Drop the connection because of ``error``; every waiter gets it."""
        self._error = error
        self._fail_all(error)
        if self._transport is not None:
            self._transport.abort()

    def _fail_all(self, error: ISCSIError) -> None:
        futures = [self._login, self._logout, *self._waiters.values()]
        if self._busy_poll is not None:
            self._busy_poll.outstanding -= len(self._waiters)
        self._waiters.clear()
        self._watched.clear()  # recovery has the commands now
        for future in futures:
            if future is not None and not future.done():
                future.set_exception(error)

    def _resolve(self, itt: int, value: Any = None, error: BaseException | None = None) -> None:
        future = self._forget(itt)
        if future is None or future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)

    def _dispatch(self, event: Event) -> None:
        match event:
            case CommandCompleted():
                self._resolve(event.initiator_task_tag, event)
            case CommandFailed():
                self._resolve(event.initiator_task_tag, error=event.error)
            case PingCompleted():
                self._resolve(event.initiator_task_tag, event.round_trip)
            case TaskManagementCompleted():
                self._resolve(event.initiator_task_tag, event.response)
            case TextExchangeCompleted():
                self._resolve(event.initiator_task_tag, event.pairs)
            case LoginCompleted():
                if not self._login.done():
                    self._login.set_result(event)
            case LoginFailed():
                self._abort(event.error)
            case LoginRedirected():
                self._abort(LoginRedirectedError(event.address, event.port, event.permanent))
            case LogoutCompleted():
                if self._logout is not None and not self._logout.done():
                    self._logout.set_result(event)
                if self._transport is not None:
                    self._transport.close()
            case PingTimedOut():
                self._abort(
                    ConnectionLostError(
                        f"no answer from {self.portal.address_port} to a NOP-Out in "
                        f"{event.waited:.1f} s"
                    )
                )
            case RejectReceived() if event.reason in _REJECTS_THAT_END_THE_CONNECTION:
                # At ErrorRecoveryLevel 0 the lost PDU can only be recovered with the whole
                # connection: drop it, and the session issues the command again.
                self._abort(
                    ConnectionLostError(f"target rejected a PDU (reason 0x{event.reason:02x})")
                )
            case _:
                if self.on_event is not None:
                    self.on_event(event)

    def _core_ready(self) -> Connection:
        if self._error is not None:
            raise self._error
        core = self._core
        if core is None or core.state is not ConnectionState.FULL_FEATURE:
            state = core.state.value if core is not None else "not connected"
            raise ConnectionLostError(f"connection to {self.portal.address_port} is {state}")
        return core

    def _await_tag(self, itt: int) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = self._loop.create_future()
        alone = not self._waiters  # nothing else in flight (4 KiB reads one at a time)
        self._waiters[itt] = future
        if self._busy_poll is not None:
            self._busy_poll.outstanding += 1
        self._batch.request(alone=alone)
        return future

    async def _answer(self, itt: int) -> Any:
        """The answer to ``itt`` (a ping, task management or text exchange)."""
        pending = self._await_tag(itt)
        try:
            return await pending
        except asyncio.CancelledError:
            self._forget(itt)
            raise

    def _forget(self, itt: int) -> asyncio.Future[Any] | None:
        """``itt`` no longer counts as in flight (for :meth:`wait_idle` and busy polling):
        it was answered, or the caller stopped waiting (a timeout cancelled it) and an
        answer that still comes is dropped. Returns its waiter, if it had one."""
        future = self._waiters.pop(itt, None)
        self._watched.pop(itt, None)  # answered or abandoned: no rescue
        if future is not None and self._busy_poll is not None:
            self._busy_poll.outstanding -= 1
        return future

    def _watch(self, watch: _Watched) -> None:
        """Rescue the command if it is still unanswered at ``watch.deadline``.

        One timer per connection, not one per command (this is the hot path): it fires at
        the earliest deadline it knows of, rescues what is overdue and sets itself again.
        """
        self._watched[watch.initiator_task_tag] = watch
        if self._watchdog is None or watch.deadline < self._watchdog.when():
            if self._watchdog is not None:
                self._watchdog.cancel()
            self._watchdog = self._loop.call_at(watch.deadline, self._rescue_overdue)

    def _rescue_overdue(self) -> None:
        """The command timer fired: task management takes over what is overdue
        (:mod:`escalation`)."""
        self._watchdog = None
        now = self._loop.time()
        earliest: float | None = None
        for watch in list(self._watched.values()):
            if watch.rescue is not None:
                continue
            if watch.deadline <= now and watch.pending.cancelled():
                self._forget(watch.initiator_task_tag)  # started, and its caller left
            elif watch.deadline <= now:
                watch.rescue = self._loop.create_task(
                    rescue(self, watch.initiator_task_tag, watch.lun, watch.pending, watch.timeouts)
                )
            elif earliest is None or watch.deadline < earliest:
                earliest = watch.deadline
        if earliest is not None:
            self._watchdog = self._loop.call_at(earliest, self._rescue_overdue)

    # ---------------------------------------------------------- public API

    @property
    def started(self) -> bool:
        """The TCP connection was made and the core exists."""
        return self._core is not None

    @property
    def core(self) -> Connection:
        assert self._core is not None
        return self._core

    @property
    def login_result(self) -> LoginCompleted | None:
        """The login's outcome once it succeeded; None before, or if it failed."""
        future = self._login
        if future.done() and not future.cancelled() and future.exception() is None:
            return future.result()
        return None

    @property
    def close_reason(self) -> str | None:
        """Why the connection ended (None while it is up or after a clean logout)."""
        if self._error is not None:
            return str(self._error)
        if self._closed.done() and (self._logout is None or not self._logout.done()):
            return f"connection to {self.portal.address_port} closed by the target"
        return None

    @property
    def local_address(self) -> str | None:
        """Our end of the TCP connection (the address the target sees)."""
        if self._transport is None:
            return None
        sockname = self._transport.get_extra_info("sockname")
        return str(sockname[0]) if sockname else None

    @property
    def alive(self) -> bool:
        """Logged in, and the connection has not failed."""
        return self._core is not None and self._core.state is ConnectionState.FULL_FEATURE

    async def wait_logged_in(self) -> LoginCompleted:
        return await self._login

    async def execute(
        self,
        cdb: bytes,
        *,
        lun: int = 0,
        data_out: Buffer | None = None,
        read_length: int = 0,
        read_buffer: memoryview | None = None,
        attribute: TaskAttribute = TaskAttribute.SIMPLE,
        timeouts: TaskTimeouts | None = None,
    ) -> CommandResult:
        """Run one SCSI command; unit attentions are absorbed and the command issued again
        (up to UNIT_ATTENTION_RETRIES times), as Linux's SCSI layer does.

        With ``timeouts``, a command that gets no answer is rescued by task management
        (:mod:`escalation`).

        A CHECK CONDITION with UNIT ATTENTION means the command was not executed, so running
        it again is safe even for a write (SAM-5 section 5.14). Each new session starts with
        a power-on one; any other (capacity or mode parameters changed, LUNs added) is news
        for the administrator, and logged.
        """
        for _ in range(UNIT_ATTENTION_RETRIES):
            if not self._writable.is_set():
                await self._writable.wait()
            if self._error is not None or not self.alive:
                self._core_ready()  # raises, saying why
            itt, pending, watch = self._send(
                cdb, lun, data_out, read_length, read_buffer, attribute, timeouts
            )
            if self._busy_poll is not None:  # it polls only for a command alone in flight
                self._busy_poll.wait_for_answer(self._fd, pending.done, self.data_received)
                if pending.done() and self._busy_poll.must_yield():
                    await asyncio.sleep(0)  # answered without the loop running, for too long
            try:
                event = await pending
            except TaskAborted:
                if watch is not None and watch.rescue is not None:
                    raise timed_out(lun, watch.timeouts) from None
                raise
            except asyncio.CancelledError:
                self._forget(itt)
                raise
            result = command_result(event)
            sense = result.sense
            if sense is None or not sense.is_unit_attention:
                return result
            if not sense.is_power_on_reset:
                self.unit_attention(lun, sense)
        return result

    def start(
        self,
        cdb: bytes,
        *,
        lun: int = 0,
        data_out: Buffer | None = None,
        read_buffer: memoryview | None = None,
        timeouts: TaskTimeouts | None = None,
    ) -> asyncio.Future[CommandCompleted] | None:
        """Send a SCSI command now, without a coroutine of its own: the NBD server's hot path,
        where a task and its chain of awaits per request cost a third of the daemon's CPU.

        The future is the target's answer, whatever its status (the caller judges it, and
        goes the full way through :meth:`execute` for anything but a plain success); it
        fails with the connection's error, or TaskAborted once its timeout had it
        aborted. None: the connection cannot take a command now
        (not logged in, or the socket's buffer is full), and :meth:`execute` would wait.
        Cancelling the future drops the answer, as cancelling :meth:`execute` does; the
        command counts as in flight until the target answers it or its timeout passes
        (then it is forgotten, not aborted: no one waits for it).
        """
        if not self._writable.is_set() or self._error is not None or not self.alive:
            return None
        pending = self._send(cdb, lun, data_out, 0, read_buffer, TaskAttribute.SIMPLE, timeouts)[1]
        if self._busy_poll is not None and self._busy_poll.outstanding == 1:
            # Not now: the caller may have more commands to send (an NBD client's
            # requests come many to a read), and a spin for this one would hold them.
            self._loop.call_soon(self._poll_for_answer, pending)
        return pending

    def _poll_for_answer(self, pending: asyncio.Future[CommandCompleted]) -> None:
        """Busy polling for a started command, once the caller has let the loop run: if
        it is still the only one in flight."""
        if self._busy_poll is not None and not pending.done():
            self._busy_poll.wait_for_answer(self._fd, pending.done, self.data_received)

    def _send(
        self,
        cdb: bytes,
        lun: int,
        data_out: Buffer | None,
        read_length: int,
        read_buffer: memoryview | None,
        attribute: TaskAttribute,
        timeouts: TaskTimeouts | None,
    ) -> tuple[int, asyncio.Future[CommandCompleted], _Watched | None]:
        """Hand a command to the core of a logged-in connection: ``(itt, answer, watch)``,
        the future of its answer and, under ``timeouts`` if given, its rescue watch."""
        assert self._core is not None
        itt = self._core.send_command(
            cdb,
            lun=lun_to_field(lun),
            data_out=data_out,
            read_length=read_length,
            read_buffer=read_buffer,
            attribute=attribute,
        )
        pending = self._await_tag(itt)
        watch = None
        if timeouts is not None:
            watch = _Watched(self._loop.time() + timeouts.command, itt, lun, pending, timeouts)
            self._watch(watch)
        return itt, pending, watch

    async def wait_idle(self, timeout: float) -> bool:
        """Until no command, ping or exchange is outstanding; False if ``timeout`` ran out."""
        deadline = self._loop.time() + timeout
        while waiting := [f for f in self._waiters.values() if not f.done()]:
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                return False
            await asyncio.wait(waiting, timeout=remaining)
        return True

    async def ping(self, data: bytes = b"") -> float:
        """NOP-Out round trip in seconds."""
        itt = self._core_ready().ping(data, now=self._loop.time())
        self._arm_timer()  # its answer is due by the ping timeout, maybe before the timer
        rtt: float = await self._answer(itt)
        return rtt

    async def task_management(
        self, function: TaskManagementFunction, *, lun: int = 0, referenced_task_tag: int = 0
    ) -> int:
        itt = self._core_ready().task_management(
            function, lun=lun_to_field(lun), referenced_task_tag=referenced_task_tag
        )
        response: int = await self._answer(itt)
        return response

    async def text(
        self, pairs: Sequence[tuple[str, str]], *, timeout: float
    ) -> list[tuple[str, str]]:
        """A Text Request exchange; a target that does not answer in time drops the
        connection (a discovery session has no pings to notice a dead target)."""
        itt = self._core_ready().send_text(pairs)
        try:
            async with asyncio.timeout(timeout):
                answer: list[tuple[str, str]] = await self._answer(itt)
        except TimeoutError:
            self.abort(f"no answer to a Text Request from {self.portal.address_port}")
            raise LoginTimeoutError(
                f"{self.portal.address_port} did not answer a Text Request in {timeout:g} s"
            ) from None
        return answer

    async def logout(self, timeout: float = DEFAULT_LOGOUT_TIMEOUT) -> LogoutCompleted:
        """Log out cleanly (RFC 7143 section 11.14); the connection closes after."""
        core = self._core_ready()
        self._logout = self._loop.create_future()
        core.logout(LogoutReason.CLOSE_SESSION)
        self._flush()
        try:
            async with asyncio.timeout(timeout):
                return await self._logout
        finally:
            self.close()

    def log_event(self, event: str, **fields: Any) -> None:
        self.log.warning(event, **fields)

    def unit_attention(self, lun: int, sense: Sense) -> None:
        """A unit attention other than power-on: news for the administrator (capacity or
        mode parameters changed, LUNs added), told to :attr:`on_unit_attention`, else
        logged."""
        if self.on_unit_attention is not None:
            self.on_unit_attention(lun, sense)
        else:
            self.log_event("unit attention", lun=lun, sense=sense.code, reason=str(sense))

    def abort(self, reason: str) -> None:
        """Drop the connection now (a link went down, the target asked us to go)."""
        self._abort(ConnectionLostError(reason))

    def close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def discard(self, reason: str) -> None:
        """Let go of a connection that no caller will ever hold (its open was cancelled, or
        timed out, as or after the target logged us in).

        Logged in, it sends a Logout Request (RFC 7143 section 11.14) and closes after it
        without waiting for the answer, so that the target ends the session at once rather
        than keep it for Time2Retain; still logging in, it is dropped outright. Either way
        it is over at once on this side (:meth:`wait_closed` returns, waiters get
        ``reason``). A no-op on a connection already over."""
        transport = self._transport
        if transport is None or self._closed.done():
            return
        core = self._core
        logged_in = core is not None and core.state is _FULL_FEATURE and self._error is None
        if self._error is None:  # else the login failed, and that says why
            self._error = ConnectionLostError(reason)
        self._login.cancel()  # if still pending: its opener has gone, no one will read it
        if logged_in and core is not None and not transport.is_closing():
            core.logout(LogoutReason.CLOSE_SESSION)
            # uvloop closes the transport itself when create_connection is cancelled after
            # connection_made ran, without saying so in is_closing() and without calling
            # connection_lost: only a write tells, and then there is no one to log out to.
            with contextlib.suppress(RuntimeError):
                self._write()
            transport.close()  # once the Logout Request is out
            if transport.get_write_buffer_size():  # a target that does not read: do not wait
                self._loop.call_later(DEFAULT_LOGOUT_TIMEOUT, transport.abort)
        else:
            transport.abort()
        self._finish(None)

    async def wait_closed(self) -> None:
        await self._closed


def _made(
    made: list[IscsiConnection],
    config: ConnectionConfig,
    portal: Portal,
    busy_poll: BusyPoll | None,
) -> IscsiConnection:
    """The protocol factory of :func:`open_connection`: keeps what it makes in ``made``."""
    made.append(IscsiConnection(config, portal, busy_poll))
    return made[-1]


async def open_connection(
    portal: Portal,
    config: ConnectionConfig,
    *,
    login_timeout: float = DEFAULT_LOGIN_TIMEOUT,
    max_redirects: int = MAX_REDIRECTS,
    busy_poll: BusyPoll | None = None,
) -> IscsiConnection:
    """Connect and log in, following login redirects (RFC 7143 section 11.13.5).

    The caller gets the connection, or nothing is left of it: whatever ends the open early
    (a cancellation, the login timeout, a failed login), even one that lands after the
    Login Response arrived, logs out of and closes every connection it made
    (:meth:`IscsiConnection.discard`), so that none stays logged in on the target unwatched.
    """
    loop = asyncio.get_running_loop()
    for _ in range(max_redirects + 1):
        made: list[IscsiConnection] = []  # known even if cancelled inside create_connection
        factory = functools.partial(_made, made, config, portal, busy_poll)
        handed_over = False
        try:
            async with asyncio.timeout(login_timeout):
                _, conn = await loop.create_connection(factory, portal.address, portal.port)
                await conn.wait_logged_in()
            handed_over = True  # no await from here to the caller: nothing can cancel it
            return conn
        except LoginRedirectedError as redirect:
            portal = replace(portal, address=redirect.address, port=redirect.port)
        except TimeoutError:
            raise LoginTimeoutError(
                f"login to {portal.address_port} did not finish in {login_timeout:g} s"
            ) from None
        except OSError as exc:
            raise ConnectionLostError(f"cannot connect to {portal.address_port}: {exc}") from None
        finally:
            if not handed_over:
                for unused in made:
                    unused.discard(f"login to {unused.portal.address_port} abandoned")
    raise ConnectionLostError(f"more than {max_redirects} login redirects")


async def send_targets(
    portal: Portal,
    config: ConnectionConfig,
    *,
    login_timeout: float = DEFAULT_LOGIN_TIMEOUT,
) -> list[tuple[str, str]]:
    """The keys of a SendTargets response, as sent (RFC 7143 Appendix C): log in, ask, log
    out. :func:`discover` parses them all or nothing; the daemon reads them entry by entry
    (``protocol.discovery.read_send_targets``)."""
    config = replace(config, target_name=None, noop_out_interval=0)
    conn = await open_connection(portal, config, login_timeout=login_timeout)
    try:
        return await conn.text(send_targets_request("All"), timeout=login_timeout)
    finally:
        try:
            await conn.logout(timeout=login_timeout)
        except (ISCSIError, TimeoutError):
            conn.close()


async def discover(
    portal: Portal,
    config: ConnectionConfig,
    *,
    login_timeout: float = DEFAULT_LOGIN_TIMEOUT,
) -> list[DiscoveredTarget]:
    """SendTargets discovery: the targets, or a TargetProtocolError for a bad response."""
    pairs = await send_targets(portal, config, login_timeout=login_timeout)
    return parse_send_targets(pairs, portal)
