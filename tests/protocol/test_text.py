"""The key=value text codec, continuation assembly and splitting (RFC 7143 sections 6.1, 10.11.2,
10.13.3)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pyiscsid.protocol.errors import InitiatorProtocolError, TargetProtocolError
from pyiscsid.protocol.text import (
    MAX_KEY_LENGTH,
    TextAssembler,
    TextFormatError,
    decode_binary,
    decode_text,
    encode_binary,
    encode_text,
    is_valid_key_name,
    split_text,
)

LOGIN_TEXT = (
    b"InitiatorName=iqn.1993-08.org.debian:01:abc\0"
    b"SessionType=Normal\0"
    b"TargetName=iqn.2001-04.com.example:disk1\0"
)
LOGIN_PAIRS = [
    ("InitiatorName", "iqn.1993-08.org.debian:01:abc"),
    ("SessionType", "Normal"),
    ("TargetName", "iqn.2001-04.com.example:disk1"),
]

key_names = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-+@_#",
    min_size=1,
    max_size=MAX_KEY_LENGTH,
)
values = st.text(alphabet=st.characters(blacklist_characters="\0", codec="utf-8"), max_size=300)
pair_lists = st.lists(st.tuples(key_names, values), max_size=20)


# --- encode_text --------------------------------------------------------------------------------


def test_encode_login_keys() -> None:
    assert encode_text(LOGIN_PAIRS) == LOGIN_TEXT


def test_encode_nothing_is_empty() -> None:
    assert encode_text([]) == b""


def test_encode_utf8_value() -> None:
    assert encode_text([("TargetAlias", "disque ä")]) == "TargetAlias=disque ä\0".encode()


@pytest.mark.parametrize(
    ("key", "fault"),
    [
        ("", "empty key name"),
        ("K" * 64, "longer than 63 bytes"),
        ("Bad Key", "has a character outside"),
        ("Bad=Key", "has a character outside"),
        ("Schlüssel", "has a character outside"),
    ],
)
def test_encode_rejects_bad_key_names(key: str, fault: str) -> None:
    with pytest.raises(InitiatorProtocolError, match=fault):
        encode_text([(key, "x")])


def test_encode_accepts_every_allowed_character() -> None:
    key = "Az09.-+@_#" + "K" * (MAX_KEY_LENGTH - 10)
    assert encode_text([(key, "v")]) == key.encode() + b"=v\0"
    assert is_valid_key_name(key)


def test_encode_rejects_nul_in_value() -> None:
    with pytest.raises(InitiatorProtocolError, match="NUL"):
        encode_text([("TargetAlias", "a\0b")])


# --- decode_text --------------------------------------------------------------------------------


def test_decode_login_keys() -> None:
    assert decode_text(LOGIN_TEXT) == LOGIN_PAIRS


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_decode_accepts_buffers(kind: type) -> None:
    assert decode_text(kind(LOGIN_TEXT)) == LOGIN_PAIRS


def test_decode_empty() -> None:
    assert decode_text(b"") == []


def test_decode_tolerates_padding_and_stray_nuls() -> None:
    assert decode_text(LOGIN_TEXT + b"\0\0\0") == LOGIN_PAIRS
    assert decode_text(b"\0\0") == []
    assert decode_text(b"A=1\0\0B=2\0") == [("A", "1"), ("B", "2")]


def test_decode_keeps_duplicates_and_order() -> None:
    data = b"TargetAddress=10.0.0.1:3260,1\0TargetAddress=10.0.0.2:3260,1\0"
    assert decode_text(data) == [
        ("TargetAddress", "10.0.0.1:3260,1"),
        ("TargetAddress", "10.0.0.2:3260,1"),
    ]


def test_decode_splits_at_first_equals() -> None:
    assert decode_text(b"CHAP_C=0xab==\0Empty=\0") == [("CHAP_C", "0xab=="), ("Empty", "")]


@pytest.mark.parametrize(
    ("data", "fault"),
    [
        (b"A=1\0NoEquals\0", "pair without '=' at byte 4"),
        (b"A=\xff\xfe\0", "not valid UTF-8 at byte 2"),
        (b"K" * 64 + b"=1\0", "longer than 63 bytes"),
        (b"A=1\0B=2", "not NUL-terminated"),
        (b"=1\0", "empty key name"),
        (b"Bad Key=1\0", "character outside"),
    ],
)
def test_decode_names_the_fault(data: bytes, fault: str) -> None:
    with pytest.raises(TextFormatError, match=fault):
        decode_text(data)


def test_text_format_error_is_the_targets_fault() -> None:
    assert issubclass(TextFormatError, TargetProtocolError)


@given(st.binary(max_size=400))
def test_decode_random_bytes_raises_only_text_format_error(data: bytes) -> None:
    try:
        pairs = decode_text(data)
    except TextFormatError:
        return
    for key, value in pairs:
        assert is_valid_key_name(key)
        assert "\0" not in value


@given(pair_lists)
def test_encode_decode_round_trip(pairs: list[tuple[str, str]]) -> None:
    encoded = encode_text(pairs)
    assert decode_text(encoded) == pairs
    assert decode_text(encoded + b"\0" * 3) == pairs  # with padding after it


# --- TextAssembler ------------------------------------------------------------------------------


def test_assembler_single_segment() -> None:
    assert TextAssembler().add(LOGIN_TEXT, more=False) == LOGIN_PAIRS


def test_assembler_returns_none_until_the_last_segment() -> None:
    assembler = TextAssembler()
    assert assembler.add(LOGIN_TEXT[:10], more=True) is None
    assert assembler.pending
    assert assembler.add(memoryview(LOGIN_TEXT)[10:30], more=True) is None
    assert assembler.add(bytearray(LOGIN_TEXT[30:]), more=False) == LOGIN_PAIRS
    assert not assembler.pending


def test_assembler_one_byte_at_a_time() -> None:
    assembler = TextAssembler()
    for i in range(len(LOGIN_TEXT) - 1):
        assert assembler.add(LOGIN_TEXT[i : i + 1], more=True) is None
    assert assembler.add(LOGIN_TEXT[-1:], more=False) == LOGIN_PAIRS


def test_assembler_every_split_position() -> None:
    for cut in range(len(LOGIN_TEXT) + 1):
        assembler = TextAssembler()
        assert assembler.add(LOGIN_TEXT[:cut], more=True) is None
        assert assembler.add(LOGIN_TEXT[cut:], more=False) == LOGIN_PAIRS


def test_assembler_starts_over_after_a_sequence() -> None:
    assembler = TextAssembler()
    assert assembler.add(b"A=1\0", more=False) == [("A", "1")]
    assert assembler.add(b"B=", more=True) is None
    assert assembler.add(b"2\0", more=False) == [("B", "2")]


def test_assembler_bounds_the_text() -> None:
    assembler = TextAssembler(max_size=16)
    assert assembler.add(b"A=" + b"x" * 10, more=True) is None
    with pytest.raises(TextFormatError, match="exceeds 16 bytes"):
        assembler.add(b"yyyyy", more=True)
    assert not assembler.pending  # the partial text is dropped
    assert assembler.add(b"B=1\0", more=False) == [("B", "1")]


def test_assembler_bound_is_inclusive() -> None:
    assert TextAssembler(max_size=4).add(b"A=1\0", more=False) == [("A", "1")]


def test_assembler_default_bound_is_64_kib() -> None:
    assembler = TextAssembler()
    assert assembler.max_size == 65536
    with pytest.raises(TextFormatError):
        assembler.add(b"x" * 65537, more=True)


def test_assembler_reports_a_bad_complete_text() -> None:
    assembler = TextAssembler()
    assembler.add(b"A=1\0B", more=True)
    with pytest.raises(TextFormatError, match="not NUL-terminated"):
        assembler.add(b"=2", more=False)


def test_assembler_reset_and_bad_bound() -> None:
    assembler = TextAssembler()
    assembler.add(b"A=", more=True)
    assembler.reset()
    assert assembler.add(b"B=1\0", more=False) == [("B", "1")]
    with pytest.raises(InitiatorProtocolError):
        TextAssembler(max_size=0)


@given(pair_lists, st.data())
def test_assembler_any_cuts_give_the_same_pairs(
    pairs: list[tuple[str, str]], data: st.DataObject
) -> None:
    encoded = encode_text(pairs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(encoded)), max_size=6)))
    pieces = [encoded[a:b] for a, b in zip([0, *cuts], [*cuts, len(encoded)], strict=True)]
    assembler = TextAssembler()
    for piece in pieces[:-1]:
        assert assembler.add(piece, more=True) is None
    assert assembler.add(pieces[-1], more=False) == pairs


# --- split_text ---------------------------------------------------------------------------------


def test_split_text_sizes() -> None:
    chunks = split_text(LOGIN_TEXT, 32)
    assert all(len(chunk) <= 32 for chunk in chunks)
    assert [len(chunk) for chunk in chunks[:-1]] == [32] * (len(chunks) - 1)
    assert b"".join(chunks) == LOGIN_TEXT


def test_split_text_short_and_empty() -> None:
    assert split_text(LOGIN_TEXT, 8192) == [LOGIN_TEXT]
    assert split_text(b"", 8192) == [b""]


def test_split_text_rejects_a_bad_size() -> None:
    with pytest.raises(InitiatorProtocolError):
        split_text(LOGIN_TEXT, 0)


@given(pair_lists, st.integers(1, 64))
def test_split_then_assemble_round_trip(pairs: list[tuple[str, str]], size: int) -> None:
    chunks = split_text(encode_text(pairs), size)
    assembler = TextAssembler()
    for chunk in chunks[:-1]:
        assert assembler.add(chunk, more=True) is None
    assert assembler.add(chunks[-1], more=False) == pairs


# --- binary values (already in text.py) ---------------------------------------------------------


def test_binary_round_trip() -> None:
    raw = bytes(range(20))
    assert decode_binary(encode_binary(raw)) == raw
    assert decode_binary(encode_binary(raw, use_base64=True)) == raw
