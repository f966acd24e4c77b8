"""The link watch without a kernel: rtnetlink's requests (byte for byte, as rtnetlink(7) lays
them out) and its decoding of messages that pyroute2 encoded (whole datagrams, one message at
a time, cut short, mangled), then the watch's table fed with decoded messages. The kernel's
own messages are read in test_linkwatch.py."""

from __future__ import annotations

import asyncio
import errno
import gc
import ipaddress
import socket
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pyiscsid.daemon import linkwatch as lw
from pyiscsid.daemon import rtnetlink as rt
from pyroute2.netlink import NLM_F_DUMP, NLM_F_REQUEST
from pyroute2.netlink.rtnl import RTM_GETADDR, RTM_GETLINK, RTM_GETROUTE
from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_DADFAILED, IFA_F_TENTATIVE, ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import IFF_RUNNING, IFF_UP, ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

UP = rt.USABLE
AF_BRIDGE = 7
NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence number, port id


def encoded(msg: Any, kind: int, sequence: int = 0, port: int = 0, flags: int = 0) -> bytes:
    msg["header"].update(type=kind, flags=flags, sequence_number=sequence, pid=port)
    msg.encode()
    return bytes(msg.data)


def link(kind: int, index: int, flags: int, name: str, family: int = 0) -> bytes:
    msg = ifinfmsg()
    msg.update(family=family, ifi_type=1, index=index, flags=flags)
    msg["attrs"] = [("IFLA_IFNAME", name)]
    return encoded(msg, kind)


def address(kind: int, index: int, ip: str, flags: int = 0, *, local: bool = True) -> bytes:
    family = socket.AF_INET if ipaddress.ip_address(ip).version == 4 else socket.AF_INET6
    msg = ifaddrmsg()
    msg.update(family=family, prefixlen=24, flags=flags & 0xFF, index=index)
    msg["attrs"] = [("IFA_ADDRESS", ip), *([("IFA_LOCAL", ip)] if local else [])]
    msg["attrs"].append(("IFA_FLAGS", flags))
    return encoded(msg, kind)


def status(kind: int, sequence: int, port: int, code: int = 0, request: bytes = b"") -> bytes:
    """NLMSG_DONE (the int alone) or NLMSG_ERROR (the int, then the request it answers)."""
    body = struct.pack("=i", code) + request
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), kind, 2, sequence, port) + body


MESSAGES = [
    link(rt.RTM_NEWLINK, 2, UP, "eth0"),
    address(rt.RTM_NEWADDR, 2, "192.0.2.7"),
    address(rt.RTM_NEWADDR, 2, "2001:db8::7", IFA_F_TENTATIVE, local=False),
    status(rt.NLMSG_DONE, 5, 4242),
]
EXPECTED = [
    rt.LinkInfo(0, 2, True, "eth0"),
    rt.AddressInfo(2, "192.0.2.7", True),
    rt.AddressInfo(2, "2001:db8::7", False),
    rt.Status(0),
]


def bodies(data: bytes) -> list[object]:
    return [body for _, body in rt.decode(data)]


# -- requests --------------------------------------------------------------------------------


def test_dump_requests_are_an_empty_header_of_their_kind() -> None:
    """nlmsghdr, then a zeroed ifinfomsg (16 bytes) or ifaddrmsg (8): every link, every
    address of every family."""
    flags = NLM_F_REQUEST | NLM_F_DUMP
    assert rt.link_dump(5, 42) == NLMSGHDR.pack(32, RTM_GETLINK, flags, 5, 42) + bytes(16)
    assert rt.address_dump(6, 42) == NLMSGHDR.pack(24, RTM_GETADDR, flags, 6, 42) + bytes(8)


@pytest.mark.parametrize("ip", ["192.0.2.1", "2001:db8::1"])
def test_a_route_request_asks_for_one_host(ip: str) -> None:
    """rtmsg (family, dst_len = the whole address, the rest zero) and RTA_DST: ``ip route
    get``, not a dump."""
    target = ipaddress.ip_address(ip)
    family = socket.AF_INET if target.version == 4 else socket.AF_INET6
    body = struct.pack("=BBBBBBBBI", family, target.max_prefixlen, 0, 0, 0, 0, 0, 0, 0)
    body += struct.pack("=HH", 4 + len(target.packed), 1) + target.packed  # RTA_DST
    header = NLMSGHDR.pack(NLMSGHDR.size + len(body), RTM_GETROUTE, NLM_F_REQUEST, 9, 42)
    assert rt.route_get(target, 9, 42) == header + body


# -- decoding --------------------------------------------------------------------------------


def test_decoder_whole_one_at_a_time_and_with_trailing_bytes() -> None:
    assert bodies(b"".join(MESSAGES)) == EXPECTED
    assert [b for message in MESSAGES for b in bodies(message)] == EXPECTED
    for cut in range(1, len(MESSAGES[-1])):  # a truncated last message is left out
        assert bodies(b"".join(MESSAGES)[:-cut]) == EXPECTED[:-1]
    [(header, _)] = rt.decode(MESSAGES[-1])
    assert header == rt.Header(rt.NLMSG_DONE, 2, 5, 4242)


def test_decoding_is_lazy() -> None:
    """One message decoded per step: the watch can stop in the middle of a datagram."""
    messages = rt.decode(b"".join(MESSAGES))
    assert next(messages)[1] == EXPECTED[0]
    assert [body for _, body in messages] == EXPECTED[1:]


def test_errors_done_and_unknown_messages() -> None:
    request = rt.route_get(ipaddress.ip_address("192.0.2.1"), 1, 2)
    error = status(rt.NLMSG_ERROR, 1, 2, -errno.ENETUNREACH, request)
    ack = status(rt.NLMSG_ERROR, 1, 2, 0, request)
    cut_short = status(rt.NLMSG_DONE, 3, 2, -errno.EINTR)
    other = encoded(rtmsg(), RTM_GETROUTE)  # a request, not an answer: nothing for the watch
    assert bodies(error + ack + cut_short + other) == [
        rt.Status(errno.ENETUNREACH),
        rt.Status(0),
        rt.Status(errno.EINTR),
        None,
    ]


def test_a_message_that_cannot_be_decoded_ends_the_datagram() -> None:
    """A message too short for its fixed part (pyroute2 raises struct.error) ends the datagram.
    The kernel sends none. Within a datagram pyroute2 would read its fixed part on into the next
    message: there, only that nothing escapes is promised (see the test below)."""
    short = NLMSGHDR.pack(24, rt.RTM_NEWLINK, 0, 0, 0) + bytes(8)  # no room for an ifinfomsg
    assert bodies(MESSAGES[0] + short) == EXPECTED[:1]
    datagram = rt.decode(MESSAGES[0] + short)
    assert len(list(datagram)) == 1
    assert datagram.unreadable is not None
    assert datagram.unreadable.startswith("pyroute2 could not decode a message: ")


def test_a_datagram_says_whether_it_ended_early() -> None:
    """What the watch warns about: news lost in a message it could not read."""
    whole = rt.decode(b"".join(MESSAGES))
    assert len(list(whole)) == len(EXPECTED)
    assert whole.unreadable is None
    data = b"".join(MESSAGES)[:-4]
    cut = rt.decode(data)
    assert len(list(cut)) == len(EXPECTED) - 1
    assert cut.unreadable is not None
    for size in range(1, len(MESSAGES[-1])):  # the last message cut short, however much
        datagram = rt.decode(b"".join(MESSAGES)[:-size])
        assert len(list(datagram)) == len(EXPECTED) - 1
        assert datagram.unreadable, size
    alone = rt.decode(MESSAGES[0][:-4])  # pyroute2 yields nothing, and says nothing
    assert list(alone) == []
    assert alone.unreadable == (
        f"{len(MESSAGES[0]) - 4} bytes at offset 0 of a {len(MESSAGES[0]) - 4}-byte "
        "datagram are not a whole message"
    )


def test_route_answer() -> None:
    msg = rtmsg()
    msg.update(family=socket.AF_INET, dst_len=32, type=rt.RTN_UNICAST)
    msg["attrs"] = [("RTA_DST", "192.0.2.1"), ("RTA_OIF", 7)]
    unreachable = rtmsg()
    unreachable.update(family=socket.AF_INET, dst_len=32, type=7)  # RTN_UNREACHABLE
    assert bodies(encoded(msg, rt.RTM_NEWROUTE) + encoded(unreachable, rt.RTM_NEWROUTE)) == [
        rt.RouteInfo(rt.RTN_UNICAST, 7),
        rt.RouteInfo(7, None),
    ]


def test_address_forms_and_flags() -> None:
    """IFA_LOCAL over IFA_ADDRESS (on a point-to-point link the latter is the peer);
    IFA_FLAGS over the header's 8 bits; addresses in ``ipaddress``'s form."""
    ptp = ifaddrmsg()
    ptp.update(family=socket.AF_INET, prefixlen=32, index=3)
    ptp["attrs"] = [("IFA_ADDRESS", "192.0.2.99"), ("IFA_LOCAL", "192.0.2.1")]
    failed = ifaddrmsg()  # DAD failed, said in the header only (no IFA_FLAGS)
    failed.update(family=socket.AF_INET6, prefixlen=64, flags=IFA_F_DADFAILED, index=3)
    failed["attrs"] = [("IFA_ADDRESS", "2001:0db8:0:0::0001")]
    assert bodies(encoded(ptp, rt.RTM_NEWADDR) + encoded(failed, rt.RTM_NEWADDR)) == [
        rt.AddressInfo(3, "192.0.2.1", True),
        rt.AddressInfo(3, "2001:db8::1", False),
    ]


def test_link_usable_needs_up_running_and_carrier() -> None:
    assert bodies(link(rt.RTM_NEWLINK, 4, IFF_UP | IFF_RUNNING, "nocarrier")) == [
        rt.LinkInfo(0, 4, False, "nocarrier")
    ]


def test_decoded_messages_need_no_garbage_collector(monkeypatch: pytest.MonkeyPatch) -> None:
    """pyroute2's messages refer to themselves; decode() breaks those cycles, so that an event
    storm's messages are freed as they go, not in collector pauses."""
    veth = ifinfmsg()
    veth.update(family=0, index=5, flags=UP)
    veth["attrs"] = [
        ("IFLA_IFNAME", "veth0"),
        ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "veth")]}),
    ]
    request = rt.route_get(ipaddress.ip_address("192.0.2.1"), 1, 2)
    error = status(rt.NLMSG_ERROR, 1, 2, -errno.ENETUNREACH, request)
    data = b"".join(MESSAGES) + encoded(veth, rt.RTM_NEWLINK) + error

    def garbage() -> int:
        gc.collect()
        gc.disable()
        try:
            for _, body in rt.decode(data):
                assert body is not None
            return gc.collect()
        finally:
            gc.enable()

    assert garbage() == 0
    monkeypatch.setattr(rt, "_release", lambda msg: None)
    assert garbage() > 0  # what it would be


@given(
    st.lists(st.tuples(st.integers(0, sum(map(len, MESSAGES)) - 1), st.integers(0, 255))),
    st.integers(0, sum(map(len, MESSAGES))),
)
def test_mangled_datagrams_never_raise(changes: list[tuple[int, int]], length: int) -> None:
    """Whatever the bytes, decode() yields what it can read and stops: nothing escapes into
    the watch's reader."""
    data = bytearray(b"".join(MESSAGES))
    for offset, value in changes:
        data[offset] = value
    for header, body in rt.decode(bytes(data[:length])):
        assert isinstance(header, rt.Header)
        assert body is None or isinstance(body, rt.Body)


# -- the watch's table -----------------------------------------------------------------------


def apply(table: lw._Table, *messages: bytes) -> lw._Changes:
    total = lw._Changes()
    for message in messages:
        for header, body in rt.decode(message):
            changes = table.apply(header.type, body)
            total.lost += changes.lost
            total.up += changes.up
    return total


def test_table_reports_transitions_not_messages() -> None:
    table = lw._Table()
    assert apply(table, link(rt.RTM_NEWLINK, 2, 0, "eth0")).up == []  # first news: down
    # An address on a link that carries no traffic is no reason to reconnect.
    assert apply(table, address(rt.RTM_NEWADDR, 2, "192.0.2.7")).up == []
    assert apply(table, link(rt.RTM_NEWLINK, 2, UP, "eth0")).up == [2]
    assert apply(table, link(rt.RTM_NEWLINK, 2, UP, "eth0")).up == []  # no change
    assert apply(table, address(rt.RTM_NEWADDR, 2, "192.0.2.7")).up == []  # a refresh
    assert apply(table, address(rt.RTM_NEWADDR, 2, "fe80::1", IFA_F_TENTATIVE)).up == []
    assert apply(table, address(rt.RTM_NEWADDR, 2, "fe80::1")).up == [2]  # DAD passed
    assert table.usable_addresses(2) == {"192.0.2.7", "fe80::1"}
    assert apply(table, link(rt.RTM_NEWLINK, 2, IFF_UP, "eth0")).lost == [
        "192.0.2.7",
        "fe80::1",
    ]
    assert apply(table, link(rt.RTM_NEWLINK, 2, IFF_UP, "eth0")).lost == []


def test_a_bridge_port_going_away_is_not_the_link() -> None:
    """``ip link set eth0 nomaster``: RTM_DELLINK with ifi_family AF_BRIDGE."""
    table = lw._Table()
    apply(table, link(rt.RTM_NEWLINK, 2, UP, "eth0"), address(rt.RTM_NEWADDR, 2, "192.0.2.7"))
    assert apply(table, link(rt.RTM_NEWLINK, 2, UP, "eth0", family=AF_BRIDGE)).lost == []
    assert apply(table, link(rt.RTM_DELLINK, 2, UP, "eth0", family=AF_BRIDGE)).lost == []
    assert table.usable_addresses(2) == {"192.0.2.7"}
    assert apply(table, link(rt.RTM_DELLINK, 2, 0, "eth0")).lost == ["192.0.2.7"]
    assert 2 not in table.links


def test_differences_after_lost_events() -> None:
    old, new = lw._Table(), lw._Table()
    apply(old, link(rt.RTM_NEWLINK, 2, UP, "a"), address(rt.RTM_NEWADDR, 2, "192.0.2.1"))
    apply(old, link(rt.RTM_NEWLINK, 3, 0, "b"), address(rt.RTM_NEWADDR, 3, "192.0.2.2"))
    apply(old, link(rt.RTM_NEWLINK, 4, UP, "c"), address(rt.RTM_NEWADDR, 4, "192.0.2.3"))
    apply(new, link(rt.RTM_NEWLINK, 2, 0, "a"), address(rt.RTM_NEWADDR, 2, "192.0.2.1"))
    apply(new, link(rt.RTM_NEWLINK, 3, UP, "b"), address(rt.RTM_NEWADDR, 3, "192.0.2.2"))
    apply(new, link(rt.RTM_NEWLINK, 4, UP, "c"), address(rt.RTM_NEWADDR, 4, "192.0.2.3"))
    apply(new, address(rt.RTM_NEWADDR, 4, "192.0.2.4"))
    apply(new, link(rt.RTM_NEWLINK, 5, UP, "d"))
    changes = lw._differences(old, new)
    assert changes.lost == ["192.0.2.1"]
    assert changes.up == [3, 4, 5]


async def test_a_dump_that_the_kernel_marks_interrupted_is_refused() -> None:
    request = lw._Request(asyncio.get_running_loop().create_future(), dump=True)
    for header, body in rt.decode(MESSAGES[0]):
        request.receive(rt.Header(header.type, rt.NLM_F_DUMP_INTR, 1, 1), body)
    [(header, body)] = rt.decode(status(rt.NLMSG_DONE, 1, 1))
    request.receive(header, body)
    with pytest.raises(OSError) as info:
        await request.done
    assert info.value.errno == errno.EINTR
    assert lw._transient(info.value)
