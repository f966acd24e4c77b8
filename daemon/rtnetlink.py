"""The kernel's routing netlink (``rtnetlink(7)``), as much of it as the link watch uses: the
socket (in our network namespace or a named one), the three requests it sends (dump the links,
dump the addresses, which way to an address), and the messages it reads.

pyroute2 encodes the requests and decodes the messages; what the watch needs of a message is
taken out at once into a small frozen dataclass (:class:`LinkInfo`, :class:`AddressInfo`,
:class:`RouteInfo`, :class:`Status`), so pyroute2's message objects go no further than this
file. pyroute2 decodes every attribute of a message, 100-150 µs for one RTM_NEWLINK:
:func:`decode` is lazy, one message per step, so that its reader can stop after a few and give
the event loop back (``linkwatch.READ_BUDGET``), even in the middle of a 32 KiB dump datagram.

The socket is a plain ``AF_NETLINK`` socket, read with ``loop.add_reader``: pyroute2's own
``AsyncIPRoute`` opens its socket through ``create_datagram_endpoint``, which uvloop, the
daemon's loop, refuses for ``AF_NETLINK`` ("cannot open a UDP handle, invalid family 16").
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import ipaddress
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pyroute2.netlink import (
    NLM_F_DUMP,
    NLM_F_DUMP_INTR,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    nlmsg,
)
from pyroute2.netlink.rtnl import (
    RTM_DELADDR,
    RTM_DELLINK,
    RTM_GETADDR,
    RTM_GETLINK,
    RTM_GETROUTE,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWROUTE,
    RTMGRP_IPV4_IFADDR,
    RTMGRP_IPV6_IFADDR,
    RTMGRP_LINK,
    rtypes,
)
from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_DADFAILED, IFA_F_TENTATIVE, ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import IFF_LOWER_UP, IFF_RUNNING, IFF_UP, ifinfmsg
from pyroute2.netlink.rtnl.marshal import MarshalRtnl
from pyroute2.netlink.rtnl.rtmsg import rtmsg

__all__ = [
    "AF_UNSPEC",
    "GROUPS",
    "NLMSG_DONE",
    "NLMSG_ERROR",
    "NLM_F_DUMP_INTR",
    "RECV_SIZE",
    "RTM_DELADDR",
    "RTM_DELLINK",
    "RTM_NEWADDR",
    "RTM_NEWLINK",
    "RTM_NEWROUTE",
    "RTN_LOCAL",
    "RTN_UNICAST",
    "UNUSABLE_ADDRESS",
    "USABLE",
    "AddressInfo",
    "Body",
    "Datagram",
    "Header",
    "LinkInfo",
    "RouteInfo",
    "Status",
    "address_dump",
    "decode",
    "link_dump",
    "open_socket",
    "open_socket_in",
    "route_get",
]

RTN_UNICAST = rtypes["RTN_UNICAST"]  # a route to a gateway or a directly connected network
RTN_LOCAL = rtypes["RTN_LOCAL"]  # an address of this host
# A link message of any other family (AF_BRIDGE...) is about a role of the link, not the link.
AF_UNSPEC = socket.AF_UNSPEC
# Interface flags (linux/if.h): a link carries traffic when it is up (administratively),
# running (operationally up, RFC 2863) and has a carrier.
USABLE = IFF_UP | IFF_RUNNING | IFF_LOWER_UP
# Address flags (linux/if_addr.h): an IPv6 address is not usable until duplicate address
# detection has passed.
UNUSABLE_ADDRESS = IFA_F_TENTATIVE | IFA_F_DADFAILED

GROUPS = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR
SO_RCVBUFFORCE = 33  # asm-generic/socket.h; the socket module lacks it
RCVBUF = 1 << 20  # a burst of events (many interfaces flapping) must not overflow it
RECV_SIZE = 1 << 16  # larger than any one netlink datagram the kernel sends
CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"


# -- messages --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Header:
    """struct nlmsghdr. ``port`` is the sender's: ours on answers to our requests, 0 (the
    kernel) or that of whoever made the change (``ip addr add``) on notifications."""

    type: int
    flags: int
    sequence: int
    port: int


@dataclass(frozen=True, slots=True)
class LinkInfo:
    """RTM_NEWLINK or RTM_DELLINK (struct ifinfomsg)."""

    family: int
    index: int
    usable: bool  # up, running and with a carrier: see USABLE
    name: str | None


@dataclass(frozen=True, slots=True)
class AddressInfo:
    """RTM_NEWADDR or RTM_DELADDR (struct ifaddrmsg); ``address`` in ``getsockname()``'s form."""

    index: int
    address: str | None
    usable: bool  # neither tentative nor failed duplicate address detection


@dataclass(frozen=True, slots=True)
class RouteInfo:
    """RTM_NEWROUTE, the answer to RTM_GETROUTE (struct rtmsg)."""

    type: int
    oif: int | None


@dataclass(frozen=True, slots=True)
class Status:
    """NLMSG_ERROR or NLMSG_DONE: 0, or the errno the kernel answered."""

    error: int


Body = LinkInfo | AddressInfo | RouteInfo | Status


class _Done(nlmsg):  # type: ignore[misc]  # pyroute2 is untyped
    """NLMSG_DONE ends a dump with an int: 0, or the negative errno that cut the dump short.
    pyroute2 decodes it as an empty message unless extended acks are on."""

    fields = (("error", "i"),)


_MARSHAL = MarshalRtnl()
_MARSHAL.msg_map[NLMSG_DONE] = _Done


class Datagram:
    """The messages of one netlink datagram, each decoded as it is asked for; None for a
    message of a kind the watch does not use. A message cut short, or one pyroute2 cannot
    decode, ends the datagram, and :attr:`unreadable` then says why: the kernel sends
    neither, so the news in the rest of the datagram is lost."""

    def __init__(self, data: bytes) -> None:
        self.unreadable: str | None = None
        self._messages = self._decode(data)

    def __iter__(self) -> Iterator[tuple[Header, Body | None]]:
        return self._messages

    def __next__(self) -> tuple[Header, Body | None]:
        return next(self._messages)

    def _decode(self, data: bytes) -> Iterator[tuple[Header, Body | None]]:
        messages = _MARSHAL.parse(data)
        end = 0  # of the messages read, aligned as the kernel aligns them (NLMSG_ALIGN)
        while True:
            try:
                msg = next(messages, None)
                if msg is None:
                    if end < len(data):  # pyroute2 stops, silent, at a message cut short
                        self.unreadable = (
                            f"{len(data) - end} bytes at offset {end} of a {len(data)}-byte "
                            "datagram are not a whole message"
                        )
                    return
                fields = msg["header"]
                if msg.offset + fields["length"] > len(data):
                    self.unreadable = (
                        f"a message of {fields['length']} bytes at offset {msg.offset} "
                        f"runs past the {len(data)}-byte datagram"
                    )
                    return
                end = (msg.offset + fields["length"] + 3) & ~3
                header = Header(
                    fields["type"], fields["flags"], fields["sequence_number"], fields["pid"]
                )
                body = _body(header.type, msg)
            except Exception as exc:  # pyroute2 says nothing of what it raises for bad bytes
                self.unreadable = f"pyroute2 could not decode a message: {exc!r}"[:200]
                return
            with contextlib.suppress(Exception):  # else the garbage collector frees it
                _release(msg)
            yield header, body


def decode(data: bytes) -> Datagram:
    """The messages of ``data``, one datagram read from the socket (see :class:`Datagram`)."""
    return Datagram(data)


def _body(kind: int, msg: Any) -> Body | None:
    if kind in (RTM_NEWLINK, RTM_DELLINK):
        usable = msg["flags"] & USABLE == USABLE
        return LinkInfo(msg["family"], msg["index"], usable, msg.get_attr("IFLA_IFNAME"))
    if kind in (RTM_NEWADDR, RTM_DELADDR):
        flags = msg.get_attr("IFA_FLAGS")  # all 32 bits; the header has room for 8
        if flags is None:
            flags = msg["flags"]
        # On a point-to-point link IFA_ADDRESS is the peer and IFA_LOCAL is ours; on others
        # IPv4 sends both (equal) and IPv6 only IFA_ADDRESS.
        address = _address(msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS"))
        return AddressInfo(msg["index"], address, not flags & UNUSABLE_ADDRESS)
    if kind == RTM_NEWROUTE:
        return RouteInfo(msg["type"], msg.get_attr("RTA_OIF"))
    if kind in (NLMSG_ERROR, NLMSG_DONE):
        return Status(abs(msg.get("error") or 0))
    return None


def _release(msg: Any) -> None:
    """Let reference counting free a decoded message at once. Each pyroute2 message and
    attribute refers to itself (``chain = [self]``, for ``msg[0]`` and ``nla()``), and some
    attributes to their message (``parent``, for decoding): the 200 objects of an RTM_NEWLINK
    would wait for the cyclic garbage collector, which in an event storm took 40 % of the
    daemon's CPU time, in pauses of up to 50 ms. Neither is used once the message is read.
    (Messages and attributes are dicts: ``dict.get`` passes by pyroute2's slower ``get``.)"""
    stack = [msg]
    if (request := msg["header"].get("errmsg")) is not None:  # an NLMSG_ERROR's request
        stack.append(request)
    while stack:
        part = stack.pop()
        part.chain = part.parent = None
        for slot in dict.get(part, "attrs", ()):
            nla = slot.cell[1]
            if dict.get(nla, "attrs"):
                stack.append(nla)
            else:
                nla.chain = nla.parent = None


def _address(value: str | None) -> str | None:
    """pyroute2's text (``inet_ntop``'s) in ``ipaddress``'s form, which ``getsockname()``'s
    addresses are compared in."""
    if not value:
        return None
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None


# -- requests --------------------------------------------------------------------------------


def _encoded(msg: Any, kind: int, flags: int, sequence: int, port: int) -> bytes:
    header = msg["header"]
    header["type"] = kind
    header["flags"] = NLM_F_REQUEST | flags
    header["sequence_number"] = sequence
    header["pid"] = port
    msg.encode()
    return bytes(msg.data)


def link_dump(sequence: int, port: int) -> bytes:
    """RTM_GETLINK for every link (``ip link show``)."""
    return _encoded(ifinfmsg(), RTM_GETLINK, NLM_F_DUMP, sequence, port)


def address_dump(sequence: int, port: int) -> bytes:
    """RTM_GETADDR for every address of every family (``ip addr show``)."""
    return _encoded(ifaddrmsg(), RTM_GETADDR, NLM_F_DUMP, sequence, port)


def route_get(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, sequence: int, port: int
) -> bytes:
    """RTM_GETROUTE for the route the kernel would send a packet to ``address`` by (``ip route
    get``): one RTM_NEWROUTE, or an NLMSG_ERROR when there is none."""
    msg = rtmsg()
    msg["family"] = socket.AF_INET if address.version == 4 else socket.AF_INET6
    msg["dst_len"] = address.max_prefixlen
    msg["attrs"] = [("RTA_DST", str(address))]
    return _encoded(msg, RTM_GETROUTE, 0, sequence, port)


# -- the socket ------------------------------------------------------------------------------


def open_socket() -> socket.socket:
    """A non-blocking rtnetlink socket in this thread's network namespace, subscribed to link
    and address events (GROUPS)."""
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


def open_socket_in(netns: str) -> socket.socket:
    """:func:`open_socket` in the named network namespace (``ip netns add NAME``).

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
            result.append(open_socket())
        except BaseException as exc:
            result.append(exc)

    thread = threading.Thread(target=run, name=f"linkwatch-netns-{netns}")
    thread.start()
    thread.join()  # a few syscalls; no I/O
    (outcome,) = result
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome
