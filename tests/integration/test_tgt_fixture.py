"""The tgtd fixture works: proven with libiscsi's tools (and qemu-io over libiscsi) as initiator."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from pyiscsid.daemon.localtarget import (
    TgtError,
    TgtTarget,
    missing_tools,
    parse_conn_show,
    parse_target_show,
    process_state,
)

from tests.conftest import DISK_IQN, TgtDisk, TgtFactory

TIMEOUT = 20.0
PERF_INITIATOR = "iqn.2026-11.test.pyiscsid:perf"
LIBISCSI_TOOLS = ("iscsi-inq", "iscsi-ls", "iscsi-readcapacity16", "iscsi-perf")


@pytest.fixture(autouse=True)
def _libiscsi_tools() -> None:
    missing = missing_tools(*LIBISCSI_TOOLS)
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: `make test` installs libiscsi-bin")


def run(*argv: str, timeout: float = TIMEOUT, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **env} if env else None,
    )


def chap_url(disk: TgtDisk, user: str, password: str, query: str = "") -> str:
    return f"iscsi://{user}%{password}@{disk.portal}/{disk.iqn}/{disk.lun}{query}"


@contextmanager
def background(*argv: str) -> Iterator[subprocess.Popen[bytes]]:
    """A long-running initiator (iscsi-perf) that is always killed afterwards."""
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=TIMEOUT)
        if proc.stderr is not None:
            proc.stderr.close()


def perf(url: str) -> list[str]:
    """iscsi-perf: one session doing 1 sequential read at a time until killed."""
    return ["iscsi-perf", "-i", PERF_INITIATOR, "-m", "1", url]


def qemu_io(url: str, command: str, read_only: bool = True) -> subprocess.CompletedProcess[str]:
    argv = ["qemu-io", "-f", "raw", "-c", command, url]
    if read_only:
        argv.insert(1, "-r")
    if missing_tools("qemu-io"):
        pytest.fail("qemu-io missing: `make test` installs qemu-utils")
    r = run(*argv)
    if "Unknown protocol" in r.stderr or "Unknown driver" in r.stderr:
        pytest.fail("qemu-io lacks its iSCSI driver: install qemu-block-extra")
    return r


def tgtd_processes(control: int) -> list[int]:
    """PIDs of live (not zombie) processes whose command line is ``tgtd ... -C <control>``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if stat[stat.rindex(")") + 2] == "Z" or not argv or not argv[0].endswith(b"tgtd"):
            continue
        for i, arg in enumerate(argv[:-1]):
            if arg in (b"-C", b"--control-port") and argv[i + 1] == str(control).encode():
                pids.append(int(entry.name))
    return pids


def port_refuses(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port)) != 0


# ---------------------------------------------------------------------- parsers (no tgtd)

TARGET_SHOW = """\
Target 1: iqn.2026-11.test.pyiscsid:disk1
    System information:
        Driver: iscsi
        State: ready
    I_T nexus information:
        I_T nexus: 4
            Initiator: iqn.2010-11.libiscsi:iscsi-perf alias: none
            Connection: 0
                IP Address: 127.0.0.1
        I_T nexus: 5
            Initiator: iqn.1993-08.org.debian:01:abc alias: host1
            Connection: 0
                IP Address: 127.0.0.1
    LUN information:
        LUN: 0
            Type: controller
    Account information:
        alice
    ACL information:
        ALL
Target 2: iqn.2026-11.test.pyiscsid:disk2
    System information:
        Driver: iscsi
        State: ready
    I_T nexus information:
    LUN information:
"""

CONN_SHOW = """\
Session: 6
    Connection: 0
        Initiator: iqn.2010-11.libiscsi:iscsi-perf
        IP Address: 127.0.0.1
Session: 5
    Connection: 0
        Initiator: iqn.2010-11.libiscsi:iscsi-perf
        IP Address: 127.0.0.1
"""


def test_parse_target_show() -> None:
    parsed = parse_target_show(TARGET_SHOW)
    assert sorted(parsed) == [1, 2]
    iqn, sessions = parsed[1]
    assert iqn == "iqn.2026-11.test.pyiscsid:disk1"
    assert [(s.sid, s.initiator, s.alias) for s in sessions] == [
        (4, "iqn.2010-11.libiscsi:iscsi-perf", None),
        (5, "iqn.1993-08.org.debian:01:abc", "host1"),
    ]
    assert [(c.sid, c.cid, c.address) for c in sessions[1].connections] == [(5, 0, "127.0.0.1")]
    assert parsed[2] == ("iqn.2026-11.test.pyiscsid:disk2", [])


def test_parse_conn_show() -> None:
    conns = parse_conn_show(CONN_SHOW)
    assert [(c.sid, c.cid, c.initiator, c.address) for c in conns] == [
        (6, 0, "iqn.2010-11.libiscsi:iscsi-perf", "127.0.0.1"),
        (5, 0, "iqn.2010-11.libiscsi:iscsi-perf", "127.0.0.1"),
    ]
    assert parse_conn_show("") == []


# ---------------------------------------------------------------------------- tgtd


@pytest.mark.tgtd
def test_target_answers_inquiry_and_listing(tgt: TgtDisk) -> None:
    r = run("iscsi-inq", tgt.url)
    assert r.returncode == 0, r.stderr
    assert "Peripheral Device Type:DIRECT_ACCESS" in r.stdout
    assert "Vendor:IET" in r.stdout

    r = run("iscsi-ls", "-s", f"iscsi://{tgt.portal}")
    assert r.returncode == 0, r.stderr
    assert f"Target:{DISK_IQN} Portal:{tgt.portal},1" in r.stdout
    assert re.search(r"^Lun:1\s+Type:DIRECT_ACCESS", r.stdout, re.M), r.stdout

    r = run("iscsi-readcapacity16", tgt.url)
    assert r.returncode == 0, r.stderr
    assert f"Total size:{tgt.size}" in r.stdout
    # The backing file is sparse: 64 MiB long, (almost) nothing allocated.
    assert tgt.backing.stat().st_size == tgt.size
    assert tgt.backing.stat().st_blocks * 512 < 1 << 20


@pytest.mark.tgtd
def test_listens_only_on_its_loopback_portal(tgt: TgtDisk) -> None:
    r = tgt.target.tgtadm("--op", "show", "--mode", "portal")
    assert r.stdout.split() == ["Portal:", f"{tgt.portal},1"]
    assert tgt.target.targets() == {1: DISK_IQN}


@pytest.mark.tgtd
def test_chap_one_way(tgt: TgtDisk) -> None:
    tgt.target.add_account("alice", "alicesecret12")
    tgt.target.bind_account(tgt.tid, "alice")

    r = run("iscsi-inq", tgt.url)
    assert r.returncode != 0
    assert "Authentication failure" in r.stderr

    r = run("iscsi-inq", chap_url(tgt, "alice", "alicesecret12"))
    assert r.returncode == 0, r.stderr

    r = run("iscsi-inq", chap_url(tgt, "alice", "wrongsecret12"))
    assert r.returncode != 0

    # libiscsi also takes the credentials from the environment.
    r = run(
        "iscsi-inq",
        tgt.url,
        LIBISCSI_CHAP_USERNAME="alice",
        LIBISCSI_CHAP_PASSWORD="alicesecret12",
    )
    assert r.returncode == 0, r.stderr


@pytest.mark.tgtd
def test_chap_mutual(tgt: TgtDisk) -> None:
    tgt.target.add_account("alice", "alicesecret12")
    tgt.target.add_account("target1", "targetsecret1")
    tgt.target.bind_account(tgt.tid, "alice")
    tgt.target.bind_account(tgt.tid, "target1", outgoing=True)
    shown = tgt.target.tgtadm("--op", "show", "--mode", "target").stdout
    assert "target1 (outgoing)" in shown

    good = "?target_user=target1&target_password=targetsecret1"
    r = run("iscsi-inq", chap_url(tgt, "alice", "alicesecret12", good))
    assert r.returncode == 0, r.stderr

    bad = "?target_user=target1&target_password=notthesecret1"
    r = run("iscsi-inq", chap_url(tgt, "alice", "alicesecret12", bad))
    assert r.returncode != 0
    assert "Invalid CHAP_R" in r.stderr


@pytest.mark.tgtd
def test_target_params(tgt: TgtDisk) -> None:
    before = tgt.target.target_params(tgt.tid)
    assert before["HeaderDigest"] == "None"
    assert before["MaxRecvDataSegmentLength"] == "8192"
    tgt.target.set_target_param(tgt.tid, "HeaderDigest", "CRC32C")
    tgt.target.set_target_param(tgt.tid, "DataDigest", "CRC32C")
    tgt.target.set_target_param(tgt.tid, "MaxRecvDataSegmentLength", 65536)
    after = tgt.target.target_params(tgt.tid)
    assert after["HeaderDigest"] == "CRC32C"
    assert after["DataDigest"] == "CRC32C"
    assert after["MaxRecvDataSegmentLength"] == "65536"
    with pytest.raises(TgtError, match="status 22"):
        tgt.target.set_target_param(tgt.tid, "NoSuchKey", "1")

    r = run("iscsi-inq", tgt.url + "?header_digest=crc32c")
    assert r.returncode == 0, r.stderr


@pytest.mark.tgtd
def test_sessions_and_drop_connection(tgt: TgtDisk) -> None:
    assert tgt.sessions() == []
    assert tgt.connections() == []
    with background(*perf(tgt.url)) as proc:
        [session] = tgt.target.wait_for_sessions(tgt.tid, lambda s: len(s) == 1)
        assert session.initiator == PERF_INITIATOR
        assert [(c.sid, c.cid, c.address) for c in session.connections] == [
            (session.sid, 0, "127.0.0.1")
        ]
        assert tgt.connections() == list(session.connections)

        tgt.target.drop_connection(tgt.tid, session.sid)
        # At ERL 0 the session dies with its only connection. libiscsi logs in again as a
        # NEW session (new ISID: its issue 329), so the old sid disappears for good.
        tgt.target.wait_for_sessions(
            tgt.tid, lambda s: session.sid not in {x.sid for x in s}, message="old sid gone"
        )
        assert proc.poll() is None or proc.returncode == 0

    with pytest.raises(TgtError, match="status 22"):
        tgt.target.drop_connection(tgt.tid, 9999)


@pytest.mark.tgtd
def test_freeze_and_thaw(tgt: TgtDisk) -> None:
    tgt.target.freeze()
    assert tgt.target.frozen
    with pytest.raises(TgtError, match="frozen"):
        tgt.target.sessions(tgt.tid)
    # The kernel still accepts the TCP connection; the login waits for tgtd.
    inq = subprocess.Popen(
        ["iscsi-inq", tgt.url], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True
    )
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            inq.wait(timeout=0.5)
        tgt.target.thaw()
        out, _ = inq.communicate(timeout=TIMEOUT)
        assert inq.returncode == 0
        assert "DIRECT_ACCESS" in out
    finally:
        if inq.poll() is None:
            inq.kill()
            inq.wait(timeout=TIMEOUT)
    assert process_state(tgt.target.pid or 0) in ("R", "S")  # running again
    assert tgt.sessions() == []


@pytest.mark.tgtd
def test_kill_and_restart_keep_data_and_configuration(tgt: TgtDisk) -> None:
    target = tgt.target
    target.set_target_param(tgt.tid, "HeaderDigest", "CRC32C")
    target.add_account("alice", "alicesecret12")
    target.bind_account(tgt.tid, "alice")
    url = chap_url(tgt, "alice", "alicesecret12")

    # Written straight into the backing file, read over iSCSI.
    with tgt.backing.open("r+b") as f:
        f.seek(1 << 20)
        f.write(b"\xab" * 4096)
    r = qemu_io(url, "read -P 0xab 1M 4k")
    assert r.returncode == 0, r.stdout + r.stderr
    r = qemu_io(url, "read -P 0xcd 1M 4k")
    assert "Pattern verification failed" in r.stdout

    old_pid, port, control = target.pid, target.port, target.control
    target.kill()
    assert not target.running
    assert port_refuses(port)
    r = run("iscsi-inq", url)
    assert r.returncode != 0

    target.restart()
    assert target.pid != old_pid
    assert (target.port, target.control) == (port, control)
    assert target.targets() == {1: DISK_IQN}
    assert target.target_params(tgt.tid)["HeaderDigest"] == "CRC32C"
    assert run("iscsi-inq", tgt.url).returncode != 0  # CHAP binding came back too

    r = qemu_io(url, "read -P 0xab 1M 4k")
    assert r.returncode == 0, r.stdout + r.stderr
    # Written over iSCSI, read straight from the file.
    r = qemu_io(url, "write -P 0xcd 2M 4k", read_only=False)
    assert r.returncode == 0, r.stdout + r.stderr
    with tgt.backing.open("rb") as f:
        f.seek(2 << 20)
        assert f.read(4096) == b"\xcd" * 4096

    # restart() of a live tgtd is "crash and come back".
    target.restart()
    assert run("iscsi-inq", url).returncode == 0


@pytest.mark.tgtd
@pytest.mark.parametrize("state", ["idle", "busy", "frozen", "killed", "stopped-twice"])
def test_stop_leaves_nothing_behind(tgt_factory: TgtFactory, tmp_path: Path, state: str) -> None:
    target = tgt_factory()
    target.add_disk(1, DISK_IQN, tmp_path / "d.img", 8 << 20)
    control, port, pid = target.control, target.port, target.pid
    assert pid is not None
    sock = Path(f"/var/run/tgtd/socket.{control}")
    assert sock.exists() and Path(f"{sock}.lock").exists()
    assert tgtd_processes(control) == [pid]

    with background(*perf(target.url(DISK_IQN, 1))):
        if state == "busy":
            target.wait_for_sessions(1, lambda s: len(s) == 1)
        elif state == "frozen":
            target.freeze()
        elif state == "killed":
            target.kill()
            assert sock.exists()  # tgtd never cleans up its sockets itself
        t0 = time.monotonic()
        target.stop()
        elapsed = time.monotonic() - t0
        if state == "stopped-twice":
            target.stop()

    assert elapsed < 3
    assert not target.running
    # Graceful (tgtadm --op delete --mode system) unless it was SIGKILLed on purpose.
    assert target.returncode == (-9 if state == "killed" else 0)
    assert tgtd_processes(control) == []
    assert not sock.exists()
    assert not Path(f"{sock}.lock").exists()
    assert port_refuses(port)


@pytest.mark.tgtd
def test_port_clash_is_detected(tmp_path: Path) -> None:
    # tgtd does not fail when its portal is taken: it listens on 0.0.0.0:3260 instead.
    with socket.socket() as blocker:
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        target = TgtTarget(tmp_path, port=port)
        with pytest.raises(TgtError, match=r"not on 127\.0\.0\.1"):
            target.start()
        assert not target.running
        assert "unable to bind server socket" in target.log_text()
        assert tgtd_processes(target.control) == []


@pytest.mark.tgtd
def test_control_number_clash_is_detected(tgt_factory: TgtFactory, tmp_path: Path) -> None:
    first = tgt_factory()
    second = TgtTarget(tmp_path / "second", control=first.control)
    with pytest.raises(TgtError, match="exited with status 1"):
        second.start()
    assert "another tgtd is using" in second.log_text()
    second.stop()
    # The loser must not remove the winner's socket files.
    assert Path(f"/var/run/tgtd/socket.{first.control}").exists()
    assert first.targets() == {}


@pytest.mark.tgtd
def test_several_targets_side_by_side(tgt_factory: TgtFactory, tmp_path: Path) -> None:
    a = tgt_factory()
    b = tgt_factory(nop_interval=1, nop_count=2)
    assert (a.control, a.port) != (b.control, b.port)
    b.add_disk(1, DISK_IQN, tmp_path / "b.img", 1 << 20)
    assert b.target_params(1)["nop_interval"] == "1"
    assert b.target_params(1)["nop_count"] == "2"
    assert a.targets() == {}
    assert run("iscsi-inq", b.url(DISK_IQN, 1)).returncode == 0
