"""``-m session -P 1..3``: iscsiadm's session tree, from ``session.show``'s result.

The layout is open-iscsi's ``session_info_print_tree`` (usr/session_info.c): a ``Target:``
line per target, its portals one tab in, and each session's details two tabs in under
banners of asterisks. Level 1 has the iface and the states, level 2
adds timeouts, CHAP and the negotiated parameters, level 3 the attached devices.

What differs, because pyiscsid is not the kernel's iSCSI stack: there is no SCSI host, so
level 3 lists each LUN with what the daemon read from it (size, vendor, product) instead of
``scsiN Channel 00 Id 0 Lun: N`` / ``Attached scsi disk sdX`` lines, and there is no
``iSCSI Transport Class version`` line. Passwords never reach the client: CHAP shows
``********`` for them, as iscsiadm does without ``--show``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pyiscsid.client.cli import DEFAULT_IFACE
from pyiscsid.client.output import (
    EMPTY,
    MASK,
    NO_SESSIONS,
    Output,
    colon_portal,
    comma_portal,
    none_found,
    text,
)

# The negotiated parameters iscsiadm prints, in its order (print_iscsi_params). The first
# four are per connection, the rest per session; MaxXmitDataSegmentLength is the target's
# declared MaxRecvDataSegmentLength, i.e. the largest PDU data segment we may send.
NEGOTIATED = (
    "HeaderDigest",
    "DataDigest",
    "MaxRecvDataSegmentLength",
    "MaxXmitDataSegmentLength",
    "FirstBurstLength",
    "MaxBurstLength",
    "ImmediateData",
    "InitialR2T",
    "MaxOutstandingR2T",
)

# (label, keys accepted in the result's "timeouts", first found wins). iscsiadm's labels;
# the keys are the iscsid.conf names the daemon's config uses, short or fully dotted.
TIMEOUTS = (
    ("Recovery Timeout", ("replacement_timeout", "node.session.timeo.replacement_timeout")),
    (
        "Target Reset Timeout",
        ("tgt_reset_timeout", "node.session.err_timeo.tgt_reset_timeout"),
    ),
    ("LUN Reset Timeout", ("lu_reset_timeout", "node.session.err_timeo.lu_reset_timeout")),
    ("Abort Timeout", ("abort_timeout", "node.session.err_timeo.abort_timeout")),
)

_IN = "\t\t"


def _banner(output: Output, title: str, width: int | None = None) -> None:
    """``**********`` / ``Title:`` / ``**********``: as many stars as iscsiadm prints, which
    is the title's length except for "Attached SCSI devices:" (24 stars for 22 letters)."""
    stars = "*" * (width or len(title))
    output.out(f"{_IN}{stars}")
    output.out(f"{_IN}{title}")
    output.out(f"{_IN}{stars}")


def session_state(value: object) -> str:
    """sysfs's session state words: ``LOGGED_IN``, ``FAILED``, ``FREE``."""
    if not isinstance(value, str) or not value:
        return "Unknown"
    return value.upper().replace(" ", "_").replace("-", "_")


def connection_state(value: object) -> str:
    """iscsid's connection state words: ``LOGGED IN``, ``IN LOGIN``, ``TRANSPORT WAIT``."""
    if not isinstance(value, str) or not value:
        return "Unknown"
    return value.upper().replace("_", " ").replace("-", " ")


def human_size(size: int) -> str:
    """``64.0 MiB``: binary units, one decimal, as a person reads a disk size."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _iface(output: Output, session: Mapping[str, Any]) -> None:
    _banner(output, "Interface:")
    output.out(f"{_IN}Iface Name: {session.get('iface') or DEFAULT_IFACE}")
    output.out(f"{_IN}Iface Transport: tcp")
    output.out(f"{_IN}Iface Initiatorname: {text(session.get('initiator_name'))}")
    output.out(f"{_IN}Iface IPaddress: {text(session.get('local_address'))}")
    output.out(f"{_IN}Iface HWaddress: {EMPTY}")
    output.out(f"{_IN}Iface Netdev: {EMPTY}")


def _states(output: Output, session: Mapping[str, Any]) -> None:
    state = session_state(session.get("state"))
    internal = session.get("internal_state")
    if not isinstance(internal, str) or not internal:
        # iscsid's recovery stage; with nothing to recover it is "NO CHANGE".
        internal = "NO CHANGE" if state == "LOGGED_IN" else "Unknown"
    output.out(f"{_IN}SID: {session['sid']}")
    output.out(f"{_IN}iSCSI Connection State: {connection_state(session.get('connection_state'))}")
    output.out(f"{_IN}iSCSI Session State: {state}")
    output.out(f"{_IN}Internal iscsid Session State: {internal}")


def _timeouts(output: Output, session: Mapping[str, Any]) -> None:
    raw = session.get("timeouts")
    timeouts: Mapping[str, Any] = raw if isinstance(raw, dict) else {}
    _banner(output, "Timeouts:")
    for label, keys in TIMEOUTS:
        value = next((timeouts[k] for k in keys if k in timeouts), None)
        output.out(f"{_IN}{label}: {text(value)}")


def _chap(output: Output, session: Mapping[str, Any]) -> None:
    _banner(output, "CHAP:")
    output.out(f"{_IN}username: {text(session.get('chap_username'))}")
    output.out(f"{_IN}password: {MASK}")
    output.out(f"{_IN}username_in: {text(session.get('chap_username_in'))}")
    output.out(f"{_IN}password_in: {MASK}")


def _negotiated(output: Output, session: Mapping[str, Any]) -> None:
    raw = session.get("parameters")
    parameters: Mapping[str, Any] = raw if isinstance(raw, dict) else {}
    _banner(output, "Negotiated iSCSI params:")
    for key in NEGOTIATED:
        if key in parameters:
            output.out(f"{_IN}{key}: {text(parameters[key])}")


def _devices(output: Output, session: Mapping[str, Any], nbd_socket: str) -> None:
    _banner(output, "Attached SCSI devices:", 24)
    for lun in session.get("luns") or []:
        if not isinstance(lun, dict):
            continue
        size = lun.get("size")
        line = f"{_IN}Lun: {lun['lun']}"
        if isinstance(size, int):
            line += f"\tSize: {human_size(size)} ({size} bytes)"
        if lun.get("block_size"):
            line += f"\tBlock size: {lun['block_size']}"
        output.out(line)
        output.out(
            f"{_IN}\tVendor: {text(lun.get('vendor'))}\tProduct: {text(lun.get('product'))}"
            f"\tRevision: {text(lun.get('revision'))}"
        )
        if lun.get("export"):
            output.out(f"{_IN}\tNBD export: {lun['export']}")
            output.out(
                f"{_IN}\tAttach: nbd-client -unix {nbd_socket} -N '{lun['export']}' /dev/nbdN"
            )


def session_tree(result: Mapping[str, Any], level: int) -> Output:
    """The whole ``-P level`` answer for every session in ``result["sessions"]``.

    Sessions are grouped as iscsiadm groups them: one ``Target:`` line per target, the
    portal lines once per portal, and a blank line between two sessions on one portal.
    """
    output = Output()
    raw = result.get("sessions")
    sessions = [s for s in raw if isinstance(s, dict)] if isinstance(raw, list) else []
    if not sessions:
        none_found(output, NO_SESSIONS)
        return output
    nbd_socket = result.get("nbd_socket")
    if not isinstance(nbd_socket, str) or not nbd_socket:
        nbd_socket = NBD_SOCKET  # a daemon that does not say: its default
    if level >= 3 and isinstance(result.get("version"), str):
        output.out(f"version {result['version']}")
    # Same target together, same portal together, in the order the daemon listed them.
    order: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for session in sessions:
        order.setdefault((session["target"], session["portal"]), []).append(session)
    targets: dict[str, list[list[dict[str, Any]]]] = {}
    for (target, _), group in order.items():
        targets.setdefault(target, []).append(group)
    for target, groups in targets.items():
        output.out(f"Target: {target} (non-flash)")
        for group in groups:
            for index, session in enumerate(group):
                if index == 0:
                    tpgt = session.get("tpgt", -1)
                    current = session.get("current_portal") or session["portal"]
                    output.out(f"\tCurrent Portal: {colon_portal(current)},{tpgt}")
                    output.out(f"\tPersistent Portal: {colon_portal(session['portal'])},{tpgt}")
                else:
                    output.out("")
                _iface(output, session)
                _states(output, session)
                if level >= 2:
                    _timeouts(output, session)
                    _chap(output, session)
                    _negotiated(output, session)
                if level >= 3:
                    _devices(output, session, nbd_socket)
    return output


# Where pyiscsid serves the LUNs by default (pyiscsid --nbd-socket); session.show says where.
NBD_SOCKET = "/run/pyiscsid/nbd.sock"

# pyiscsid's own counters, printed after iscsiadm's two blocks.
_PYISCSID_STATS = ("reconnects", "nop_rtt_ms")


def session_stats(result: Mapping[str, Any]) -> Output:
    """``-m session -s``: iscsiadm's "Stats for session" block for each session, with its
    counter names, then pyiscsid's reconnect count and last NOP-Out round trip."""
    output = Output()
    sessions = result.get("sessions") or []
    if not sessions:
        none_found(output, NO_SESSIONS)
        return output
    for session in sessions:
        stats: Mapping[str, Any] = session.get("stats") or {}
        output.out(
            f"Stats for session [sid: {session['sid']}, target: {session['target']}, "
            f"portal: {comma_portal(session['portal'])}]"
        )
        output.out("iSCSI SNMP:")
        for name, value in stats.items():
            if name not in _PYISCSID_STATS:
                output.out(f"\t{name}: {value}")
        output.out("pyiscsid:")
        for name in _PYISCSID_STATS:
            value = stats.get(name)
            output.out(f"\t{name}: {'<empty>' if value is None else value}")
    return output
