"""The key=value text format of Login and Text PDUs (RFC 7143 sections 6.1 and 6.2)."""

from __future__ import annotations

import base64
import binascii

from .errors import TargetProtocolError


def encode_binary(value: bytes, *, use_base64: bool = False) -> str:
    """A binary-value as hex (``0x...``) or base64 (``0b...``), RFC 7143 section 6.1.2."""
    if use_base64:
        return "0b" + base64.b64encode(value).decode("ascii")
    return "0x" + value.hex()


def decode_binary(text: str, key: str = "value") -> bytes:
    """Parse a hex (``0x``/``0X``) or base64 (``0b``/``0B``) binary-value; ``key`` names it in errors."""
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
