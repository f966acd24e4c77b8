"""iscsiadm's output lines, made from the daemon's result objects.

Scripts written for iscsiadm parse its stdout (``IP:PORT,TPGT IQN``, ``tcp: [SID] ...``,
``key = value`` records) and grep its messages (``Login to [...] successful.``, ``No active
sessions.``), so every line here is iscsiadm's, word for word, with one change: messages
that iscsiadm prefixes with ``iscsiadm:`` carry ``pyiscsiadm:`` instead, so that a person
reading a log can tell which program spoke. Listings and progress lines go to stdout and
``pyiscsiadm:`` messages to stderr, as iscsiadm's do.

Every function is pure: a result dict in, an :class:`Output` (lines per stream, in order,
and the exit code) out. main.py writes it; the tests compare it line by line.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from pyiscsid.client.cli import DEFAULT_IFACE, DEFAULT_PORT, View
from pyiscsid.client.errors import ClientError, ExitCode, error_text, exit_for

PREFIX = "pyiscsiadm: "
# The open-iscsi release whose record format "-o show" follows (iscsiadm prints its own).
RECORD_VERSION = "2.1.9"
# iscsiadm's UNKNOWN_VALUE: what it prints for an empty string.
EMPTY = "<empty>"
MASK = "********"

NO_RECORDS = "No records found"
NO_SESSIONS = "No active sessions."
NO_MATCHING_SESSIONS = "No matching sessions found"
NO_PORTALS = "No portals found"


class Stream(Enum):
    OUT = "stdout"
    ERR = "stderr"


@dataclass
class Output:
    """What a command prints, in order, and the status it exits with."""

    lines: list[tuple[Stream, str]] = field(default_factory=list)
    exit_code: int = ExitCode.SUCCESS

    def out(self, line: str) -> None:
        self.lines.append((Stream.OUT, line))

    def err(self, line: str) -> None:
        """A message: iscsiadm's ``log_error``/``log_warning`` line, under our name."""
        self.lines.append((Stream.ERR, PREFIX + line))

    def fail(self, exit_code: int) -> None:
        """Record a failure; the first one decides the exit code, as in iscsiadm's loops."""
        if self.exit_code == ExitCode.SUCCESS:
            self.exit_code = exit_code

    @property
    def stdout(self) -> list[str]:
        return [line for stream, line in self.lines if stream is Stream.OUT]

    @property
    def stderr(self) -> list[str]:
        return [line for stream, line in self.lines if stream is Stream.ERR]


# -- portals ---------------------------------------------------------------------------


def split_portal(portal: str) -> tuple[str, int]:
    """``"IP:PORT"``/``"[IPv6]:PORT"``/``"IP"`` -> (address without brackets, port)."""
    if portal.startswith("["):
        address, _, rest = portal[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif portal.count(":") == 1:
        address, _, port = portal.partition(":")
    else:
        address, port = portal, ""
    return address, int(port) if port.isdigit() else DEFAULT_PORT


def colon_portal(portal: str) -> str:
    """``IP:PORT`` as iscsiadm lists it, IPv6 in brackets: ``[fe80::1]:3260``."""
    address, port = split_portal(portal)
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def comma_portal(portal: str) -> str:
    """``IP,PORT`` as iscsiadm's login and logout messages write it (no brackets)."""
    address, port = split_portal(portal)
    return f"{address},{port}"


# -- values ----------------------------------------------------------------------------


def text(value: object) -> str:
    """A value as iscsiadm prints it: empty as ``<empty>``, booleans as Yes/No."""
    if value is None or value == "":
        return EMPTY
    if isinstance(value, bool):
        return "Yes" if value else "No"
    return str(value)


def is_secret(key: str) -> bool:
    """Record keys iscsiadm masks (``node.session.auth.password``, ``..._in``, discovery's)."""
    return key.rsplit(".", 1)[-1] in ("password", "password_in")


def items(result: Mapping[str, Any], key: str) -> list[dict[str, Any]]:
    """``result[key]`` as a list of objects; anything else in it is a daemon bug, skip it."""
    value = result.get(key)
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, dict)]


# -- listings --------------------------------------------------------------------------


def none_found(output: Output, message: str) -> None:
    """iscsiadm's rule for an empty answer: say so on stderr and exit 21."""
    output.err(message)
    output.fail(ExitCode.NO_OBJS_FOUND)


def skipped_entry(entry: Mapping[str, Any]) -> str:
    """A SendTargets reply entry the daemon left out, and why: ``SendTargets reply:
    TargetAddress #2 of iqn...:disk1 skipped: ...``. The daemon never sends the value
    itself (the target's bytes may be anything), only which entry it was."""
    key, number, target = entry.get("key"), entry.get("number"), entry.get("target")
    which = f"{key} #{number}" if number is not None else str(key)
    if target:
        which += f" of {target}" if key == "TargetAddress" else f" ({target})"
    return f"SendTargets reply: {which} skipped: {entry.get('reason')}"


def discovery_targets(result: Mapping[str, Any]) -> Output:
    """``-m discovery -t st -p ...``: the reply's entries that were left out (on stderr,
    one line each), ``IP:PORT,TPGT IQN`` per target, then any logins."""
    output = Output()
    for entry in items(result, "skipped"):
        output.err(skipped_entry(entry))
    targets = items(result, "targets")
    for target in targets:
        output.out(f"{colon_portal(target['portal'])},{target['tpgt']} {target['name']}")
    if not targets:
        none_found(output, NO_PORTALS)
        return output
    if "logins" in result:
        login = logins(result)
        output.lines += login.lines
        output.fail(login.exit_code)
    return output


def discovery_records(result: Mapping[str, Any]) -> Output:
    """``-m discovery``: ``IP:PORT via sendtargets`` per discovery record."""
    output = Output()
    records = items(result, "records")
    for record in records:
        output.out(f"{colon_portal(record['portal'])} via {record.get('type', 'sendtargets')}")
    if not records:
        none_found(output, NO_RECORDS)
    return output


def node_list(result: Mapping[str, Any]) -> Output:
    """``-m node``: ``IP:PORT,TPGT IQN`` per node record."""
    output = Output()
    nodes = items(result, "nodes")
    for node in nodes:
        output.out(f"{colon_portal(node['portal'])},{node.get('tpgt', -1)} {node['target']}")
    if not nodes:
        none_found(output, NO_RECORDS)
    return output


def node_tree(result: Mapping[str, Any]) -> Output:
    """``-m node -P 1``: records grouped by target, then portal, then iface."""
    output = Output()
    nodes = items(result, "nodes")
    if not nodes:
        none_found(output, NO_RECORDS)
        return output
    grouped: dict[str, dict[str, list[str]]] = {}
    for node in nodes:
        portal = f"{colon_portal(node['portal'])},{node.get('tpgt', -1)}"
        ifaces = grouped.setdefault(node["target"], {}).setdefault(portal, [])
        ifaces.append(node.get("iface") or DEFAULT_IFACE)
    for target, portals in grouped.items():
        output.out(f"Target: {target}")
        for portal, ifaces in portals.items():
            output.out(f"\tPortal: {portal}")
            for iface in ifaces:
                output.out(f"\t\tIface Name: {iface}")
    return output


def node_records(result: Mapping[str, Any], *, show_secrets: bool = False) -> Output:
    """``-m node -o show``: each record between ``# BEGIN RECORD`` and ``# END RECORD``.

    The daemon masks passwords already unless asked for secrets; masking again here means
    a daemon bug cannot put a password on a screen that did not ask for it with ``-S``.
    """
    output = Output()
    nodes = items(result, "nodes")
    if not nodes:
        none_found(output, NO_RECORDS)
        return output
    for node in nodes:
        settings = node.get("settings")
        settings = dict(settings) if isinstance(settings, dict) else {}
        address, port = split_portal(node["portal"])
        head = {"node.name": node["target"], "node.tpgt": node.get("tpgt", -1)}
        tail = {"node.conn[0].address": address, "node.conn[0].port": port}
        record = {k: v for k, v in head.items() if k not in settings}
        record.update(settings)
        record.update({k: v for k, v in tail.items() if k not in settings})
        output.out(f"# BEGIN RECORD {RECORD_VERSION}")
        for key, value in record.items():
            shown = text(value)
            if is_secret(key) and shown != EMPTY and not show_secrets:
                shown = MASK
            output.out(f"{key} = {shown}")
        output.out("# END RECORD")
    return output


def node_new(result: Mapping[str, Any]) -> Output:
    """``-o new``: ``New iSCSI node [tcp:[hw=,ip=,net_if=,iscsi_if=IFACE] ...] added``."""
    output = Output()
    node = result.get("node")
    if isinstance(node, dict):
        address, port = split_portal(node["portal"])
        iface = node.get("iface") or DEFAULT_IFACE
        where = (
            f"[tcp:[hw=,ip=,net_if=,iscsi_if={iface}] "
            f"{address},{port},{node.get('tpgt', -1)} {node['target']}]"
        )
        if result.get("existed"):
            output.out(f"iSCSI node {where} exists: left as it is (change it with -o update)")
        else:
            output.out(f"New iSCSI node {where} added")
    return output


def node_changed(result: Mapping[str, Any], count_key: str) -> Output:
    """``-o update`` and ``-o delete`` print nothing, unless nothing matched (exit 21)."""
    output = Output()
    if result.get(count_key) == 0:
        none_found(output, NO_RECORDS)
    return output


def session_list(result: Mapping[str, Any]) -> Output:
    """``-m session``: ``tcp: [SID] IP:PORT,TPGT IQN (non-flash)`` per session."""
    output = Output()
    sessions = items(result, "sessions")
    for session in sessions:
        output.out(session_line(session))
    if not sessions:
        none_found(output, NO_SESSIONS)
    return output


def session_line(session: Mapping[str, Any]) -> str:
    return (
        f"tcp: [{session['sid']}] {colon_portal(session['portal'])},"
        f"{session.get('tpgt', -1)} {session['target']} (non-flash)"
    )


# -- login and logout ------------------------------------------------------------------


def _node_tag(entry: Mapping[str, Any]) -> str:
    iface = entry.get("iface") or DEFAULT_IFACE
    return f"[iface: {iface}, target: {entry['target']}, portal: {comma_portal(entry['portal'])}]"


def _session_tag(entry: Mapping[str, Any]) -> str:
    return (
        f"[sid: {entry['sid']}, target: {entry['target']}, portal: {comma_portal(entry['portal'])}]"
    )


def _reported_error(output: Output, error: object) -> int:
    """iscsiadm's ``initiator reported error (N - text)``, then the daemon's own reason."""
    code = exit_for(error)
    output.err(f"initiator reported error ({code} - {error_text(code)})")
    message = error.get("message") if isinstance(error, dict) else None
    if isinstance(message, str) and message:
        output.err(message)
    return code


def logins(result: Mapping[str, Any], *, unreached: Sequence[tuple[str, int]] = ()) -> Output:
    """``--login``, ``-L``, ``discovery -l``: iscsiadm's lines for each node, then the verdict.

    iscsiadm starts every login, printing ``Logging in to`` for each, then waits for them
    and prints each outcome: this keeps that order. A node that already has a session is
    not logged in again: iscsiadm warns ``default: 1 session requested, but 1 already
    present.`` instead, and the command exits 15. ``unreached`` are the nodes the command
    was for that could not even be tried (a broken firmware entry), as (message, exit
    code): each is a failure, printed after the outcomes.
    """
    output = Output()
    entries = items(result, "logins")
    if not entries:
        none_found(output, NO_RECORDS)
        return output
    already_present = False
    for entry in entries:
        if not entry.get("ok") and exit_for(entry.get("error")) == ExitCode.SESS_EXISTS:
            iface = entry.get("iface") or DEFAULT_IFACE
            output.err(f"{iface}: 1 session requested, but 1 already present.")
            already_present = True
        else:
            output.out(f"Logging in to {_node_tag(entry)}")
    for entry in entries:
        if entry.get("ok"):
            output.out(f"Login to {_node_tag(entry)} successful.")
            continue
        error = entry.get("error")
        if exit_for(error) == ExitCode.SESS_EXISTS:
            continue
        output.err(f"Could not login to {_node_tag(entry)}.")
        output.fail(_reported_error(output, error))
    for message, code in unreached:
        output.err(message)
        output.fail(code)
    if already_present:  # recorded last: a real failure outranks "already logged in"
        output.fail(ExitCode.SESS_EXISTS)
    if output.exit_code != ExitCode.SUCCESS:
        output.err("Could not log into all portals")
    return output


def _per_session(output: Output, result: Mapping[str, Any], key: str) -> list[Any]:
    """The reply's entries, one per session; with none, iscsiadm's "no matching sessions"
    goes to ``output``."""
    entries = items(result, key)
    if not entries:
        none_found(output, NO_MATCHING_SESSIONS)
    return entries


def logouts(result: Mapping[str, Any]) -> Output:
    """``--logout``, ``-U all``, ``-m session -u``: iscsiadm's lines for each session."""
    output = Output()
    entries = _per_session(output, result, "logouts")
    if not entries:
        return output
    for entry in entries:
        output.out(f"Logging out of session {_session_tag(entry)}")
    for entry in entries:
        if entry.get("ok"):
            output.out(f"Logout of {_session_tag(entry)} successful.")
            continue
        output.err(f"Could not logout of {_session_tag(entry)}.")
        output.fail(_reported_error(output, entry.get("error", "logout_failed")))
    if output.exit_code != ExitCode.SUCCESS:
        output.err("Could not logout of all requested sessions")
    return output


def rescans(result: Mapping[str, Any]) -> Output:
    """``-R``: iscsiadm's ``Rescanning session [...]`` per session; then, ours, a line per
    LUN added or resized, and the reason of a session that could not be rescanned."""
    output = Output()
    entries = _per_session(output, result, "rescans")
    if not entries:
        return output
    for entry in entries:
        output.out(f"Rescanning session {_session_tag(entry)}")
        if not entry.get("ok"):
            output.err(f"Could not rescan session {_session_tag(entry)}.")
            output.fail(_reported_error(output, entry.get("error", "error")))
            continue
        for lun in entry.get("added", []):
            output.out(f"LUN {lun}: added")
        for change in entry.get("resized", []):
            output.out(f"LUN {change['lun']}: {change['was']} -> {change['size']} bytes")
    return output


# -- errors, JSON ----------------------------------------------------------------------


def error(view: View, failure: ClientError) -> Output:
    """A failed command: iscsiadm's own words where it has them, else the daemon's message.

    For "nothing matched" iscsiadm's fixed lines are printed (scripts grep them); every
    other failure prints the daemon's message, which says what went wrong and what to do.
    """
    output = Output()
    if failure.exit_code == ExitCode.NO_OBJS_FOUND:
        if view in (View.SESSION_LIST, View.SESSION_TREE):
            output.err(NO_SESSIONS)
        elif view is View.LOGOUT:
            output.err(NO_MATCHING_SESSIONS)
        elif view is View.DISCOVERY_TARGETS:
            output.err(NO_PORTALS)
        else:
            output.err(NO_RECORDS)
    else:
        output.err(failure.message)
    output.fail(failure.exit_code)
    return output


def as_json(payload: Mapping[str, Any]) -> list[str]:
    """``--format json``: the daemon's result (or ``{"error": ...}``), indented, one object."""
    return json.dumps(payload, indent=2, sort_keys=False).splitlines()
