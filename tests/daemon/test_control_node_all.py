"""``node.login``/``node.logout`` with ``all`` take no ``target`` or ``portal``: a raw request
that asks for every node and names one is refused, not half obeyed (iscsiadm's
``--loginall``/``--logoutall`` take no -T or -p either)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pyiscsid.daemon.control import InvalidRequest, parse_request

IQN = "iqn.2026-11.org.example:disk1"


def line(op: str, args: dict[str, Any]) -> bytes:
    return json.dumps({"v": 1, "id": 9, "op": op, "args": args}).encode()


@pytest.mark.parametrize(
    ("op", "args", "named"),
    [
        ("node.login", {"all": "all", "target": IQN}, "'target'"),
        ("node.login", {"all": "automatic", "portal": "127.0.0.1"}, "'portal'"),
        (
            "node.login",
            {"target": IQN, "portal": "127.0.0.1", "all": "all"},
            "'target' and 'portal'",
        ),
        ("node.logout", {"all": "all", "target": IQN}, "'target'"),
        ("node.logout", {"portal": "127.0.0.1:3260", "all": "all"}, "'portal'"),
    ],
)
def test_all_with_a_named_node_is_refused_naming_both(
    op: str, args: dict[str, Any], named: str
) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_request(line(op, args))
    error = info.value
    assert (error.code, error.exit, error.request_id) == ("invalid", 7, 9)
    assert error.message.startswith(f"{op}: argument 'all' cannot be used with {named}: ")
    assert "iscsiadm's --loginall and --logoutall, which take no -T or -p" in error.message


@pytest.mark.parametrize(
    ("op", "args"),
    [
        ("node.login", {"all": "all"}),
        ("node.login", {"all": "automatic"}),
        ("node.login", {"target": IQN, "portal": "127.0.0.1"}),
        ("node.logout", {"all": "all"}),
        ("node.logout", {"target": IQN}),
    ],
)
def test_all_alone_and_named_nodes_alone_are_fine(op: str, args: dict[str, Any]) -> None:
    assert parse_request(line(op, args)).args == args
