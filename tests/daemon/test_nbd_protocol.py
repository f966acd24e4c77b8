"""The NBD wire format (daemon/nbd_protocol.py), sans-IO: structured reply chunks byte for
byte as the NBD protocol document lays them out, and the metadata-context option payloads
decoded whole, truncated at every byte, with trailing bytes, and from random bytes."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pyiscsid.daemon import nbd_protocol as wire
from pyiscsid.daemon.nbd_protocol import BASE_ALLOCATION, ReplyFlag, ReplyType

COOKIE = 0x0123456789ABCDEF


def chunk(raw: bytes) -> tuple[int, int, int, int, bytes]:
    """(flags, type, cookie, length, payload) of one structured reply chunk, checking the
    magic and that the payload is exactly as long as the header says."""
    magic, flags, kind, cookie, length = wire.STRUCTURED_REPLY.unpack_from(raw)
    assert magic == 0x668E33EF
    payload = raw[wire.STRUCTURED_REPLY.size :]
    assert len(payload) == length
    return flags, kind, cookie, length, payload


def test_none_chunk_is_a_bare_final_header() -> None:
    raw = wire.structured_none(COOKIE)
    assert raw == bytes.fromhex("668e33ef 0001 0000 0123456789abcdef 00000000")
    assert chunk(raw) == (ReplyFlag.DONE, ReplyType.NONE, COOKIE, 0, b"")


def test_offset_data_header_counts_the_data_that_follows_it() -> None:
    data = bytes(range(256)) * 2
    header = wire.offset_data_header(COOKIE, 4096, len(data))
    assert len(header) == 20 + 8  # the chunk header and the offset; never the data
    flags, kind, cookie, length, payload = chunk(header + data)
    assert (flags, kind, cookie, length) == (ReplyFlag.DONE, ReplyType.OFFSET_DATA, COOKIE, 520)
    assert struct.unpack(">Q", payload[:8]) == (4096,)
    assert payload[8:] == data
    assert chunk(wire.offset_data_header(COOKIE, 0, 1, done=False) + b"x")[0] == 0


@pytest.mark.parametrize("length", [0, 0xFFFFFFFF - 7])
def test_offset_data_needs_one_to_2_32_minus_9_bytes(length: int) -> None:
    with pytest.raises(ValueError, match="OFFSET_DATA"):
        wire.offset_data_header(COOKIE, 0, length)


def test_error_chunk_carries_the_error_and_its_message() -> None:
    flags, kind, cookie, length, payload = chunk(wire.structured_error(COOKIE, wire.EIO, "bad"))
    assert (flags, kind, cookie) == (ReplyFlag.DONE, ReplyType.ERROR, COOKIE)
    assert payload == struct.pack(">IH", 5, 3) + b"bad"
    assert length == 6 + 3


def test_error_offset_chunk_puts_the_offset_after_the_message() -> None:
    raw = wire.structured_error(COOKIE, wire.ENOSPC, "full", offset=1 << 33)
    flags, kind, _, length, payload = chunk(raw)
    assert (flags, kind, length) == (ReplyFlag.DONE, ReplyType.ERROR_OFFSET, 14 + 4)
    assert payload == struct.pack(">IH", 28, 4) + b"full" + struct.pack(">Q", 1 << 33)


def test_error_chunk_needs_an_error() -> None:
    with pytest.raises(ValueError, match="nonzero"):
        wire.structured_error(COOKIE, 0, "no error")


def test_messages_are_cut_at_4096_bytes_between_characters() -> None:
    message = "é" * 3000  # 6000 bytes of UTF-8, two per character
    payload = chunk(wire.structured_error(COOKIE, wire.EIO, message))[4]
    (length,) = struct.unpack_from(">H", payload, 4)
    assert length == 4096
    assert payload[6:].decode() == "é" * 2048
    odd = "a" + "é" * 3000  # the 4096th byte would split a character: one fewer byte
    assert len(chunk(wire.structured_error(COOKIE, wire.EIO, odd))[4]) == 6 + 4095


def test_block_status_chunk_lists_extents_after_the_context_id() -> None:
    raw = wire.block_status(COOKIE, 7, [(4096, 0), (512, wire.StateFlag.HOLE)])
    flags, kind, _, length, payload = chunk(raw)
    assert (flags, kind, length) == (ReplyFlag.DONE, ReplyType.BLOCK_STATUS, 4 + 16)
    assert struct.unpack(">IIIII", payload) == (7, 4096, 0, 512, 1)
    with pytest.raises(ValueError):
        wire.block_status(COOKIE, 7, [])
    with pytest.raises(ValueError):
        wire.block_status(COOKIE, 7, [(0, 0)])


def test_option_error_and_meta_context_replies() -> None:
    raw = wire.option_error(wire.Option.SET_META_CONTEXT, wire.Reply.ERR_INVALID, "why")
    assert wire.OPTION_REPLY.unpack_from(raw) == (
        wire.OPTION_REPLY_MAGIC,
        wire.Option.SET_META_CONTEXT,
        wire.Reply.ERR_INVALID,
        3,
    )
    assert raw[wire.OPTION_REPLY.size :] == b"why"
    assert wire.meta_context(1, BASE_ALLOCATION) == b"\0\0\0\x01base:allocation"


def meta_request(name: str, *queries: str) -> bytes:
    raw = struct.pack(">I", len(name.encode())) + name.encode()
    raw += struct.pack(">I", len(queries))
    for query in queries:
        raw += struct.pack(">I", len(query.encode())) + query.encode()
    return raw


def test_meta_context_request_decodes_name_and_queries() -> None:
    request = wire.parse_meta_context_request(meta_request("iqn.x:disk/1", "base:allocation", "a:"))
    assert request == wire.MetaContextRequest("iqn.x:disk/1", ("base:allocation", "a:"))
    assert wire.parse_meta_context_request(meta_request("")).queries == ()


def test_meta_context_request_truncated_anywhere_is_invalid() -> None:
    whole = meta_request("disk", "base:allocation", "qemu:dirty-bitmap:x")
    for cut in range(len(whole)):
        with pytest.raises(ValueError):
            wire.parse_meta_context_request(whole[:cut])


def test_meta_context_request_with_trailing_bytes_is_invalid() -> None:
    with pytest.raises(ValueError, match="follow the last query"):
        wire.parse_meta_context_request(meta_request("disk", "base:allocation") + b"\0")


def test_meta_context_request_counts_are_checked_before_use() -> None:
    huge_count = struct.pack(">I", 4) + b"disk" + struct.pack(">I", 0xFFFFFFFF)
    with pytest.raises(ValueError, match="do not fit"):
        wire.parse_meta_context_request(huge_count)
    with pytest.raises(ValueError):  # invalid UTF-8 in the name
        wire.parse_meta_context_request(struct.pack(">I", 2) + b"\xff\xfe" + bytes(4))


@given(st.binary(max_size=64))
def test_meta_context_request_from_random_bytes_raises_only_value_error(data: bytes) -> None:
    with contextlib.suppress(ValueError):  # anything else fails the test
        wire.parse_meta_context_request(data)


@pytest.mark.parametrize(
    ("queries", "listing", "selected"),
    [
        ((), True, (BASE_ALLOCATION,)),  # list everything
        ((), False, ()),  # setting nothing selects nothing
        (("base:",), True, (BASE_ALLOCATION,)),  # the namespace's wildcard, when listing
        (("base:",), False, ()),  # ...which SET must ignore
        (("base:allocation",), False, (BASE_ALLOCATION,)),
        (("base:allocation", "base:allocation"), False, (BASE_ALLOCATION,)),  # once
        (("qemu:dirty-bitmap:a", "base:allocation"), False, (BASE_ALLOCATION,)),
        (("base:nonsense", "x-foo:bar"), False, ()),  # unknown leaf and namespace: ignored
        (("x-foo:bar",), True, ()),
    ],
)
def test_select_meta_contexts(
    queries: tuple[str, ...], listing: bool, selected: tuple[str, ...]
) -> None:
    assert wire.select_meta_contexts(queries, listing=listing) == selected


@pytest.mark.parametrize("query", ["allocation", ":allocation"])
def test_a_query_without_a_namespace_is_invalid(query: str) -> None:
    with pytest.raises(ValueError, match="namespace"):
        wire.select_meta_contexts((query,), listing=False)
