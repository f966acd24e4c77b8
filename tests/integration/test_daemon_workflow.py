"""The administrator's workflow, end to end: the real pyiscsiadm binary against a real
pyiscsid process against a real tgtd: discover, configure CHAP, log in, look, log out,
delete; then restart, bad input, permissions."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import TgtDisk
from tests.daemon_process import Daemon, read_line

pytestmark = pytest.mark.tgtd

DISK2 = "iqn.2026-11.test.pyiscsid:disk2"
USER, SECRET = "admin-user", "chap-secret-0042"


@pytest.fixture
def two_targets(tgt: TgtDisk, tmp_path: Path) -> TgtDisk:
    """Two targets on one tgtd; the first asks for CHAP."""
    tgt.target.add_disk(2, DISK2, tmp_path / "disk2.img", 16 << 20)
    tgt.target.add_account(USER, SECRET)
    tgt.target.bind_account(tgt.tid, USER)
    return tgt


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path / "daemon")
    try:
        yield d.start()
    finally:
        d.stop()


def portal_of(tgt: TgtDisk) -> str:
    return f"{tgt.address}:{tgt.port}"


def iscsiadm_portal(tgt: TgtDisk) -> str:
    """How iscsiadm writes a portal inside its [ ... ] messages: `IP,PORT`."""
    return f"{tgt.address},{tgt.port}"


def test_discover_configure_login_show_logout_delete(two_targets: TgtDisk, daemon: Daemon) -> None:
    tgt, portal = two_targets, portal_of(two_targets)

    found = daemon.client("-m", "discovery", "-t", "st", "-p", portal)
    assert found.returncode == 0, found.stderr
    assert sorted(found.lines) == sorted([f"{portal},1 {tgt.iqn}", f"{portal},1 {DISK2}"])

    nodes = daemon.client("-m", "node")
    assert sorted(nodes.lines) == sorted(found.lines)

    node = ["-m", "node", "-T", tgt.iqn, "-p", portal]
    for key, value in (
        ("node.session.auth.authmethod", "CHAP"),
        ("node.session.auth.username", USER),
        ("node.session.auth.password", SECRET),
    ):
        done = daemon.client(*node, "-o", "update", "-n", key, "-v", value)
        assert done.returncode == 0, done.stderr
    shown = daemon.client(*node, "-o", "show")
    assert "node.session.auth.username = " + USER in shown.lines
    assert "node.session.auth.password = ********" in shown.lines
    assert SECRET not in shown.stdout

    login = daemon.client(*node, "--login")
    where = f"[iface: default, target: {tgt.iqn}, portal: {iscsiadm_portal(tgt)}]"
    assert login.returncode == 0, login.stdout + login.stderr
    assert login.lines == [f"Logging in to {where}", f"Login to {where} successful."]

    again = daemon.client(*node, "--login")
    assert again.returncode == 15

    sessions = daemon.client("-m", "session")
    assert sessions.returncode == 0
    assert sessions.lines == [f"tcp: [1] {portal},1 {tgt.iqn} (non-flash)"]

    detail = daemon.client("-m", "session", "-P", "3")
    assert detail.returncode == 0
    text = detail.stdout
    assert f"Target: {tgt.iqn}" in text
    assert "iSCSI Connection State: LOGGED IN" in text
    assert f"username: {USER}" in text and SECRET not in text
    assert "Attached SCSI devices:" in text
    assert f"Attach: nbd-client -unix {daemon.nbd_socket} -N '{tgt.iqn}/1' /dev/nbdN" in text
    assert "VIRTUAL-DISK" in text  # tgt's product name for a file-backed LUN
    assert "64 MiB" in text or "67108864" in text

    as_json = daemon.client("-m", "session", "--format", "json").json()
    assert [s["target"] for s in as_json["sessions"]] == [tgt.iqn]

    logout = daemon.client(*node, "--logout")
    assert logout.returncode == 0, logout.stdout + logout.stderr
    sid_where = f"[sid: 1, target: {tgt.iqn}, portal: {iscsiadm_portal(tgt)}]"
    assert logout.lines == [
        f"Logging out of session {sid_where}",
        f"Logout of {sid_where} successful.",
    ]
    none = daemon.client("-m", "session")
    assert none.returncode == 21
    assert "No active sessions." in none.stdout + none.stderr

    assert SECRET not in daemon.log()  # set, used, shown: never logged

    deleted = daemon.client(*node, "-o", "delete")
    assert deleted.returncode == 0
    remaining = daemon.client("-m", "node")
    assert remaining.lines == [f"{portal},1 {DISK2}"]
    assert daemon.client(*node, "-o", "show").returncode == 21


def test_wrong_chap_secret_exits_24(two_targets: TgtDisk, daemon: Daemon) -> None:
    tgt, portal = two_targets, portal_of(two_targets)
    assert daemon.client("-m", "discovery", "-t", "st", "-p", portal).returncode == 0
    node = ["-m", "node", "-T", tgt.iqn, "-p", portal]
    for key, value in (
        ("node.session.auth.authmethod", "CHAP"),
        ("node.session.auth.username", USER),
        ("node.session.auth.password", "wrong-secret-777"),
    ):
        assert daemon.client(*node, "-o", "update", "-n", key, "-v", value).returncode == 0
    login = daemon.client(*node, "--login")
    assert login.returncode == 24
    assert "wrong-secret-777" not in login.stdout + login.stderr + daemon.log()


def test_restart_logs_back_in_to_automatic_nodes_only(two_targets: TgtDisk, daemon: Daemon) -> None:
    portal = portal_of(two_targets)
    assert daemon.client("-m", "discovery", "-t", "st", "-p", portal).returncode == 0
    update = ["-o", "update", "-n", "node.startup", "-v", "automatic"]
    assert daemon.client("-m", "node", "-T", DISK2, "-p", portal, *update).returncode == 0
    assert daemon.stop() == 0
    daemon.start()
    sessions = daemon.wait_sessions(count=1)
    assert [s["target"] for s in sessions] == [DISK2]


@pytest.fixture
def public_daemon(tmp_path: Path) -> Iterator[Daemon]:
    """A daemon whose socket `nobody` can reach (pytest's tmp_path is root-only)."""
    with tempfile.TemporaryDirectory(prefix="pyiscsid-test-") as public:
        os.chmod(public, 0o755)
        d = Daemon(tmp_path / "daemon", socket_dir=Path(public) / "run")
        try:
            yield d.start()
        finally:
            d.stop()


def test_a_non_root_peer_can_list_but_not_change(
    two_targets: TgtDisk, public_daemon: Daemon
) -> None:
    daemon, portal = public_daemon, portal_of(two_targets)
    assert daemon.client("-m", "discovery", "-t", "st", "-p", portal).returncode == 0
    daemon.socket.chmod(0o666)  # as an admin could, to let everyone read
    listed = daemon.client("-m", "node", user="nobody")
    assert listed.returncode == 0, listed.stderr
    assert len(listed.lines) == 2
    denied = daemon.client("-m", "node", "-T", DISK2, "-p", portal, "--login", user="nobody")
    assert denied.returncode == 13
    deleted = daemon.client("-m", "node", "-T", DISK2, "-p", portal, "-o", "delete", user="nobody")
    assert deleted.returncode == 13
    assert len(daemon.client("-m", "node").lines) == 2
    assert '"uid": 65534' in daemon.log() or "uid=65534" in daemon.log()


def test_bad_control_input_gets_errors_and_the_daemon_lives(daemon: Daemon) -> None:
    for garbage in (b"not json\n", b"[1,2]\n", b'{"v":1,"id":7,"op":"no.such"}\n', b"\xff\xfe\n"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(daemon.socket))
            sock.sendall(garbage)
            reply = json.loads(read_line(sock))
            assert reply["ok"] is False and reply["error"]["code"] == "invalid"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(daemon.socket))
        sock.sendall(b'{"v":1,"id":1,"op":"sta')  # and hang up mid-request
    assert daemon.request("status")["ok"] is True


def test_a_corrupt_node_record_is_reported_and_skipped(
    two_targets: TgtDisk, daemon: Daemon
) -> None:
    portal = portal_of(two_targets)
    assert daemon.client("-m", "discovery", "-t", "st", "-p", portal).returncode == 0
    assert daemon.stop() == 0
    records = sorted(daemon.state_dir.glob("nodes/*/*/default"))
    assert len(records) == 2
    records[0].write_text("this is not a record\n\x00\x01garbage\n")
    daemon.start()
    status = daemon.request("status")["result"]
    assert [p["path"] for p in status["problems"]] == [str(records[0])]
    assert len(daemon.client("-m", "node").lines) == 1
    assert records[0].exists()  # reported, never deleted


def test_a_bad_config_line_stops_the_daemon_with_file_line_and_key(tmp_path: Path) -> None:
    daemon = Daemon(
        tmp_path / "bad", config_text="# ok\nnode.conn[0].timeo.noop_out_interval = soon\n"
    )
    daemon.start(wait=False)
    assert daemon.process is not None
    assert daemon.process.wait(20) == 1
    log = daemon.log()
    assert f"{daemon.config}:2" in log and "noop_out_interval" in log


def test_discovery_with_login_then_login_all_and_logout_all(
    two_targets: TgtDisk, daemon: Daemon
) -> None:
    tgt, portal = two_targets, portal_of(two_targets)
    found = daemon.client("-m", "discovery", "-t", "st", "-p", portal, "-l")
    # disk1 wants CHAP that is not configured yet: that one login fails, disk2 succeeds.
    assert found.returncode == 24, found.stdout + found.stderr
    assert (
        f"Login to [iface: default, target: {DISK2}, portal: {iscsiadm_portal(tgt)}] successful."
        in found.lines
    )
    assert [
        s["target"] for s in daemon.client("-m", "session", "--format", "json").json()["sessions"]
    ] == [DISK2]

    assert daemon.client("-m", "node", "-U", "all").returncode == 0
    assert daemon.client("-m", "session").returncode == 21
    tgt.target.unbind_account(tgt.tid, USER)  # now both log in without CHAP
    everything = daemon.client("-m", "node", "-L", "all")
    assert everything.returncode == 0, everything.stdout + everything.stderr
    listed = daemon.client("-m", "session").lines
    assert len(listed) == 2

    automatic = daemon.client("-m", "node", "-L", "automatic")
    assert automatic.returncode == 21  # no node is marked automatic

    sid = int(listed[0].split("[")[1].split("]")[0])
    one = daemon.client("-m", "session", "-r", str(sid))
    assert one.lines == [listed[0]]
    out = daemon.client("-m", "session", "-r", str(sid), "-u")
    assert out.returncode == 0 and out.lines[-1].endswith("successful.")
    assert daemon.client("-m", "session", "-r", str(sid)).returncode in (2, 21)
    assert len(daemon.client("-m", "session").lines) == 1


def test_discovery_delete_removes_the_record_and_its_nodes_unless_one_is_in_use(
    two_targets: TgtDisk, daemon: Daemon
) -> None:
    tgt, portal = two_targets, portal_of(two_targets)
    assert daemon.client("-m", "discovery", "-t", "st", "-p", portal).returncode == 0
    assert daemon.client("-m", "node", "-T", DISK2, "-p", portal, "--login").returncode == 0
    refused = daemon.client("-m", "discovery", "-p", portal, "-o", "delete")
    assert refused.returncode == 15, refused.stdout + refused.stderr  # a session exists
    assert DISK2 in refused.stderr and "log it out first" in refused.stderr
    assert len(daemon.client("-m", "node").lines) == 2  # nothing was deleted
    assert daemon.client("-m", "discovery").lines == [f"{portal} via sendtargets"]

    assert daemon.client("-m", "node", "-T", DISK2, "-p", portal, "--logout").returncode == 0
    deleted = daemon.client("-m", "discovery", "-p", portal, "-o", "delete")
    assert deleted.returncode == 0 and deleted.lines == [], deleted.stdout + deleted.stderr
    assert daemon.client("-m", "discovery").returncode == 21
    assert daemon.client("-m", "node").returncode == 21
    again = daemon.client("-m", "discovery", "-p", portal, "-o", "delete")
    assert again.returncode == 21, again.stdout + again.stderr  # no such record
    assert len(tgt.target.sessions(2)) == 0


def test_sigterm_logs_out_of_every_session_then_exits(two_targets: TgtDisk, daemon: Daemon) -> None:
    tgt, portal = two_targets, portal_of(two_targets)
    assert daemon.client("-m", "discovery", "-t", "st", "-p", portal).returncode == 0
    assert daemon.client("-m", "node", "-T", DISK2, "-p", portal, "--login").returncode == 0
    assert len(tgt.target.sessions(2)) == 1
    assert daemon.stop() == 0
    assert tgt.target.sessions(2) == []  # a logout, not a dropped connection
    assert '"logged out"' in daemon.log()


def test_the_client_without_a_daemon_exits_20(tmp_path: Path) -> None:
    missing = Daemon(tmp_path / "none")  # never started: no socket
    done = missing.client("-m", "session")
    assert done.returncode == 20
    assert "Is the daemon running?" in done.stderr


def test_session_stats_count_pdus_and_octets(two_targets: TgtDisk, daemon: Daemon) -> None:
    portal = portal_of(two_targets)
    assert daemon.client("-m", "discovery", "-t", "st", "-p", portal).returncode == 0
    assert daemon.client("-m", "node", "-T", DISK2, "-p", portal, "--login").returncode == 0
    stats = daemon.client("-m", "session", "-s")
    assert stats.returncode == 0, stats.stderr
    assert (
        stats.lines[0]
        == f"Stats for session [sid: 1, target: {DISK2}, portal: {iscsiadm_portal(two_targets)}]"
    )
    counters = dict(line.strip().split(": ", 1) for line in stats.lines if line.startswith("\t"))
    assert int(counters["scsicmd_pdus"]) >= 3  # REPORT LUNS, INQUIRY, READ CAPACITY at least
    assert int(counters["scsirsp_pdus"]) + int(counters["datain_pdus"]) >= 3
    assert int(counters["rxdata_octets"]) > 0
    assert counters["reconnects"] == "0"


def test_session_state_shows_the_outage_and_the_recovery(tgt: TgtDisk, tmp_path: Path) -> None:
    fast = "node.conn[0].timeo.noop_out_interval = 1\nnode.conn[0].timeo.noop_out_timeout = 1\n"
    daemon = Daemon(tmp_path / "fast", config_text=fast).start()
    try:
        portal = portal_of(tgt)
        assert daemon.client("-m", "discovery", "-t", "st", "-p", portal).returncode == 0
        assert daemon.client("-m", "node", "--login").returncode == 0
        tgt.target.freeze()
        try:
            down = daemon.wait_state(("FAILED", "REOPEN"))
            shown = daemon.client("-m", "session", "-P", "1").stdout
            assert f"iSCSI Session State: {down}" in shown
        finally:
            tgt.target.thaw()
        assert daemon.wait_state(("LOGGED IN",), timeout=30) == "LOGGED IN"
        stats = daemon.client("-m", "session", "-s").stdout
        assert "\treconnects: 1" in stats
    finally:
        daemon.stop()


def test_shutdown_never_logs_out_an_onboot_session(two_targets: TgtDisk, daemon: Daemon) -> None:
    """An onboot node's disk may hold the root file system: SIGTERM leaves it logged in
    (no Logout Request) and logs out the others."""
    tgt, portal = two_targets, portal_of(two_targets)
    assert daemon.client("-m", "discovery", "-t", "st", "-p", portal).returncode == 0
    update = ["-o", "update", "-n", "node.startup", "-v", "onboot"]
    assert daemon.client("-m", "node", "-T", DISK2, "-p", portal, *update).returncode == 0
    tgt.target.unbind_account(tgt.tid, USER)
    assert daemon.client("-m", "node", "-L", "all").returncode == 0
    assert daemon.stop() == 0
    events = [json.loads(line) for line in daemon.log().splitlines() if line.startswith("{")]
    kept = [e for e in events if e.get("event") == "left logged in at shutdown"]
    out = [e for e in events if e.get("event") == "logged out"]
    assert [e["ISCSI_TARGET"] for e in kept] == [DISK2]
    assert [e["ISCSI_TARGET"] for e in out] == [tgt.iqn]


def test_a_logged_in_lun_is_served_over_nbd_until_logout(tgt: TgtDisk, daemon: Daemon) -> None:
    portal = portal_of(tgt)
    assert daemon.client("-m", "discovery", "-t", "st", "-p", portal).returncode == 0
    assert daemon.client("-m", "node", "--login").returncode == 0
    uri = daemon.nbd_uri()
    listed = subprocess.run(
        ["nbdinfo", "--list", "--json", uri], capture_output=True, text=True, timeout=30
    )
    assert listed.returncode == 0, listed.stderr
    exports = json.loads(listed.stdout)["exports"]
    assert [e["export-name"] for e in exports] == [f"{tgt.iqn}/1"]
    assert exports[0]["export-size"] == tgt.size
    detail = daemon.client("-m", "session", "-P", "3").stdout
    assert f"NBD export: {tgt.iqn}/1" in detail
    assert daemon.client("-m", "node", "--logout").returncode == 0
    gone = subprocess.run(
        ["nbdinfo", "--list", "--json", uri], capture_output=True, text=True, timeout=30
    )
    assert gone.returncode == 0 and json.loads(gone.stdout)["exports"] == []


def test_rescan_serves_a_lun_added_on_the_target(
    tgt: TgtDisk, daemon: Daemon, tmp_path: Path
) -> None:
    """iscsiadm -m session -R: a LUN added to the target after the login is scanned and
    served over NBD; -m node -T -p -R rescans that node's session, finding nothing new."""
    portal = portal_of(tgt)
    assert daemon.client("-m", "discovery", "-t", "st", "-p", portal).returncode == 0
    assert daemon.client("-m", "node", "--login").returncode == 0
    extra = tmp_path / "lun2.img"
    with open(extra, "wb") as file:
        file.truncate(8 << 20)
    tgt.target.add_lun(tgt.tid, 2, extra)

    rescan = daemon.client("-m", "session", "-R")
    assert rescan.returncode == 0, rescan.stdout + rescan.stderr
    sid = daemon.client("-m", "session", "--format", "json").json()["sessions"][0]["sid"]
    tag = f"[sid: {sid}, target: {tgt.iqn}, portal: {iscsiadm_portal(tgt)}]"
    assert rescan.lines == [f"Rescanning session {tag}", "LUN 2: added"]
    listed = subprocess.run(
        ["nbdinfo", "--list", "--json", daemon.nbd_uri()], capture_output=True, text=True,
        timeout=30,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    sizes = {e["export-name"]: e["export-size"] for e in json.loads(listed.stdout)["exports"]}
    assert sizes == {f"{tgt.iqn}/1": tgt.size, f"{tgt.iqn}/2": 8 << 20}

    again = daemon.client("-m", "node", "-T", tgt.iqn, "-p", portal, "-R")
    assert again.returncode == 0 and again.lines == [f"Rescanning session {tag}"]
    assert daemon.client("-m", "node", "--logout").returncode == 0
    assert daemon.client("-m", "session", "-R").returncode == 21  # no session to rescan


def test_login_or_logout_of_all_with_a_named_node_is_refused(
    two_targets: TgtDisk, daemon: Daemon
) -> None:
    """`all` means every node; a request that also names one is refused by the client (as
    iscsiadm refuses -L/-U with -T or -p) and by the daemon for raw requests, instead of
    acting on every node and ignoring the name."""
    tgt, portal = two_targets, portal_of(two_targets)
    tgt.target.unbind_account(tgt.tid, USER)  # both log in without CHAP
    assert daemon.client("-m", "discovery", "-t", "st", "-p", portal).returncode == 0

    # Before, the daemon ignored the target and logged in to every node.
    refused = daemon.request("node.login", {"all": "all", "target": DISK2})
    assert refused["ok"] is False
    assert (refused["error"]["code"], refused["error"]["exit"]) == ("invalid", 7)
    assert refused["error"]["message"].startswith(
        "node.login: argument 'all' cannot be used with 'target': "
    )
    assert daemon.request("session.list")["result"]["sessions"] == []
    assert tgt.sessions() == [] and tgt.target.sessions(2) == []
    typed = daemon.client("-m", "node", "-L", "all", "-T", DISK2)
    assert typed.returncode == 7
    assert "pyiscsiadm: error: -L all cannot be used with -T: " in typed.stderr

    assert daemon.client("-m", "node", "-T", DISK2, "-p", portal, "--login").returncode == 0
    # Before, the daemon ignored the portal and logged out of every session.
    refused = daemon.request("node.logout", {"all": "all", "portal": portal})
    assert refused["ok"] is False and refused["error"]["exit"] == 7
    assert "'all' cannot be used with 'portal'" in refused["error"]["message"]
    typed = daemon.client("-m", "node", "-U", "all", "-p", portal)
    assert typed.returncode == 7 and "-U all cannot be used with -p: " in typed.stderr
    assert [s["target"] for s in daemon.request("session.list")["result"]["sessions"]] == [DISK2]
    assert len(tgt.target.sessions(2)) == 1


BAD_NAME = "not-an-iscsi-name"  # tgtd takes it; RFC 7143 section 4.2.7 does not


def test_discovery_skips_a_target_whose_name_is_not_an_iscsi_name(
    two_targets: TgtDisk, daemon: Daemon, tmp_path: Path
) -> None:
    """Before, one bad TargetName in the SendTargets reply failed the whole discovery."""
    tgt, portal = two_targets, portal_of(two_targets)
    tgt.target.add_disk(3, BAD_NAME, tmp_path / "disk3.img", 16 << 20)
    found = daemon.client("-m", "discovery", "-t", "st", "-p", portal, "-l")
    assert sorted(line for line in found.lines if not line.startswith("Log")) == sorted(
        [f"{portal},1 {tgt.iqn}", f"{portal},1 {DISK2}"]
    )
    [skipped] = found.stderr.splitlines()[:1]
    assert re.fullmatch(
        r"pyiscsiadm: SendTargets reply: TargetName #[123] skipped: "
        r"not an iSCSI name: it must start with iqn\., eui\. or naa\.",
        skipped,
    ), found.stderr
    assert BAD_NAME not in found.stderr  # which entry, never the value the target sent
    # disk1 wants CHAP that is not configured: that login fails; disk2's succeeds.
    assert found.returncode == 24, found.stdout + found.stderr
    assert (
        f"Login to [iface: default, target: {DISK2}, portal: {iscsiadm_portal(tgt)}] successful."
        in found.lines
    )
    assert sorted(daemon.client("-m", "node").lines) == sorted(
        [f"{portal},1 {tgt.iqn}", f"{portal},1 {DISK2}"]
    )
    assert tgt.target.sessions(3) == []
    [event] = daemon.events("discovery entry skipped")
    assert (event["key"], event["ISCSI_TARGET"]) == ("TargetName", None)
    assert BAD_NAME not in daemon.log()

    as_json = daemon.client("-m", "discovery", "-t", "st", "-p", portal, "--format", "json")
    assert as_json.returncode == 0
    assert [(s["key"], s["target"]) for s in as_json.json()["skipped"]] == [("TargetName", None)]


def test_a_portal_group_in_p_is_recorded_and_picks_its_record(daemon: Daemon) -> None:
    """-p IP:PORT,TPGT, as iscsiadm: -o new records that group (it was dropped, and the node
    recorded with group 1), and the other operations pick the record of that group. -o new
    of a node already there succeeds and leaves it as it is (it exited 7)."""
    node = ("-m", "node", "-T", "iqn.2026-11.test.pyiscsid:grouped")
    for group in ("7", "8"):
        made = daemon.client(*node, "-p", f"127.0.0.1:3999,{group}", "-o", "new")
        assert made.returncode == 0, made.stdout + made.stderr
    listed = daemon.client("-m", "node")
    assert sorted(listed.lines) == [
        "127.0.0.1:3999,7 iqn.2026-11.test.pyiscsid:grouped",
        "127.0.0.1:3999,8 iqn.2026-11.test.pyiscsid:grouped",
    ]
    again = daemon.client(*node, "-p", "127.0.0.1:3999,7", "-o", "new")  # scripts run again
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.lines == [
        "iSCSI node [tcp:[hw=,ip=,net_if=,iscsi_if=default] 127.0.0.1,3999,7 "
        "iqn.2026-11.test.pyiscsid:grouped] exists: left as it is (change it with -o update)"
    ]
    deleted = daemon.client(*node, "-p", "127.0.0.1:3999,7", "-o", "delete")
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    assert daemon.client("-m", "node").lines == [
        "127.0.0.1:3999,8 iqn.2026-11.test.pyiscsid:grouped"
    ]
