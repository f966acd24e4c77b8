"""Which sessions outlive a shutdown of the daemon, and why.

Two kinds never get logged out: those of ``onboot`` nodes (node.startup = onboot, and
every iBFT boot target), and the ones whose disk holds ``/`` or ``/usr``, found through the
kernel (:mod:`rootdisk`): systemd keeps those two mounted to the very end and only
remounts them read-only. The daemon carries their data, so it goes on serving those disks
while an NBD client uses them (see :mod:`main`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .config import DaemonConfig
from .nbd import NbdClientInfo
from .rootdisk import nbd_devices_holding
from .session import Session

ONBOOT = "node.startup is onboot"
ROOT = "its disk holds the root file system"
SYSTEM_MOUNTS = (("/", True), ("/usr", False))  # mount point, must be mounted


def sessions_to_keep(
    sessions: Mapping[int, Session],
    clients: Iterable[NbdClientInfo],
    config: DaemonConfig,
    log: Any,
) -> dict[int, str]:
    """The sessions to leave logged in, by SID, each with the reason."""
    keep = {sid: ONBOOT for sid, session in sessions.items() if session.startup == "onboot"}
    keep |= root_sessions(sessions.values(), list(clients), config, log)
    return keep


def root_sessions(
    sessions: Iterable[Session], clients: list[NbdClientInfo], config: DaemonConfig, log: Any
) -> dict[int, str]:
    """The sessions whose exported disk may hold ``/`` or ``/usr``, by SID, with the reason.

    The kernel names the process that attached each NBD device (``/sys/block/nbdN/pid``);
    it is the peer of one of our NBD connections when ``nbd-client`` attached it without
    forking (netlink mode, the default). When any device under ``/`` or ``/usr`` matches
    none of our peers (an ``nbd-client`` that forked, a device not connected), or the
    kernel cannot be read, every disk an NBD client holds is kept, and the reason says so:
    one matched device says nothing of the others (``/`` on LVM over two disks), logging
    out of the root disk loses data, and keeping one session too many costs nothing.
    """
    in_use = {client.export for client in clients if client.export is not None}
    try:
        held = {
            mount_point: nbd_devices_holding(
                mount_point,
                mountinfo=config.mountinfo_path,
                sysfs=config.sysfs_path,
                required=required,
            )
            for mount_point, required in SYSTEM_MOUNTS
        }
    except Exception as exc:  # any failure to tell, RootDiskError or not, keeps the disks
        return _every_disk_in_use(sessions, in_use, f"cannot tell which disk holds / ({exc})", log)
    ours = {c.pid for c in clients if c.pid is not None and c.export is not None}
    reasons: dict[str, str] = {}  # export -> why it stays
    for mount_point, devices in reversed(held.items()):  # "/" last: its reason wins
        pids = {device.pid for device in devices if device.pid is not None}
        why = ROOT if mount_point == "/" else f"its disk holds {mount_point}"
        reasons |= {c.export: why for c in clients if c.export is not None and c.pid in pids}
    unmatched = sorted(
        {d.name for devices in held.values() for d in devices if d.pid is None or d.pid not in ours}
    )
    keep: dict[int, str] = {}
    if unmatched:
        names = ", ".join(f"/dev/{name}" for name in unmatched)
        reason_all = (
            f"/ or /usr is on {names}, attached by a process that is none of our NBD clients, "
            "so every disk in use may hold it"
        )
        keep = _every_disk_in_use(sessions, in_use, reason_all, log)
    keep |= {
        s.sid: reasons[export]
        for s in sessions
        for export in s.exports.values()
        if export in reasons
    }
    return keep


def _every_disk_in_use(
    sessions: Iterable[Session], in_use: set[str], reason: str, log: Any
) -> dict[int, str]:
    """The conservative answer: every session whose disk an NBD client holds."""
    if in_use:
        log.warning("keeping every disk in use", reason=reason, exports=sorted(in_use))
    return {s.sid: reason for s in sessions if in_use & set(s.exports.values())}
