"""Link and address events from the kernel (rtnetlink), so that sessions need not wait for a
NOP-Out timeout to notice that their interface went away, nor for their backoff to notice
that it came back.

The netlink socket is a plain ``AF_NETLINK`` socket read with ``loop.add_reader``; pyroute2
only encodes the dump requests and decodes the messages. pyroute2's own ``AsyncIPRoute``
(0.9) is not used: it opens the socket through ``create_datagram_endpoint``, which uvloop,
the daemon's loop, refuses for ``AF_NETLINK`` ("cannot open a UDP handle, invalid family
16").

Netlink can be missing (some sandboxes) or forbidden (seccomp, LSM policy); then
:meth:`LinkWatch.start` says so once and returns False, and sessions rely on NOP-Out pings.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import ipaddress
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pyroute2.netlink import NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR
from pyroute2.netlink.rtnl import (
    RTM_DELADDR,
    RTM_DELLINK,
    RTM_GETADDR,
    RTM_GETLINK,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTMGRP_IPV4_IFADDR,
    RTMGRP_IPV6_IFADDR,
    RTMGRP_LINK,
)
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

# Interface flags (linux/if.h): a link carries traffic when it is up (administratively),
# running (operationally up, RFC 2863) and has a carrier.
IFF_UP = 0x1
IFF_RUNNING = 0x40
IFF_LOWER_UP = 0x10000
_USABLE = IFF_UP | IFF_RUNNING | IFF_LOWER_UP
# Address flags (linux/if_addr.h): an IPv6 address is not usable until duplicate address
# detection has passed.
IFA_F_TENTATIVE = 0x40
IFA_F_DADFAILED = 0x08

GROUPS = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR
SO_RCVBUFFORCE = 33  # asm-generic/socket.h; the socket module lacks it
RCVBUF = 1 << 20  # a burst of events (many interfaces flapping) must not overflow it
RECV_SIZE = 1 << 16  # larger than any one netlink datagram the kernel sends
DUMP_TIMEOUT = 5.0  # seconds: the kernel answers a dump in milliseconds
DUMP_ATTEMPTS = 3  # a dump overrun by a burst of events (ENOBUFS) is tried again
CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"

OnAddressLost = Callable[[str], None]
OnLinkUp = Callable[[], None]


@dataclass
class _Link:
    """What we know of one interface: whether it carries traffic, and its addresses."""

    usable: bool = False
    addresses: dict[str, bool] = field(default_factory=dict)  # address -> usable (not tentative)


def _address(msg: Any) -> str | None:
    """The local address of an ifaddrmsg, in the form ``getsockname()`` gives."""
    # On a point-to-point link IFA_ADDRESS is the peer and IFA_LOCAL is ours; on others
    # IPv4 sends both (equal) and IPv6 only IFA_ADDRESS.
    raw = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
    if not raw:
        return None
    try:
        return str(ipaddress.ip_address(raw))
    except ValueError:
        return None


def _address_usable(msg: Any) -> bool:
    flags = msg.get_attr("IFA_FLAGS")
    if flags is None:
        flags = msg["flags"]
    return not flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED)


def _link_usable(msg: Any) -> bool:
    return bool(msg["flags"] & _USABLE == _USABLE)


def _netlink_socket() -> socket.socket:
    """A non-blocking rtnetlink socket in this thread's network namespace."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    try:
        try:  # beyond net.core.rmem_max, which needs CAP_NET_ADMIN
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        sock.bind((0, GROUPS))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _netlink_socket_in(netns: str) -> socket.socket:
    """An rtnetlink socket of the named network namespace (``ip netns add NAME``).

    setns() moves only the calling thread, so it runs in a thread of its own that ends
    right after: the event loop's thread, and pooled threads, never change namespace. A
    socket keeps the namespace it was created in.
    """
    result: list[socket.socket | BaseException] = []

    def run() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = open(f"{NETNS_DIR}/{netns}", "rb")  # noqa: SIM115 (closed right after)
            try:
                if libc.setns(fd.fileno(), CLONE_NEWNET) != 0:
                    code = ctypes.get_errno()
                    raise OSError(code, f"setns({netns}): {errno.errorcode.get(code, code)}")
            finally:
                fd.close()
            result.append(_netlink_socket())
        except BaseException as exc:
            result.append(exc)

    thread = threading.Thread(target=run, name=f"linkwatch-netns-{netns}")
    thread.start()
    thread.join()  # a few syscalls; no I/O
    (outcome,) = result
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


class LinkWatch:
    """Kernel news about links and addresses, turned into two calls for the supervisor.

    ``on_address_lost(ip)``: an address went away, or the link that carries it stopped
    carrying traffic (down, no carrier, deleted); connections from ``ip`` are dead even if
    TCP does not know it yet. ``on_link_up()``: a link came back, or an address was added;
    sessions waiting to reconnect should try now. Both are called on the event loop and must
    not block. ``netns`` watches a named network namespace instead of our own.
    """

    def __init__(
        self,
        *,
        on_address_lost: OnAddressLost,
        on_link_up: OnLinkUp,
        log: Any,
        netns: str | None = None,
    ) -> None:
        self._on_address_lost = on_address_lost
        self._on_link_up = on_link_up
        self.log = log
        self.netns = netns
        self._sock: socket.socket | None = None
        self._portid = 0
        self._marshal = MarshalRtnl()
        self._links: dict[int, _Link] = {}
        self._sequence = 0
        self._dump: tuple[int, asyncio.Future[list[Any]], list[Any]] | None = None
        self._resync: asyncio.Task[None] | None = None
        self._started = False  # start() succeeded: later failures are news of their own

    @property
    def active(self) -> bool:
        """True while kernel events are being followed."""
        return self._sock is not None

    def addresses(self) -> dict[int, frozenset[str]]:
        """{ifindex: addresses} as currently known (for status output and tests)."""
        return {index: frozenset(link.addresses) for index, link in self._links.items()}

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> bool:
        """Subscribe to link and address events and learn the current addresses.

        False (after one warning) when netlink cannot be used: the daemon goes on without.
        """
        try:
            if self.netns is None:
                sock = _netlink_socket()
            else:
                sock = await asyncio.to_thread(_netlink_socket_in, self.netns)
            self._sock = sock
            self._portid = sock.getsockname()[0]
            asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)
            self._links = self._snapshot(await self._dump_all())
        except (OSError, TimeoutError) as exc:
            self._unavailable(exc)
            return False
        self._started = True
        return True

    async def close(self) -> None:
        """Stop following events (idempotent)."""
        self._started = False
        resync, self._resync = self._resync, None
        if resync is not None and resync is not asyncio.current_task():
            resync.cancel()
            await asyncio.gather(resync, return_exceptions=True)
        self._close_socket()

    def _close_socket(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(RuntimeError):  # the loop may be closing
                asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()
        dump, self._dump = self._dump, None
        if dump is not None and not dump[1].done():
            dump[1].set_exception(OSError(errno.ECONNABORTED, "link watch closed"))

    def _unavailable(self, exc: BaseException) -> None:
        self._close_socket()
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        self.log.warning(
            f"link events unavailable ({reason}): relying on NOP-Out pings",
            ISCSI_EVENT="linkwatch_unavailable",
        )

    # ---------------------------------------------------------------- dumps

    async def _dump_all(self) -> list[Any]:
        """Every link, then every address (one dump at a time: the kernel allows no more)."""
        for attempt in range(1, DUMP_ATTEMPTS + 1):
            try:
                links = await self._request_dump(ifinfmsg, RTM_GETLINK)
                return links + await self._request_dump(ifaddrmsg, RTM_GETADDR)
            except OSError as exc:
                if exc.errno != errno.ENOBUFS or attempt == DUMP_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    async def _request_dump(self, message_class: Any, message_type: int) -> list[Any]:
        sock = self._sock
        if sock is None:
            raise OSError(errno.ECONNABORTED, "link watch closed")
        self._sequence += 1
        request = message_class()
        request["header"]["type"] = message_type
        request["header"]["flags"] = NLM_F_REQUEST | NLM_F_DUMP
        request["header"]["sequence_number"] = self._sequence
        request["header"]["pid"] = self._portid
        request.encode()
        done: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._dump = (self._sequence, done, [])
        sock.send(request.data)  # a small datagram to the kernel: never blocks
        try:
            async with asyncio.timeout(DUMP_TIMEOUT):
                return await done
        finally:
            self._dump = None

    @staticmethod
    def _snapshot(messages: list[Any]) -> dict[int, _Link]:
        links: dict[int, _Link] = {}
        for msg in messages:
            link = links.setdefault(msg["index"], _Link())
            if msg["header"]["type"] == RTM_NEWLINK:
                link.usable = _link_usable(msg)
            elif (address := _address(msg)) is not None:
                link.addresses[address] = _address_usable(msg)
        return links

    async def _resynchronise(self) -> None:
        """After lost events (ENOBUFS): dump again and report what changed meanwhile."""
        try:
            fresh = self._snapshot(await self._dump_all())
        except (OSError, TimeoutError) as exc:
            self._stopped(exc)
            return
        old, self._links = self._links, fresh
        came_up = False
        for index, was in old.items():
            now = fresh.get(index)
            for address, was_usable in was.addresses.items():
                gone = now is None or not now.usable or address not in now.addresses
                if was.usable and was_usable and gone:
                    self._lost(address)
        for index, link in fresh.items():
            before = old.get(index)
            if link.usable and (before is None or not before.usable):
                came_up = True
            if before is not None and any(
                usable and not before.addresses.get(address, False)
                for address, usable in link.addresses.items()
            ):
                came_up = True
        if came_up:
            self._up()

    # ---------------------------------------------------------------- events

    def _readable(self) -> None:
        sock = self._sock
        while sock is not None and sock is self._sock:
            try:
                data = sock.recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # the kernel dropped events: we missed some
                    self._rearm(sock)
                    self._overflowed()
                    continue
                self._stopped(exc)
                return
            for msg in self._marshal.parse(data):
                self._message(msg)

    def _rearm(self, sock: socket.socket) -> None:
        """Watch the socket afresh: the error made libuv (uvloop) stop polling it, silently."""
        loop = asyncio.get_running_loop()
        loop.remove_reader(sock.fileno())
        loop.add_reader(sock.fileno(), self._readable)

    def _overflowed(self) -> None:
        if self._dump is not None:  # a dump is running: it may have lost parts (it retries)
            _, done, _ = self._dump
            if not done.done():
                done.set_exception(OSError(errno.ENOBUFS, "netlink overflow during a dump"))
            return
        if not self._started or (self._resync is not None and not self._resync.done()):
            return
        self.log.warning("link events overflowed: dumping links again", ISCSI_EVENT="linkwatch")
        self._resync = asyncio.get_running_loop().create_task(self._resynchronise())

    def _stopped(self, exc: BaseException) -> None:
        if not self._started:  # start() is still waiting for its dump: it will say why
            self._close_socket()
            return
        self._started = False
        self.log.warning(
            f"link events stopped ({type(exc).__name__}: {exc}): relying on NOP-Out pings",
            ISCSI_EVENT="linkwatch_unavailable",
        )
        self._close_socket()

    def _message(self, msg: Any) -> None:
        header = msg["header"]
        kind = header["type"]
        dump = self._dump
        # Notifications carry the sequence number and port of whoever made the change (``ip
        # addr add`` sets its own); a reply to our dump carries ours.
        ours = dump is not None and header["pid"] == self._portid
        if ours and dump is not None and header["sequence_number"] == dump[0]:
            _, done, parts = dump
            if done.done():
                return
            if kind == NLMSG_DONE:
                done.set_result(parts)
            elif kind == NLMSG_ERROR:
                error = header.get("error")
                done.set_exception(error or OSError(errno.EIO, "netlink dump failed"))
            else:
                parts.append(msg)
            return
        if kind == RTM_NEWLINK:
            self._link_changed(msg["index"], _link_usable(msg))
        elif kind == RTM_DELLINK:
            self._link_changed(msg["index"], False)
            self._links.pop(msg["index"], None)
        elif kind == RTM_NEWADDR:
            self._address_added(msg)
        elif kind == RTM_DELADDR:
            self._address_removed(msg)

    def _link_changed(self, index: int, usable: bool) -> None:
        link = self._links.get(index)
        if link is None:
            self._links[index] = _Link(usable=usable)
            return
        was, link.usable = link.usable, usable
        if was and not usable:
            for address in list(link.addresses):
                self._lost(address)
        elif usable and not was:
            self._up()

    def _address_added(self, msg: Any) -> None:
        address = _address(msg)
        if address is None:
            return
        link = self._links.setdefault(msg["index"], _Link())
        usable = _address_usable(msg)
        was = link.addresses.get(address)
        link.addresses[address] = usable
        if usable and not was:  # new, or DAD has just passed; not a mere lifetime refresh
            self._up()

    def _address_removed(self, msg: Any) -> None:
        address = _address(msg)
        if address is None:
            return
        link = self._links.get(msg["index"])
        if link is not None:
            link.addresses.pop(address, None)
        # Also when its link is already down and it was reported then (IPv6 drops addresses
        # after the link): a second report costs nothing, a missed one a NOP timeout.
        self._lost(address)

    # ---------------------------------------------------------------- callbacks

    def _lost(self, address: str) -> None:
        self.log.info("address lost", address=address, ISCSI_EVENT="link_down")
        try:
            self._on_address_lost(address)
        except Exception:  # a bad handler must not stop the watch
            self.log.exception("on_address_lost failed", address=address)

    def _up(self) -> None:
        self.log.info("link up", ISCSI_EVENT="link_up")
        try:
            self._on_link_up()
        except Exception:
            self.log.exception("on_link_up failed")
