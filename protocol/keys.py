"""The one table of negotiation keys (RFC 7143 section 13, RFC 7144 section 2.1).

Every rule the negotiator applies is read from :data:`KEYS`: a key's type, its result function,
its default and range, who may send it, when (login stage, leading connection, full feature
phase) and whether it matters in a Discovery session. Reading the table tells you the keys.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from .errors import NegotiationError, TargetProtocolError
from .text import decode_binary

NOT_UNDERSTOOD = "NotUnderstood"
REJECT = "Reject"
IRRELEVANT = "Irrelevant"
RESERVED_VALUES = frozenset({NOT_UNDERSTOOD, REJECT, IRRELEVANT})
"""Constants that answer a key instead of giving it a value (RFC 7143 section 6.2)."""

MAX_VALUE_LENGTH = 255
"""Default bound on a value, in bytes (RFC 7143 section 6.1)."""

MAX_ISCSI_NAME_LENGTH = 223
"""iSCSI names are at most 223 bytes (RFC 7143 section 4.2.7.1)."""

_DECIMAL = re.compile(r"[0-9]{1,20}")


class InvalidValue(NegotiationError):
    """A value that the key's type or range does not allow; ``reason`` omits the key name."""

    def __init__(self, reason: str, key: str) -> None:
        self.reason = reason
        super().__init__(reason, key=key)


class KeyType(enum.Enum):
    """The shape of a key's value (RFC 7143 section 6.1)."""

    BOOLEAN = "boolean"  # Yes or No
    NUMERIC = "numeric"  # an unsigned integer, decimal (or hex/base64 when received)
    LIST = "list"  # comma-separated values, the proposer's preference first
    STRING = "string"  # text, an iSCSI name, or one value of ``choices``
    BINARY = "binary"  # hex (0x) or base64 (0b) encoded bytes


class ResultRule(enum.Enum):
    """How the two sides' values combine into the result (RFC 7143 sections 6.2.1, 6.2.2)."""

    AND = "and"
    OR = "or"
    MIN = "min"
    MAX = "max"
    FIRST_MATCH = "first-match"  # the acceptor picks the first offered value it supports
    DECLARATIVE = "declarative"  # each side states its own value; nothing to answer


class KeyScope(enum.Enum):
    """Whether the value holds for the whole session (SW) or one connection (CO)."""

    SESSION = "SW"
    CONNECTION = "CO"


class KeyUse(enum.Enum):
    """When a key may be sent: the "Use" line of RFC 7143 section 13."""

    LEADING_ONLY = "LO"  # login of the leading connection only
    INITIALIZE_ONLY = "IO"  # login of any connection
    ALL = "ALL"  # login or full feature phase
    FULL_FEATURE_ONLY = "FFPO"  # full feature phase only (SendTargets)
    SECURITY = "S"  # security negotiation stage only (RFC 7143 section 12)


class Sender(enum.Enum):
    """Who may send the key (the "Senders" line of RFC 7143 section 13)."""

    INITIATOR = "I"
    TARGET = "T"
    BOTH = "I&T"


class Phase(enum.Enum):
    """Where a text is exchanged: login stages (RFC 7143 section 6.3) or full feature phase."""

    SECURITY = "security"
    OPERATIONAL = "operational"
    FULL_FEATURE = "full-feature"


Parsed = bool | int | str | bytes | tuple[str, ...]


@dataclass(frozen=True, slots=True)
class KeySpec:
    """One key of RFC 7143 section 13: what it holds and how it is negotiated."""

    name: str
    type: KeyType
    rule: ResultRule
    default: str | None
    sender: Sender
    use: KeyUse
    scope: KeyScope
    section: str
    minimum: int | None = None
    maximum: int | None = None
    choices: tuple[str, ...] = ()
    max_length: int = MAX_VALUE_LENGTH
    discovery: bool = True
    """False when RFC 7143 says "Irrelevant when: SessionType=Discovery"."""
    repeatable: bool = False
    """May be sent more than once in one negotiation (TargetAddress, RFC 7143 section 6.2)."""
    iscsi_name: bool = False
    security_stage: bool = False
    """A declaration that may travel in the security stage too (the login keys, RFC 7143
    section 6.3); security keys always may, other operational keys never."""
    obsolete: bool = False
    """Obsoleted by RFC 7143 (the RFC 3720 markers): answered with Reject, never offered."""

    @property
    def declarative(self) -> bool:
        return self.rule is ResultRule.DECLARATIVE

    def allowed_in(self, phase: Phase, *, leading: bool = True) -> bool:
        """May this key appear in ``phase`` (RFC 7143 sections 6.3 and 13)?

        Only security keys and the login declarations belong to the security stage;
        operational keys wait for the operational stage; LO keys only on the leading
        connection.
        """
        if phase is Phase.FULL_FEATURE:
            return self.use in (KeyUse.ALL, KeyUse.FULL_FEATURE_ONLY)
        if self.use is KeyUse.FULL_FEATURE_ONLY:
            return False
        if self.use is KeyUse.LEADING_ONLY and not leading:
            return False
        if phase is Phase.SECURITY:
            return self.use is KeyUse.SECURITY or self.security_stage
        return self.use is not KeyUse.SECURITY

    def parse(self, value: str) -> Parsed:
        """The value as Python data; NegotiationError(key=name) says what is wrong with it."""
        if value in RESERVED_VALUES:
            raise InvalidValue(f"{value} is not a value", key=self.name)
        if len(value.encode("utf-8")) > self.max_length:
            raise InvalidValue(
                f"value longer than {self.max_length} bytes: {value[:40]!r}...", key=self.name
            )
        match self.type:
            case KeyType.BOOLEAN:
                if value == "Yes":
                    return True
                if value == "No":
                    return False
                raise InvalidValue(f"expected Yes or No, got {value!r}", key=self.name)
            case KeyType.NUMERIC:
                number = parse_number(value, self.name)
                lo = 0 if self.minimum is None else self.minimum
                if number < lo or (self.maximum is not None and number > self.maximum):
                    raise InvalidValue(f"{number} is outside {lo}..{self.maximum}", key=self.name)
                return number
            case KeyType.LIST:
                items = tuple(value.split(","))
                if any(not item for item in items):
                    raise InvalidValue(f"empty item in list {value!r}", key=self.name)
                if self.choices:
                    unknown = [item for item in items if item not in self.choices]
                    if unknown:
                        raise InvalidValue(
                            f"unknown value {unknown[0]!r} (expected {', '.join(self.choices)})",
                            key=self.name,
                        )
                if len(set(items)) != len(items):
                    raise InvalidValue(f"repeated item in list {value!r}", key=self.name)
                return items
            case KeyType.BINARY:
                try:
                    return decode_binary(value, self.name)
                except TargetProtocolError as exc:
                    reason = str(exc).removeprefix(f"{self.name}: ")
                    raise InvalidValue(reason, key=self.name) from None
            case KeyType.STRING:
                if self.choices and value not in self.choices:
                    raise InvalidValue(
                        f"expected one of {', '.join(self.choices)}, got {value!r}", key=self.name
                    )
                if self.iscsi_name:
                    check_iscsi_name(value, self.name)
                return value

    def validate(self, value: str) -> str:
        """The value in canonical form (numbers in decimal), or NegotiationError."""
        return self.format(self.parse(value))

    def format(self, parsed: Parsed) -> str:
        """The wire form of a parsed value."""
        if isinstance(parsed, bool):
            return "Yes" if parsed else "No"
        if isinstance(parsed, int):
            return str(parsed)
        if isinstance(parsed, bytes):
            return "0x" + parsed.hex()
        if isinstance(parsed, tuple):
            return ",".join(parsed)
        return parsed


def parse_number(value: str, key: str = "value") -> int:
    """A numerical-value: decimal, or hex (0x) / base64 (0b) as RFC 7143 section 6.1 allows."""
    if _DECIMAL.fullmatch(value):
        return int(value)
    if value[:2] in ("0x", "0X", "0b", "0B") and len(value) <= 2 + 24:
        try:
            raw = decode_binary(value, key)
        except TargetProtocolError:
            raw = b""
        if raw:
            return int.from_bytes(raw, "big")
    raise InvalidValue(f"expected a number, got {value[:40]!r}", key=key)


def check_iscsi_name(value: str, key: str = "name") -> None:
    """An iqn., eui. or naa. name of at most 223 bytes (RFC 7143 section 4.2.7)."""
    if len(value.encode("utf-8")) > MAX_ISCSI_NAME_LENGTH:
        raise InvalidValue(
            f"iSCSI name longer than {MAX_ISCSI_NAME_LENGTH} bytes: {value[:40]!r}...", key=key
        )
    if not value.lower().startswith(("iqn.", "eui.", "naa.")) or any(ch.isspace() for ch in value):
        raise InvalidValue(
            f"{value!r} is not an iSCSI name (iqn.…, eui.… or naa.…, no spaces)", key=key
        )


def is_private_key(name: str) -> bool:
    """X- (vendor) and X# (IANA-registered) extension keys (RFC 7143 section 13.22)."""
    return name.startswith(("X-", "X#"))


_S, _C = KeyScope.SESSION, KeyScope.CONNECTION
_LO, _IO, _ALL, _FFPO, _SEC = (
    KeyUse.LEADING_ONLY,
    KeyUse.INITIALIZE_ONLY,
    KeyUse.ALL,
    KeyUse.FULL_FEATURE_ONLY,
    KeyUse.SECURITY,
)
_I, _T, _B = Sender.INITIATOR, Sender.TARGET, Sender.BOTH
_MAX_LENGTH = 2**24 - 1  # RFC 7143 sections 13.12-13.14: 512 to 2**24-1

# fmt: off
_TABLE: tuple[KeySpec, ...] = (
    # Login declarations, sent in the first Login Request (RFC 7143 sections 13.4-13.9, 13.21).
    KeySpec("InitiatorName", KeyType.STRING, ResultRule.DECLARATIVE, None, _I, _IO, _S, "13.5",
            max_length=MAX_ISCSI_NAME_LENGTH, iscsi_name=True, security_stage=True),
    KeySpec("InitiatorAlias", KeyType.STRING, ResultRule.DECLARATIVE, None, _I, _ALL, _S, "13.7",
            security_stage=True),
    KeySpec("SessionType", KeyType.STRING, ResultRule.DECLARATIVE, "Normal", _I, _LO, _S, "13.21",
            choices=("Discovery", "Normal"), security_stage=True),
    KeySpec("TargetName", KeyType.STRING, ResultRule.DECLARATIVE, None, _B, _IO, _S, "13.4",
            max_length=MAX_ISCSI_NAME_LENGTH, iscsi_name=True, repeatable=True,
            security_stage=True),
    KeySpec("TargetAlias", KeyType.STRING, ResultRule.DECLARATIVE, None, _T, _ALL, _S, "13.6",
            security_stage=True),
    KeySpec("TargetAddress", KeyType.STRING, ResultRule.DECLARATIVE, None, _T, _ALL, _S, "13.8",
            repeatable=True, security_stage=True),
    KeySpec("TargetPortalGroupTag", KeyType.NUMERIC, ResultRule.DECLARATIVE, None, _T, _IO, _S,
            "13.9", minimum=0, maximum=65535, security_stage=True),
    # Security stage (RFC 7143 sections 12 and 12.1.3); the CHAP keys belong to chap.py.
    KeySpec("AuthMethod", KeyType.LIST, ResultRule.FIRST_MATCH, "None", _B, _SEC, _C, "12",
            choices=("None", "CHAP", "SRP", "KRB5", "SPKM1", "SPKM2")),
    KeySpec("CHAP_A", KeyType.LIST, ResultRule.FIRST_MATCH, None, _B, _SEC, _C, "12.1.3"),
    KeySpec("CHAP_I", KeyType.NUMERIC, ResultRule.DECLARATIVE, None, _B, _SEC, _C, "12.1.3",
            minimum=0, maximum=255),
    KeySpec("CHAP_C", KeyType.BINARY, ResultRule.DECLARATIVE, None, _B, _SEC, _C, "12.1.3",
            max_length=8192),
    KeySpec("CHAP_N", KeyType.STRING, ResultRule.DECLARATIVE, None, _B, _SEC, _C, "12.1.3"),
    KeySpec("CHAP_R", KeyType.BINARY, ResultRule.DECLARATIVE, None, _B, _SEC, _C, "12.1.3",
            max_length=8192),
    # Operational keys (RFC 7143 sections 13.1-13.20, 13.23, RFC 7144 section 2.1).
    KeySpec("HeaderDigest", KeyType.LIST, ResultRule.FIRST_MATCH, "None", _B, _IO, _C, "13.1",
            choices=("CRC32C", "None")),
    KeySpec("DataDigest", KeyType.LIST, ResultRule.FIRST_MATCH, "None", _B, _IO, _C, "13.1",
            choices=("CRC32C", "None")),
    KeySpec("MaxConnections", KeyType.NUMERIC, ResultRule.MIN, "1", _B, _LO, _S, "13.2",
            minimum=1, maximum=65535, discovery=False),
    KeySpec("InitialR2T", KeyType.BOOLEAN, ResultRule.OR, "Yes", _B, _LO, _S, "13.10",
            discovery=False),
    KeySpec("ImmediateData", KeyType.BOOLEAN, ResultRule.AND, "Yes", _B, _LO, _S, "13.11",
            discovery=False),
    KeySpec("MaxRecvDataSegmentLength", KeyType.NUMERIC, ResultRule.DECLARATIVE, "8192", _B, _ALL,
            _C, "13.12", minimum=512, maximum=_MAX_LENGTH),
    KeySpec("MaxBurstLength", KeyType.NUMERIC, ResultRule.MIN, "262144", _B, _LO, _S, "13.13",
            discovery=False, minimum=512, maximum=_MAX_LENGTH),
    KeySpec("FirstBurstLength", KeyType.NUMERIC, ResultRule.MIN, "65536", _B, _LO, _S, "13.14",
            discovery=False, minimum=512, maximum=_MAX_LENGTH),
    KeySpec("DefaultTime2Wait", KeyType.NUMERIC, ResultRule.MAX, "2", _B, _LO, _S, "13.15",
            minimum=0, maximum=3600),
    KeySpec("DefaultTime2Retain", KeyType.NUMERIC, ResultRule.MIN, "20", _B, _LO, _S, "13.16",
            minimum=0, maximum=3600),
    KeySpec("MaxOutstandingR2T", KeyType.NUMERIC, ResultRule.MIN, "1", _B, _LO, _S, "13.17",
            minimum=1, maximum=65535, discovery=False),
    KeySpec("DataPDUInOrder", KeyType.BOOLEAN, ResultRule.OR, "Yes", _B, _LO, _S, "13.18",
            discovery=False),
    KeySpec("DataSequenceInOrder", KeyType.BOOLEAN, ResultRule.OR, "Yes", _B, _LO, _S, "13.19",
            discovery=False),
    KeySpec("ErrorRecoveryLevel", KeyType.NUMERIC, ResultRule.MIN, "0", _B, _LO, _S, "13.20",
            minimum=0, maximum=2),
    KeySpec("TaskReporting", KeyType.LIST, ResultRule.FIRST_MATCH, "RFC3720", _B, _LO, _S,
            "13.23", choices=("RFC3720", "ResponseFence", "FastAbort"), discovery=False),
    KeySpec("iSCSIProtocolLevel", KeyType.NUMERIC, ResultRule.MIN, "1", _B, _LO, _S, "13.24",
            minimum=0, maximum=31, discovery=False),
    KeySpec("X#NodeArchitecture", KeyType.STRING, ResultRule.DECLARATIVE, None, _B, _LO, _S,
            "13.25"),
    # Full feature phase only (RFC 7143 section 13.3).
    KeySpec("SendTargets", KeyType.STRING, ResultRule.DECLARATIVE, None, _I, _FFPO, _S, "13.3"),
    # Obsoleted RFC 3720 markers: never offered, answered with Reject (RFC 7143 section 13.26).
    KeySpec("OFMarker", KeyType.BOOLEAN, ResultRule.AND, "No", _B, _IO, _C, "13.26",
            obsolete=True),
    KeySpec("IFMarker", KeyType.BOOLEAN, ResultRule.AND, "No", _B, _IO, _C, "13.26",
            obsolete=True),
    KeySpec("OFMarkInt", KeyType.STRING, ResultRule.FIRST_MATCH, "2048", _B, _IO, _C, "13.26",
            obsolete=True),
    KeySpec("IFMarkInt", KeyType.STRING, ResultRule.FIRST_MATCH, "2048", _B, _IO, _C, "13.26",
            obsolete=True),
)
# fmt: on

KEYS: Mapping[str, KeySpec] = MappingProxyType({spec.name: spec for spec in _TABLE})
"""Every key of RFC 7143 (and RFC 7144's iSCSIProtocolLevel), by name, in table order."""
