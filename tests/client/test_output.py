"""pyiscsiadm's output lines, exit codes and control-socket calls.

Result dicts are written out as the README's control API describes them; the expected
lines are iscsiadm's (open-iscsi 2.1), with "pyiscsiadm:" where iscsiadm says "iscsiadm:".
The transport tests run a real Unix-socket server in a thread that answers with canned
lines; the daemon itself is tested end to end elsewhere.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pyiscsid.client import output
from pyiscsid.client.cli import View, parse
from pyiscsid.client.errors import CODE_TO_EXIT, ERROR_TEXT, ClientError, ExitCode, exit_for
from pyiscsid.client.main import render, run
from pyiscsid.client.session_info import human_size, session_tree
from pyiscsid.client.transport import MAX_REPLY_BYTES, call

from tests.readme import error_codes

IQN1 = "iqn.2026-11.org.example:disk1"
IQN2 = "iqn.2026-11.org.example:disk2"
PORTAL = "127.0.0.1:3260"


def err(code: str, exit_code: int, message: str = "") -> dict[str, Any]:
    return {"code": code, "exit": exit_code, "message": message}


# -- discovery -------------------------------------------------------------------------

SENDTARGETS = {
    "targets": [
        {"name": IQN1, "portal": PORTAL, "tpgt": 1},
        {"name": IQN2, "portal": "[fe80::1]:3260", "tpgt": 2},
    ]
}


def test_discovery_targets() -> None:
    out = output.discovery_targets(SENDTARGETS)
    assert out.stdout == [f"127.0.0.1:3260,1 {IQN1}", f"[fe80::1]:3260,2 {IQN2}"]
    assert out.stderr == []
    assert out.exit_code == 0


def test_discovery_targets_with_logins() -> None:
    result = {
        "targets": [{"name": IQN1, "portal": PORTAL, "tpgt": 1}],
        "logins": [{"target": IQN1, "portal": PORTAL, "ok": True, "sid": 1}],
    }
    out = output.discovery_targets(result)
    assert out.stdout == [
        f"127.0.0.1:3260,1 {IQN1}",
        f"Logging in to [iface: default, target: {IQN1}, portal: 127.0.0.1,3260]",
        f"Login to [iface: default, target: {IQN1}, portal: 127.0.0.1,3260] successful.",
    ]
    assert out.exit_code == 0


def test_discovery_prints_the_skipped_entries_of_the_reply() -> None:
    result = {
        "targets": [{"name": IQN1, "portal": PORTAL, "tpgt": 1}],
        "skipped": [
            {"key": "TargetAddress", "number": 1, "target": IQN2, "reason": "not ADDRESS"},
            {"key": "TargetName", "number": 2, "target": IQN2, "reason": "no address left"},
            {"key": "TargetName", "number": 3, "target": None, "reason": "not an iSCSI name"},
        ],
    }
    out = output.discovery_targets(result)
    assert out.stdout == [f"127.0.0.1:3260,1 {IQN1}"]
    assert out.stderr == [
        f"pyiscsiadm: SendTargets reply: TargetAddress #1 of {IQN2} skipped: not ADDRESS",
        f"pyiscsiadm: SendTargets reply: TargetName #2 ({IQN2}) skipped: no address left",
        "pyiscsiadm: SendTargets reply: TargetName #3 skipped: not an iSCSI name",
    ]
    assert out.exit_code == 0  # the discovery itself worked: what could be used is recorded
    nothing = output.discovery_targets({"targets": [], "skipped": result["skipped"][2:]})
    assert nothing.stderr == [
        "pyiscsiadm: SendTargets reply: TargetName #3 skipped: not an iSCSI name",
        "pyiscsiadm: No portals found",
    ]
    assert nothing.exit_code == 21


def test_discovery_finds_nothing() -> None:
    out = output.discovery_targets({"targets": []})
    assert out.stdout == []
    assert out.stderr == ["pyiscsiadm: No portals found"]
    assert out.exit_code == 21


def test_discovery_records() -> None:
    result = {
        "records": [
            {"portal": PORTAL, "type": "sendtargets"},
            {"portal": "10.0.0.5:3261", "type": "sendtargets"},
        ]
    }
    out = output.discovery_records(result)
    assert out.stdout == ["127.0.0.1:3260 via sendtargets", "10.0.0.5:3261 via sendtargets"]
    empty = output.discovery_records({"records": []})
    assert (empty.stderr, empty.exit_code) == (["pyiscsiadm: No records found"], 21)


# -- node ------------------------------------------------------------------------------

NODES = {
    "nodes": [
        {"target": IQN1, "portal": PORTAL, "tpgt": 1, "iface": "default"},
        {"target": IQN2, "portal": PORTAL, "tpgt": 1, "iface": "default"},
        {"target": IQN1, "portal": "127.0.0.2:3260", "tpgt": 1, "iface": "default"},
    ]
}


def test_node_list() -> None:
    out = output.node_list(NODES)
    assert out.stdout == [
        f"127.0.0.1:3260,1 {IQN1}",
        f"127.0.0.1:3260,1 {IQN2}",
        f"127.0.0.2:3260,1 {IQN1}",
    ]
    assert out.exit_code == 0


def test_node_list_empty() -> None:
    out = output.node_list({"nodes": []})
    assert out.stdout == []
    assert out.stderr == ["pyiscsiadm: No records found"]
    assert out.exit_code == ExitCode.NO_OBJS_FOUND


def test_node_tree() -> None:
    assert output.node_tree(NODES).stdout == [
        f"Target: {IQN1}",
        "\tPortal: 127.0.0.1:3260,1",
        "\t\tIface Name: default",
        "\tPortal: 127.0.0.2:3260,1",
        "\t\tIface Name: default",
        f"Target: {IQN2}",
        "\tPortal: 127.0.0.1:3260,1",
        "\t\tIface Name: default",
    ]


SHOW = {
    "nodes": [
        {
            "target": IQN1,
            "portal": PORTAL,
            "tpgt": 1,
            "iface": "default",
            "settings": {
                "node.name": IQN1,
                "node.tpgt": 1,
                "node.startup": "manual",
                "iface.iscsi_ifacename": "default",
                "node.session.auth.authmethod": "CHAP",
                "node.session.auth.username": "alice",
                "node.session.auth.password": "********",
                "node.session.auth.username_in": "",
                "node.session.auth.password_in": None,
                "node.session.iscsi.ImmediateData": True,
                "node.session.iscsi.FirstBurstLength": 262144,
                "node.conn[0].address": "127.0.0.1",
                "node.conn[0].port": 3260,
            },
        }
    ]
}


def test_node_record() -> None:
    out = output.node_records(SHOW)
    assert out.stdout == [
        "# BEGIN RECORD 2.1.9",
        f"node.name = {IQN1}",
        "node.tpgt = 1",
        "node.startup = manual",
        "iface.iscsi_ifacename = default",
        "node.session.auth.authmethod = CHAP",
        "node.session.auth.username = alice",
        "node.session.auth.password = ********",
        "node.session.auth.username_in = <empty>",
        "node.session.auth.password_in = <empty>",
        "node.session.iscsi.ImmediateData = Yes",
        "node.session.iscsi.FirstBurstLength = 262144",
        "node.conn[0].address = 127.0.0.1",
        "node.conn[0].port = 3260",
        "# END RECORD",
    ]
    assert out.exit_code == 0


def test_node_record_masks_a_password_the_daemon_sent_unless_show() -> None:
    leaked = {
        "nodes": [
            {
                "target": IQN1,
                "portal": PORTAL,
                "tpgt": 1,
                "settings": {
                    "node.session.auth.password": "s3cret",
                    "discovery.sendtargets.auth.password_in": "t0p",
                },
            }
        ]
    }
    masked = output.node_records(leaked).stdout
    assert "node.session.auth.password = ********" in masked
    assert "discovery.sendtargets.auth.password_in = ********" in masked
    shown = output.node_records(leaked, show_secrets=True).stdout
    assert "node.session.auth.password = s3cret" in shown
    assert "discovery.sendtargets.auth.password_in = t0p" in shown


def test_node_record_fills_in_name_and_address_when_settings_lack_them() -> None:
    bare = {"nodes": [{"target": IQN1, "portal": "[::1]:3261", "tpgt": 3, "settings": {}}]}
    assert output.node_records(bare).stdout == [
        "# BEGIN RECORD 2.1.9",
        f"node.name = {IQN1}",
        "node.tpgt = 3",
        "node.conn[0].address = ::1",
        "node.conn[0].port = 3261",
        "# END RECORD",
    ]


def test_node_records_several_and_none() -> None:
    two = {"nodes": [SHOW["nodes"][0], SHOW["nodes"][0]]}
    lines = output.node_records(two).stdout
    assert lines.count("# BEGIN RECORD 2.1.9") == 2
    assert lines.count("# END RECORD") == 2
    none = output.node_records({"nodes": []})
    assert (none.stdout, none.stderr, none.exit_code) == (
        [],
        ["pyiscsiadm: No records found"],
        21,
    )


def test_node_new() -> None:
    result = {"node": {"target": IQN1, "portal": PORTAL, "tpgt": -1, "iface": "default"}}
    assert output.node_new(result).stdout == [
        f"New iSCSI node [tcp:[hw=,ip=,net_if=,iscsi_if=default] 127.0.0.1,3260,-1 {IQN1}] added"
    ]


def test_node_update_and_delete_are_silent() -> None:
    for count_key in ("updated", "deleted"):
        ok = output.node_changed({count_key: 2}, count_key)
        assert (ok.lines, ok.exit_code) == ([], 0)
        none = output.node_changed({count_key: 0}, count_key)
        assert (none.stderr, none.exit_code) == (["pyiscsiadm: No records found"], 21)


# -- login and logout ------------------------------------------------------------------

LOGIN_TAG1 = f"[iface: default, target: {IQN1}, portal: 127.0.0.1,3260]"
LOGIN_TAG2 = f"[iface: default, target: {IQN2}, portal: 127.0.0.1,3260]"


def test_login_success() -> None:
    result = {"logins": [{"target": IQN1, "portal": PORTAL, "ok": True, "sid": 1}]}
    out = output.logins(result)
    assert out.lines == [
        (output.Stream.OUT, f"Logging in to {LOGIN_TAG1}"),
        (output.Stream.OUT, f"Login to {LOGIN_TAG1} successful."),
    ]
    assert out.exit_code == 0


def test_login_auth_failure() -> None:
    result = {
        "logins": [
            {"target": IQN1, "portal": PORTAL, "ok": True, "sid": 1},
            {
                "target": IQN2,
                "portal": PORTAL,
                "ok": False,
                "error": err("auth_failed", 24, "the target refused the CHAP response"),
            },
        ]
    }
    out = output.logins(result)
    assert out.stdout == [
        f"Logging in to {LOGIN_TAG1}",
        f"Logging in to {LOGIN_TAG2}",
        f"Login to {LOGIN_TAG1} successful.",
    ]
    assert out.stderr == [
        f"pyiscsiadm: Could not login to {LOGIN_TAG2}.",
        "pyiscsiadm: initiator reported error (24 - iSCSI login failed due to authorization "
        "failure)",
        "pyiscsiadm: the target refused the CHAP response",
        "pyiscsiadm: Could not log into all portals",
    ]
    assert out.exit_code == 24


def test_login_failures_exit_with_the_first_code() -> None:
    result = {
        "logins": [
            {"target": IQN1, "portal": PORTAL, "ok": False, "error": err("timeout", 8)},
            {"target": IQN2, "portal": PORTAL, "ok": False, "error": err("fatal_login", 19)},
        ]
    }
    out = output.logins(result)
    assert out.exit_code == 8
    assert out.stderr == [
        f"pyiscsiadm: Could not login to {LOGIN_TAG1}.",
        "pyiscsiadm: initiator reported error (8 - connection timed out)",
        f"pyiscsiadm: Could not login to {LOGIN_TAG2}.",
        "pyiscsiadm: initiator reported error (19 - encountered non-retryable iSCSI login failure)",
        "pyiscsiadm: Could not log into all portals",
    ]


def test_login_error_as_bare_code_string() -> None:
    result = {"logins": [{"target": IQN1, "portal": PORTAL, "ok": False, "error": "transport"}]}
    out = output.logins(result)
    assert out.exit_code == 4
    assert "pyiscsiadm: initiator reported error (4 - encountered connection failure)" in (
        out.stderr
    )


def test_login_session_exists() -> None:
    result = {
        "logins": [
            {
                "target": IQN1,
                "portal": PORTAL,
                "ok": False,
                "error": err("session_exists", 15, "already logged in"),
            }
        ]
    }
    out = output.logins(result)
    assert out.stdout == []
    assert out.stderr == [
        "pyiscsiadm: default: 1 session requested, but 1 already present.",
        "pyiscsiadm: Could not log into all portals",
    ]
    assert out.exit_code == 15


def test_login_nothing_matched() -> None:
    out = output.logins({"logins": []})
    assert (out.stderr, out.exit_code) == (["pyiscsiadm: No records found"], 21)


SESSION_TAG1 = f"[sid: 1, target: {IQN1}, portal: 127.0.0.1,3260]"
SESSION_TAG2 = f"[sid: 2, target: {IQN2}, portal: 127.0.0.1,3260]"


def test_logout_success() -> None:
    result = {
        "logouts": [
            {"sid": 1, "target": IQN1, "portal": PORTAL, "ok": True},
            {"sid": 2, "target": IQN2, "portal": PORTAL, "ok": True},
        ]
    }
    out = output.logouts(result)
    assert out.stdout == [
        f"Logging out of session {SESSION_TAG1}",
        f"Logging out of session {SESSION_TAG2}",
        f"Logout of {SESSION_TAG1} successful.",
        f"Logout of {SESSION_TAG2} successful.",
    ]
    assert out.exit_code == 0


def test_logout_failure() -> None:
    result = {
        "logouts": [
            {"sid": 1, "target": IQN1, "portal": PORTAL, "ok": True},
            {"sid": 2, "target": IQN2, "portal": PORTAL, "ok": False, "error": err("x", 10)},
        ]
    }
    out = output.logouts(result)
    assert out.stderr == [
        f"pyiscsiadm: Could not logout of {SESSION_TAG2}.",
        "pyiscsiadm: initiator reported error (10 - encountered iSCSI logout failure)",
        "pyiscsiadm: Could not logout of all requested sessions",
    ]
    assert out.exit_code == 10


def test_logout_without_error_object_is_a_logout_failure() -> None:
    result = {"logouts": [{"sid": 1, "target": IQN1, "portal": PORTAL, "ok": False}]}
    assert output.logouts(result).exit_code == 10


def test_logout_nothing_matched() -> None:
    out = output.logouts({"logouts": []})
    assert (out.stderr, out.exit_code) == (["pyiscsiadm: No matching sessions found"], 21)


# -- session ---------------------------------------------------------------------------

SESSIONS = {
    "sessions": [
        {
            "sid": 1,
            "target": IQN1,
            "portal": PORTAL,
            "tpgt": 1,
            "iface": "default",
            "state": "LOGGED_IN",
        },
        {
            "sid": 4,
            "target": IQN2,
            "portal": "[::1]:3260",
            "tpgt": 2,
            "iface": "default",
            "state": "LOGGED_IN",
        },
    ]
}


def test_session_list() -> None:
    out = output.session_list(SESSIONS)
    assert out.stdout == [
        f"tcp: [1] 127.0.0.1:3260,1 {IQN1} (non-flash)",
        f"tcp: [4] [::1]:3260,2 {IQN2} (non-flash)",
    ]
    assert out.exit_code == 0


def test_no_sessions() -> None:
    out = output.session_list({"sessions": []})
    assert (out.stdout, out.stderr, out.exit_code) == (
        [],
        ["pyiscsiadm: No active sessions."],
        21,
    )
    tree = session_tree({"sessions": []}, 3)
    assert (tree.stderr, tree.exit_code) == (["pyiscsiadm: No active sessions."], 21)


def detailed(sid: int = 1, target: str = IQN1, portal: str = PORTAL) -> dict[str, Any]:
    return {
        "sid": sid,
        "target": target,
        "portal": portal,
        "tpgt": 1,
        "iface": "default",
        "state": "logged_in",
        "connection_state": "logged_in",
        "initiator_name": "iqn.2026-11.org.example:host1",
        "local_address": "127.0.0.1",
        "chap_username": "alice",
        "timeouts": {
            "replacement_timeout": 120,
            "tgt_reset_timeout": 30,
            "lu_reset_timeout": 30,
            "abort_timeout": 15,
        },
        "parameters": {
            "HeaderDigest": "None",
            "DataDigest": "CRC32C",
            "MaxRecvDataSegmentLength": 262144,
            "MaxXmitDataSegmentLength": 8192,
            "FirstBurstLength": 65536,
            "MaxBurstLength": 262144,
            "ImmediateData": True,
            "InitialR2T": "Yes",
            "MaxOutstandingR2T": 1,
            "ErrorRecoveryLevel": 0,
        },
        "luns": [
            {
                "lun": 0,
                "size": 0,
                "block_size": 0,
                "vendor": "IET",
                "product": "Controller",
                "revision": "0001",
            },
            {
                "lun": 1,
                "size": 64 << 20,
                "block_size": 512,
                "vendor": "IET",
                "product": "VIRTUAL-DISK",
                "revision": "0001",
                "export": f"{target}/1",
            },
        ],
    }


LEVEL1 = [
    f"Target: {IQN1} (non-flash)",
    "\tCurrent Portal: 127.0.0.1:3260,1",
    "\tPersistent Portal: 127.0.0.1:3260,1",
    "\t\t**********",
    "\t\tInterface:",
    "\t\t**********",
    "\t\tIface Name: default",
    "\t\tIface Transport: tcp",
    "\t\tIface Initiatorname: iqn.2026-11.org.example:host1",
    "\t\tIface IPaddress: 127.0.0.1",
    "\t\tIface HWaddress: <empty>",
    "\t\tIface Netdev: <empty>",
    "\t\tSID: 1",
    "\t\tiSCSI Connection State: LOGGED IN",
    "\t\tiSCSI Session State: LOGGED_IN",
    "\t\tInternal iscsid Session State: NO CHANGE",
]

LEVEL2 = [
    "\t\t*********",
    "\t\tTimeouts:",
    "\t\t*********",
    "\t\tRecovery Timeout: 120",
    "\t\tTarget Reset Timeout: 30",
    "\t\tLUN Reset Timeout: 30",
    "\t\tAbort Timeout: 15",
    "\t\t*****",
    "\t\tCHAP:",
    "\t\t*****",
    "\t\tusername: alice",
    "\t\tpassword: ********",
    "\t\tusername_in: <empty>",
    "\t\tpassword_in: ********",
    "\t\t************************",
    "\t\tNegotiated iSCSI params:",
    "\t\t************************",
    "\t\tHeaderDigest: None",
    "\t\tDataDigest: CRC32C",
    "\t\tMaxRecvDataSegmentLength: 262144",
    "\t\tMaxXmitDataSegmentLength: 8192",
    "\t\tFirstBurstLength: 65536",
    "\t\tMaxBurstLength: 262144",
    "\t\tImmediateData: Yes",
    "\t\tInitialR2T: Yes",
    "\t\tMaxOutstandingR2T: 1",
]

LEVEL3 = [
    "\t\t************************",
    "\t\tAttached SCSI devices:",
    "\t\t************************",
    "\t\tLun: 0\tSize: 0 B (0 bytes)",
    "\t\t\tVendor: IET\tProduct: Controller\tRevision: 0001",
    "\t\tLun: 1\tSize: 64.0 MiB (67108864 bytes)\tBlock size: 512",
    "\t\t\tVendor: IET\tProduct: VIRTUAL-DISK\tRevision: 0001",
    f"\t\t\tNBD export: {IQN1}/1",
    f"\t\t\tAttach: nbd-client -unix /run/pyiscsid/nbd.sock -N '{IQN1}/1' /dev/nbdN",
]


@pytest.mark.parametrize(
    ("level", "expected"),
    [(1, LEVEL1), (2, LEVEL1 + LEVEL2), (3, LEVEL1 + LEVEL2 + LEVEL3)],
)
def test_session_tree_levels(level: int, expected: list[str]) -> None:
    out = session_tree({"sessions": [detailed()]}, level)
    assert out.stdout == expected
    assert out.exit_code == 0


def test_session_tree_groups_by_target_and_portal() -> None:
    sessions = [detailed(1), detailed(2, IQN2), detailed(3), detailed(5, IQN1, "10.0.0.1:3260")]
    lines = session_tree({"sessions": sessions}, 1).stdout
    targets = [line for line in lines if line.startswith("Target:")]
    assert targets == [f"Target: {IQN1} (non-flash)", f"Target: {IQN2} (non-flash)"]
    portals = [line for line in lines if "Portal:" in line]
    assert portals == [
        "\tCurrent Portal: 127.0.0.1:3260,1",
        "\tPersistent Portal: 127.0.0.1:3260,1",
        "\tCurrent Portal: 10.0.0.1:3260,1",
        "\tPersistent Portal: 10.0.0.1:3260,1",
        "\tCurrent Portal: 127.0.0.1:3260,1",
        "\tPersistent Portal: 127.0.0.1:3260,1",
    ]
    sids = [line for line in lines if line.startswith("\t\tSID:")]
    assert sids == ["\t\tSID: 1", "\t\tSID: 3", "\t\tSID: 5", "\t\tSID: 2"]
    # A second session on the same portal is set off by an empty line, as iscsiadm does.
    assert lines[lines.index("\t\tSID: 1") + 4] == ""


def test_session_tree_with_missing_details() -> None:
    bare = {"sid": 7, "target": IQN1, "portal": PORTAL, "tpgt": 1, "state": "FAILED"}
    lines = session_tree({"sessions": [bare], "version": "0.1.0"}, 3).stdout
    assert lines[0] == "version 0.1.0"
    assert "\t\tIface Initiatorname: <empty>" in lines
    assert "\t\tiSCSI Connection State: Unknown" in lines
    assert "\t\tiSCSI Session State: FAILED" in lines
    assert "\t\tInternal iscsid Session State: Unknown" in lines
    assert "\t\tRecovery Timeout: <empty>" in lines
    assert "\t\tusername: <empty>" in lines
    assert lines[-3:] == [
        "\t\t************************",
        "\t\tAttached SCSI devices:",
        "\t\t************************",
    ]


def test_human_size() -> None:
    assert human_size(0) == "0 B"
    assert human_size(1023) == "1023 B"
    assert human_size(1024) == "1.0 KiB"
    assert human_size(10 << 30) == "10.0 GiB"
    assert human_size(3 << 50) == "3.0 PiB"
    assert human_size(5000 << 50) == "5000.0 PiB"


# -- every view through render, errors, JSON -------------------------------------------


@pytest.mark.parametrize(
    ("argv", "result", "first_line"),
    [
        (["-m", "discovery", "-t", "st", "-p", PORTAL], SENDTARGETS, f"{PORTAL},1 {IQN1}"),
        (
            ["-m", "discovery"],
            {"records": [{"portal": PORTAL, "type": "sendtargets"}]},
            f"{PORTAL} via sendtargets",
        ),
        (["-m", "node"], NODES, f"{PORTAL},1 {IQN1}"),
        (["-m", "node", "-P", "1"], NODES, f"Target: {IQN1}"),
        (["-m", "node", "-T", IQN1, "-o", "show"], SHOW, "# BEGIN RECORD 2.1.9"),
        (
            ["-m", "node", "-T", IQN1, "-p", PORTAL, "-o", "new"],
            {"node": {"target": IQN1, "portal": PORTAL, "tpgt": -1}},
            "New iSCSI node [tcp:[hw=,ip=,net_if=,iscsi_if=default] "
            f"127.0.0.1,3260,-1 {IQN1}] added",
        ),
        (
            ["-m", "node", "-L", "all"],
            {"logins": [{"target": IQN1, "portal": PORTAL, "ok": True, "sid": 1}]},
            f"Logging in to {LOGIN_TAG1}",
        ),
        (
            ["-m", "session", "-r", "1", "-u"],
            {"logouts": [{"sid": 1, "target": IQN1, "portal": PORTAL, "ok": True}]},
            f"Logging out of session {SESSION_TAG1}",
        ),
        (["-m", "session"], SESSIONS, f"tcp: [1] {PORTAL},1 {IQN1} (non-flash)"),
        (["-m", "session", "-P", "2"], {"sessions": [detailed()]}, f"Target: {IQN1} (non-flash)"),
    ],
)
def test_render_every_view(argv: list[str], result: dict[str, Any], first_line: str) -> None:
    out = render(parse(argv, {}), result)
    assert out.stdout[0] == first_line
    assert out.exit_code == 0


def test_update_and_delete_render_nothing() -> None:
    update = parse(["-m", "node", "-o", "update", "-n", "node.startup", "-v", "automatic"], {})
    assert render(update, {"updated": 1}).lines == []
    assert render(parse(["-m", "node", "-o", "delete"], {}), {"deleted": 3}).lines == []


def test_rescan_lines_and_a_session_that_could_not_be_rescanned() -> None:
    session = {"target": IQN1, "portal": "127.0.0.1:3260", "tpgt": 1}
    result = {
        "rescans": [
            {**session, "sid": 1, "ok": True, "added": [2],
             "resized": [{"lun": 1, "was": 1048576, "size": 2097152}]},
            {**session, "sid": 2, "ok": False,
             "error": {"code": "error", "message": "the session is failed: rescan it later"}},
        ]
    }  # fmt: skip
    out = render(parse(["-m", "session", "-R"], {}), result)
    assert out.stdout == [
        f"Rescanning session [sid: 1, target: {IQN1}, portal: 127.0.0.1,3260]",
        "LUN 2: added",
        "LUN 1: 1048576 -> 2097152 bytes",
        f"Rescanning session [sid: 2, target: {IQN1}, portal: 127.0.0.1,3260]",
    ]
    assert "pyiscsiadm: the session is failed: rescan it later" in out.stderr
    assert out.exit_code == 1


@pytest.mark.parametrize(
    ("view", "line"),
    [
        (View.SESSION_LIST, "pyiscsiadm: No active sessions."),
        (View.SESSION_TREE, "pyiscsiadm: No active sessions."),
        (View.LOGOUT, "pyiscsiadm: No matching sessions found"),
        (View.DISCOVERY_TARGETS, "pyiscsiadm: No portals found"),
        (View.NODE_LIST, "pyiscsiadm: No records found"),
        (View.LOGIN, "pyiscsiadm: No records found"),
        (View.NODE_RECORDS, "pyiscsiadm: No records found"),
    ],
)
def test_no_records_error_reply_prints_iscsiadms_line(view: View, line: str) -> None:
    failure = ClientError(21, "no node matches target iqn.x", "no_records")
    out = output.error(view, failure)
    assert (out.stderr, out.exit_code) == ([line], 21)


def test_other_error_replies_print_the_daemons_message() -> None:
    failure = ClientError(13, "node.delete changes the node database: run as root", "access")
    out = output.error(View.NODE_DELETE, failure)
    assert out.stderr == ["pyiscsiadm: node.delete changes the node database: run as root"]
    assert out.exit_code == 13


# -- exit codes ------------------------------------------------------------------------


def test_exit_code_mapping_follows_the_readme() -> None:
    assert {code: int(exit_code) for code, exit_code in CODE_TO_EXIT.items()} == error_codes()
    assert CODE_TO_EXIT["busy"] == 28  # "device or resource in use", as iscsiadm


def test_exit_for() -> None:
    assert exit_for({"code": "auth_failed", "exit": 24, "message": "x"}) == 24
    assert exit_for({"code": "auth_failed"}) == 24  # exit missing: the table
    assert exit_for({"code": "timeout", "exit": 8}) == 8
    assert exit_for({"code": "something_new", "exit": 27}) == 27  # exit wins
    assert exit_for({"code": "something_new"}) == 1
    assert exit_for({"exit": True}) == 1  # a bool is not an exit code
    assert exit_for({"exit": 0}) == 1  # an error never exits 0
    assert exit_for("session_exists") == 15
    assert exit_for(None) == 1


def test_error_texts_are_iscsiadms() -> None:
    assert ERROR_TEXT[24] == "iSCSI login failed due to authorization failure"
    assert ERROR_TEXT[15] == "session exists"
    assert ERROR_TEXT[21] == "no objects found"
    assert ERROR_TEXT[20] == "could not connect to iscsid"
    assert set(ERROR_TEXT) == set(range(29))
    assert [int(code) for code in ExitCode][:29] == list(range(29))
    assert int(ExitCode.INTERRUPTED) == 130


# -- a real Unix socket server ---------------------------------------------------------

Handler = Callable[[dict[str, Any]], bytes | None]


class FakeDaemon:
    """Accepts connections on a Unix socket; each gets ``handler(request)`` as its answer.

    A handler returning None closes the connection without answering.
    """

    def __init__(self, path: str, handler: Handler) -> None:
        self.path = path
        self.handler = handler
        self.requests: list[dict[str, Any]] = []
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(path)
        self.server.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                data = b""
                while not data.endswith(b"\n"):
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                if not data:
                    continue
                request = json.loads(data)
                self.requests.append(request)
                answer = self.handler(request)
                if answer is not None:
                    conn.sendall(answer)

    def close(self) -> None:
        # close() alone does not wake a thread blocked in accept(); shutdown() does.
        with contextlib.suppress(OSError):
            self.server.shutdown(socket.SHUT_RDWR)
        self.server.close()
        self.thread.join(timeout=5)


def ok(result: dict[str, Any]) -> Handler:
    def answer(request: dict[str, Any]) -> bytes:
        reply = {"v": 1, "id": request["id"], "ok": True, "result": result}
        return json.dumps(reply).encode() + b"\n"

    return answer


def fails(error: dict[str, Any]) -> Handler:
    def answer(request: dict[str, Any]) -> bytes:
        reply = {"v": 1, "id": request["id"], "ok": False, "error": error}
        return json.dumps(reply).encode() + b"\n"

    return answer


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # Not tmp_path: a Unix socket path must fit in 108 bytes.
    with tempfile.TemporaryDirectory(prefix="pyiscsiadm-", dir="/tmp") as d:
        yield Path(d)


@pytest.fixture
def daemon(sock_dir: Path) -> Iterator[Callable[[Handler], FakeDaemon]]:
    started: list[FakeDaemon] = []

    def start(handler: Handler) -> FakeDaemon:
        fake = FakeDaemon(str(sock_dir / f"control{len(started)}.sock"), handler)
        started.append(fake)
        return fake

    yield start
    for fake in started:
        fake.close()


def test_call_sends_a_versioned_request_and_returns_the_result(
    daemon: Callable[[Handler], FakeDaemon],
) -> None:
    fake = daemon(ok({"sessions": []}))
    result = call("session.show", {"sid": 3}, socket_path=fake.path, timeout=5)
    assert result == {"sessions": []}
    (request,) = fake.requests
    assert request["v"] == 1
    assert request["op"] == "session.show"
    assert request["args"] == {"sid": 3}
    assert isinstance(request["id"], int)


def test_call_ids_differ(daemon: Callable[[Handler], FakeDaemon]) -> None:
    fake = daemon(ok({}))
    call("status", {}, socket_path=fake.path, timeout=5)
    call("status", {}, socket_path=fake.path, timeout=5)
    assert fake.requests[0]["id"] != fake.requests[1]["id"]


def test_call_error_reply(daemon: Callable[[Handler], FakeDaemon]) -> None:
    fake = daemon(fails(err("access_denied", 13, "run as root")))
    with pytest.raises(ClientError) as info:
        call("node.delete", {}, socket_path=fake.path, timeout=5)
    assert (info.value.exit_code, info.value.code, info.value.message) == (
        13,
        "access_denied",
        "run as root",
    )


def test_call_error_reply_without_exit_uses_the_code(
    daemon: Callable[[Handler], FakeDaemon],
) -> None:
    fake = daemon(fails({"code": "session_exists", "message": "already logged in"}))
    with pytest.raises(ClientError) as info:
        call("node.login", {}, socket_path=fake.path, timeout=5)
    assert info.value.exit_code == 15


def test_call_closed_connection(daemon: Callable[[Handler], FakeDaemon]) -> None:
    fake = daemon(lambda request: None)
    with pytest.raises(ClientError) as info:
        call("session.list", {}, socket_path=fake.path, timeout=5)
    assert info.value.exit_code == ExitCode.ISCSID_COMM_ERR
    assert "closed the connection without answering session.list" in info.value.message


def test_call_missing_socket(sock_dir: Path) -> None:
    path = str(sock_dir / "absent.sock")
    with pytest.raises(ClientError) as info:
        call("session.list", {}, socket_path=path, timeout=5)
    assert info.value.exit_code == 20
    assert info.value.message == (
        f"can not connect to pyiscsid at {path}: No such file or directory. Is the daemon running?"
    )


def test_call_connection_refused(sock_dir: Path) -> None:
    # A socket file nobody listens on: what a crashed daemon leaves behind.
    path = str(sock_dir / "stale.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()
    with pytest.raises(ClientError) as info:
        call("session.list", {}, socket_path=path, timeout=5)
    assert info.value.exit_code == 20
    assert "Connection refused. Is the daemon running?" in info.value.message


def test_call_permission_denied(monkeypatch: pytest.MonkeyPatch) -> None:
    # Root opens any socket, so the refusal a non-member of control.group meets is faked.
    class Refusing:
        def __init__(self, *args: object) -> None:
            pass

        def settimeout(self, timeout: float) -> None:
            pass

        def connect(self, path: str) -> None:
            raise PermissionError(errno.EACCES, "Permission denied")

        def close(self) -> None:
            pass

    monkeypatch.setattr(socket, "socket", Refusing)
    with pytest.raises(ClientError) as info:
        call("session.list", {}, socket_path="/run/x.sock", timeout=5)
    assert info.value.exit_code == 13
    assert info.value.message == (
        "can not connect to pyiscsid at /run/x.sock: Permission denied. "
        "Run as root or as a member of the socket's group."
    )


@pytest.mark.parametrize(
    ("reply", "says"),
    [
        (b"this is not json\n", "not JSON"),
        (b"[1, 2]\n", "not a JSON object"),
        (b'{"v": 2, "id": 1, "ok": true, "result": {}}\n', "protocol version 2"),
        (b'{"v": 1, "id": -5, "ok": true, "result": {}}\n', "answers request -5"),
        (b'{"v": 1, "id": ID, "ok": "yes"}\n', "'ok' is neither true nor false"),
        (b'{"v": 1, "id": ID, "ok": true, "result": [1]}\n', "result is not an object"),
        (b'{"v": 1, "id": ID, "ok": false, "error": "bad"}\n', "error is not an object"),
        (b"\xff\xfe\n", "not JSON"),
    ],
)
def test_call_malformed_reply(
    daemon: Callable[[Handler], FakeDaemon], reply: bytes, says: str
) -> None:
    fake = daemon(lambda request: reply.replace(b"ID", str(request["id"]).encode()))
    with pytest.raises(ClientError) as info:
        call("session.list", {}, socket_path=fake.path, timeout=5)
    assert info.value.exit_code == ExitCode.ISCSID_COMM_ERR
    assert info.value.message.startswith("malformed reply from pyiscsid: ")
    assert says in info.value.message


def test_call_reply_too_long(daemon: Callable[[Handler], FakeDaemon]) -> None:
    fake = daemon(lambda request: b"x" * (MAX_REPLY_BYTES + 70000))
    with pytest.raises(ClientError) as info:
        call("session.list", {}, socket_path=fake.path, timeout=5)
    assert info.value.exit_code == ExitCode.ISCSID_COMM_ERR
    assert "longer than" in info.value.message


def test_call_reply_longer_than_one_read(daemon: Callable[[Handler], FakeDaemon]) -> None:
    fake = daemon(ok({"sessions": [], "pad": "y" * 200000}))
    assert call("session.list", {}, socket_path=fake.path, timeout=5)["pad"] == "y" * 200000


def test_call_timeout(sock_dir: Path) -> None:
    path = str(sock_dir / "silent.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)  # accepts (the kernel does) but never answers
    try:
        with pytest.raises(ClientError) as info:
            call("node.login", {}, socket_path=path, timeout=0.2)
    finally:
        server.close()
    assert info.value.exit_code == ExitCode.TRANS_TIMEOUT
    assert "did not answer node.login within 0.2 s" in info.value.message


# -- whole commands through main.run against the fake daemon ---------------------------


def run_cmd(fake_path: str, *argv: str) -> tuple[int, str, str]:
    out, errs = io.StringIO(), io.StringIO()
    code = run([*argv, "--socket", fake_path], out, errs)
    return code, out.getvalue(), errs.getvalue()


def test_run_session_list(daemon: Callable[[Handler], FakeDaemon]) -> None:
    fake = daemon(ok(SESSIONS))
    code, out, errs = run_cmd(fake.path, "-m", "session")
    assert code == 0
    assert out == (
        f"tcp: [1] 127.0.0.1:3260,1 {IQN1} (non-flash)\ntcp: [4] [::1]:3260,2 {IQN2} (non-flash)\n"
    )
    assert errs == ""


def test_run_login_auth_failure_exits_24(daemon: Callable[[Handler], FakeDaemon]) -> None:
    failed = {
        "logins": [
            {
                "target": IQN1,
                "portal": PORTAL,
                "ok": False,
                "error": err("auth_failed", 24, "CHAP failed"),
            }
        ]
    }
    fake = daemon(ok(failed))
    code, out, errs = run_cmd(fake.path, "-m", "node", "-T", IQN1, "-p", PORTAL, "-l")
    assert code == 24
    assert out == f"Logging in to {LOGIN_TAG1}\n"
    assert errs.splitlines()[-1] == "pyiscsiadm: Could not log into all portals"
    assert fake.requests[0]["op"] == "node.login"
    assert fake.requests[0]["args"] == {"target": IQN1, "portal": PORTAL}


def test_run_error_reply(daemon: Callable[[Handler], FakeDaemon]) -> None:
    fake = daemon(fails(err("access_denied", 13, "run as root or join group 'pyiscsi'")))
    code, out, errs = run_cmd(fake.path, "-m", "node", "-o", "delete")
    assert (code, out) == (13, "")
    assert errs == "pyiscsiadm: run as root or join group 'pyiscsi'\n"


def test_run_no_daemon(sock_dir: Path) -> None:
    path = str(sock_dir / "nobody.sock")
    code, out, errs = run_cmd(path, "-m", "session")
    assert (code, out) == (20, "")
    assert errs == (
        f"pyiscsiadm: can not connect to pyiscsid at {path}: No such file or directory. "
        "Is the daemon running?\n"
    )


def test_run_socket_from_environment(
    daemon: Callable[[Handler], FakeDaemon], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = daemon(ok(NODES))
    monkeypatch.setenv("PYISCSID_SOCKET", fake.path)
    out = io.StringIO()
    assert run(["-m", "node"], out, io.StringIO()) == 0
    assert out.getvalue().startswith(f"127.0.0.1:3260,1 {IQN1}\n")


@pytest.mark.parametrize(
    ("argv", "result"),
    [
        (["-m", "session"], SESSIONS),
        (["-m", "session", "-P", "3"], {"sessions": [detailed()]}),
        (["-m", "node"], NODES),
        (["-m", "node", "-o", "show", "-T", IQN1], SHOW),
        (["-m", "discovery", "-t", "st", "-p", PORTAL], SENDTARGETS),
        (["-m", "discovery"], {"records": [{"portal": PORTAL, "type": "sendtargets"}]}),
        (["-m", "node", "-o", "delete", "-T", IQN1], {"deleted": 1}),
    ],
)
def test_run_json_prints_the_result(
    daemon: Callable[[Handler], FakeDaemon], argv: list[str], result: dict[str, Any]
) -> None:
    fake = daemon(ok(result))
    code, out, errs = run_cmd(fake.path, *argv, "--format", "json")
    assert code == 0
    assert json.loads(out) == result
    assert errs == ""


def test_run_json_keeps_the_exit_code(daemon: Callable[[Handler], FakeDaemon]) -> None:
    fake = daemon(ok({"sessions": []}))
    code, out, errs = run_cmd(fake.path, "-m", "session", "--format", "json")
    assert (code, json.loads(out), errs) == (21, {"sessions": []}, "")


def test_run_json_error(daemon: Callable[[Handler], FakeDaemon], sock_dir: Path) -> None:
    fake = daemon(fails(err("auth_failed", 24, "CHAP failed")))
    code, out, _ = run_cmd(fake.path, "-m", "node", "-l", "--format", "json")
    assert code == 24
    assert json.loads(out) == {"error": err("auth_failed", 24, "CHAP failed")}
    absent = str(sock_dir / "absent.sock")
    code, out, _ = run_cmd(absent, "-m", "node", "--format", "json")
    assert code == 20
    assert json.loads(out)["error"]["exit"] == 20
    code, out, _ = run_cmd(absent, "-m", "fw", "--format", "json")
    assert (code, json.loads(out)["error"]["code"]) == (20, "not_connected")


def test_run_keeps_stdout_and_stderr_in_order() -> None:
    # One stream object for both shows the interleaving a terminal would see.
    both = io.StringIO()
    out = output.logins(
        {
            "logins": [
                {"target": IQN1, "portal": PORTAL, "ok": True, "sid": 1},
                {"target": IQN2, "portal": PORTAL, "ok": False, "error": err("x", 5)},
            ]
        }
    )
    from pyiscsid.client.main import write

    write(out, both, both)
    assert both.getvalue().splitlines() == [
        f"Logging in to {LOGIN_TAG1}",
        f"Logging in to {LOGIN_TAG2}",
        f"Login to {LOGIN_TAG1} successful.",
        f"pyiscsiadm: Could not login to {LOGIN_TAG2}.",
        "pyiscsiadm: initiator reported error (5 - encountered iSCSI login failure)",
        "pyiscsiadm: Could not log into all portals",
    ]


def test_main_ctrl_c_exits_130_quietly(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pyiscsid.client import main as main_module

    def interrupted(*args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(main_module, "run", interrupted)
    monkeypatch.setattr("sys.argv", ["pyiscsiadm", "-m", "session"])
    with pytest.raises(SystemExit) as info:
        main_module.main()
    assert info.value.code == 130
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", "")


def test_run_result_missing_fields_is_one_line_not_a_traceback(
    daemon: Callable[[Handler], FakeDaemon],
) -> None:
    fake = daemon(ok({"sessions": [{"sid": 1}]}))
    code, out, errs = run_cmd(fake.path, "-m", "session")
    assert (code, out) == (ExitCode.ISCSID_COMM_ERR, "")
    assert errs == (
        "pyiscsiadm: malformed result from pyiscsid for session.list: KeyError: 'portal'\n"
    )


def test_a_real_login_failure_outranks_an_existing_session() -> None:
    """`-L all` with one node logged in already and one failing CHAP exits 24, not 15."""
    result = {
        "logins": [
            {
                "target": IQN1,
                "portal": PORTAL,
                "ok": False,
                "error": err("session_exists", 15, "x"),
            },
            {
                "target": IQN1 + "b",
                "portal": PORTAL,
                "ok": False,
                "error": err("auth_failed", 24, "y"),
            },
        ]
    }
    assert output.logins(result).exit_code == 24
