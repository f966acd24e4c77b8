"""Which sessions outlive a shutdown of the daemon, and why.

Two kinds never get logged out: those of ``onboot`` nodes (node.startup = onboot, and
every iBFT boot target), and the one whose disk holds the root file system, found
through the kernel (:mod:`rootdisk`). The daemon carries their data, so while an NBD client
still uses one of them it keeps serving it (see :mod:`main`).
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
    """The sessions whose exported disk may hold ``/``, by SID, with the reason.

    The kernel names the process that attached each NBD device (``/sys/block/nbdN/pid``);
    it is the peer of one of our NBD connections when ``nbd-client`` attached it without
    forking (netlink mode, the default). When no peer matches, or the kernel cannot be
    read, every disk an NBD client holds is kept, and the reason says so: logging out of
    the root disk loses data, keeping one session too many costs nothing.
    """
    in_use = {client.export for client in clients if client.export is not None}
    try:
        devices = nbd_devices_holding("/", mountinfo=config.mountinfo_path, sysfs=config.sysfs_path)
    except Exception as exc:  # any failure to tell, RootDiskError or not, keeps the disks
        chosen, reason = in_use, f"cannot tell which disk holds / ({exc})"
    else:
        if not devices:
            return {}
        pids = {device.pid for device in devices if device.pid is not None}
        chosen = {c.export for c in clients if c.export is not None and c.pid in pids}
        reason = ROOT
        if not chosen:
            names = ", ".join(f"/dev/{device.name}" for device in devices)
            chosen = in_use
            reason = (
                f"/ is on {names}, attached by a process that is none of our NBD clients, "
                "so every disk in use may hold it"
            )
    if reason != ROOT and chosen:
        log.warning("keeping every disk in use", reason=reason, exports=sorted(chosen))
    return {s.sid: reason for s in sessions if chosen & set(s.exports.values())}
