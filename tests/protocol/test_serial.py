"""Serial number arithmetic (RFC 1982 with SERIAL_BITS = 32, as RFC 7143 section 4.2.2.1
requires for CmdSN, StatSN, DataSN and R2TSN), around the 2**32 wrap."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pyiscsid.protocol.serial import MASK, MODULUS, sn_add, sn_diff, sn_ge, sn_gt, sn_le, sn_lt

SN = st.integers(0, MASK)
STEP = st.integers(1, 2**31 - 1)


def test_constants() -> None:
    assert MODULUS == 2**32
    assert MASK == 0xFFFFFFFF


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (0, 1),
        (5, 6),
        (0xFFFFFFFF, 0),  # across the wrap
        (0xFFFFFFF0, 5),
        (0xFFFFFFFE, 0xFFFFFFFF),
        (0x7FFFFFFF, 0x80000000),
        (0, 0x7FFFFFFF),  # the farthest b can be ahead of a
        (0x80000001, 0),  # ... and across the wrap
        (0x80000000, 0xFFFFFFFF),
    ],
)
def test_less_than(a: int, b: int) -> None:
    assert sn_lt(a, b)
    assert sn_le(a, b)
    assert sn_gt(b, a)
    assert sn_ge(b, a)
    assert not sn_lt(b, a)
    assert not sn_le(b, a)
    assert not sn_gt(a, b)
    assert not sn_ge(a, b)


def test_wrap_examples() -> None:
    assert sn_lt(0xFFFFFFFF, 0)
    assert sn_lt(0xFFFFFFF0, 5)
    assert not sn_lt(5, 0xFFFFFFF0)
    assert sn_gt(5, 0xFFFFFFF0)
    assert not sn_lt(0, 0xFFFFFFFF)


@pytest.mark.parametrize("a", [0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF])
def test_equal(a: int) -> None:
    assert not sn_lt(a, a)
    assert not sn_gt(a, a)
    assert sn_le(a, a)
    assert sn_ge(a, a)


@pytest.mark.parametrize(
    ("a", "b"), [(0, 2**31), (2**31, 0), (5, 2**31 + 5), (0xFFFFFFFF, 0x7FFFFFFF)]
)
def test_undefined_when_2_to_the_31_apart(a: int, b: int) -> None:
    """RFC 1982 section 3.2 leaves the comparison undefined: neither is less nor greater."""
    assert not sn_lt(a, b)
    assert not sn_gt(a, b)
    assert not sn_le(a, b)
    assert not sn_ge(a, b)


def test_add_wraps() -> None:
    assert sn_add(0xFFFFFFFF, 1) == 0
    assert sn_add(0xFFFFFFF0, 0x15) == 5
    assert sn_add(5, 0) == 5
    assert sn_add(0x80000000, 0x7FFFFFFF) == 0xFFFFFFFF
    assert sn_add(0x80000001, 0x7FFFFFFF) == 0


def test_diff() -> None:
    assert sn_diff(5, 3) == 2
    assert sn_diff(3, 5) == -2
    assert sn_diff(0, 0xFFFFFFFF) == 1
    assert sn_diff(0xFFFFFFFF, 0) == -1
    assert sn_diff(5, 0xFFFFFFF0) == 0x15
    assert sn_diff(0xFFFFFFF0, 5) == -0x15
    assert sn_diff(7, 7) == 0
    assert sn_diff(0x7FFFFFFF, 0) == 2**31 - 1
    assert sn_diff(2**31, 0) == -(2**31)  # the undefined distance lands at the bottom of the range
    assert sn_diff(0, 2**31) == -(2**31)


@given(a=SN, n=STEP)
def test_add_moves_forward(a: int, n: int) -> None:
    b = sn_add(a, n)
    assert 0 <= b <= MASK
    assert sn_lt(a, b)
    assert sn_gt(b, a)
    assert not sn_lt(b, a)
    assert sn_diff(b, a) == n
    assert sn_diff(a, b) == -n


@given(a=SN, b=SN)
def test_comparisons_agree(a: int, b: int) -> None:
    d = sn_diff(a, b)
    assert -(2**31) <= d < 2**31
    assert sn_add(b, d % MODULUS) == a
    assert sn_lt(a, b) == (d < 0 and d != -(2**31))
    assert sn_gt(a, b) == (d > 0)
    assert sn_le(a, b) == (a == b or sn_lt(a, b))
    assert sn_ge(a, b) == (a == b or sn_gt(a, b))
    assert not (sn_lt(a, b) and sn_gt(a, b))
