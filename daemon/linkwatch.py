"""Link and address events from the kernel (rtnetlink), so that sessions need not wait for a
NOP-Out timeout to notice that their interface went away, nor for their backoff to notice
that it came back.

The messages come and go through :mod:`.rtnetlink` (a plain ``AF_NETLINK`` socket read with
``loop.add_reader``; pyroute2 encodes and decodes). This file keeps what is known of the links
(:class:`_Table`), follows the kernel's news (:class:`LinkWatch`), and asks it which way a
target is (:meth:`LinkWatch.route_interface`).

The watch never holds the loop for long: one callback handles at most :data:`READ_BUDGET`
messages, and the rest waits for the next turn of the loop. pyroute2 spends 100-150 µs
decoding one RTM_NEWLINK, so an event storm (a host starting a few hundred containers) or a
big dump read in one go would be seconds of CPU without a turn for the sessions. When the
kernel drops events (ENOBUFS: a storm outran the receive buffer) the watch dumps every link
and address again, as often as it takes: an overflow is a passing condition, not a reason to
stop watching.

Netlink can be missing (some sandboxes) or forbidden (seccomp, LSM policy); then
:meth:`LinkWatch.start` says so once and returns False, and sessions rely on NOP-Out pings.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import ipaddress
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import rtnetlink
from .rtnetlink import (
    AF_UNSPEC,
    NLM_F_DUMP_INTR,
    NLMSG_DONE,
    NLMSG_ERROR,
    RECV_SIZE,
    RTM_DELADDR,
    RTM_DELLINK,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTN_LOCAL,
    RTN_UNICAST,
    AddressInfo,
    Body,
    Header,
    LinkInfo,
    RouteInfo,
    Status,
)

# Messages handled per callback, then back to the loop: about 1 ms at pyroute2's 100-150 µs
# a message. Counted in messages, not datagrams: one of a dump's datagrams holds up to 32 KiB
# (some 20 links, or 300 addresses). Enough for an interface coming up with its carrier and a
# few addresses (5 messages) to be one report (see _flush); smaller would not shorten stalls
# either: under an event storm those come from the CPU scheduler (the storm's ``ip`` processes
# compete for it) and from the interpreter's full garbage collections, not from this budget.
READ_BUDGET = 8
DUMP_TIMEOUT = 5.0  # seconds: the kernel answers a dump in milliseconds
ROUTE_TIMEOUT = 1.0  # seconds for the answer to a route lookup (the kernel's is immediate)
RETRY_FIRST = 0.1  # seconds before dumping again after a dump that lost events...
RETRY_MAX = 3.0  # ...doubling up to this, for as long as the storm lasts
# A dump that fails with these is tried again: events were lost (ENOBUFS), the kernel's
# tables changed meanwhile (EINTR, from NLM_F_DUMP_INTR), or an earlier dump of ours is
# still running (EBUSY: one that timed out, or that a storm slowed down).
_TRANSIENT = frozenset({errno.ENOBUFS, errno.EBUSY, errno.EINTR, errno.EAGAIN})
# What the kernel answers a route lookup when there is no route to use: none (ENETUNREACH),
# or an ``unreachable``, ``prohibit`` or ``blackhole`` route.
_NO_ROUTE = frozenset({errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EACCES, errno.EINVAL})


@dataclass(frozen=True, slots=True)
class InterfaceUp:
    """An interface started carrying traffic, or gained a usable address (an IPv4 address
    added, an IPv6 address past duplicate address detection): reported once per interface
    for all the messages read together, not once per message.

    ``addresses`` are its usable addresses now. A session waiting to reconnect gains from
    this only if its route goes through ``index``: see :meth:`LinkWatch.routes_via`.
    """

    index: int
    name: str | None
    addresses: frozenset[str]


OnAddressLost = Callable[[str], None]
OnInterfaceUp = Callable[[InterfaceUp], None]
_Encode = Callable[[int, int], bytes]  # (sequence, port) -> a request: see rtnetlink
_Answer = list[tuple[int, Body | None]]  # (message type, body) of each message answered


# -- what is known of the links --------------------------------------------------------------


@dataclass
class _Link:
    """One interface: whether it carries traffic (None: no news of it yet), its name, and
    its addresses (address -> usable, i.e. not tentative)."""

    usable: bool | None = None
    name: str | None = None
    addresses: dict[str, bool] = field(default_factory=dict)


@dataclass
class _Changes:
    lost: list[str] = field(default_factory=list)  # addresses, in the order they went
    up: list[int] = field(default_factory=list)  # interfaces that came up


class _Table:
    """Links and addresses, kept by applying the kernel's messages in order. Applying
    is idempotent, so a dump plus the events that arrived while it ran (even some from
    before it) gives the kernel's present state."""

    def __init__(self) -> None:
        self.links: dict[int, _Link] = {}

    @classmethod
    def of(cls, messages: _Answer) -> _Table:
        table = cls()
        for kind, body in messages:
            table.apply(kind, body)
        return table

    def apply(self, kind: int, body: Body | None) -> _Changes:
        changes = _Changes()
        if isinstance(body, LinkInfo) and body.family == AF_UNSPEC:
            if kind == RTM_NEWLINK:
                self._link_changed(body, changes)
            elif kind == RTM_DELLINK:
                gone = self.links.pop(body.index, None)
                if gone is not None and gone.usable is not False:
                    changes.lost.extend(gone.addresses)
        elif isinstance(body, AddressInfo) and body.address is not None:
            if kind == RTM_NEWADDR:
                link = self.links.setdefault(body.index, _Link())
                was = link.addresses.get(body.address)
                link.addresses[body.address] = body.usable
                # New, or DAD has just passed; not a mere lifetime refresh.
                if body.usable and not was and link.usable is not False:
                    changes.up.append(body.index)
            elif kind == RTM_DELADDR:
                if (holder := self.links.get(body.index)) is not None:
                    holder.addresses.pop(body.address, None)
                # Also when its link is already down and it was reported then (IPv6 drops
                # addresses after the link): a second report costs nothing, a missed one a
                # NOP timeout.
                changes.lost.append(body.address)
        return changes

    def _link_changed(self, body: LinkInfo, changes: _Changes) -> None:
        link = self.links.setdefault(body.index, _Link())
        link.name = body.name or link.name
        was, link.usable = link.usable, body.usable
        if was and not body.usable:
            changes.lost.extend(link.addresses)
        elif body.usable and not was:
            changes.up.append(body.index)

    def usable_addresses(self, index: int) -> frozenset[str]:
        link = self.links.get(index)
        if link is None:
            return frozenset()
        return frozenset(address for address, usable in link.addresses.items() if usable)

    def index_named(self, name: str) -> int | None:
        return next((i for i, link in self.links.items() if link.name == name), None)


def _differences(old: _Table, new: _Table) -> _Changes:
    """What changed from ``old`` to ``new``: the news that the lost events would have
    brought (addresses lost, interfaces up)."""
    changes = _Changes()
    for index, was in old.links.items():
        now = new.links.get(index)
        for address, was_usable in was.addresses.items():
            gone = now is None or now.usable is False or address not in now.addresses
            if was.usable is not False and was_usable and gone:
                changes.lost.append(address)
    for index, link in new.links.items():
        before = old.links.get(index)
        if not link.usable:
            continue
        if (
            before is None
            or not before.usable
            or any(
                usable and not before.addresses.get(address, False)
                for address, usable in link.addresses.items()
            )
        ):
            changes.up.append(index)
    return changes


# -- the watch -------------------------------------------------------------------------------


def _transient(exc: BaseException) -> bool:
    """A failed dump worth trying again (after a while): see _TRANSIENT."""
    return isinstance(exc, TimeoutError) or (isinstance(exc, OSError) and exc.errno in _TRANSIENT)


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


@dataclass
class _Request:
    """One request of ours in flight, answered by the messages carrying its sequence number."""

    done: asyncio.Future[_Answer]
    dump: bool
    parts: _Answer = field(default_factory=list)
    interrupted: bool = False

    def receive(self, header: Header, body: Body | None) -> None:
        if self.done.done():
            return
        if header.flags & NLM_F_DUMP_INTR:
            self.interrupted = True
        if header.type in (NLMSG_ERROR, NLMSG_DONE):
            code = body.error if isinstance(body, Status) else errno.EIO
            if code:
                self.done.set_exception(OSError(code, os.strerror(code)))
            elif self.interrupted:
                self.done.set_exception(
                    OSError(errno.EINTR, "the kernel's tables changed during the dump")
                )
            else:
                self.done.set_result(self.parts)
            return
        self.parts.append((header.type, body))
        if not self.dump:
            self.done.set_result(self.parts)


class LinkWatch:
    """Kernel news about links and addresses, turned into calls for the supervisor.

    ``on_address_lost(ip)``: an address went away, or the link that carries it stopped
    carrying traffic (down, no carrier, deleted); connections from ``ip`` are dead even if
    TCP does not know it yet. ``on_interface_up(InterfaceUp)``: an interface came up, or
    gained a usable address; sessions waiting to reconnect through it should try now.
    Both are called on the event loop and must not block.
    ``netns`` watches a named network namespace instead of our own.
    """

    def __init__(
        self,
        *,
        on_address_lost: OnAddressLost,
        on_interface_up: OnInterfaceUp | None = None,
        log: Any,
        netns: str | None = None,
    ) -> None:
        self._on_address_lost = on_address_lost
        self._on_interface_up = on_interface_up
        self.log = log
        self.netns = netns
        self._sock: socket.socket | None = None
        self._port = 0
        self._reading = False  # the loop's reader is on (off: paused, see _pace)
        self._pending: rtnetlink.Datagram | None = None  # the rest of a datagram read
        self._resume: asyncio.Handle | None = None  # the next callback, when paused
        self._table = _Table()
        self._baseline = False  # the table has come from a complete dump
        self._sequence = 0
        self._requests: dict[int, _Request] = {}
        self._replay: _Answer | None = None  # events during a dump
        # Events lost (ENOBUFS, or a datagram unreadable): a dump during which this grows
        # is incomplete.
        self._overflows = 0
        self._sync: asyncio.Task[None] | None = None
        self._in_sync = asyncio.Event()
        self._came_up: dict[int, None] = {}  # interfaces to report up, in order
        self._started = False  # start() succeeded: later failures are news of their own

    @property
    def active(self) -> bool:
        """True while kernel events are being followed."""
        return self._sock is not None

    def addresses(self) -> dict[int, frozenset[str]]:
        """{ifindex: addresses} as currently known (for status output and tests)."""
        return {index: frozenset(link.addresses) for index, link in self._table.links.items()}

    async def synchronised(self) -> None:
        """Until what is known matches the kernel: after start(), and again after events
        were lost (that dump is retried as long as it takes)."""
        await self._in_sync.wait()

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> bool:
        """Subscribe to link and address events and learn the current addresses.

        False (after one warning) when netlink cannot be used: the daemon goes on without.
        A storm of events that spoils the first dump does not count: the watch follows
        events at once and dumps again until a dump is complete.
        """
        try:
            if self.netns is None:
                sock = rtnetlink.open_socket()
            else:
                sock = await asyncio.to_thread(rtnetlink.open_socket_in, self.netns)
            self._sock = sock
            self._port = sock.getsockname()[0]
            asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)
            self._reading = True
            fresh = await self._dump_all()
        except (OSError, TimeoutError) as exc:
            # No answer at all (TimeoutError) is not a storm: something filters netlink.
            if self._sock is None or isinstance(exc, TimeoutError) or not _transient(exc):
                self._unavailable(exc)
                return False
            self._started = True
            self.log.warning(
                f"link events overflowed at start ({_reason(exc)}): dumping links again",
                ISCSI_EVENT="linkwatch",
            )
            self._sync = asyncio.get_running_loop().create_task(self._synchronise(RETRY_FIRST))
            return True
        self._started = True
        self._adopt(fresh)
        return True

    async def close(self) -> None:
        """Stop following events (idempotent)."""
        self._started = False
        sync, self._sync = self._sync, None
        if sync is not None and sync is not asyncio.current_task():
            sync.cancel()
            await asyncio.gather(sync, return_exceptions=True)
        self._close_socket()

    def _close_socket(self) -> None:
        sock, self._sock = self._sock, None
        resume, self._resume = self._resume, None
        if resume is not None:
            resume.cancel()
        self._pending, self._reading = None, False
        if sock is not None:
            with contextlib.suppress(RuntimeError):  # the loop may be closing
                asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()
        requests, self._requests = self._requests, {}
        for request in requests.values():
            if not request.done.done():
                request.done.set_exception(OSError(errno.ECONNABORTED, "link watch closed"))

    def _unavailable(self, exc: BaseException) -> None:
        self._close_socket()
        self.log.warning(
            f"link events unavailable ({_reason(exc)}): relying on NOP-Out pings",
            ISCSI_EVENT="linkwatch_unavailable",
        )

    def _stopped(self, exc: BaseException) -> None:
        if not self._started:  # start() is still waiting for its dump: it will say why
            self._close_socket()
            return
        self._started = False
        self.log.warning(
            f"link events stopped ({_reason(exc)}): relying on NOP-Out pings",
            ISCSI_EVENT="linkwatch_unavailable",
        )
        self._close_socket()

    # ---------------------------------------------------------------- requests

    async def _ask(self, encode: _Encode, *, dump: bool, timeout: float) -> _Answer:
        sock = self._sock
        if sock is None:
            raise OSError(errno.ECONNABORTED, "link watch closed")
        self._sequence = self._sequence % 0xFFFFFFFF + 1
        sequence = self._sequence
        request = _Request(asyncio.get_running_loop().create_future(), dump)
        self._requests[sequence] = request
        try:
            # A small datagram to the kernel, which answers it in the call: never blocks.
            sock.send(encode(sequence, self._port))
            async with asyncio.timeout(timeout):
                return await request.done
        finally:
            self._requests.pop(sequence, None)

    async def _dump_all(self) -> _Table:
        """Every link, then every address (one dump at a time: the kernel allows no more),
        with the events that arrived meanwhile applied on top. Raises OSError(ENOBUFS) when
        events were lost meanwhile: the result would not be the kernel's state."""
        overflows = self._overflows
        self._replay = []
        try:
            links = await self._ask(rtnetlink.link_dump, dump=True, timeout=DUMP_TIMEOUT)
            addresses = await self._ask(rtnetlink.address_dump, dump=True, timeout=DUMP_TIMEOUT)
            if self._overflows != overflows:
                raise OSError(errno.ENOBUFS, "link events were lost during the dump")
            table = _Table.of(links + addresses)
            for kind, body in self._replay:
                table.apply(kind, body)
            return table
        finally:
            self._replay = None

    async def _synchronise(self, delay: float) -> None:
        """Dump until a dump is complete, then report what changed unseen. A failure that
        passes (see _TRANSIENT) is tried again after a growing delay, without end: a storm
        of events does not last, and giving up would leave lost addresses unreported."""
        attempts = 0
        while True:
            if delay:
                await asyncio.sleep(delay)
            attempts += 1
            try:
                fresh = await self._dump_all()
            except (OSError, TimeoutError) as exc:
                if not _transient(exc):
                    self._stopped(exc)
                    return
                delay = min(RETRY_MAX, max(RETRY_FIRST, delay * 2))
                self.log.debug("link dump incomplete: trying again", reason=_reason(exc),
                               attempt=attempts, delay=delay)  # fmt: skip
                continue
            self._adopt(fresh)
            self.log.info("link events in sync again", attempts=attempts,
                          ISCSI_EVENT="linkwatch")  # fmt: skip
            return

    def _adopt(self, fresh: _Table) -> None:
        """A complete dump replaces what is known; after the first, what differs is news
        that events were lost for."""
        old, self._table = self._table, fresh
        if self._baseline:
            self._report(_differences(old, fresh))
        self._baseline = True
        self._in_sync.set()
        self._flush()

    async def route_interface(self, address: str) -> int | None:
        """The index of the interface the kernel sends packets for ``address`` through now
        (``ip route get``), or None when it has no route there (none, or ``unreachable``,
        ``prohibit``, ``blackhole``). A link-local address with a scope (``fe80::1%eth0``)
        goes through its scope. ValueError for what is not an IP address; OSError when the
        kernel cannot be asked (the watch is not active) or did not answer (ROUTE_TIMEOUT).
        """
        host, _, scope = address.partition("%")
        ip = ipaddress.ip_address(host)
        if scope:
            index = int(scope) if scope.isdigit() else self._table.index_named(scope)
            if index is None:
                raise OSError(errno.ENODEV, f"no interface named {scope!r}")
            return index
        encode = functools.partial(rtnetlink.route_get, ip)
        try:
            [(_, route)] = await self._ask(encode, dump=False, timeout=ROUTE_TIMEOUT)
        except OSError as exc:
            if exc.errno in _NO_ROUTE:
                return None
            raise
        if not isinstance(route, RouteInfo) or route.type not in (RTN_UNICAST, RTN_LOCAL):
            return None
        return route.oif

    async def routes_via(self, address: str, index: int) -> bool:
        """Whether packets for ``address`` leave through interface ``index`` now: the
        question before reconnecting a session to ``address`` on news that ``index`` came
        up. True when it cannot be told: a needless attempt costs less than a missed one."""
        try:
            return await self.route_interface(address) == index
        except (OSError, ValueError):
            return True

    # ---------------------------------------------------------------- events

    def _readable(self) -> None:
        """Up to READ_BUDGET messages (the rest of a datagram first, then new ones), then
        back to the loop: a storm of events must not hold up the sessions' timers and I/O."""
        self._resume = None
        sock = self._sock
        handled = 0
        try:
            while handled < READ_BUDGET and sock is not None and sock is self._sock:
                pending = self._pending
                if pending is not None:
                    message = next(pending, None)
                    if message is not None:
                        handled += 1
                        self._message(*message)
                        continue
                    self._pending = None
                    if pending.unreadable is not None:
                        self._events_lost("unreadable", pending.unreadable)
                try:
                    data = sock.recv(RECV_SIZE)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:
                    if exc.errno == errno.ENOBUFS:  # the kernel dropped events: we missed some
                        self._rearm(sock)
                        self._events_lost()
                        continue
                    self._stopped(exc)
                    break
                self._pending = rtnetlink.decode(data)
            self._flush()
        finally:  # even after a bug, reading goes on
            if sock is not None and sock is self._sock:
                self._pace(sock, more=handled == READ_BUDGET)

    def _pace(self, sock: socket.socket, *, more: bool) -> None:
        """After a callback that spent its budget (``more``: messages may be left, of a
        datagram already read, which the socket's readiness would not announce), the next
        turn of the loop goes on, and the reader pauses meanwhile (one callback a turn, not
        two); after one that emptied the socket, the reader waits for more."""
        loop = asyncio.get_running_loop()
        if more:
            if self._reading:
                loop.remove_reader(sock.fileno())
                self._reading = False
            self._resume = loop.call_soon(self._readable)
        elif not self._reading:
            loop.add_reader(sock.fileno(), self._readable)
            self._reading = True

    def _rearm(self, sock: socket.socket) -> None:
        """Watch the socket afresh: the error made libuv (uvloop) stop polling it, silently.
        (A paused reader is added afresh when it resumes.)"""
        if self._reading:
            loop = asyncio.get_running_loop()
            loop.remove_reader(sock.fileno())
            loop.add_reader(sock.fileno(), self._readable)

    def _events_lost(self, what: str = "overflowed", reason: str | None = None) -> None:
        """Events were lost: the kernel dropped some (ENOBUFS), or a datagram ended in a
        message that could not be read (``what`` "unreadable", and why)."""
        self._overflows += 1  # a dump in flight will notice, and be tried again
        self._in_sync.clear()
        if not self._started:  # start()'s own dump: it notices
            return
        if self._sync is not None and not self._sync.done():
            return  # one episode, said once: its dumps go on until one is complete
        why = {"reason": reason} if reason is not None else {}
        self.log.warning(f"link events {what}: dumping links again", **why,
                         ISCSI_EVENT="linkwatch")  # fmt: skip
        self._sync = asyncio.get_running_loop().create_task(self._synchronise(0.0))

    def _message(self, header: Header, body: Body | None) -> None:
        # Notifications carry the port of whoever made the change (``ip addr add``), or 0
        # for the kernel; only answers to our requests carry ours.
        if header.port == self._port:
            request = self._requests.get(header.sequence)
            if request is not None:
                request.receive(header, body)
            return  # or the rest of a dump that timed out
        if header.type not in (RTM_NEWLINK, RTM_DELLINK, RTM_NEWADDR, RTM_DELADDR):
            return
        if self._replay is not None:
            self._replay.append((header.type, body))
        self._report(self._table.apply(header.type, body))

    # ---------------------------------------------------------------- callbacks

    def _report(self, changes: _Changes) -> None:
        """Losses at once (sessions fail sooner); interfaces that came up when the messages
        read together have been applied (one report per interface, see _flush)."""
        for address in changes.lost:
            self._lost(address)
        for index in changes.up:
            self._came_up[index] = None

    def _lost(self, address: str) -> None:
        self.log.info("address lost", address=address, ISCSI_EVENT="link_down")
        try:
            self._on_address_lost(address)
        except Exception:  # a bad handler must not stop the watch
            self.log.exception("on_address_lost failed", address=address)

    def _flush(self) -> None:
        """Report each interface that came up, if it is still up."""
        if not self._came_up:
            return
        indices, self._came_up = list(self._came_up), {}
        for index in indices:
            link = self._table.links.get(index)
            if link is None or link.usable is False:
                continue  # down again, or deleted, before the report
            event = InterfaceUp(index, link.name, self._table.usable_addresses(index))
            self.log.info("link up", ifindex=index, interface=link.name,
                          addresses=sorted(event.addresses), ISCSI_EVENT="link_up")  # fmt: skip
            if self._on_interface_up is not None:
                try:
                    self._on_interface_up(event)
                except Exception:
                    self.log.exception("on_interface_up failed", ifindex=index)
