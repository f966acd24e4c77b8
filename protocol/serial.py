"""Serial number arithmetic on 32-bit sequence numbers (RFC 1982, as RFC 7143 section 4.2.2.1
requires for CmdSN, StatSN, DataSN and R2TSN)."""

from __future__ import annotations

SERIAL_BITS = 32
MODULUS = 1 << SERIAL_BITS
_HALF = 1 << (SERIAL_BITS - 1)
MASK = MODULUS - 1


def sn_add(a: int, n: int) -> int:
    """a + n modulo 2**32 (n may be any non-negative number below 2**31)."""
    return (a + n) & MASK


def sn_lt(a: int, b: int) -> bool:
    """a < b in serial arithmetic. Undefined (False both ways) when a and b are 2**31 apart."""
    return 0 < ((b - a) & MASK) < _HALF


def sn_gt(a: int, b: int) -> bool:
    return 0 < ((a - b) & MASK) < _HALF


def sn_le(a: int, b: int) -> bool:
    return ((b - a) & MASK) < _HALF


def sn_ge(a: int, b: int) -> bool:
    return ((a - b) & MASK) < _HALF


def sn_diff(a: int, b: int) -> int:
    """The signed distance a - b, in the range [-2**31, 2**31)."""
    d = (a - b) & MASK
    return d - MODULUS if d >= _HALF else d
