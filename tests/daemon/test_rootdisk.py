"""Finding the NBD device under / from mountinfo and sysfs trees laid out as Linux does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import structlog
from pyiscsid.daemon.config import DaemonConfig
from pyiscsid.daemon.nbd import NbdClientInfo
from pyiscsid.daemon.rootdisk import (
    NbdDevice,
    RootDiskError,
    nbd_devices_holding,
    parse_mountinfo,
)
from pyiscsid.daemon.shutdown import ROOT, root_sessions

from tests.sysfs_tree import SCSI, Sysfs


def mountinfo(path: Path, *lines: str) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


PROC = "22 29 0:5 / /proc rw,nosuid - proc proc rw"


def root_line(number: str, source: str, fstype: str = "ext4", mount_id: int = 29) -> str:
    return f"{mount_id} 1 {number} / / rw,relatime shared:1 - {fstype} {source} rw"


def test_root_on_an_nbd_partition(tmp_path: Path) -> None:
    sysfs = Sysfs(tmp_path / "sys")
    nbd0 = sysfs.disk("nbd0", "43:0", pid=4242)
    sysfs.partition(nbd0, "nbd0p1", "43:1")
    sysfs.disk("sda", "8:0", parent=SCSI)
    info = mountinfo(tmp_path / "mountinfo", PROC, root_line("43:1", "/dev/nbd0p1"))
    assert nbd_devices_holding(mountinfo=info, sysfs=sysfs.root) == [NbdDevice("nbd0", 4242)]


def test_root_on_lvm_over_luks_over_two_nbd_disks(tmp_path: Path) -> None:
    sysfs = Sysfs(tmp_path / "sys")
    nbd0 = sysfs.disk("nbd0", "43:0", pid=10)
    nbd1 = sysfs.disk("nbd1", "43:32", pid=11)
    part = sysfs.partition(nbd1, "nbd1p2", "43:34")
    crypt = sysfs.mapped("dm-0", "254:0", nbd0, part)
    sysfs.mapped("dm-1", "254:1", crypt)
    info = mountinfo(tmp_path / "mountinfo", root_line("254:1", "/dev/mapper/vg-root"))
    assert nbd_devices_holding(mountinfo=info, sysfs=sysfs.root) == [
        NbdDevice("nbd0", 10),
        NbdDevice("nbd1", 11),
    ]


def test_root_on_a_local_disk_is_not_ours(tmp_path: Path) -> None:
    sysfs = Sysfs(tmp_path / "sys")
    sda = sysfs.disk("sda", "8:0", parent=SCSI)
    sysfs.partition(sda, "sda1", "8:1")
    sysfs.disk("nbd0", "43:0", pid=10)
    info = mountinfo(tmp_path / "mountinfo", root_line("8:1", "/dev/sda1"))
    assert nbd_devices_holding(mountinfo=info, sysfs=sysfs.root) == []


def test_btrfs_reports_an_anonymous_device_so_the_source_names_it(tmp_path: Path) -> None:
    sysfs = Sysfs(tmp_path / "sys")
    nbd0 = sysfs.disk("nbd0", "43:0")  # not connected: no pid file
    sysfs.partition(nbd0, "nbd0p2", "43:2")
    info = mountinfo(tmp_path / "mountinfo", root_line("0:27", "/dev/nbd0p2", "btrfs"))
    assert nbd_devices_holding(mountinfo=info, sysfs=sysfs.root) == [NbdDevice("nbd0", None)]


def test_the_last_mount_on_slash_is_the_visible_one(tmp_path: Path) -> None:
    sysfs = Sysfs(tmp_path / "sys")
    sysfs.disk("sda", "8:0", parent=SCSI)
    sysfs.disk("nbd0", "43:0", pid=7)
    info = mountinfo(
        tmp_path / "mountinfo",
        root_line("8:0", "/dev/sda", mount_id=1),  # the initrd's root, over-mounted
        root_line("43:0", "/dev/nbd0", mount_id=2),
    )
    assert nbd_devices_holding(mountinfo=info, sysfs=sysfs.root) == [NbdDevice("nbd0", 7)]


def test_tmpfs_or_overlay_root_has_no_disk(tmp_path: Path) -> None:
    info = mountinfo(tmp_path / "mountinfo", root_line("0:31", "overlay", "overlay"))
    assert nbd_devices_holding(mountinfo=info, sysfs=tmp_path / "sys") == []


def test_escaped_mount_points_are_decoded(tmp_path: Path) -> None:
    (mount,) = parse_mountinfo("30 29 8:2 / /mnt/my\\040disk rw - ext4 /dev/sda2 rw")
    assert mount.mount_point == "/mnt/my disk"
    assert mount.device == (8, 2)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("29 1 8:1 / / rw shared:1 ext4 /dev/sda1 rw", "mountinfo:1: not a mountinfo line"),
        ("29 1 eight / / rw - ext4 /dev/sda1 rw", "mountinfo:1: not a mountinfo line"),
        (PROC, "lists nothing mounted on /"),
    ],
)
def test_a_broken_mount_table_names_the_line(tmp_path: Path, text: str, expected: str) -> None:
    info = mountinfo(tmp_path / "mountinfo", text)
    with pytest.raises(RootDiskError, match=expected):
        nbd_devices_holding(mountinfo=info, sysfs=tmp_path / "sys")


def test_an_unreadable_mount_table_says_which(tmp_path: Path) -> None:
    with pytest.raises(RootDiskError, match=r"cannot read .*missing"):
        nbd_devices_holding(mountinfo=tmp_path / "missing", sysfs=tmp_path / "sys")


def test_a_slave_loop_is_an_error_not_a_hang(tmp_path: Path) -> None:
    sysfs = Sysfs(tmp_path / "sys")
    a = sysfs.disk("dm-0", "254:0")
    b = sysfs.mapped("dm-1", "254:1", a)
    (a / "slaves" / "dm-1").symlink_to(os.path.relpath(b, a / "slaves"))
    info = mountinfo(tmp_path / "mountinfo", root_line("254:1", "/dev/dm-1"))
    with pytest.raises(RootDiskError, match="deeper than"):
        nbd_devices_holding(mountinfo=info, sysfs=sysfs.root)


def test_the_real_root_of_this_machine_can_be_read() -> None:
    """Against the real /proc and /sys: an answer (this machine's / is not on NBD)."""
    assert all(device.name.startswith("nbd") for device in nbd_devices_holding())


def test_spare_from_final_kill_makes_argv0_start_with_at() -> None:
    """systemd-shutdown reads /proc/PID/cmdline; check it in a process of its own."""
    script = (
        "from pyiscsid.daemon.rootdisk import spare_from_final_kill\n"
        "assert spare_from_final_kill()\n"
        "print(open('/proc/self/cmdline', 'rb').read().split(b'\\0')[0].decode())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=True
    )
    assert done.stdout.startswith("@")
    assert done.stdout.strip()[1:] == sys.executable[1:]


def test_mount_points_in_any_script_with_escapes_do_not_break_the_table(tmp_path: Path) -> None:
    """A USB stick at "/media/ivan/Новый том" (space escaped, Cyrillic not), and a name with
    U+2028, which splitlines() would have cut the line at."""
    new, volume = "\u041d\u043e\u0432\u044b\u0439", "\u0442\u043e\u043c"  # Новый том
    lines = [
        f"40 29 8:17 / /media/ivan/{new}\\040{volume} rw - vfat /dev/sdb1 rw",
        "41 29 8:18 / /media/€\u2028x rw - vfat /dev/sdb2 rw",
        "29 1 8:1 / / rw - ext4 /dev/sda1 rw",
    ]
    mounts = parse_mountinfo("\n".join(lines))
    assert [m.mount_point for m in mounts] == [
        f"/media/ivan/{new} {volume}",
        "/media/€\u2028x",
        "/",
    ]
    sysfs = Sysfs(tmp_path / "sys")
    sysfs.partition(sysfs.disk("sda", "8:0", parent=SCSI), "sda1", "8:1")
    info = mountinfo(tmp_path / "mountinfo", *lines)
    assert nbd_devices_holding(mountinfo=info, sysfs=sysfs.root) == []


def test_btrfs_on_device_mapper_is_found_by_its_name_when_dev_is_private(tmp_path: Path) -> None:
    """btrfs reports device 0:N, and under PrivateDevices=yes /dev/mapper/NAME does not
    exist: sysfs's dm/name still leads to the device, then down to the NBD disk."""
    sysfs = Sysfs(tmp_path / "sys")
    nbd0 = sysfs.disk("nbd0", "43:0", pid=99)
    crypt = sysfs.mapped("dm-0", "254:0", sysfs.partition(nbd0, "nbd0p2", "43:2"))
    (crypt / "dm").mkdir()
    (crypt / "dm" / "name").write_text("luks-root\n")
    info = mountinfo(tmp_path / "mountinfo", root_line("0:34", "/dev/mapper/luks-root", "btrfs"))
    assert nbd_devices_holding(mountinfo=info, sysfs=sysfs.root) == [NbdDevice("nbd0", 99)]


def test_a_source_device_that_cannot_be_found_is_an_error_not_a_local_disk(
    tmp_path: Path,
) -> None:
    """Saying "not on NBD" for a device we could not find would log out the root disk."""
    info = mountinfo(tmp_path / "mountinfo", root_line("0:34", "/dev/mapper/gone", "btrfs"))
    with pytest.raises(RootDiskError, match=r"/dev/mapper/gone .* is not in"):
        nbd_devices_holding(mountinfo=info, sysfs=Sysfs(tmp_path / "sys").root)


def test_the_sessions_kept_are_those_under_slash_and_usr_by_their_nbd_clients(
    tmp_path: Path,
) -> None:
    """root_sessions: / on nbd0 (attached by pid 5), a separate /usr on nbd1 (pid 7); the
    daemon's NBD peers 5 and 7 opened exports a and b; c is attached but holds neither."""
    sysfs = Sysfs(tmp_path / "sys")
    sysfs.disk("nbd0", "43:0", pid=5)
    sysfs.disk("nbd1", "43:32", pid=7)
    sysfs.disk("sda", "8:0", parent=SCSI)
    info = mountinfo(
        tmp_path / "mountinfo",
        root_line("43:0", "/dev/nbd0"),
        "30 29 43:32 / /usr rw - ext4 /dev/nbd1 rw",
    )
    config = DaemonConfig(mountinfo_path=info, sysfs_path=sysfs.root)
    sessions = [_session(1, "a"), _session(2, "b"), _session(3, "c")]
    clients = [NbdClientInfo(5, 0, "a"), NbdClientInfo(7, 0, "b"), NbdClientInfo(9, 0, "c")]
    log = structlog.get_logger("test")
    assert root_sessions(sessions, clients, config, log) == {
        1: "its disk holds the root file system",
        2: "its disk holds /usr",
    }
    # Without a separate /usr mount, only / counts; with / elsewhere, nothing does.
    info.write_text(root_line("43:0", "/dev/nbd0") + "\n")
    assert root_sessions(sessions, clients, config, log) == {1: ROOT}
    info.write_text(root_line("8:0", "/dev/sda") + "\n")
    assert root_sessions(sessions, clients, config, log) == {}


def _session(sid: int, export: str) -> Any:
    """What root_sessions reads of a Session: its SID and exports."""
    return SimpleNamespace(sid=sid, exports={1: export})


def test_one_unmatched_disk_under_slash_keeps_every_disk_in_use(tmp_path: Path) -> None:
    """/ on LVM over nbd0 and nbd1: nbd0 was attached by our NBD peer 5 (export a), nbd1 by
    an nbd-client that forked (pid 99, none of our peers; ours for export b is 7). The match
    of nbd0 says nothing of nbd1, so b may be half of / and stays too, as does c, in use
    but under nothing we can see; d, exported but with no client, may go."""
    sysfs = Sysfs(tmp_path / "sys")
    nbd0 = sysfs.disk("nbd0", "43:0", pid=5)
    nbd1 = sysfs.disk("nbd1", "43:32", pid=99)
    sysfs.mapped("dm-0", "254:0", nbd0, nbd1)
    info = mountinfo(tmp_path / "mountinfo", root_line("254:0", "/dev/mapper/vg-root"))
    config = DaemonConfig(mountinfo_path=info, sysfs_path=sysfs.root)
    sessions = [_session(1, "a"), _session(2, "b"), _session(3, "c"), _session(4, "d")]
    clients = [NbdClientInfo(5, 0, "a"), NbdClientInfo(7, 0, "b"), NbdClientInfo(9, 0, "c")]
    kept = root_sessions(sessions, clients, config, structlog.get_logger("test"))
    assert sorted(kept) == [1, 2, 3]
    assert kept[1] == ROOT
    assert "/dev/nbd1" in kept[2] and "/dev/nbd0" not in kept[2]
    # The same hole through /usr: / matched on nbd0, /usr on nbd1 by a stranger.
    info.write_text(
        root_line("43:0", "/dev/nbd0") + "\n30 29 43:32 / /usr rw - ext4 /dev/nbd1 rw\n"
    )
    assert sorted(root_sessions(sessions, clients, config, structlog.get_logger("test"))) == [
        1,
        2,
        3,
    ]


def test_a_disk_matched_by_a_peer_still_negotiating_is_not_a_match(tmp_path: Path) -> None:
    """Peer 5 attached nbd0 (/) but has opened no export yet: which export holds / is not
    known, so every disk in use stays."""
    sysfs = Sysfs(tmp_path / "sys")
    sysfs.disk("nbd0", "43:0", pid=5)
    info = mountinfo(tmp_path / "mountinfo", root_line("43:0", "/dev/nbd0"))
    config = DaemonConfig(mountinfo_path=info, sysfs_path=sysfs.root)
    sessions = [_session(1, "a"), _session(2, "b")]
    clients = [NbdClientInfo(5, 0, None), NbdClientInfo(7, 0, "a")]
    assert sorted(root_sessions(sessions, clients, config, structlog.get_logger("test"))) == [1]
