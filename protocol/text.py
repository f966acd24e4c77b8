"""The key=value text format of Login and Text PDUs (RFC 7143 sections 6.1 and 6.2)."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable

from .errors import InitiatorProtocolError, TargetProtocolError


def encode_binary(value: bytes, *, use_base64: bool = False) -> str:
    """A binary-value as hex (``0x...``) or base64 (``0b...``), RFC 7143 section 6.1.2."""
    if use_base64:
        return "0b" + base64.b64encode(value).decode("ascii")
    return "0x" + value.hex()


def decode_binary(text: str, key: str = "value") -> bytes:
    """Parse a hex (``0x``) or base64 (``0b``) binary-value; ``key`` names it in errors."""
    prefix, digits = text[:2].lower(), text[2:]
    try:
        if prefix == "0x":
            if len(digits) % 2:
                digits = "0" + digits  # RFC 7143 allows an odd number of hex digits
            return bytes.fromhex(digits)
        if prefix == "0b":
            return base64.b64decode(digits, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise TargetProtocolError(f"{key}: malformed binary value {text[:40]!r}: {exc}") from None
    raise TargetProtocolError(f"{key}: binary value {text[:40]!r} must start with 0x or 0b")


# --- key=value pairs (RFC 7143 section 6.1) -------------------------------------------------

MAX_KEY_LENGTH = 63
"""A key-name is at most 63 bytes (RFC 7143 section 6.1)."""

DEFAULT_MAX_TEXT = 64 * 1024
"""Bound on one reassembled text (a C-bit sequence); RFC 7143 only asks for 8192 bytes."""

# RFC 7143 section 6.1 lists letters, digits and . - + @ _; "#" too, for the X# public
# extension keys of section 13.22 (X#NodeArchitecture).
_KEY_NAME = re.compile(r"[A-Za-z0-9.\-+@_#]+")


class TextFormatError(TargetProtocolError):
    """The target's text data breaks the key=value grammar of RFC 7143 section 6.1."""


def _key_fault(key: str) -> str | None:
    """Why ``key`` is not a valid key-name (RFC 7143 section 6.1), or None when it is."""
    if not key:
        return "empty key name"
    if len(key.encode("utf-8")) > MAX_KEY_LENGTH:
        return f"key name longer than {MAX_KEY_LENGTH} bytes: {key[:MAX_KEY_LENGTH]!r}..."
    if _KEY_NAME.fullmatch(key) is None:
        return f"key name {key!r} has a character outside letters, digits and . - + @ _ #"
    return None


def is_valid_key_name(key: str) -> bool:
    """True for a well-formed key-name (RFC 7143 section 6.1)."""
    return _key_fault(key) is None


def encode_text(pairs: Iterable[tuple[str, str]]) -> bytes:
    """``key=value\\0`` for every pair, in order, as UTF-8 (RFC 7143 section 6.1).

    Our own bad input (a malformed key name, a NUL inside a value) is a bug on our side, so it
    raises :class:`InitiatorProtocolError` rather than putting a text on the wire that the
    target would have to reject.
    """
    out = bytearray()
    for key, value in pairs:
        fault = _key_fault(key)
        if fault is not None:
            raise InitiatorProtocolError(f"cannot encode text: {fault}")
        if "\0" in value:
            raise InitiatorProtocolError(f"cannot encode text: {key}: value contains a NUL")
        out += key.encode("ascii")
        out += b"="
        out += value.encode("utf-8")
        out += b"\0"
    return bytes(out)


def decode_text(data: bytes | bytearray | memoryview) -> list[tuple[str, str]]:
    """The key=value pairs of one complete text, in order, duplicates kept.

    NULs between and after pairs (padding) are skipped. Everything else that RFC 7143 section
    6.1 does not allow raises :class:`TextFormatError` naming the fault and its byte offset:
    the only exception this function raises, whatever the input.
    """
    raw = bytes(data)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TextFormatError(
            f"text is not valid UTF-8 at byte {exc.start}: {raw[exc.start : exc.start + 4]!r}"
        ) from None
    if text and not text.endswith("\0"):
        start = text.rfind("\0") + 1
        raise TextFormatError(
            f"last key=value pair is not NUL-terminated (byte {len(text[:start].encode())}):"
            f" {text[start : start + 40]!r}"
        )
    pairs: list[tuple[str, str]] = []
    offset = 0
    for item in text.split("\0"):
        if item:
            key, sep, value = item.partition("=")
            if not sep:
                raise TextFormatError(f"pair without '=' at byte {offset}: {item[:40]!r}")
            fault = _key_fault(key)
            if fault is not None:
                raise TextFormatError(f"{fault} (at byte {offset})")
            pairs.append((key, value))
        offset += len(item.encode("utf-8")) + 1
    return pairs


class TextAssembler:
    """Joins the data segments of a C-bit sequence of Login or Text Responses.

    A target with more text than fits one PDU sets the C (continue) bit on all but the last
    response (RFC 7143 sections 10.11.2 and 10.13.3), and a key=value pair may be cut anywhere,
    so nothing can be decoded before the last segment. ``max_size`` bounds what a target can
    make us buffer.
    """

    def __init__(self, max_size: int = DEFAULT_MAX_TEXT) -> None:
        if max_size < 1:
            raise InitiatorProtocolError(f"TextAssembler max_size must be positive: {max_size}")
        self.max_size = max_size
        self._buffer = bytearray()

    @property
    def pending(self) -> bool:
        """True while a sequence has started and its last segment has not arrived."""
        return bool(self._buffer)

    def add(
        self, segment: bytes | bytearray | memoryview, more: bool
    ) -> list[tuple[str, str]] | None:
        """Add one segment; the decoded pairs once ``more`` is False, None before that."""
        if len(self._buffer) + len(segment) > self.max_size:
            size = len(self._buffer) + len(segment)
            self._buffer.clear()
            raise TextFormatError(
                f"text of a continued response exceeds {self.max_size} bytes ({size} so far)"
            )
        self._buffer += segment
        if more:
            return None
        data, self._buffer = bytes(self._buffer), bytearray()
        return decode_text(data)

    def reset(self) -> None:
        """Forget a partial sequence (the connection is being dropped or restarted)."""
        self._buffer.clear()


def split_text(data: bytes, max_segment: int) -> list[bytes]:
    """Cut an encoded text into data segments of at most ``max_segment`` bytes.

    The caller sends them in consecutive requests with the C bit set on all but the last;
    RFC 7143 section 6.1 lets a pair be split anywhere. An empty text is one empty segment.
    """
    if max_segment < 1:
        raise InitiatorProtocolError(f"max_segment must be positive: {max_segment}")
    if not data:
        return [b""]
    return [data[i : i + max_segment] for i in range(0, len(data), max_segment)]
