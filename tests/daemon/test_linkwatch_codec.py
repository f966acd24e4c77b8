"""LinkWatch without a kernel: its rtnetlink decoder (whole datagrams, one message at a time,
with trailing bytes), and the table that turns messages into losses and interfaces up.
The kernel's own messages are tested in test_linkwatch.py (and checked against pyroute2)."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
import struct

import pytest
from pyiscsid.daemon import linkwatch as lw

UP = lw.IFF_UP | lw.IFF_RUNNING | lw.IFF_LOWER_UP
AF_BRIDGE = 7


def attribute(kind: int, payload: bytes) -> bytes:
    data = struct.pack("=HH", 4 + len(payload), kind) + payload
    return data + bytes(-len(data) % 4)


def link(kind: int, index: int, flags: int, name: str, family: int = 0) -> bytes:
    body = struct.pack("=BxHiII", family, 1, index, flags, 0)
    body += attribute(lw.IFLA_IFNAME, name.encode() + b"\0")
    return lw._encode(kind, 0, 0, 0, body)


def address(kind: int, index: int, ip: str, flags: int = 0, *, local: bool = True) -> bytes:
    raw = ipaddress.ip_address(ip).packed
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    body = struct.pack("=BBBBI", family, 24, flags & 0xFF, 0, index)
    body += attribute(lw.IFA_ADDRESS, raw)
    if local:
        body += attribute(lw.IFA_LOCAL, raw)
    body += attribute(lw.IFA_FLAGS, struct.pack("=I", flags))
    return lw._encode(kind, 0, 0, 0, body)


def done(sequence: int, port: int, code: int = 0, flags: int = 0) -> bytes:
    return lw._encode(lw.NLMSG_DONE, flags, sequence, port, struct.pack("=i", code))


MESSAGES = [
    link(lw.RTM_NEWLINK, 2, UP, "eth0"),
    address(lw.RTM_NEWADDR, 2, "192.0.2.7"),
    address(lw.RTM_NEWADDR, 2, "2001:db8::7", lw.IFA_F_TENTATIVE, local=False),
    done(5, 4242),
]
EXPECTED = [
    lw._LinkInfo(0, 2, True, "eth0"),
    lw._AddressInfo(2, "192.0.2.7", True),
    lw._AddressInfo(2, "2001:db8::7", False),
    lw._Status(0),
]


def bodies(data: bytes) -> list[object]:
    return [body for _, body in lw._decode(data)]


def test_decoder_whole_one_at_a_time_and_with_trailing_bytes() -> None:
    assert bodies(b"".join(MESSAGES)) == EXPECTED
    assert [b for message in MESSAGES for b in bodies(message)] == EXPECTED
    for cut in range(1, len(MESSAGES[-1])):  # a truncated last message is left out
        assert bodies(b"".join(MESSAGES)[:-cut]) == EXPECTED[:-1]
    [(header, _)] = lw._decode(MESSAGES[-1])
    assert (header.type, header.sequence, header.port) == (lw.NLMSG_DONE, 5, 4242)


def test_error_and_unknown_messages() -> None:
    error = lw._encode(lw.NLMSG_ERROR, 0, 1, 2, struct.pack("=i", -errno.EBUSY) + bytes(16))
    other = lw._encode(lw.RTM_NEWROUTE + 100, 0, 0, 0, bytes(12))
    assert bodies(error + other) == [lw._Status(errno.EBUSY), None]
    short = lw._encode(lw.RTM_NEWLINK, 0, 0, 0, bytes(8))  # no room for an ifinfomsg
    assert bodies(short) == [None]


def apply(table: lw._Table, *messages: bytes) -> lw._Changes:
    total = lw._Changes()
    for message in messages:
        for header, body in lw._decode(message):
            changes = table.apply(header.type, body)
            total.lost += changes.lost
            total.up += changes.up
    return total


def test_table_reports_transitions_not_messages() -> None:
    table = lw._Table()
    assert apply(table, link(lw.RTM_NEWLINK, 2, 0, "eth0")).up == []  # first news: down
    # An address on a link that carries no traffic is no reason to reconnect.
    assert apply(table, address(lw.RTM_NEWADDR, 2, "192.0.2.7")).up == []
    assert apply(table, link(lw.RTM_NEWLINK, 2, UP, "eth0")).up == [2]
    assert apply(table, link(lw.RTM_NEWLINK, 2, UP, "eth0")).up == []  # no change
    assert apply(table, address(lw.RTM_NEWADDR, 2, "192.0.2.7")).up == []  # a refresh
    assert apply(table, address(lw.RTM_NEWADDR, 2, "fe80::1", lw.IFA_F_TENTATIVE)).up == []
    assert apply(table, address(lw.RTM_NEWADDR, 2, "fe80::1")).up == [2]  # DAD passed
    assert table.usable_addresses(2) == {"192.0.2.7", "fe80::1"}
    assert apply(table, link(lw.RTM_NEWLINK, 2, lw.IFF_UP, "eth0")).lost == [
        "192.0.2.7",
        "fe80::1",
    ]
    assert apply(table, link(lw.RTM_NEWLINK, 2, lw.IFF_UP, "eth0")).lost == []


def test_a_bridge_port_going_away_is_not_the_link() -> None:
    """``ip link set eth0 nomaster``: RTM_DELLINK with ifi_family AF_BRIDGE."""
    table = lw._Table()
    apply(table, link(lw.RTM_NEWLINK, 2, UP, "eth0"), address(lw.RTM_NEWADDR, 2, "192.0.2.7"))
    assert apply(table, link(lw.RTM_NEWLINK, 2, UP, "eth0", family=AF_BRIDGE)).lost == []
    assert apply(table, link(lw.RTM_DELLINK, 2, UP, "eth0", family=AF_BRIDGE)).lost == []
    assert table.usable_addresses(2) == {"192.0.2.7"}
    assert apply(table, link(lw.RTM_DELLINK, 2, 0, "eth0")).lost == ["192.0.2.7"]
    assert 2 not in table.links


def test_differences_after_lost_events() -> None:
    old, new = lw._Table(), lw._Table()
    apply(old, link(lw.RTM_NEWLINK, 2, UP, "a"), address(lw.RTM_NEWADDR, 2, "192.0.2.1"))
    apply(old, link(lw.RTM_NEWLINK, 3, 0, "b"), address(lw.RTM_NEWADDR, 3, "192.0.2.2"))
    apply(old, link(lw.RTM_NEWLINK, 4, UP, "c"), address(lw.RTM_NEWADDR, 4, "192.0.2.3"))
    apply(new, link(lw.RTM_NEWLINK, 2, 0, "a"), address(lw.RTM_NEWADDR, 2, "192.0.2.1"))
    apply(new, link(lw.RTM_NEWLINK, 3, UP, "b"), address(lw.RTM_NEWADDR, 3, "192.0.2.2"))
    apply(new, link(lw.RTM_NEWLINK, 4, UP, "c"), address(lw.RTM_NEWADDR, 4, "192.0.2.3"))
    apply(new, address(lw.RTM_NEWADDR, 4, "192.0.2.4"))
    apply(new, link(lw.RTM_NEWLINK, 5, UP, "d"))
    changes = lw._differences(old, new)
    assert changes.lost == ["192.0.2.1"]
    assert changes.up == [3, 4, 5]


async def test_a_dump_that_the_kernel_marks_interrupted_is_refused() -> None:
    request = lw._Request(asyncio.get_running_loop().create_future(), dump=True)
    for header, body in lw._decode(MESSAGES[0]):
        request.receive(lw._Header(header.type, lw.NLM_F_DUMP_INTR, 1, 1), body)
    [(header, body)] = lw._decode(done(1, 1))
    request.receive(header, body)
    with pytest.raises(OSError) as info:
        await request.done
    assert info.value.errno == errno.EINTR
    assert lw._transient(info.value)
