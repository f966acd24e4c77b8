"""`-m fw` end to end: a real pyiscsid reading an iBFT tree built in the test (the layout of
the Linux iscsi_ibft driver, at `firmware.ibft_path`) whose targets are a real tgtd; the
real pyiscsiadm shows them, logs in to them and records them as `onboot` nodes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import TgtDisk
from tests.daemon.test_firmware import INITIATOR, build_ibft, nic_files, target_files
from tests.daemon_process import Daemon

pytestmark = pytest.mark.tgtd

DISK2 = "iqn.2026-11.test.pyiscsid:fw-disk2"
USER, SECRET = "fw-boot-user", "fw-boot-secret-77"
USER2, SECRET2 = "fw-data-user", "fw-data-secret-88"
TARGET_USER, TARGET_SECRET = "fw-target-user", "fw-target-secret-99"
SECRETS = (SECRET, SECRET2, TARGET_SECRET)


@pytest.fixture
def boot_targets(tgt: TgtDisk, tmp_path: Path) -> TgtDisk:
    """tid 1 asks for CHAP; tid 2 asks for CHAP and proves itself back (mutual)."""
    tgt.target.add_disk(2, DISK2, tmp_path / "fw-disk2.img", 16 << 20)
    tgt.target.add_account(USER, SECRET)
    tgt.target.bind_account(tgt.tid, USER)
    tgt.target.add_account(USER2, SECRET2)
    tgt.target.bind_account(2, USER2)
    tgt.target.add_account(TARGET_USER, TARGET_SECRET)
    tgt.target.bind_account(2, TARGET_USER, outgoing=True)
    return tgt


@pytest.fixture
def ibft(boot_targets: TgtDisk, tmp_path: Path) -> Path:
    tgt = boot_targets
    return build_ibft(
        tmp_path / "sys" / "firmware" / "ibft",
        nics=[nic_files(0)],
        targets=[
            target_files(0, tgt.iqn, tgt.address, tgt.port, chap=(USER, SECRET)),
            target_files(
                1,
                DISK2,
                tgt.address,
                tgt.port,
                flags=1,
                chap=(USER2, SECRET2),
                chap_in=(TARGET_USER, TARGET_SECRET),
                lun="00000000",
            ),
        ],
    )


def start(root: Path, ibft: Path) -> Daemon:
    return Daemon(root, config_text=f"firmware.ibft_path = {ibft}\n").start()


@pytest.fixture
def daemon(ibft: Path, tmp_path: Path) -> Iterator[Daemon]:
    d = start(tmp_path / "daemon", ibft)
    try:
        yield d
    finally:
        d.stop()


def test_show_login_and_onboot_records(boot_targets: TgtDisk, daemon: Daemon) -> None:
    tgt = boot_targets
    shown = daemon.client("-m", "fw")
    assert shown.returncode == 0, shown.stderr
    assert shown.stderr == ""
    assert shown.lines == [
        "# BEGIN RECORD 2.1.9",
        f"iface.initiatorname = {INITIATOR}",
        "iface.transport_name = tcp",
        "iface.hwaddress = 52:54:00:12:34:56",
        "iface.bootproto = STATIC",
        "iface.ipaddress = 192.168.50.10",
        "iface.prefix_len = 24",
        "iface.subnet_mask = 255.255.255.0",
        "iface.gateway = 192.168.50.1",
        "iface.vlan_id = 0",
        f"node.name = {tgt.iqn}",
        f"node.conn[0].address = {tgt.address}",
        f"node.conn[0].port = {tgt.port}",
        f"node.session.auth.username = {USER}",
        "node.session.auth.password = ********",
        "node.boot_lun = 01000000",
        "# END RECORD",
        "# BEGIN RECORD 2.1.9",
        f"iface.initiatorname = {INITIATOR}",
        "iface.transport_name = tcp",
        "iface.hwaddress = 52:54:00:12:34:56",
        "iface.bootproto = STATIC",
        "iface.ipaddress = 192.168.50.10",
        "iface.prefix_len = 24",
        "iface.subnet_mask = 255.255.255.0",
        "iface.gateway = 192.168.50.1",
        "iface.vlan_id = 0",
        f"node.name = {DISK2}",
        f"node.conn[0].address = {tgt.address}",
        f"node.conn[0].port = {tgt.port}",
        f"node.session.auth.username = {USER2}",
        "node.session.auth.password = ********",
        f"node.session.auth.username_in = {TARGET_USER}",
        "node.session.auth.password_in = ********",
        "node.boot_lun = 00000000",
        "# END RECORD",
    ]
    as_json = daemon.client("-m", "fw", "--format", "json").json()
    assert [t["name"] for t in as_json["targets"]] == [tgt.iqn, DISK2]

    login = daemon.client("-m", "fw", "-l")
    assert login.returncode == 0, login.stdout + login.stderr
    where = [
        f"[iface: default, target: {name}, portal: {tgt.address},{tgt.port}]"
        for name in (tgt.iqn, DISK2)
    ]
    assert sorted(login.lines) == sorted(
        [f"Logging in to {w}" for w in where] + [f"Login to {w} successful." for w in where]
    )

    portal = f"{tgt.address}:{tgt.port}"
    for name in (tgt.iqn, DISK2):
        record = daemon.client("-m", "node", "-T", name, "-p", portal, "-o", "show")
        assert record.returncode == 0, record.stderr
        assert "node.startup = onboot" in record.lines
        assert "node.session.auth.authmethod = CHAP" in record.lines
        assert "node.session.auth.password = ********" in record.lines
    sessions = daemon.client("-m", "session")
    assert sessions.returncode == 0
    listed = daemon.request("session.list")["result"]["sessions"]
    assert sorted(sessions.lines) == sorted(
        f"tcp: [{s['sid']}] {portal},1 {s['target']} (non-flash)" for s in listed
    )
    assert {line.rsplit(" ", 2)[1] for line in sessions.lines} == {tgt.iqn, DISK2}
    assert len(tgt.sessions()) == 1 and len(tgt.target.sessions(2)) == 1

    again = daemon.client("-m", "fw", "-l")
    assert again.returncode == 15  # already logged in, as node.login says

    everything = shown.stdout + login.stdout + login.stderr + sessions.stdout + daemon.log()
    assert not any(secret in everything for secret in SECRETS)


def test_onboot_records_log_in_again_after_a_restart(
    boot_targets: TgtDisk, ibft: Path, tmp_path: Path
) -> None:
    first = start(tmp_path / "daemon", ibft)
    try:
        assert first.client("-m", "fw", "-l").returncode == 0
    finally:
        first.stop()  # onboot sessions are left logged in at shutdown, by design
    again = Daemon(tmp_path / "daemon").start()  # no ibft path needed: the records remain
    try:
        sessions = again.wait_sessions(2)
        assert {s["target"] for s in sessions} == {boot_targets.iqn, DISK2}
    finally:
        again.stop()


def test_no_ibft_exits_21_with_a_clear_message(tmp_path: Path) -> None:
    missing = tmp_path / "no-ibft"
    daemon = start(tmp_path / "daemon", missing)
    try:
        for argv in (["-m", "fw"], ["-m", "fw", "-l"]):
            done = daemon.client(*argv)
            assert done.returncode == 21, done.stdout + done.stderr
            assert done.stdout == ""
            assert done.stderr.splitlines() == [
                "pyiscsiadm: Could not get list of targets from firmware. (err 21)",
                f"pyiscsiadm: no iBFT at {missing} (no such directory): the firmware did not "
                "boot from iSCSI, or the iscsi_ibft kernel module is not loaded "
                "(modprobe iscsi_ibft)",
            ]
        assert daemon.client("-m", "node").returncode == 21  # nothing recorded
    finally:
        daemon.stop()


def test_a_broken_entry_is_named_and_the_good_target_still_logs_in(
    tgt: TgtDisk, tmp_path: Path
) -> None:
    root = build_ibft(
        tmp_path / "ibft",
        nics=[nic_files(0)],
        targets=[
            target_files(0, None, tgt.address, tgt.port),
            target_files(1, tgt.iqn, tgt.address, tgt.port),
        ],
    )
    daemon = start(tmp_path / "daemon", root)
    try:
        shown = daemon.client("-m", "fw")
        assert shown.returncode == 0
        assert shown.stderr.splitlines() == [
            f"pyiscsiadm: {root}/target0/target-name: missing: the target has no name"
        ]
        assert f"node.name = {tgt.iqn}" in shown.lines
        login = daemon.client("-m", "fw", "-l")
        assert login.returncode == 7, login.stderr  # one entry could not be used
        assert login.stderr.splitlines() == [
            f"pyiscsiadm: {root}/target0/target-name: missing: the target has no name",
            "pyiscsiadm: Could not login to ibft target0: its entry in the table cannot be used.",
            "pyiscsiadm: Could not log into all portals",
        ]
        assert len(daemon.wait_sessions(1)) == 1
    finally:
        daemon.stop()


BAD_NAME = "boot-disk"  # not an iSCSI name
SPACED, SPACED_SECRET = "iqn.2026-11.test.pyiscsid:fw-spaced", "fw-spaced-secret-55"


def test_each_firmware_target_stands_on_its_own(boot_targets: TgtDisk, tmp_path: Path) -> None:
    """One target with a name that is not an iSCSI name, one whose CHAP name no node
    record can hold (a leading blank), one whose secret cannot be read: before, the first
    of them failed the whole `-m fw -l` (nothing logged in) and the second left a
    half-written onboot record. Now the good targets are recorded and logged in, each bad
    one is named by its iBFT entry with what is wrong, and the command exits non-zero."""
    tgt = boot_targets
    unreadable = target_files(3, DISK2, tgt.address, tgt.port, chap=(USER2, SECRET2))
    root = build_ibft(
        tmp_path / "ibft",
        nics=[nic_files(0)],
        targets=[
            target_files(0, BAD_NAME, tgt.address, tgt.port, chap=(USER, SECRET)),
            target_files(1, tgt.iqn, tgt.address, tgt.port, chap=(USER, SECRET)),
            target_files(2, SPACED, tgt.address, tgt.port, chap=(" spaced", SPACED_SECRET)),
            unreadable,
        ],
    )
    secret_file = root / "target3" / "chap-secret"
    secret_file.unlink()
    secret_file.symlink_to(secret_file.name)  # ELOOP: unreadable, even as root
    daemon = start(tmp_path / "daemon", root)
    try:
        shown = daemon.client("-m", "fw")
        assert shown.returncode == 0, shown.stderr
        assert [line for line in shown.lines if line.startswith("node.name")] == [
            f"node.name = {tgt.iqn}"
        ]
        problems = [
            f"pyiscsiadm: {root}/target0/target-name: '{BAD_NAME}' is not an iSCSI name "
            "(iqn.…, eui.… or naa.…, no spaces)",
            f"pyiscsiadm: {root}/target2/chap-name: cannot be recorded as a node: "
            "node.session.auth.username =  spaced: must not begin or end with a blank",
            f"pyiscsiadm: {root}/target3/chap-secret: cannot read it: "
            "Too many levels of symbolic links",
        ]
        assert shown.stderr.splitlines() == problems

        login = daemon.client("-m", "fw", "-l")
        assert login.returncode == 7, login.stdout + login.stderr
        where = f"[iface: default, target: {tgt.iqn}, portal: {tgt.address},{tgt.port}]"
        assert login.lines == [f"Logging in to {where}", f"Login to {where} successful."]
        assert login.stderr.splitlines() == [
            *problems,
            *(
                f"pyiscsiadm: Could not login to ibft {entry}: its entry in the table "
                "cannot be used."
                for entry in ("target0", "target2", "target3")
            ),
            "pyiscsiadm: Could not log into all portals",
        ]
        assert len(tgt.sessions()) == 1 and tgt.target.sessions(2) == []
        nodes = daemon.client("-m", "node")
        assert nodes.lines == [f"{tgt.address}:{tgt.port},1 {tgt.iqn}"]
        assert sorted(p.parent.parent.name for p in daemon.state_dir.glob("nodes/*/*/*")) == [
            tgt.iqn
        ]
        skipped = daemon.events("ibft entry skipped")
        assert {e["entry"] for e in skipped} == {"target0", "target2", "target3"}
        everything = shown.stdout + shown.stderr + login.stdout + login.stderr + daemon.log()
        assert not any(s in everything for s in (*SECRETS, SPACED_SECRET))
    finally:
        daemon.stop()
