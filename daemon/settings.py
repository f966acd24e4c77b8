"""Every setting a node record or the config file can hold, in one table.

Keys and defaults are open-iscsi's (``iscsid.conf``, ``iscsiadm -m node -o show``) so that an
administrator's habits and scripts carry over; the few departures are commented where they
are made. Everything else in the daemon (config file, node database, control API) validates
through :func:`validate` here, so a value is accepted or refused the same way everywhere.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import ClassVar

from pyiscsid.protocol.chap import (
    DEFAULT_CHAP_ALGORITHMS,
    ChapConfigError,
    ChapCredentials,
    parse_chap_algorithms,
)
from pyiscsid.protocol.config import ConnectionConfig
from pyiscsid.protocol.errors import ISCSIError
from pyiscsid.protocol.keys import InvalidValue, check_iscsi_name

from .keyvalue import looks_like_key

__all__ = [
    "DAEMON_KEYS",
    "DISCOVERY_KEYS",
    "EMPTY",
    "MASK",
    "NODE_KEYS",
    "OPEN_ISCSI_UNUSED",
    "SETTINGS",
    "InvalidSetting",
    "Kind",
    "Scope",
    "Setting",
    "connection_config",
    "defaults",
    "discovery_connection_config",
    "get",
    "get_int",
    "is_secret",
    "mask",
    "validate",
]

MASK = "********"
"""What a secret looks like when shown (iscsiadm shows passwords the same way)."""

EMPTY = "<empty>"
"""iscsiadm's spelling of an empty value; accepted as input and written to node records."""

_MAX_TEXT = 255  # open-iscsi keeps CHAP names and secrets in 256-byte buffers
_MAX_LENGTH = 2**24 - 1  # RFC 7143 sections 13.12-13.14: 512 to 2**24-1
_WHOLE = re.compile(r"[+-]?[0-9]{1,10}")
# Control characters, and every other character str.splitlines() ends a line at (NEL,
# U+2028, U+2029): such a value would split its line in a node record or iscsid.conf.
_CONTROL = re.compile("[\x00-\x1f\x7f\x85\u2028\u2029]")
_SURROGATE = re.compile("[\ud800-\udfff]")  # not text: cannot be written as UTF-8
_GROUP = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?|[0-9]{1,10}")


class InvalidSetting(ISCSIError, ValueError):
    """A setting key or value that cannot be used; the message names the key.

    The value is shown only for known settings that are not secret, so that a mistyped
    password key never puts the password in a log or a reply. The key is shown only when it
    has a key's shape (:func:`keyvalue.looks_like_key`): a line ``S3cr3tPW=abc`` is a
    password that lost its key, not a setting named S3cr3tPW, and ``key_shown`` is False.
    ``key`` itself is kept for lookups; print it only when ``key_shown``.
    """

    control_code: ClassVar[str] = "invalid"
    control_exit: ClassVar[int] = 7

    def __init__(self, key: str, value: str | None, reason: str) -> None:
        self.key = key
        self.reason = reason
        self.key_shown = looks_like_key(key)
        if not self.key_shown:
            self.value = None
            super().__init__(f"{reason} (not shown)")
            return
        shown = value is not None and key in SETTINGS and not SETTINGS[key].secret
        # A control character or line break would break a log line or a terminal; a lone
        # surrogate cannot be written at all.
        shown = shown and not (_CONTROL.search(value or "") or _SURROGATE.search(value or ""))
        self.value = value if shown else None
        if shown and value is not None:
            text = value if len(value) <= 60 else value[:57] + "..."
            super().__init__(f"{key} = {text or EMPTY}: {reason}")
        else:
            super().__init__(f"{key}: {reason}")


class Kind(enum.Enum):
    """The shape of a setting's value."""

    TEXT = "text"
    NUMBER = "number"
    BOOLEAN = "Yes/No"
    CHOICE = "choice"


class Scope(enum.Enum):
    """Where a setting lives: node records, discovery records, or only the daemon's config."""

    NODE = "node"
    DISCOVERY = "discovery"
    DAEMON = "daemon"


@dataclass(frozen=True, slots=True)
class Setting:
    """One setting: its type, default, limits, and whether it must be hidden.

    ``rfc_key`` names the RFC 7143 operational key the setting offers in a login.
    ``check`` turns an otherwise valid value into its canonical form or raises ValueError
    with the reason (CHAP algorithm lists, digests, powers of two).
    """

    key: str
    kind: Kind
    default: str
    doc: str
    minimum: int | None = None
    maximum: int | None = None
    choices: tuple[str, ...] = ()
    secret: bool = False
    rfc_key: str | None = None
    check: Callable[[str], str] | None = None

    @property
    def scope(self) -> Scope:
        if self.key.startswith(("node.", "iface.")):  # a node record's iface.* keys too
            return Scope.NODE
        if self.key.startswith("discovery."):
            return Scope.DISCOVERY
        return Scope.DAEMON

    def validate(self, value: str) -> str:
        """The value in canonical form, or InvalidSetting saying what is expected."""
        canonical = self._canonical(value)
        if self.check is not None:
            try:
                canonical = self.check(canonical)
            except ValueError as exc:
                raise InvalidSetting(self.key, value, str(exc)) from None
        return canonical

    def _canonical(self, value: str) -> str:
        if self.kind is Kind.TEXT:
            if value == EMPTY:
                return ""
            if _CONTROL.search(value):
                raise InvalidSetting(
                    self.key, value, "must not contain control characters or line breaks"
                )
            if _SURROGATE.search(value):
                raise InvalidSetting(self.key, value, "is not valid UTF-8 text")
            if self.check is not None:
                return value.strip()  # a list or a name: the check writes it canonically
            if value != value.strip():
                raise InvalidSetting(self.key, value, "must not begin or end with a blank")
            if len(value) > _MAX_TEXT:
                raise InvalidSetting(self.key, value, f"longer than {_MAX_TEXT} characters")
            return value
        word = value.strip()
        if self.kind is Kind.NUMBER:
            if not _WHOLE.fullmatch(word):
                raise InvalidSetting(self.key, value, "expected a whole number")
            number = int(word)
            low, high = self.minimum, self.maximum
            if (low is not None and number < low) or (high is not None and number > high):
                if high is None:
                    wanted = f"at least {low}"
                elif low == high:
                    wanted = f"exactly {low}"
                else:
                    wanted = f"from {low} to {high}"
                raise InvalidSetting(self.key, value, f"expected a number {wanted}")
            return str(number)
        choices = ("Yes", "No") if self.kind is Kind.BOOLEAN else self.choices
        for choice in choices:
            if word.lower() == choice.lower():
                return choice
        raise InvalidSetting(self.key, value, f"expected {_one_of(choices)}")


def _one_of(choices: tuple[str, ...]) -> str:
    if len(choices) == 2:
        return f"{choices[0]} or {choices[1]}"
    return "one of " + ", ".join(choices)


def _chap_algs(value: str) -> str:
    try:
        algorithms = parse_chap_algorithms(value)
    except ChapConfigError as exc:
        raise ValueError(str(exc)) from None
    return ",".join(a.label for a in algorithms)


def _initiator_name(value: str) -> str:
    """Empty, or a valid iSCSI name (RFC 3720 section 3.2.6)."""
    if value:
        try:
            check_iscsi_name(value)
        except InvalidValue as exc:
            raise ValueError(exc.reason) from None
    return value


def _digest(value: str) -> str:
    """None, CRC32C, or both in order of preference (open-iscsi's four spellings)."""
    words = [w.strip() for w in value.split(",")]
    names = {"none": "None", "crc32c": "CRC32C"}
    if not 1 <= len(words) <= 2 or any(w.lower() not in names for w in words):
        raise ValueError("expected None, CRC32C, CRC32C,None or None,CRC32C")
    canonical = [names[w.lower()] for w in words]
    if len(set(canonical)) != len(canonical):
        raise ValueError("names the same digest twice: expected CRC32C,None or None,CRC32C")
    return ",".join(canonical)


def _power_of_two(value: str) -> str:
    number = int(value)
    if number & (number - 1):
        raise ValueError("expected a power of two (open-iscsi's rule for cmds_max)")
    return value


def _error_recovery_level(value: str) -> str:
    if value != "0":
        raise ValueError(
            "pyiscsid implements ErrorRecoveryLevel 0 only (recovery by a new login, "
            "RFC 7143 section 7.1.5): set 0"
        )
    return value


def _one_connection(value: str) -> str:
    if value != "1":
        raise ValueError("pyiscsid opens one connection per session: set 1")
    return value


def _group(value: str) -> str:
    if value and not _GROUP.fullmatch(value):
        raise ValueError("expected a group name or number, or nothing for root only")
    return value


def _number(
    key: str,
    default: int,
    minimum: int | None,
    maximum: int | None,
    doc: str,
    *,
    rfc_key: str | None = None,
    check: Callable[[str], str] | None = None,
) -> Setting:
    return Setting(key, Kind.NUMBER, str(default), doc, minimum, maximum, (), False, rfc_key, check)


def _yes_no(key: str, default: str, doc: str, *, rfc_key: str | None = None) -> Setting:
    return Setting(key, Kind.BOOLEAN, default, doc, rfc_key=rfc_key)


def _choice(key: str, default: str, choices: tuple[str, ...], doc: str) -> Setting:
    return Setting(key, Kind.CHOICE, default, doc, choices=choices)


def _text(
    key: str, doc: str, *, secret: bool = False, check: Callable[[str], str] | None = None
) -> Setting:
    return Setting(key, Kind.TEXT, "", doc, secret=secret, check=check)


def _digest_setting(key: str, rfc_key: str) -> Setting:
    doc = f"{rfc_key} offered in the login (RFC 7143 section 13.1), in order of preference"
    return Setting(key, Kind.TEXT, "None", doc, rfc_key=rfc_key, check=_digest)


def _auth(prefix: str, what: str) -> tuple[Setting, ...]:
    return (
        _choice(f"{prefix}.authmethod", "None", ("None", "CHAP"), f"CHAP to authenticate {what}"),
        _text(f"{prefix}.username", f"CHAP user name we give to {what} (CHAP_N)"),
        _text(f"{prefix}.password", f"CHAP secret we share with {what}", secret=True),
        _text(f"{prefix}.username_in", f"user name {what} must answer with (mutual CHAP)"),
        _text(
            f"{prefix}.password_in", f"secret {what} must prove it knows (mutual CHAP)", secret=True
        ),
        # Not open-iscsi's default (SHA3-256,SHA256,SHA1,MD5): tgt computes CHAP_A=7
        # (SHA-256) as SHA-1, so offering SHA256 first means failed logins against tgt.
        Setting(
            f"{prefix}.chap_algs",
            Kind.TEXT,
            ",".join(a.label for a in DEFAULT_CHAP_ALGORITHMS),
            "CHAP algorithms to offer, preferred first (SHA3-256, SHA256, SHA1, MD5)",
            check=_chap_algs,
        ),
    )


_SESSION = "node.session"
_CONN = "node.conn[0]"

# fmt: off
_TABLE: tuple[Setting, ...] = (
    # Node records: open-iscsi's iscsid.conf defaults unless a comment says otherwise.
    _choice("node.startup", "manual", ("manual", "automatic", "onboot"),
            "automatic and onboot nodes are logged in when the daemon starts"),
    _text("iface.initiatorname",
          "initiator name for this node only, e.g. the one a boot firmware table gives; "
          "empty: the daemon's own", check=_initiator_name),
    _yes_no("node.leading_login", "No", "log in to this portal only (no other portals of the "
            "target) when logging in to all automatic nodes"),
    *_auth(f"{_SESSION}.auth", "the target"),
    _number(f"{_SESSION}.timeo.replacement_timeout", 120, -1, None,
            "seconds to hold I/O while the session recovers before failing it; 0 fails at "
            "once, -1 waits forever"),
    _number(f"{_SESSION}.initial_login_retry_max", 8, 0, 1000,
            "login attempts before the first login to a node is given up"),
    _number(f"{_SESSION}.cmds_max", 128, 2, 2048, "commands the session queues at most",
            check=_power_of_two),
    _number(f"{_SESSION}.queue_depth", 32, 1, 1024, "commands one LUN may have outstanding"),
    _yes_no(f"{_SESSION}.iscsi.InitialR2T", "No", "wait for R2T before sending write data",
            rfc_key="InitialR2T"),
    _yes_no(f"{_SESSION}.iscsi.ImmediateData", "Yes", "send write data with the command",
            rfc_key="ImmediateData"),
    _number(f"{_SESSION}.iscsi.FirstBurstLength", 262144, 512, _MAX_LENGTH,
            "unsolicited write data per command, bytes", rfc_key="FirstBurstLength"),
    _number(f"{_SESSION}.iscsi.MaxBurstLength", 16776192, 512, _MAX_LENGTH,
            "data per sequence, bytes", rfc_key="MaxBurstLength"),
    _number(f"{_SESSION}.iscsi.DefaultTime2Wait", 2, 0, 3600,
            "seconds to wait before logging in again after a connection loss",
            rfc_key="DefaultTime2Wait"),
    _number(f"{_SESSION}.iscsi.DefaultTime2Retain", 0, 0, 3600,
            "seconds the target keeps tasks after a connection loss",
            rfc_key="DefaultTime2Retain"),
    _number(f"{_SESSION}.iscsi.MaxConnections", 1, 1, 1, "connections per session",
            rfc_key="MaxConnections", check=_one_connection),
    _number(f"{_SESSION}.iscsi.MaxOutstandingR2T", 1, 1, 65535,
            "R2Ts the target may have outstanding per task", rfc_key="MaxOutstandingR2T"),
    _number(f"{_SESSION}.iscsi.ERL", 0, 0, 2, "ErrorRecoveryLevel (RFC 7143 section 7.1.5)",
            rfc_key="ErrorRecoveryLevel", check=_error_recovery_level),
    _yes_no(f"{_SESSION}.iscsi.FastAbort", "Yes",
            "open-iscsi's FastAbort; kept for compatibility, not negotiated"),
    _number(f"{_SESSION}.reopen_max", 0, 0, 1_000_000,
            "reconnect attempts after a failure before the session is given up; 0 = forever"),
    _number(f"{_SESSION}.err_timeo.command_timeout", 30, 1, 3600,
            "seconds a SCSI command may go unanswered before it is aborted "
            "(the Linux SCSI layer's default timeout)"),
    _number(f"{_SESSION}.err_timeo.abort_timeout", 15, 1, 3600,
            "seconds to wait for an ABORT TASK to finish"),
    _number(f"{_SESSION}.err_timeo.lu_reset_timeout", 30, 1, 3600,
            "seconds to wait for a LOGICAL UNIT RESET to finish"),
    _number(f"{_SESSION}.err_timeo.tgt_reset_timeout", 30, 1, 3600,
            "seconds to wait for a TARGET WARM RESET to finish"),
    _number(f"{_CONN}.iscsi.MaxRecvDataSegmentLength", 262144, 512, _MAX_LENGTH,
            "largest data segment we accept, bytes", rfc_key="MaxRecvDataSegmentLength"),
    _digest_setting(f"{_CONN}.iscsi.HeaderDigest", "HeaderDigest"),
    _digest_setting(f"{_CONN}.iscsi.DataDigest", "DataDigest"),
    _number(f"{_CONN}.timeo.login_timeout", 15, 1, 3600, "seconds one login attempt may take"),
    _number(f"{_CONN}.timeo.logout_timeout", 15, 1, 3600, "seconds a logout may take"),
    _number(f"{_CONN}.timeo.noop_out_interval", 5, 0, 3600,
            "seconds between NOP-Out pings; 0 turns pings off"),
    _number(f"{_CONN}.timeo.noop_out_timeout", 5, 0, 3600,
            "seconds to wait for a ping's answer before the connection is declared dead"),
    _number(f"{_CONN}.tcp.window_size", 524288, 0, 2**31 - 1,
            "TCP socket buffer size, bytes; 0 leaves the kernel's"),
    _number(f"{_CONN}.tcp.type_of_service", 0, 0, 255, "IP TOS byte of the connection"),
    # Discovery (SendTargets) sessions.
    *_auth("discovery.sendtargets.auth", "the discovery portal"),
    _number("discovery.sendtargets.timeo.login_timeout", 15, 1, 3600,
            "seconds a discovery login may take"),
    _number("discovery.sendtargets.iscsi.MaxRecvDataSegmentLength", 32768, 512, _MAX_LENGTH,
            "largest data segment we accept in discovery, bytes",
            rfc_key="MaxRecvDataSegmentLength"),
    # The daemon itself (config file only).
    _text("control.group", "group whose members may change things over the control socket "
          "(root always may); empty for root only", check=_group),
    _choice("log.level", "info", ("debug", "info", "warning", "error"),
            "least important log events written"),
    _yes_no("iscsid.safe_logout", "No",
            "refuse to log out of a session whose disk an NBD client is using"),
    _number("iscsid.busy_poll", 0, 0, 1000,
            "microseconds to read a connection in a loop for the answer to a command alone "
            "in flight, instead of sleeping (as net.core.busy_poll): lower latency one "
            "request at a time, for a CPU kept busy meanwhile; 0 = off"),
    _number("daemon.shutdown_timeout", 15, 1, 3600,
            "seconds to log out of every session at SIGTERM before giving up"),
    Setting("firmware.ibft_path", Kind.TEXT, "/sys/firmware/ibft",
            "where the iscsi_ibft driver shows the iBFT (-m fw); another path for tests"),
    Setting("rootdisk.mountinfo_path", Kind.TEXT, "/proc/self/mountinfo",
            "mount table read at shutdown to find the disk holding /; another path for tests"),
    Setting("rootdisk.sysfs_path", Kind.TEXT, "/sys",
            "sysfs read at shutdown to find the NBD device under /; another path for tests"),
)
# fmt: on

SETTINGS: Mapping[str, Setting] = MappingProxyType({s.key: s for s in _TABLE})
"""Every setting by key, in table order."""

NODE_KEYS: tuple[str, ...] = tuple(s.key for s in _TABLE if s.scope is Scope.NODE)
DISCOVERY_KEYS: tuple[str, ...] = tuple(s.key for s in _TABLE if s.scope is Scope.DISCOVERY)
DAEMON_KEYS: tuple[str, ...] = tuple(s.key for s in _TABLE if s.scope is Scope.DAEMON)

OPEN_ISCSI_UNUSED: frozenset[str] = frozenset(
    {
        "iscsid.startup",
        "iscsid.ipc_auth_uid",
        "node.session.nr_sessions",
        "node.session.xmit_thread_priority",
        "node.session.scan",
        "node.session.reopen_max",
        "node.session.initial_cmdsn",
        "node.session.err_timeo.host_reset_timeout",
        "node.conn[0].startup",
        "node.conn[0].timeo.auth_timeout",
        "node.conn[0].iscsi.MaxXmitDataSegmentLength",
        "node.conn[0].iscsi.IFMarker",
        "node.conn[0].iscsi.OFMarker",
        "discovery.sendtargets.use_discoveryd",
        "discovery.sendtargets.discoveryd_poll_inval",
        "discovery.sendtargets.reopen_max",
        "discovery.sendtargets.timeo.auth_timeout",
        "discovery.sendtargets.timeo.active_timeout",
        "discovery.isns.use_discoveryd",
        "discovery.isns.discoveryd_poll_inval",
    }
)
"""open-iscsi keys that pyiscsid knows but does not use: refused with a message saying so."""


def _setting(key: str, value: str | None = None) -> Setting:
    spec = SETTINGS.get(key)
    if spec is not None:
        return spec
    if key in OPEN_ISCSI_UNUSED:
        raise InvalidSetting(key, value, "an open-iscsi setting that pyiscsid does not use")
    if not looks_like_key(key):
        raise InvalidSetting(key, value, "not a known setting")  # "... (not shown)"
    close = difflib.get_close_matches(key, SETTINGS, n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    raise InvalidSetting(key, value, f"unknown setting{hint}")


def validate(key: str, value: str) -> str:
    """The canonical form of ``value`` for ``key`` ("yes" -> "Yes", "0x10" refused...).

    Raises InvalidSetting naming the key (and the value, unless the key is secret).
    """
    return _setting(key, value).validate(value)


def is_secret(key: str) -> bool:
    """True for passwords: never logged, masked when shown."""
    spec = SETTINGS.get(key)
    return spec is not None and spec.secret


def mask(settings: Mapping[str, str]) -> dict[str, str]:
    """A copy to show to people: secrets that are set become ``********``.

    An empty secret stays empty, so that "no password configured" remains visible.
    """
    return {k: (MASK if v and is_secret(k) else v) for k, v in settings.items()}


def defaults(scope: Scope) -> dict[str, str]:
    """The table's default for every setting of ``scope``."""
    return {s.key: s.default for s in _TABLE if s.scope is scope}


def get(settings: Mapping[str, str], key: str) -> str:
    """``settings[key]`` validated, or the table default when absent."""
    spec = _setting(key)
    value = settings.get(key)
    return spec.default if value is None else spec.validate(value)


def get_int(settings: Mapping[str, str], key: str) -> int:
    """A number setting as an int (timeouts, retry counts)."""
    spec = _setting(key)
    if spec.kind is not Kind.NUMBER:
        raise TypeError(f"{key} is not a number setting")
    return int(get(settings, key))


def connection_config(
    settings: Mapping[str, str],
    *,
    initiator_name: str,
    target_name: str | None,
    isid: int,
) -> ConnectionConfig:
    """The protocol core's config for a login to ``target_name`` (None: a discovery session).

    A normal session takes ``node.*`` settings, a discovery session
    ``discovery.sendtargets.*``; keys absent from ``settings`` take the table default.
    """
    discovery = target_name is None
    scope = Scope.DISCOVERY if discovery else Scope.NODE
    auth = "discovery.sendtargets.auth" if discovery else "node.session.auth"
    operational = {
        s.rfc_key: get(settings, s.key)
        for s in _TABLE
        if s.rfc_key is not None and s.scope is scope
    }
    algorithms = parse_chap_algorithms(get(settings, f"{auth}.chap_algs"))
    if not discovery:
        initiator_name = get(settings, "iface.initiatorname") or initiator_name
    config = ConnectionConfig(
        initiator_name,
        target_name,
        isid=isid,
        chap=_chap_credentials(settings, auth),
        chap_algorithms=algorithms,
        operational=operational,
    )
    if discovery:
        return config  # a short exchange: the core's default pings will do
    return dataclasses.replace(
        config,
        noop_out_interval=float(get_int(settings, f"{_CONN}.timeo.noop_out_interval")),
        noop_out_timeout=float(get_int(settings, f"{_CONN}.timeo.noop_out_timeout")),
    )


def discovery_connection_config(
    settings: Mapping[str, str], *, initiator_name: str, isid: int
) -> ConnectionConfig:
    """The config of a SendTargets discovery session, from ``discovery.sendtargets.*``."""
    return connection_config(settings, initiator_name=initiator_name, target_name=None, isid=isid)


def _chap_credentials(settings: Mapping[str, str], auth: str) -> ChapCredentials | None:
    """CHAP credentials when ``<auth>.authmethod`` is CHAP, checked for what is missing."""
    method = get(settings, f"{auth}.authmethod")
    if method != "CHAP":
        return None
    values = {
        name: get(settings, f"{auth}.{name}")
        for name in ("username", "password", "username_in", "password_in")
    }
    for name in ("username", "password"):
        if not values[name]:
            raise InvalidSetting(
                f"{auth}.{name}",
                values[name],
                f"{auth}.authmethod is CHAP but {auth}.{name} is empty: set it",
            )
    have_in = [name for name in ("username_in", "password_in") if values[name]]
    if len(have_in) == 1:
        missing = "password_in" if have_in == ["username_in"] else "username_in"
        raise InvalidSetting(
            f"{auth}.{missing}",
            "",
            f"mutual CHAP needs both {auth}.username_in and {auth}.password_in: "
            f"set {auth}.{missing}, or clear the other to use one-way CHAP",
        )
    if have_in and values["password_in"] == values["password"]:
        raise InvalidSetting(
            f"{auth}.password_in",
            None,
            f"must differ from {auth}.password: a CHAP secret may not authenticate both "
            "directions (RFC 7143 section 12.1.3)",
        )
    try:
        return ChapCredentials.from_config(
            values["username"],
            values["password"],
            values["username_in"] or None,
            values["password_in"] or None,
        )
    except ChapConfigError as exc:
        raise InvalidSetting(f"{auth}.authmethod", method, str(exc)) from None
