"""``-m fw`` output: the firmware's boot targets the way iscsiadm prints them.

iscsiadm prints each iBFT target as a record (open-iscsi's ``fw_print_entry``): the
initiator's ``iface.*`` keys, the NIC's, then the target's ``node.*`` keys, each only when
the table has a value. Boot scripts (dracut's, installers') parse these lines, so the keys
and their order are iscsiadm's. One difference: iscsiadm prints CHAP secrets in clear;
pyiscsiadm prints ``********``, because the daemon never hands secrets out of the table.

Problems the daemon found in the table (a target without a name, a bad address) go to
stderr first, naming the sysfs file, so that an administrator sees why a target is missing.
With ``-l``, each target left out that way is a failed login too: the good targets are
logged in, and the command says which entry was not and exits non-zero (7, invalid
parameter: the table's entry is), as iscsiadm does when some of its logins fail.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pyiscsid.client import output
from pyiscsid.client.cli import View
from pyiscsid.client.errors import ClientError, ExitCode
from pyiscsid.client.output import MASK, RECORD_VERSION, Output

NO_FIRMWARE = "Could not get list of targets from firmware. (err {code})"
"""iscsiadm's line when the firmware has no targets (``exec_fw_op``), before the reason."""


def _problems(result: Mapping[str, Any], out: Output) -> None:
    for problem in output.items(result, "problems"):
        out.err(f"{problem.get('path')}: {problem.get('message')}")


def _dict(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def record_lines(result: Mapping[str, Any], target: Mapping[str, Any]) -> list[str]:
    """One target's ``# BEGIN RECORD`` ... ``# END RECORD`` block, in fw_print_entry's order."""
    lines = [f"# BEGIN RECORD {RECORD_VERSION}"]

    def put(key: str, value: object) -> None:
        if value is not None and value != "":
            lines.append(f"{key} = {value}")

    put("iface.initiatorname", result.get("initiator_name"))
    put("iface.transport_name", "tcp")
    nic = _dict(target.get("nic"))
    if nic:
        put("iface.hwaddress", nic.get("mac"))
        put("iface.bootproto", nic.get("bootproto") or "STATIC")
        put("iface.ipaddress", nic.get("ip_address"))
        if nic.get("prefix_len"):  # iscsiadm leaves out a zero prefix
            put("iface.prefix_len", nic.get("prefix_len"))
        put("iface.subnet_mask", nic.get("subnet_mask"))
        put("iface.gateway", nic.get("gateway"))
        put("iface.primary_dns", nic.get("primary_dns"))
        put("iface.secondary_dns", nic.get("secondary_dns"))
        put("iface.vlan_id", nic.get("vlan"))
    put("node.name", target["name"])
    put("node.conn[0].address", target["address"])
    put("node.conn[0].port", target["port"])
    chap = _dict(target.get("chap"))
    if chap:
        put("node.session.auth.username", chap.get("username"))
        put("node.session.auth.password", MASK)  # whatever came: never a secret on screen
    chap_in = _dict(target.get("chap_in"))
    if chap_in:
        put("node.session.auth.username_in", chap_in.get("username"))
        put("node.session.auth.password_in", MASK)
    put("node.boot_lun", target.get("lun"))
    lines.append("# END RECORD")
    return lines


def firmware_records(result: Mapping[str, Any]) -> Output:
    """``-m fw``: the table's problems on stderr, then a record per usable target."""
    out = Output()
    _problems(result, out)
    targets = output.items(result, "targets")
    if not targets:
        out.err(NO_FIRMWARE.format(code=ExitCode.NO_OBJS_FOUND))
        out.err(f"no usable target in the iBFT at {result.get('path')}")
        out.fail(ExitCode.NO_OBJS_FOUND)
        return out
    for target in targets:
        for line in record_lines(result, target):
            out.out(line)
    return out


def _skipped_targets(result: Mapping[str, Any]) -> list[str]:
    """The ``targetN`` entries the daemon left out (neither recorded nor logged in)."""
    entries: list[str] = []
    for problem in output.items(result, "problems"):
        entry = problem.get("entry")
        if not (problem.get("skipped") and isinstance(entry, str)):
            continue
        if entry.startswith("target") and entry not in entries:
            entries.append(entry)
    return entries


def firmware_logins(result: Mapping[str, Any]) -> Output:
    """``-m fw -l``: the table's problems, then iscsiadm's login lines for each target,
    and a failure for each target the table gets wrong (named by its entry, ``ibft
    target1``; the problem lines above say what is wrong with it)."""
    out = Output()
    _problems(result, out)
    unreached = [
        (f"Could not login to ibft {entry}: its entry in the table cannot be used.", ExitCode.INVAL)
        for entry in _skipped_targets(result)
    ]
    login = output.logins(result, unreached=unreached)
    out.lines += login.lines
    out.fail(login.exit_code)
    return out


def error(view: View, failure: ClientError) -> Output:
    """A failed ``-m fw``: iscsiadm's line for a firmware without targets, then the
    daemon's reason (which names the path it looked at); other failures as usual."""
    if failure.exit_code != ExitCode.NO_OBJS_FOUND:
        return output.error(view, failure)
    out = Output()
    out.err(NO_FIRMWARE.format(code=int(failure.exit_code)))
    if failure.message:
        out.err(failure.message)
    out.fail(failure.exit_code)
    return out
