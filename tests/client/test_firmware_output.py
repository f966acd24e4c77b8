"""``-m fw`` output: the table's problems, the records, and the verdict of ``-m fw -l`` when
some firmware entries cannot be used."""

from __future__ import annotations

from typing import Any

from pyiscsid.client import firmware_output

GOOD = "iqn.2026-11.org.example:boot"
ROOT = "/sys/firmware/ibft"
TAG = f"[iface: default, target: {GOOD}, portal: 127.0.0.1,3260]"


def result(*problems: dict[str, Any]) -> dict[str, Any]:
    return {
        "path": ROOT,
        "initiator_name": "iqn.2026-11.org.example:host",
        "nics": [],
        "targets": [
            {"name": GOOD, "address": "127.0.0.1", "port": 3260, "lun": "01000000", "chap": None}
        ],
        "problems": list(problems),
        "logins": [{"target": GOOD, "portal": "127.0.0.1:3260", "ok": True, "sid": 1}],
    }


BAD_NAME = {
    "path": f"{ROOT}/target1/target-name",
    "message": "'boot-disk' is not an iSCSI name",
    "entry": "target1",
    "skipped": True,
}
NO_NIC = {
    "path": f"{ROOT}/target0/nic-assoc",
    "message": "names NIC 3, but there is no ethernet block with that index",
    "entry": "target0",
    "skipped": False,
}
BAD_NIC = {"path": f"{ROOT}/ethernet1/mac", "message": "bad", "entry": "ethernet1", "skipped": True}


def test_fw_login_with_a_skipped_target_logs_in_the_rest_and_exits_7() -> None:
    out = firmware_output.firmware_logins(result(BAD_NAME))
    assert out.stdout == [f"Logging in to {TAG}", f"Login to {TAG} successful."]
    assert out.stderr == [
        f"pyiscsiadm: {ROOT}/target1/target-name: 'boot-disk' is not an iSCSI name",
        "pyiscsiadm: Could not login to ibft target1: its entry in the table cannot be used.",
        "pyiscsiadm: Could not log into all portals",
    ]
    assert out.exit_code == 7


def test_fw_login_problems_that_skip_no_target_do_not_fail_it() -> None:
    out = firmware_output.firmware_logins(result(NO_NIC, BAD_NIC))
    assert out.stderr == [
        f"pyiscsiadm: {ROOT}/target0/nic-assoc: {NO_NIC['message']}",
        f"pyiscsiadm: {ROOT}/ethernet1/mac: bad",
    ]
    assert out.exit_code == 0


def test_a_failed_login_outranks_a_skipped_entry() -> None:
    failed = result(BAD_NAME)
    failed["logins"][0] = {
        "target": GOOD,
        "portal": "127.0.0.1:3260",
        "ok": False,
        "error": {"code": "auth_failed", "exit": 24, "message": "CHAP failed"},
    }
    out = firmware_output.firmware_logins(failed)
    assert out.exit_code == 24  # the first failure decides, as in iscsiadm's loops
    assert out.stderr[-2:] == [
        "pyiscsiadm: Could not login to ibft target1: its entry in the table cannot be used.",
        "pyiscsiadm: Could not log into all portals",
    ]


def test_fw_show_names_the_bad_entry_and_shows_the_good_one() -> None:
    out = firmware_output.firmware_records(result(BAD_NAME))
    assert out.stderr == [
        f"pyiscsiadm: {ROOT}/target1/target-name: 'boot-disk' is not an iSCSI name"
    ]
    assert f"node.name = {GOOD}" in out.stdout
    assert out.exit_code == 0
