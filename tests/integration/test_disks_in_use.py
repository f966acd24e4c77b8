"""The daemon never logs out of, nor stops serving, the disk that holds /: not at shutdown,
not on request; nor, with iscsid.safe_logout, any disk an NBD client is using; and
``-U all`` leaves onboot sessions alone, as iscsiadm's --logoutall does.

Real parts: the pyiscsid daemon process, a tgtd with two targets, and qemu-io holding one
export open on the daemon's NBD socket. What cannot be real here is a kernel NBD device
under this machine's root file system, so the daemon reads a mountinfo and a sysfs tree
built in the test, laid out as Linux lays them out (see tests/daemon/test_rootdisk.py),
in which ``/`` is on /dev/nbd0p1 and /sys/block/nbd0/pid names the qemu-io process.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TgtDisk
from tests.daemon_process import Daemon
from tests.nbd_clients import WAIT, QemuIo
from tests.sysfs_tree import Sysfs

pytestmark = [
    pytest.mark.tgtd,
    pytest.mark.skipif(not shutil.which("qemu-io"), reason="needs qemu-utils"),
]

OTHER_TID, OTHER_IQN = 2, "iqn.2026-11.test.pyiscsid:data"


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    try:
        yield started
    finally:
        for daemon in started:
            daemon.stop(signal.SIGKILL)


def fake_root(tmp_path: Path, root_device: str = "43:1") -> tuple[str, Path]:
    """A sysfs with nbd0 and sda, a mountinfo with / on ``root_device``; returns the daemon
    config lines that point at them, and nbd0's ``pid`` file (the test writes it once the
    NBD client is there: the daemon reads it at shutdown)."""
    sysfs = Sysfs(tmp_path / "sys")
    nbd0 = sysfs.disk("nbd0", "43:0", pid=0)
    sysfs.partition(nbd0, "nbd0p1", "43:1")
    sysfs.disk("sda", "8:0", parent="devices/pci0000:00/block")
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        f"29 1 {root_device} / / rw,relatime shared:1 - ext4 /dev/root rw\n"
        "22 29 0:5 / /proc rw,nosuid - proc proc rw\n"
    )
    config = f"rootdisk.mountinfo_path = {mountinfo}\nrootdisk.sysfs_path = {sysfs.root}\n"
    return config, nbd0 / "pid"


async def wait_event(daemon: Daemon, name: str) -> dict[str, Any]:
    """Until the daemon has logged ``name`` (bounded), polling its log file."""
    async with asyncio.timeout(WAIT):
        while not (found := daemon.events(name)):
            assert daemon.process is not None and daemon.process.poll() is None, daemon.log()
            await asyncio.sleep(0.05)
    return found[0]


async def two_sessions(tgt: TgtDisk, daemons: list[Daemon], root: Path, config: str) -> Daemon:
    tgt.target.add_disk(OTHER_TID, OTHER_IQN, root.parent / "data.img", 16 << 20)
    daemon = Daemon(root, config_text=config)
    daemons.append(daemon)
    await asyncio.to_thread(daemon.start)
    await daemon.login_all(tgt.portal)
    return daemon


async def mark_onboot(daemon: Daemon, tgt: TgtDisk) -> None:
    update = await asyncio.to_thread(
        daemon.client, "-m", "node", "-T", tgt.iqn, "-p", tgt.portal,
        "-o", "update", "-n", "node.startup", "-v", "onboot",
    )  # fmt: skip
    assert update.returncode == 0, update.stdout + update.stderr


async def exit_code(daemon: Daemon) -> int:
    assert daemon.process is not None
    return await asyncio.to_thread(daemon.process.wait, WAIT)


@pytest.mark.parametrize("pid_known", [True, False], ids=["pid-matches", "pid-unknown"])
async def test_the_root_disk_is_kept_and_served_until_its_client_lets_go(
    tgt: TgtDisk, daemons: list[Daemon], tmp_path: Path, pid_known: bool
) -> None:
    config, pid_file = fake_root(tmp_path)
    daemon = await two_sessions(tgt, daemons, tmp_path / "daemon", config)
    io = await QemuIo.open(daemon.nbd_uri(f"{tgt.iqn}/{tgt.lun}"))
    try:
        # nbd-client in ioctl mode forks after connecting: the kernel then names a pid
        # that is none of our peers, and the daemon must keep every disk in use.
        pid_file.write_text(f"{io.process.pid if pid_known else 1}\n")
        assert daemon.process is not None
        assert "wrote 4096/4096" in await io.command("write -P 0x5a 0 4k")

        daemon.process.send_signal(signal.SIGTERM)
        staying = await wait_event(daemon, "staying up to serve disks in use")
        assert staying["exports"] == [f"{tgt.iqn}/{tgt.lun}"]
        assert staying["spared_from_final_kill"] is True
        cmdline = Path(f"/proc/{daemon.process.pid}/cmdline").read_bytes()
        assert cmdline.startswith(b"@")  # systemd-shutdown's final kill spares us

        # The other session was logged out; the root one is still on the target...
        assert await asyncio.to_thread(tgt.target.sessions, OTHER_TID) == []
        assert len(await asyncio.to_thread(tgt.sessions)) == 1
        (kept,) = daemon.events("left logged in at shutdown")
        assert kept["ISCSI_TARGET"] == tgt.iqn
        if pid_known:
            assert kept["reason"] == "its disk holds the root file system"
        else:
            assert "none of our NBD clients" in kept["reason"]
            (warned,) = daemon.events("keeping every disk in use")
            assert "none of our NBD clients" in warned["reason"]
        # ...and still served: a write after SIGTERM reaches the backing file.
        assert "wrote 4096/4096" in await io.command("write -P 0xa5 4096 4k")
        answer = await io.command("read -P 0x5a 0 4k")
        assert "read 4096/4096" in answer and "verification failed" not in answer
        # A second SIGTERM (systemd's stop job repeats none, but an admin may) changes nothing.
        daemon.process.send_signal(signal.SIGTERM)
        assert "wrote 4096/4096" in await io.command("write -P 0xa6 8192 4k")
    finally:
        await io.close()
    # The client let go of the disk: the daemon leaves, without a logout of the root disk.
    assert await exit_code(daemon) == 0
    assert [e["ISCSI_TARGET"] for e in daemon.events("logged out")] == [OTHER_IQN]
    with open(tgt.backing, "rb") as backing:
        assert backing.read(12288) == b"\x5a" * 4096 + b"\xa5" * 4096 + b"\xa6" * 4096


async def test_with_root_elsewhere_every_session_is_logged_out_and_clients_dropped(
    tgt: TgtDisk, daemons: list[Daemon], tmp_path: Path
) -> None:
    config, pid_file = fake_root(tmp_path, root_device="8:0")
    daemon = await two_sessions(tgt, daemons, tmp_path / "daemon", config)
    io = await QemuIo.open(daemon.nbd_uri(f"{tgt.iqn}/{tgt.lun}"))
    try:
        pid_file.write_text(f"{io.process.pid}\n")
        assert daemon.process is not None
        daemon.process.send_signal(signal.SIGTERM)
        assert await exit_code(daemon) == 0
        answer = await io.command("read 0 4k")
        assert "read failed" in answer or "Input/output error" in answer  # the client was cut off
    finally:
        await io.close()
    assert sorted(e["ISCSI_TARGET"] for e in daemon.events("logged out")) == sorted(
        [tgt.iqn, OTHER_IQN]
    )
    assert daemon.events("staying up to serve disks in use") == []
    assert await asyncio.to_thread(tgt.sessions) == []
    assert os.path.exists(tgt.backing)


async def test_an_explicit_logout_of_the_root_disk_is_refused_with_busy(
    tgt: TgtDisk, daemons: list[Daemon], tmp_path: Path
) -> None:
    config, pid_file = fake_root(tmp_path)
    daemon = await two_sessions(tgt, daemons, tmp_path / "daemon", config)
    io = await QemuIo.open(daemon.nbd_uri(f"{tgt.iqn}/{tgt.lun}"))
    try:
        pid_file.write_text(f"{io.process.pid}\n")
        portal = tgt.portal
        refused = await asyncio.to_thread(
            daemon.client, "-m", "node", "-T", tgt.iqn, "-p", portal, "--logout"
        )
        assert refused.returncode == 28, refused.stdout + refused.stderr
        assert "initiator reported error (28 - device or resource in use)" in refused.stderr
        assert "its disk holds the root file system" in refused.stderr
        # -U all logs out the other session and leaves the root one, with exit 0.
        done = await asyncio.to_thread(daemon.client, "-m", "node", "-U", "all")
        assert done.returncode == 0, done.stdout + done.stderr
        assert OTHER_IQN in done.stdout and tgt.iqn not in done.stdout
        assert "wrote 4096/4096" in await io.command("write -P 0x77 0 4k")
        assert len(await asyncio.to_thread(tgt.sessions)) == 1
        assert await asyncio.to_thread(tgt.target.sessions, OTHER_TID) == []
    finally:
        await io.close()
    # Once nothing holds / on it any more, the same request logs out.
    pid_file.write_text("0\n")
    done = await asyncio.to_thread(
        daemon.client, "-m", "node", "-T", tgt.iqn, "-p", tgt.portal, "--logout"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert await asyncio.to_thread(tgt.sessions) == []


async def test_safe_logout_refuses_a_disk_in_use_until_its_client_goes(
    tgt: TgtDisk, daemons: list[Daemon], tmp_path: Path
) -> None:
    config, _ = fake_root(tmp_path, root_device="8:0")  # / is elsewhere
    daemon = await two_sessions(
        tgt, daemons, tmp_path / "daemon", config + "iscsid.safe_logout = Yes\n"
    )
    io = await QemuIo.open(daemon.nbd_uri(f"{tgt.iqn}/{tgt.lun}"))
    try:
        sid = next(
            s["sid"]
            for s in (await asyncio.to_thread(daemon.request, "session.list"))["result"]["sessions"]
            if s["target"] == tgt.iqn
        )
        refused = await asyncio.to_thread(daemon.client, "-m", "session", "-r", str(sid), "-u")
        assert refused.returncode == 28, refused.stdout + refused.stderr
        assert "iscsid.safe_logout = Yes" in refused.stderr
        assert "wrote 4096/4096" in await io.command("write -P 0x78 0 4k")
    finally:
        await io.close()
    # The daemon sees the client go a moment after qemu-io exits: retry until it does.
    async with asyncio.timeout(WAIT):
        while True:
            done = await asyncio.to_thread(daemon.client, "-m", "session", "-r", str(sid), "-u")
            if done.returncode != 28:
                break
            await asyncio.sleep(0.05)
    assert done.returncode == 0, done.stdout + done.stderr


async def test_logout_all_leaves_onboot_sessions_as_iscsiadm_does(
    tgt: TgtDisk, daemons: list[Daemon], tmp_path: Path
) -> None:
    config, _ = fake_root(tmp_path, root_device="8:0")
    daemon = await two_sessions(tgt, daemons, tmp_path / "daemon", config)
    await mark_onboot(daemon, tgt)
    done = await asyncio.to_thread(daemon.client, "-m", "node", "-U", "all")
    assert done.returncode == 0, done.stdout + done.stderr
    assert OTHER_IQN in done.stdout and tgt.iqn not in done.stdout
    assert len(await asyncio.to_thread(tgt.sessions)) == 1
    (left,) = daemon.events("left logged in")
    assert left["reason"] == "node.startup is onboot"
    # Asked for by name, an onboot session does log out.
    done = await asyncio.to_thread(
        daemon.client, "-m", "node", "-T", tgt.iqn, "-p", tgt.portal, "--logout"
    )
    assert done.returncode == 0, done.stdout + done.stderr


async def test_an_onboot_disk_not_under_slash_stays_logged_in_but_is_not_served_on(
    tgt: TgtDisk, daemons: list[Daemon], tmp_path: Path
) -> None:
    """onboot: never logged out at shutdown. But it holds neither / nor /usr, so its NBD
    client is dropped like any other and the daemon exits at once, not after systemd's
    stop timeout."""
    config, pid_file = fake_root(tmp_path, root_device="8:0")
    daemon = await two_sessions(tgt, daemons, tmp_path / "daemon", config)
    await mark_onboot(daemon, tgt)
    io = await QemuIo.open(daemon.nbd_uri(f"{tgt.iqn}/{tgt.lun}"))
    try:
        pid_file.write_text(f"{io.process.pid}\n")
        assert daemon.process is not None
        daemon.process.send_signal(signal.SIGTERM)
        assert await exit_code(daemon) == 0
        answer = await io.command("read 0 4k")
        assert "read failed" in answer or "Input/output error" in answer
    finally:
        await io.close()
    (kept,) = daemon.events("left logged in at shutdown")
    assert (kept["ISCSI_TARGET"], kept["reason"]) == (tgt.iqn, "node.startup is onboot")
    assert [e["ISCSI_TARGET"] for e in daemon.events("logged out")] == [OTHER_IQN]
    assert daemon.events("staying up to serve disks in use") == []
