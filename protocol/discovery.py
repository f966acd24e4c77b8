"""SendTargets discovery: the request and its response (RFC 7143 section 6.3 and Appendix C).

Also the portal notation iscsiadm users type and read: ``IP[:PORT][,TPGT]``, with IPv6
addresses in brackets (``[fe80::1]:3260,1``), the same form as a TargetAddress value
(RFC 7143 section 13.8).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

from .errors import InitiatorProtocolError, ISCSIError, TargetProtocolError

__all__ = [
    "DEFAULT_PORT",
    "DiscoveredTarget",
    "OfferedTarget",
    "Portal",
    "PortalFormatError",
    "SkippedEntry",
    "format_send_targets",
    "parse_portal",
    "parse_send_targets",
    "parse_target_address",
    "read_send_targets",
    "send_targets_request",
]

DEFAULT_PORT = 3260
"""The IANA port for iSCSI, assumed when a TargetAddress has none (RFC 7143 section 13.8)."""

_DIGITS = re.compile(r"[0-9]{1,5}")
_DOTTED = re.compile(r"[0-9.]+")
_HOSTNAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,251}[A-Za-z0-9_.])?")
_FORMS = "expected ADDRESS[:PORT][,TPGT], with an IPv6 address in brackets: [fe80::1]:3260,1"


class PortalFormatError(ISCSIError, ValueError):
    """A portal (``IP[:PORT][,TPGT]``) that cannot be parsed; the message names the text."""


@dataclass(frozen=True)
class Portal:
    """A target's network portal and its portal group tag (RFC 7143 sections 4.4.1 and 13.8).

    ``address`` is a host name, an IPv4 address, or an IPv6 address without brackets.
    ``tpgt`` is None when unknown (a portal the user typed, a target that left it out).
    """

    address: str
    port: int = DEFAULT_PORT
    tpgt: int | None = None

    def __post_init__(self) -> None:
        _check_address(self.address, self.address)
        if not 1 <= self.port <= 65535:
            raise PortalFormatError(f"port {self.port} of portal {self.address!r} is not 1..65535")
        if self.tpgt is not None and not 0 <= self.tpgt <= 65535:
            raise PortalFormatError(
                f"portal group tag {self.tpgt} of portal {self.address!r} is not 0..65535"
            )

    @property
    def address_port(self) -> str:
        """``IP:PORT`` (``[IPv6]:PORT``), the form of iscsiadm's ``-p``."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        """``IP:PORT,TPGT`` as iscsiadm prints it, and as a TargetAddress value."""
        if self.tpgt is None:
            return self.address_port
        return f"{self.address_port},{self.tpgt}"


@dataclass(frozen=True)
class DiscoveredTarget:
    """One target of a SendTargets response and the portals it can be reached at."""

    name: str
    portals: tuple[Portal, ...]


def parse_portal(text: str, default_port: int = DEFAULT_PORT) -> Portal:
    """Parse ``ADDRESS[:PORT][,TPGT]`` (RFC 7143 section 13.8; RFC 3986 brackets for IPv6).

    An IPv6 address may come without brackets only when no port follows it: with two or
    more colons the whole text is the address.
    """
    rest = text.strip()
    tpgt: int | None = None
    if "," in rest:
        rest, tag = rest.split(",", 1)
        tpgt = _number(tag, text, "portal group tag", 0)
    port = default_port
    if rest.startswith("["):
        address, bracket, after = rest[1:].partition("]")
        if not bracket:
            raise PortalFormatError(f"portal {text!r} has no closing ']'; {_FORMS}")
        if ":" not in address:
            raise PortalFormatError(f"portal {text!r}: only an IPv6 address goes in brackets")
        if after:
            if not after.startswith(":"):
                raise PortalFormatError(f"portal {text!r}: junk after ']'; {_FORMS}")
            port = _number(after[1:], text, "port", 1)
    elif rest.count(":") == 1:
        address, _, number = rest.partition(":")
        port = _number(number, text, "port", 1)
    else:
        address = rest
    _check_address(address, text)
    return Portal(address, port, tpgt)


def parse_target_address(value: str) -> Portal:
    """A TargetAddress the target sent (SendTargets or a login redirect, RFC 7143 13.8).

    Same syntax as :func:`parse_portal`, but a bad value is the target's fault:
    :class:`TargetProtocolError`.
    """
    try:
        return parse_portal(value)
    except PortalFormatError as exc:
        raise TargetProtocolError(f"bad TargetAddress={value!r}: {exc}") from None


def _number(digits: str, text: str, what: str, low: int) -> int:
    if not _DIGITS.fullmatch(digits) or not low <= int(digits) <= 65535:
        raise PortalFormatError(f"portal {text!r}: {what} {digits!r} is not a number {low}..65535")
    return int(digits)


def _check_address(address: str, text: str) -> None:
    """A host name, a dotted IPv4 address, or an IPv6 address (without brackets)."""
    if ":" in address:
        try:
            ipaddress.IPv6Address(address)
        except ValueError:
            raise PortalFormatError(
                f"portal {text!r}: {address!r} is not an IPv6 address; {_FORMS}"
            ) from None
    elif _DOTTED.fullmatch(address):
        try:
            ipaddress.IPv4Address(address)
        except ValueError:
            raise PortalFormatError(
                f"portal {text!r}: {address!r} is not an IPv4 address"
            ) from None
    elif not _HOSTNAME.fullmatch(address):
        what = "no address" if not address else f"{address!r} is not a host name"
        raise PortalFormatError(f"portal {text!r}: {what}; {_FORMS}")


def send_targets_request(target: str = "All") -> list[tuple[str, str]]:
    """The key of a SendTargets Text Request (RFC 7143 section 6.3 and Appendix C).

    ``"All"`` asks a discovery session for every target; a TargetName asks about that
    target; an empty value, in a normal session, about the session's own target.
    """
    if "\x00" in target or "=" in target:
        raise InitiatorProtocolError(f"SendTargets value {target!r} contains '=' or NUL")
    return [("SendTargets", target)]


@dataclass(frozen=True)
class OfferedTarget:
    """A target as a SendTargets response offers it: its name, which TargetName of the
    response it is (1-based), its usable portals (each with which of its TargetAddress keys
    it came from) and how many TargetAddress keys it had in all."""

    name: str
    number: int
    portals: tuple[tuple[Portal, int], ...] = ()
    addresses: int = 0


@dataclass(frozen=True)
class SkippedEntry:
    """An entry of a SendTargets response left out: which key, which one of them (1-based),
    the usable target name it belongs to, and why. Never the value: the target sent it, and
    it may be anything (terminal escapes, a right-to-left override)."""

    key: str
    number: int
    target: str | None
    reason: str

    def __str__(self) -> str:
        of = f" of {self.target}" if self.target is not None else ""
        return f"{self.key} {self.number}{of}: {self.reason}"


_ADDRESS_FORM = "not ADDRESS[:PORT][,TPGT] (RFC 7143 section 13.8)"


def _name_problem(name: str) -> str | None:
    return "empty" if not name else None


def read_send_targets(
    pairs: Sequence[tuple[str, str]],
    name_problem: Callable[[str], str | None] = _name_problem,
) -> tuple[list[OfferedTarget], list[SkippedEntry]]:
    """The targets of a SendTargets response (RFC 7143 Appendix C), each entry on its own:
    a bad one is left out and said why, and the rest is used.

    Each TargetName starts a target; the TargetAddress keys after it are its portals. A name
    given twice gathers the portals of both; repeated portals are kept once; other keys
    (such as TargetAlias) are ignored. A TargetName that ``name_problem`` refuses drops the
    TargetAddress keys after it; a target whose TargetAddress keys are all unusable is left
    out (where we asked is not where it said it is).
    """
    offered: dict[str, OfferedTarget] = {}
    skipped: list[SkippedEntry] = []
    current: str | None = None
    names = orphans = 0
    for key, value in pairs:
        if key == "TargetName":
            names += 1
            reason = name_problem(value)
            if reason is not None:
                skipped.append(SkippedEntry("TargetName", names, None, reason))
                current = None
                continue
            current = value
            offered.setdefault(value, OfferedTarget(value, names))
        elif key == "TargetAddress":
            if current is None:
                if names == 0:
                    orphans += 1
                    reason = "comes before any TargetName"
                    skipped.append(SkippedEntry("TargetAddress", orphans, None, reason))
                continue  # else it belongs to a TargetName left out already
            target = offered[current]
            number = target.addresses + 1
            portals = target.portals
            try:
                portal = parse_target_address(value)
            except TargetProtocolError:
                skipped.append(SkippedEntry("TargetAddress", number, current, _ADDRESS_FORM))
            else:
                if all(portal != known for known, _ in portals):
                    portals += ((portal, number),)
            offered[current] = replace(target, portals=portals, addresses=number)
    targets: list[OfferedTarget] = []
    for target in offered.values():
        if not target.portals and target.addresses:
            reason = "none of its TargetAddress values can be used"
            skipped.append(SkippedEntry("TargetName", target.number, target.name, reason))
        else:
            targets.append(target)
    return targets, skipped


def parse_send_targets(
    pairs: Sequence[tuple[str, str]], default_portal: Portal
) -> list[DiscoveredTarget]:
    """The targets of a SendTargets response, all or nothing: the first bad entry
    (:func:`read_send_targets`) is a :class:`TargetProtocolError`. A target with no
    TargetAddress is reached where we asked, ``default_portal``."""
    targets, skipped = read_send_targets(pairs)
    if skipped:
        raise TargetProtocolError(f"SendTargets response: {skipped[0]}")
    return [
        DiscoveredTarget(t.name, tuple(p for p, _ in t.portals) or (default_portal,))
        for t in targets
    ]


def format_send_targets(targets: Iterable[DiscoveredTarget]) -> list[tuple[str, str]]:
    """The target's side of :func:`parse_send_targets`: a SendTargets response's keys."""
    pairs: list[tuple[str, str]] = []
    for target in targets:
        pairs.append(("TargetName", target.name))
        pairs.extend(("TargetAddress", str(portal)) for portal in target.portals)
    return pairs
