"""iscsiadm's command line, parsed into one control-API request and the way to print its answer.

iscsiadm has no subcommands: ``-m MODE`` plus flags whose meaning depends on the mode
(``-l`` logs in under ``-m node`` and ``-m discovery``, ``-u`` logs out under ``-m node`` and
``-m session``). So the parser accepts every flag once, like iscsiadm's getopt, and a
per-mode step then checks the combination and turns it into an :class:`Invocation`: the
control op with its args, and the :class:`View` that prints the result. Keeping the two
apart lets the tests check every command line without a daemon.

Where iscsiadm takes a combination pyiscsiadm cannot honour (another iface, another
discovery type), the parse fails with a usage line that says what was wrong and exit 7
(iscsiadm's ISCSI_ERR_INVAL) rather than silently doing something else.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, NoReturn

PROG = "pyiscsiadm"
DEFAULT_SOCKET = "/run/pyiscsid/control.sock"
SOCKET_ENV = "PYISCSID_SOCKET"
# A login retries (open-iscsi's defaults: 8 attempts, 15 s login timeout each), and a
# discovery with -l logs in to every target it finds: the reply can take minutes.
DEFAULT_TIMEOUT = 180.0
DEFAULT_IFACE = "default"
DEFAULT_PORT = 3260


class UsageError(Exception):
    """The command line is wrong; the message says how. Exit 7, like iscsiadm's EINVAL."""


class View(Enum):
    """How the result of an invocation is printed (see output.py and session_info.py)."""

    DISCOVERY_TARGETS = "discovery targets"  # IP:PORT,TPGT IQN (+ login lines with -l)
    DISCOVERY_RECORDS = "discovery records"  # IP:PORT via sendtargets
    DISCOVERY_DELETE = "discovery delete"  # silent
    NODE_LIST = "node list"  # IP:PORT,TPGT IQN
    NODE_TREE = "node tree"  # -m node -P 1
    NODE_RECORDS = "node records"  # # BEGIN RECORD ... # END RECORD
    NODE_NEW = "node new"  # New iSCSI node [...] added
    NODE_UPDATE = "node update"  # silent
    NODE_DELETE = "node delete"  # silent
    LOGIN = "login"  # Logging in to [...] / Login to [...] successful.
    LOGOUT = "logout"  # Logging out of session [...] / Logout of [...] successful.
    SESSION_LIST = "session list"  # tcp: [SID] IP:PORT,TPGT IQN (non-flash)
    SESSION_TREE = "session tree"  # -m session -P 1..3
    SESSION_STATS = "session stats"  # -m session -s: Stats for session [...] / iSCSI SNMP:
    FIRMWARE = "firmware"  # -m fw: # BEGIN RECORD ... iface.* / node.* per iBFT target
    FIRMWARE_LOGIN = "firmware login"  # -m fw -l: the table's problems, then login lines
    RESCAN = "rescan"  # -R: Rescanning session [...] per session


@dataclass(frozen=True)
class Invocation:
    """One parsed command: what to ask the daemon and how to print the answer."""

    op: str
    args: dict[str, Any]
    view: View
    socket_path: str
    timeout: float
    print_level: int = 0
    show_secrets: bool = False
    json_output: bool = False


class _Parser(argparse.ArgumentParser):
    """argparse that raises :class:`UsageError` instead of printing and exiting with 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


# The flag a person typed, for messages about options that do not fit the mode.
_FLAG = {
    "type": "-t",
    "portal": "-p",
    "targetname": "-T",
    "op": "-o",
    "name": "-n",
    "value": "-v",
    "sid": "-r",
    "print_level": "-P",
    "login": "-l",
    "loginall": "-L",
    "logout": "-u",
    "logoutall": "-U",
    "rescan": "-R",
    "show": "-S",
    "stats": "-s",
}

_ALLOWED = {
    "discovery": {"type", "portal", "login", "print_level", "op"},
    "node": {
        "targetname",
        "portal",
        "op",
        "name",
        "value",
        "login",
        "logout",
        "loginall",
        "logoutall",
        "print_level",
        "show",
        "rescan",
    },
    # No -S: the daemon never hands out a session's secrets (shown as ********).
    "session": {"sid", "print_level", "logout", "rescan", "stats"},
    "fw": {"login"},
}


def _version() -> str:
    from importlib import metadata  # only for -V: the import costs a fifth of start-up

    try:
        return metadata.version("pyiscsid")
    except metadata.PackageNotFoundError:  # running from a checkout that is not installed
        return "unknown"


class _VersionAction(argparse.Action):
    """``-V``: the version, looked up only when asked for."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        print(f"{PROG} version {_version()}")  # on stdout, as argparse's own action
        parser.exit()


def _print_level(text: str) -> int:
    try:
        level = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid print level {text!r}: try 0 - 3") from None
    if not 0 <= level <= 3:
        # iscsiadm: "Invalid info level %d. Try 0 - 3."
        raise argparse.ArgumentTypeError(f"invalid info level {level}: try 0 - 3")
    return level


def _sid(text: str) -> int:
    try:
        sid = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid session id {text!r}: a number") from None
    if sid < 1:
        raise argparse.ArgumentTypeError(f"invalid session id {sid}: session ids start at 1")
    return sid


def _timeout(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid timeout {text!r}: seconds") from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"invalid timeout {text!r}: more than 0 seconds")
    return seconds


def _portal(text: str) -> str:
    """Check ``IP[:PORT][,TPGT]`` (``[IPv6][:PORT][,TPGT]``) and pass it on whole.

    As iscsiadm, a ``,TPGT`` is kept: ``-o new`` records that portal group, and the other
    operations pick the record of that group (scripts paste discovery output, ``IP:PORT,TPGT``,
    into -p). The address itself is the daemon's to resolve; only the shape is checked here.
    """
    whole = portal = text.strip()
    host, sep, tpgt = portal.rpartition(",")
    if sep:
        if not (tpgt.isdigit() and int(tpgt) <= 65535):
            raise argparse.ArgumentTypeError(f"invalid portal {text!r}: IP[:PORT][,TPGT]")
        portal = host
    if not portal or any(c.isspace() for c in portal):
        raise argparse.ArgumentTypeError(f"invalid portal {text!r}: IP[:PORT]")
    if portal.startswith("["):
        close = portal.find("]")
        rest = portal[close + 1 :] if close > 0 else None
        if rest is None or (rest and not rest.startswith(":")):
            raise argparse.ArgumentTypeError(f"invalid portal {text!r}: [IPv6][:PORT]")
        port = rest[1:] if rest else None
    elif portal.count(":") == 1:
        port = portal.partition(":")[2]
    else:  # a name, an IPv4 address, or a bare IPv6 address: no port
        port = None
    if port is not None and not (port.isdigit() and 0 < int(port) < 65536):
        raise argparse.ArgumentTypeError(f"invalid port in portal {text!r}: 1 - 65535")
    return whole


def build_parser() -> argparse.ArgumentParser:
    """The parser: every iscsiadm flag pyiscsiadm knows, with iscsiadm's short and long names."""
    parser = _Parser(
        prog=PROG,
        usage="%(prog)s -m discovery|node|session|fw [options]",
        description=(
            "Drive pyiscsid with iscsiadm's command line: the same modes, flags, output "
            "lines and exit codes."
        ),
        epilog=(
            "synopsis:\n"
            "  pyiscsiadm -m discovery [-t st -p IP[:PORT] [-l]]\n"
            "  pyiscsiadm -m discovery -p IP[:PORT] -o delete\n"
            "  pyiscsiadm -m node [-P 0|1] [-T IQN] [-p IP[:PORT]]\n"
            "                     [-l | -u | -o new|delete|update|show [-n KEY -v VALUE] [-S]]\n"
            "  pyiscsiadm -m node -L all|automatic | -U all\n"
            "  pyiscsiadm -m session [-P 0..3 | -s] [-r SID [-u]]\n"
            "  pyiscsiadm -m fw [-l]\n"
            f"\nThe control socket is --socket, else ${SOCKET_ENV}, else {DEFAULT_SOCKET}."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    add = parser.add_argument
    add("-m", "--mode", required=True, choices=sorted(_ALLOWED), help="what to act on")
    add("-t", "--type", choices=["st", "sendtargets"], help="discovery type (SendTargets)")
    add("-p", "--portal", type=_portal, metavar="IP[:PORT]", help="target portal")
    add("-T", "--targetname", metavar="IQN", help="target name")
    add("-I", "--interface", metavar="IFACE", help="iface (only 'default')")
    add("-o", "--op", choices=["new", "delete", "update", "show"], help="node record operation")
    add("-n", "--name", metavar="KEY", help="record key for -o update")
    add("-v", "--value", metavar="VALUE", help="value for -o update")
    add("-r", "--sid", type=_sid, metavar="SID", help="session id")
    add("-P", "--print", dest="print_level", type=_print_level, metavar="LEVEL", help="0 - 3")
    add("-l", "--login", action="store_true", default=None, help="log in")
    add("-L", "--loginall", choices=["all", "automatic"], help="log in to all/automatic nodes")
    add("-u", "--logout", action="store_true", default=None, help="log out")
    add("-U", "--logoutall", choices=["all"], help="log out of every session")
    add("-R", "--rescan", action="store_true", default=None, help="rescan a session's LUNs")
    add("-S", "--show", action="store_true", default=None, help="show passwords")
    add("-s", "--stats", action="store_true", default=None, help="session counters")
    add("-d", "--debug", type=int, metavar="LEVEL", help="accepted for iscsiadm compatibility")
    add("-V", "--version", action=_VersionAction, help="show the version and exit")
    add("--format", choices=["text", "json"], default="text", help="json: the daemon's result")
    add(
        "--socket",
        metavar="PATH",
        help=f"control socket (default: ${SOCKET_ENV}, {DEFAULT_SOCKET})",
    )
    add("--timeout", type=_timeout, default=DEFAULT_TIMEOUT, metavar="SECONDS", help="wait (180)")
    return parser


def usage() -> str:
    """The one-line usage that precedes a usage error."""
    return build_parser().format_usage()


def parse(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Invocation:
    """Parse ``argv`` (without the program name). Raises :class:`UsageError`.

    ``-h`` and ``-V`` print and raise ``SystemExit(0)``, as argparse does.
    """
    ns = build_parser().parse_args(list(argv))
    env = os.environ if environ is None else environ
    if ns.interface is not None and ns.interface != DEFAULT_IFACE:
        raise UsageError(f"-I {ns.interface}: pyiscsid has only the iface '{DEFAULT_IFACE}'")
    mode: str = ns.mode
    for dest in _FLAG:
        if getattr(ns, dest) is not None and dest not in _ALLOWED[mode]:
            raise UsageError(f"{_FLAG[dest]} is not valid with -m {mode}")
    common: dict[str, Any] = {
        "socket_path": ns.socket or env.get(SOCKET_ENV) or DEFAULT_SOCKET,
        "timeout": ns.timeout,
        "json_output": ns.format == "json",
        "print_level": ns.print_level or 0,
        "show_secrets": bool(ns.show),
    }
    if mode == "discovery":
        return _discovery(ns, common)
    if mode == "node":
        return _node(ns, common)
    if mode == "session":
        return _session(ns, common)
    if ns.login:
        return Invocation(op="fw.login", args={}, view=View.FIRMWARE_LOGIN, **common)
    return Invocation(op="fw.show", args={}, view=View.FIRMWARE, **common)


def _discovery(ns: argparse.Namespace, common: dict[str, Any]) -> Invocation:
    if ns.print_level:
        raise UsageError("-P is not supported with -m discovery (only the flat listing)")
    if ns.op is not None:
        return _discovery_record(ns, common)
    if ns.type is None and ns.portal is None:
        if ns.login:
            raise UsageError("-m discovery -l needs -t st -p IP[:PORT]")
        return Invocation(op="discovery.list", args={}, view=View.DISCOVERY_RECORDS, **common)
    if ns.type is None:
        raise UsageError("-m discovery -p needs a discovery type: -t st")
    if ns.portal is None:
        raise UsageError("-m discovery -t st needs the portal to ask: -p IP[:PORT]")
    args = {"portal": ns.portal, "login": bool(ns.login)}
    return Invocation(op="discovery.sendtargets", args=args, view=View.DISCOVERY_TARGETS, **common)


def _discovery_record(ns: argparse.Namespace, common: dict[str, Any]) -> Invocation:
    """``-o delete`` removes a discovery record and the nodes it found, as iscsiadm;
    ``-o show`` lists the records. A record holds no settings of its own to show or
    update: discovery's are the ``discovery.*`` keys of pyiscsid.conf."""
    if ns.login:
        raise UsageError(f"-l cannot be used with -o {ns.op}")
    if ns.type is not None:
        # iscsiadm's -t st -o new|delete|update discovers and then changes only the records
        # concerned (delete: the targets no longer offered): a different command.
        raise UsageError(
            f"-t {ns.type} with -o {ns.op} is not supported: -m discovery -t st -p IP[:PORT] "
            "records the targets offered; -m discovery -p IP[:PORT] -o delete removes a "
            "discovery record with every node it found"
        )
    if ns.op == "delete":
        if ns.portal is None:
            raise UsageError("-m discovery -o delete needs the record's portal: -p IP[:PORT]")
        args = {"portal": ns.portal}
        return Invocation(op="discovery.delete", args=args, view=View.DISCOVERY_DELETE, **common)
    if ns.op == "show" and ns.portal is None:
        return Invocation(op="discovery.list", args={}, view=View.DISCOVERY_RECORDS, **common)
    raise UsageError(
        f"-m discovery -o {ns.op}{' -p' if ns.portal else ''} is not supported: discovery "
        "settings are the discovery.* keys of pyiscsid.conf, not per record; "
        "-o delete -p IP[:PORT] removes a record, -o show lists them"
    )


def _filters(ns: argparse.Namespace) -> dict[str, Any]:
    """The optional ``target``/``portal`` filters of the node operations."""
    args: dict[str, Any] = {}
    if ns.targetname is not None:
        args["target"] = ns.targetname
    if ns.portal is not None:
        args["portal"] = ns.portal
    return args


def _node(ns: argparse.Namespace, common: dict[str, Any]) -> Invocation:
    actions = [
        flag
        for dest, flag in (
            ("login", "-l"),
            ("logout", "-u"),
            ("loginall", "-L"),
            ("logoutall", "-U"),
            ("op", "-o"),
            ("rescan", "-R"),
        )
        if getattr(ns, dest) is not None
    ]
    if len(actions) > 1:
        raise UsageError(f"{' and '.join(actions)} cannot be used together")
    action = actions[0] if actions else None
    if (ns.name is not None or ns.value is not None) and ns.op != "update":
        raise UsageError("-n and -v go with -o update")
    if ns.show and (action not in (None, "-o") or ns.op not in (None, "show")):
        raise UsageError("-S goes with -o show")
    if ns.print_level and action is not None:
        raise UsageError("-P goes with the node listing, not with an operation")
    if ns.print_level and ns.print_level > 1:
        raise UsageError(f"invalid info level {ns.print_level} for -m node: try 0 or 1")
    filters = _filters(ns)
    if action in ("-L", "-U") and filters:
        # iscsiadm's --loginall/--logoutall take no -T or -p; obeying half of the command
        # (every node, the named one ignored) would surprise whoever typed it.
        every = f"{action} {ns.loginall if action == '-L' else ns.logoutall}"
        named = " and ".join(
            _FLAG[dest] for dest in ("targetname", "portal") if getattr(ns, dest) is not None
        )
        one = "-l" if action == "-L" else "-u"
        raise UsageError(
            f"{every} cannot be used with {named}: {action} acts on every node; "
            f"to act on one node, use -T IQN [-p IP[:PORT]] {one}"
        )

    if action == "-l":
        return Invocation(op="node.login", args=filters, view=View.LOGIN, **common)
    if action == "-u":
        return Invocation(op="node.logout", args=filters, view=View.LOGOUT, **common)
    if action == "-L":
        return Invocation(op="node.login", args={"all": ns.loginall}, view=View.LOGIN, **common)
    if action == "-U":
        return Invocation(op="node.logout", args={"all": ns.logoutall}, view=View.LOGOUT, **common)
    if action == "-R":
        return Invocation(op="session.rescan", args=filters, view=View.RESCAN, **common)
    if ns.op == "new":
        if ns.targetname is None or ns.portal is None:
            raise UsageError("-o new needs both -T IQN and -p IP[:PORT]")
        return Invocation(op="node.new", args=filters, view=View.NODE_NEW, **common)
    if ns.op == "delete":
        return Invocation(op="node.delete", args=filters, view=View.NODE_DELETE, **common)
    if ns.op == "update":
        if ns.name is None or ns.value is None:
            raise UsageError("-o update needs the key and its new value: -n KEY -v VALUE")
        args = {**filters, "key": ns.name, "value": ns.value}
        return Invocation(op="node.update", args=args, view=View.NODE_UPDATE, **common)
    if ns.op == "show" or (filters and not ns.print_level):
        # iscsiadm shows the whole record when a node is named and no operation is given.
        args = {**filters, "secrets": bool(ns.show)}
        return Invocation(op="node.show", args=args, view=View.NODE_RECORDS, **common)
    if ns.print_level == 1:
        if filters:
            args = {**filters, "secrets": False}
            return Invocation(op="node.show", args=args, view=View.NODE_TREE, **common)
        return Invocation(op="node.list", args={}, view=View.NODE_TREE, **common)
    return Invocation(op="node.list", args={}, view=View.NODE_LIST, **common)


def _session(ns: argparse.Namespace, common: dict[str, Any]) -> Invocation:
    if ns.logout and ns.rescan:
        raise UsageError("-u and -R cannot be used together")
    if ns.logout:
        if ns.print_level:
            raise UsageError("-P goes with the session listing, not with -u")
        if ns.sid is None:
            # iscsiadm -m session -u logs out of every session.
            return Invocation(op="node.logout", args={"all": "all"}, view=View.LOGOUT, **common)
        return Invocation(op="session.logout", args={"sid": ns.sid}, view=View.LOGOUT, **common)
    if ns.rescan:
        args = {} if ns.sid is None else {"sid": ns.sid}
        return Invocation(op="session.rescan", args=args, view=View.RESCAN, **common)
    level = ns.print_level or 0
    if ns.stats:
        if level:
            raise UsageError("-s and -P cannot be used together")
        args = {} if ns.sid is None else {"sid": ns.sid}
        return Invocation(op="session.show", args=args, view=View.SESSION_STATS, **common)
    if level == 0 and ns.sid is None:
        return Invocation(op="session.list", args={}, view=View.SESSION_LIST, **common)
    args = {} if ns.sid is None else {"sid": ns.sid}
    view = View.SESSION_LIST if level == 0 else View.SESSION_TREE
    return Invocation(op="session.show", args=args, view=view, **common)
