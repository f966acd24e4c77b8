"""SendTargets discovery (RFC 7143 section 6.3, Appendix C) and the portal notation."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pyiscsid.protocol.discovery import (
    DEFAULT_PORT,
    DiscoveredTarget,
    Portal,
    PortalFormatError,
    format_send_targets,
    parse_portal,
    parse_send_targets,
    parse_target_address,
    send_targets_request,
)
from pyiscsid.protocol.errors import InitiatorProtocolError, ISCSIError, TargetProtocolError

ASKED = Portal("192.0.2.10", 3260)


def test_send_targets_request() -> None:
    assert send_targets_request() == [("SendTargets", "All")]
    assert send_targets_request("iqn.2024-01.org.example:disk1") == [
        ("SendTargets", "iqn.2024-01.org.example:disk1")
    ]
    assert send_targets_request("") == [("SendTargets", "")]
    with pytest.raises(InitiatorProtocolError):
        send_targets_request("a=b")


# --- portals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "portal", "printed"),
    [
        ("1.2.3.4", Portal("1.2.3.4", 3260), "1.2.3.4:3260"),
        ("1.2.3.4:3261", Portal("1.2.3.4", 3261), "1.2.3.4:3261"),
        ("1.2.3.4:3260,1", Portal("1.2.3.4", 3260, 1), "1.2.3.4:3260,1"),
        ("1.2.3.4,5", Portal("1.2.3.4", 3260, 5), "1.2.3.4:3260,5"),
        ("[fe80::1]:3260", Portal("fe80::1", 3260), "[fe80::1]:3260"),
        ("[fe80::1]", Portal("fe80::1", 3260), "[fe80::1]:3260"),
        ("[::1]:3260,1", Portal("::1", 3260, 1), "[::1]:3260,1"),
        ("[2001:db8::2]:860,65535", Portal("2001:db8::2", 860, 65535), "[2001:db8::2]:860,65535"),
        ("[fe80::1%eth0]:3260", Portal("fe80::1%eth0", 3260), "[fe80::1%eth0]:3260"),
        ("fe80::1", Portal("fe80::1", 3260), "[fe80::1]:3260"),
        ("2001:db8::1:3260", Portal("2001:db8::1:3260", 3260), "[2001:db8::1:3260]:3260"),
        ("::1,2", Portal("::1", 3260, 2), "[::1]:3260,2"),
        ("host.example:3260,2", Portal("host.example", 3260, 2), "host.example:3260,2"),
        ("san-1", Portal("san-1", 3260), "san-1:3260"),
        ("  10.0.0.1:3260 ", Portal("10.0.0.1", 3260), "10.0.0.1:3260"),
        ("10.0.0.1:3260,0", Portal("10.0.0.1", 3260, 0), "10.0.0.1:3260,0"),
    ],
)
def test_parse_portal(text: str, portal: Portal, printed: str) -> None:
    assert parse_portal(text) == portal
    assert str(portal) == printed
    assert parse_portal(printed) == portal


def test_portal_default_port_and_address_port() -> None:
    assert parse_portal("10.0.0.1", default_port=3261) == Portal("10.0.0.1", 3261)
    assert parse_portal("[::1]", default_port=3261) == Portal("::1", 3261)
    assert parse_portal("10.0.0.1:3262", default_port=3261).port == 3262
    assert Portal("::1", 3260, 1).address_port == "[::1]:3260"
    assert Portal("10.0.0.1", 3260, 1).address_port == "10.0.0.1:3260"
    assert DEFAULT_PORT == 3260


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "no address"),
        (":3260", "no address"),
        ("1.2.3.4:", "port ''"),
        ("1.2.3.4:0", "port '0'"),
        ("1.2.3.4:65536", "port '65536'"),
        ("1.2.3.4:32a", "port '32a'"),
        ("1.2.3.4:-1", "port '-1'"),
        ("1.2.3.4:3260,", "portal group tag ''"),
        ("1.2.3.4:3260,65536", "portal group tag '65536'"),
        ("1.2.3.4:3260,x", "portal group tag 'x'"),
        ("1.2.3.4:3260,1,2", "portal group tag '1,2'"),
        ("1.2.3.999", "not an IPv4 address"),
        ("1.2.3", "not an IPv4 address"),
        ("[fe80::1", "closing"),
        ("[fe80::1]3260", "after ']'"),
        ("[fe80::1]:", "port ''"),
        ("[host.example]:3260", "only an IPv6"),
        ("[1.2.3.4]", "only an IPv6"),
        ("fe80::zz", "not an IPv6 address"),
        ("fe80:::1", "not an IPv6 address"),
        ("a b", "not a host name"),
        ("-host", "not a host name"),
        ("host/x", "not a host name"),
    ],
)
def test_parse_portal_errors(text: str, why: str) -> None:
    with pytest.raises(PortalFormatError, match="portal") as exc:
        parse_portal(text)
    assert repr(text) in str(exc.value)  # names the bad text
    assert why in str(exc.value)
    assert isinstance(exc.value, ISCSIError)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"address": "10.0.0.1", "port": 0},
        {"address": "10.0.0.1", "port": 65536},
        {"address": "10.0.0.1", "tpgt": -1},
        {"address": "10.0.0.1", "tpgt": 65536},
        {"address": "[::1]"},
        {"address": ""},
    ],
)
def test_portal_validates_fields(kwargs: dict[str, Any]) -> None:
    with pytest.raises(PortalFormatError):
        Portal(**kwargs)


def test_parse_target_address_blames_the_target() -> None:
    assert parse_target_address("[::1]:3260,1") == Portal("::1", 3260, 1)
    with pytest.raises(TargetProtocolError, match=r"TargetAddress='10\.0\.0\.1:x,1'"):
        parse_target_address("10.0.0.1:x,1")


# --- SendTargets responses -------------------------------------------------------------------


def test_appendix_style_multi_target_response() -> None:
    pairs = [
        ("TargetName", "iqn.1993-11.com.example:diskarray.sn.8675309"),
        ("TargetAddress", "10.1.0.45:3000,1"),
        ("TargetAddress", "10.1.1.45:3000,2"),
        ("TargetAddress", "[2001:db8::45]:3000,1"),
        ("TargetName", "iqn.1993-11.com.example:diskarray.sn.1234567"),
        ("TargetAddress", "[2001:db8:0:1::45],3"),
        ("TargetAddress", "san.example.com:3260,4"),
        ("TargetName", "eui.02004567A425678D"),
    ]
    assert parse_send_targets(pairs, ASKED) == [
        DiscoveredTarget(
            "iqn.1993-11.com.example:diskarray.sn.8675309",
            (
                Portal("10.1.0.45", 3000, 1),
                Portal("10.1.1.45", 3000, 2),
                Portal("2001:db8::45", 3000, 1),
            ),
        ),
        DiscoveredTarget(
            "iqn.1993-11.com.example:diskarray.sn.1234567",
            (Portal("2001:db8:0:1::45", 3260, 3), Portal("san.example.com", 3260, 4)),
        ),
        DiscoveredTarget("eui.02004567A425678D", (ASKED,)),
    ]


def test_tgt_style_response() -> None:
    """What tgtd answers for two targets on one loopback portal."""
    pairs = [
        ("TargetName", "iqn.2024-01.test:disk1"),
        ("TargetAddress", "127.0.0.1:3260,1"),
        ("TargetName", "iqn.2024-01.test:disk2"),
        ("TargetAddress", "127.0.0.1:3260,1"),
    ]
    [one, two] = parse_send_targets(pairs, Portal("127.0.0.1"))
    assert (one.name, two.name) == ("iqn.2024-01.test:disk1", "iqn.2024-01.test:disk2")
    assert one.portals == two.portals == (Portal("127.0.0.1", 3260, 1),)
    assert [f"{p} {t.name}" for t in (one, two) for p in t.portals] == [
        "127.0.0.1:3260,1 iqn.2024-01.test:disk1",
        "127.0.0.1:3260,1 iqn.2024-01.test:disk2",
    ]


def test_empty_response_means_no_targets() -> None:
    assert parse_send_targets([], ASKED) == []


def test_target_without_address_is_at_the_portal_asked() -> None:
    asked = Portal("::1", 3261, 7)
    assert parse_send_targets([("TargetName", "iqn.x:a")], asked) == [
        DiscoveredTarget("iqn.x:a", (asked,))
    ]


def test_address_without_tpgt_or_port() -> None:
    pairs = [("TargetName", "iqn.x:a"), ("TargetAddress", "10.0.0.1")]
    assert parse_send_targets(pairs, ASKED)[0].portals == (Portal("10.0.0.1", 3260, None),)


def test_unknown_keys_are_ignored() -> None:
    pairs = [
        ("TargetAlias", "before"),
        ("TargetName", "iqn.x:a"),
        ("TargetAlias", "disk a"),
        ("X-com.example.Vendor", "1"),
        ("TargetAddress", "10.0.0.1:3260,1"),
    ]
    assert parse_send_targets(pairs, ASKED) == [
        DiscoveredTarget("iqn.x:a", (Portal("10.0.0.1", 3260, 1),))
    ]


def test_repeated_names_and_addresses_merge() -> None:
    pairs = [
        ("TargetName", "iqn.x:a"),
        ("TargetAddress", "10.0.0.1:3260,1"),
        ("TargetName", "iqn.x:b"),
        ("TargetName", "iqn.x:a"),
        ("TargetAddress", "10.0.0.1:3260,1"),
        ("TargetAddress", "10.0.0.2:3260,1"),
    ]
    assert parse_send_targets(pairs, ASKED) == [
        DiscoveredTarget("iqn.x:a", (Portal("10.0.0.1", 3260, 1), Portal("10.0.0.2", 3260, 1))),
        DiscoveredTarget("iqn.x:b", (ASKED,)),
    ]


_BAD_ADDRESS = r"TargetAddress 1 of iqn\.x:a: not ADDRESS\[:PORT\]\[,TPGT\]"


@pytest.mark.parametrize(
    ("pairs", "match"),
    [
        ([("TargetAddress", "10.0.0.1:3260,1")], "TargetAddress 1: comes before any TargetName"),
        ([("TargetName", "")], "TargetName 1: empty"),
        ([("TargetName", "iqn.x:a"), ("TargetAddress", "10.0.0.1:99999,1")], _BAD_ADDRESS),
        ([("TargetName", "iqn.x:a"), ("TargetAddress", "10.0.0.1:3260,tag")], _BAD_ADDRESS),
        ([("TargetName", "iqn.x:a"), ("TargetAddress", "[fe80::1:3260,1")], _BAD_ADDRESS),
        ([("TargetName", "iqn.x:a"), ("TargetAddress", "")], _BAD_ADDRESS),
    ],
)
def test_send_targets_errors(pairs: list[tuple[str, str]], match: str) -> None:
    """All or nothing, naming the entry and never quoting what the target sent."""
    with pytest.raises(TargetProtocolError, match=match) as exc:
        parse_send_targets(pairs, ASKED)
    assert str(exc.value).startswith("SendTargets response: ")
    values = [value for key, value in pairs if key == "TargetAddress" and value]
    assert not any(value in str(exc.value) for value in values)


# --- round trip ------------------------------------------------------------------------------

label = r"[a-z]([a-z0-9-]{0,8}[a-z0-9])?"
hostnames = st.from_regex(rf"{label}(\.{label}){{0,3}}", fullmatch=True)
addresses = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
    hostnames,
)
portals = st.builds(
    Portal,
    address=addresses,
    port=st.integers(1, 65535),
    tpgt=st.none() | st.integers(0, 65535),
)
names = st.from_regex(
    r"iqn\.20[0-9]{2}-[01][0-9]\.[a-z]{1,8}\.[a-z]{1,8}:[a-z0-9.-]{1,20}", fullmatch=True
)
targets = st.lists(
    st.builds(
        DiscoveredTarget,
        name=names,
        portals=st.lists(portals, min_size=1, max_size=4, unique=True).map(tuple),
    ),
    max_size=5,
    unique_by=lambda t: t.name,
)


@given(portals)
def test_portal_round_trip(portal: Portal) -> None:
    assert parse_portal(str(portal)) == portal
    assert parse_portal(portal.address_port) == Portal(portal.address, portal.port)


@given(targets)
def test_send_targets_round_trip(found: list[DiscoveredTarget]) -> None:
    pairs = format_send_targets(found)
    assert all(key in ("TargetName", "TargetAddress") for key, _ in pairs)
    assert parse_send_targets(pairs, ASKED) == found
