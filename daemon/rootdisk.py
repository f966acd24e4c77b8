"""Which NBD devices hold the root file system, and so which of our disks must outlive us.

A system that loses its root disk at shutdown hangs or loses what it had not written, and
pyiscsid carries the data itself: the session behind ``/`` must be neither logged out nor
stop being served. The kernel tells what holds ``/`` through ``/proc/self/mountinfo``
(the device number) and sysfs (partitions, and the ``slaves`` of device-mapper and md
devices down to the disks); ``/sys/block/nbdN/pid`` names the process that attached an NBD
device, which :meth:`NbdServer.clients` matches with the peers of our NBD connections.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pyiscsid.protocol.errors import ISCSIError

MOUNTINFO = Path("/proc/self/mountinfo")
SYSFS = Path("/sys")
_MAX_DEPTH = 16  # device stacks (LVM on LUKS on RAID...) are never this deep; loops are


class RootDiskError(ISCSIError):
    """The mount table or sysfs could not be read or made no sense."""


@dataclass(frozen=True, slots=True)
class NbdDevice:
    """An NBD device under the root file system and the process that attached it."""

    name: str  # nbd0
    pid: int | None  # /sys/block/nbd0/pid; None when the device is not connected


@dataclass(frozen=True, slots=True)
class Mount:
    """One line of mountinfo, the parts we need (proc(5))."""

    device: tuple[int, int]  # major, minor
    mount_point: str
    source: str


def parse_mountinfo(text: str, where: str = str(MOUNTINFO)) -> list[Mount]:
    """The mounts listed, in order; a line without its fields is an error that names it."""
    mounts = []
    # "\n" only: splitlines() would also cut at U+2028 or U+0085 inside a mount point.
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        fields = line.split(" ")
        try:
            separator = fields.index("-", 6)
            major, minor = (int(part) for part in fields[2].split(":"))
            source = fields[separator + 2]
        except (ValueError, IndexError):
            raise RootDiskError(f"{where}:{number}: not a mountinfo line: {line[:120]!r}") from None
        mounts.append(Mount((major, minor), _unescape(fields[4]), _unescape(source)))
    return mounts


_OCTAL = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes (\\040...); the
    rest of the field, any script at all, is left as it is."""
    return _OCTAL.sub(lambda match: chr(int(match[1], 8)), field) if "\\" in field else field


def mount_of(mounts: list[Mount], mount_point: str) -> Mount | None:
    """The mount that is visible at ``mount_point``: the last one there (over-mounts)."""
    found = None
    for mount in mounts:
        if mount.mount_point == mount_point:
            found = mount
    return found


def disks_under(mount: Mount, sysfs: Path = SYSFS) -> set[str]:
    """The whole disks (``sda``, ``nbd0``) a mount's block device is built on.

    A partition leads to its disk; a device-mapper or md device to its ``slaves``,
    recursively. A file system with no block device of its own (tmpfs, overlay, NFS) has
    none; btrfs reports an anonymous device number, so its source names the device.
    """
    start = _device_dir(sysfs, mount)
    return set(_leaves(sysfs, start, 0)) if start is not None else set()


def _device_dir(sysfs: Path, mount: Mount) -> Path | None:
    major, minor = mount.device
    by_number = sysfs / "dev" / "block" / f"{major}:{minor}"
    if major != 0 and by_number.exists():
        return Path(os.path.realpath(by_number))
    if mount.source.startswith("/dev/"):
        name = os.path.basename(os.path.realpath(mount.source))
        by_name = sysfs / "class" / "block" / name
        if by_name.exists():
            return Path(os.path.realpath(by_name))
        # /dev/mapper/NAME where /dev is private (the unit's PrivateDevices=): sysfs knows
        # each device-mapper device's NAME.
        for mapped in sorted((sysfs / "class" / "block").glob("dm-*")):
            with contextlib.suppress(OSError):
                if (mapped / "dm" / "name").read_text().strip() == name:
                    return Path(os.path.realpath(mapped))
        raise RootDiskError(f"{mount.source} (under {mount.mount_point}) is not in {sysfs}")
    return None


def _leaves(sysfs: Path, device: Path, depth: int) -> Iterator[str]:
    if depth > _MAX_DEPTH:
        raise RootDiskError(f"{device}: device stack deeper than {_MAX_DEPTH} (a loop?)")
    if (device / "partition").exists():
        device = device.parent
    slaves = device / "slaves"
    below = sorted(slaves.iterdir()) if slaves.is_dir() else []
    if not below:
        yield device.name
        return
    for slave in below:
        yield from _leaves(sysfs, Path(os.path.realpath(slave)), depth + 1)


def nbd_devices_holding(
    mount_point: str = "/",
    *,
    mountinfo: Path = MOUNTINFO,
    sysfs: Path = SYSFS,
    required: bool = True,
) -> list[NbdDevice]:
    """The NBD devices that ``mount_point``'s file system lives on (none: not on NBD).

    Nothing mounted there is an error when ``required`` (``/``), else no device (``/usr``,
    which is most often part of ``/``)."""
    try:
        text = mountinfo.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        raise RootDiskError(f"cannot read {mountinfo}: {exc.strerror or exc}") from None
    mount = mount_of(parse_mountinfo(text, str(mountinfo)), mount_point)
    if mount is None:
        if not required:
            return []
        raise RootDiskError(f"{mountinfo} lists nothing mounted on {mount_point}")
    try:
        disks = disks_under(mount, sysfs)
    except OSError as exc:
        raise RootDiskError(f"cannot walk {sysfs} for {mount.source}: {exc}") from None
    return [
        NbdDevice(name, _attached_pid(sysfs / "block" / name / "pid"))
        for name in sorted(disks)
        if name.startswith("nbd")
    ]


def _attached_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def spare_from_final_kill(stat: Path = Path("/proc/self/stat")) -> bool:
    """Make ``/proc/self/cmdline`` start with ``@``; False if that cannot be done.

    At the very end of shutdown systemd-shutdown sends every process left SIGTERM then
    SIGKILL, before it remounts ``/`` read-only; it spares the processes whose ``argv[0]``
    starts with ``@`` (systemd.io/ROOT_STORAGE_DAEMONS). The daemon serving ``/`` must be
    one of them, or the last writes to ``/`` fail. ``arg_start`` (field 48 of
    ``/proc/self/stat``) is where the kernel reads argv from: the first byte becomes ``@``.
    """
    import ctypes  # only here: nothing else in the daemon writes to raw memory

    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()
        arg_start = int(fields[45])  # field 48; fields[0] is field 3 (state)
    except (OSError, IndexError, ValueError):
        return False
    if arg_start <= 0:
        return False
    ctypes.c_char.from_address(arg_start).value = b"@"
    return True
