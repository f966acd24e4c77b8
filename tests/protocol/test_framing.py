"""PDU framing (RFC 7143 sections 11.2 and 13.1): digests, padding, and the incremental reader.

The wire bytes are put together here by hand from the headers of test_pdu.py: padding is
written out, and digests come from a bit-by-bit CRC32C that is checked against RFC 3720
appendix B.4 first. Reader tests run three ways, as h11's tests/test_io.py does: the whole
input at once, one byte at a time, and with the first bytes of a next PDU left over.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyiscsid.protocol.errors import DigestError, ISCSIError, TargetProtocolError
from pyiscsid.protocol.framing import (
    PduReader,
    crc32c_of,
    encode_pdu,
    padding_for,
    split_data,
)
from pyiscsid.protocol.pdu import (
    BHS_LENGTH,
    DataIn,
    DataOut,
    NopOut,
    Pdu,
    ScsiCommand,
    TaskAttribute,
)

from tests.protocol.test_pdu import (
    DATA_IN_STATUS,
    LOGIN_RESPONSE_OK,
    NOP_IN_ANSWER,
    R2T_VECTOR,
    RFC3720_READ10_BHS,
    SCSI_BIDI,
    SCSI_READ10,
    SCSI_READ32,
    TEXT_RESPONSE,
    Vector,
    any_pdu,
    as_received,
    h,
)

# ---------------------------------------------------------------- CRC32C

# RFC 3720 appendix B.4 (RFC 7143 keeps the algorithm): the CRC bytes as they appear on the
# wire, least significant byte first.
RFC3720_CRC_VECTORS = {
    "32 bytes of zeros": (bytes(32), h("aa 36 91 8a")),
    "32 bytes of ones": (b"\xff" * 32, h("43 ab a8 62")),
    "32 incrementing bytes": (bytes(range(32)), h("4e 79 dd 46")),
    "32 decrementing bytes": (bytes(range(31, -1, -1)), h("5c db 3f 11")),
    "iSCSI SCSI Read (10) command PDU": (RFC3720_READ10_BHS, h("56 3a 96 d9")),
}


def reference_crc32c(data: bytes) -> int:
    """CRC32C one bit at a time (reflected polynomial 0x82f63b78): slow, and obviously right."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def digest(data: bytes) -> bytes:
    """A digest as it goes on the wire: little-endian, as open-iscsi, libiscsi and tgt put it."""
    return struct.pack("<I", reference_crc32c(data))


@pytest.mark.parametrize(
    ("data", "wire"), RFC3720_CRC_VECTORS.values(), ids=RFC3720_CRC_VECTORS.keys()
)
def test_crc32c_rfc3720_vectors(data: bytes, wire: bytes) -> None:
    expected = int.from_bytes(wire, "little")
    assert reference_crc32c(data) == expected
    assert crc32c_of(data) == expected
    assert crc32c_of(memoryview(data)) == expected
    # Several parts give the CRC of their concatenation, without joining them.
    assert crc32c_of(data[:5], memoryview(data)[5:17], bytearray(data[17:])) == expected


def test_crc32c_of_nothing() -> None:
    assert crc32c_of() == 0
    assert crc32c_of(b"") == 0


def test_header_digest_follows_bhs_little_endian() -> None:
    """RFC 3720 B.4's Read (10) PDU sent with HeaderDigest=CRC32C."""
    assert encode_pdu(SCSI_READ10.pdu, header_digest=True) == [
        RFC3720_READ10_BHS + h("56 3a 96 d9")
    ]
    assert encode_pdu(SCSI_READ10.pdu, header_digest=True, data_digest=True) == [
        RFC3720_READ10_BHS + h("56 3a 96 d9")  # no data segment, so no data digest
    ]


def test_header_digest_covers_the_ahs() -> None:
    (header,) = encode_pdu(SCSI_READ32.pdu, header_digest=True)
    assert header == SCSI_READ32.header + digest(SCSI_READ32.header)
    assert len(header) == BHS_LENGTH + 20 + 4


def test_data_digest_known_answer() -> None:
    """32 zero bytes need no padding; their digest is RFC 3720 B.4's first vector."""
    payload = bytes(32)
    nop = NopOut(initiator_task_tag=1, data=payload)
    parts = encode_pdu(nop, data_digest=True)
    assert parts[0] == nop.pack_bhs()
    assert parts[1] is payload
    assert parts[2] == h("aa 36 91 8a")


def test_data_digest_covers_the_padding() -> None:
    """Padding bytes are included in the CRC (RFC 7143 section 13.1)."""
    payload = b"\x01\x02\x03\x04\x05"
    parts = encode_pdu(DataOut(data=payload), header_digest=True, data_digest=True)
    header = DataOut(data=payload).pack_bhs()
    assert parts == [
        header + digest(header),
        payload,
        h("00 00 00") + digest(payload + h("00 00 00")),
    ]


# ---------------------------------------------------------------- encode_pdu


@pytest.mark.parametrize("length", range(9))
def test_encode_pdu_passes_the_payload_through_and_pads(length: int) -> None:
    payload = memoryview(bytearray(b"abcdefgh"[:length]))
    pdu = DataOut(final=True, initiator_task_tag=9, data=payload)
    parts = encode_pdu(pdu)
    assert parts[0] == pdu.pack_bhs()
    if length == 0:
        assert parts == [pdu.pack_bhs()]
        return
    assert parts[1] is payload  # the same object: no copy on the way to writelines
    padding = b"\0" * (-length % 4)
    assert parts[2:] == ([padding] if padding else [])
    wire = b"".join(parts)
    assert len(wire) % 4 == 0
    assert wire == pdu.pack_bhs() + bytes(payload) + padding


def test_encode_pdu_known_answer() -> None:
    """Data-In with 5 bytes of data, written out: BHS, data, 3 bytes of padding."""
    wire = b"".join(encode_pdu(DATA_IN_STATUS.pdu))
    assert wire == DATA_IN_STATUS.header + h("11 22 33 44 55  00 00 00")


def test_padding_for() -> None:
    assert [padding_for(n) for n in range(6)] == [
        b"", b"\0\0\0", b"\0\0", b"\0", b"", b"\0\0\0",
    ]  # fmt: skip


def test_split_data() -> None:
    assert split_data(10, 4) == [(0, 4), (4, 4), (8, 2)]
    assert split_data(8, 4) == [(0, 4), (4, 4)]
    assert split_data(0, 4) == []
    with pytest.raises(ISCSIError):
        split_data(8, 0)


# ---------------------------------------------------------------- PduReader

STREAM_VECTORS: list[Vector] = [
    NOP_IN_ANSWER,  # 4 bytes of data, no padding
    DATA_IN_STATUS,  # 5 bytes of data, 3 of padding
    R2T_VECTOR,  # no data segment
    TEXT_RESPONSE,  # 74 bytes of data, 2 of padding
    SCSI_BIDI,  # two AHSs, 3 bytes of data
    LOGIN_RESPONSE_OK,  # 18 bytes of data
]


def wire_pdu(vector: Vector, *, header_digest: bool, data_digest: bool) -> bytes:
    """One PDU as the target sends it (RFC 7143 section 11.2), put together by hand."""
    data = bytes(vector.pdu.data)
    out = vector.header
    if header_digest:
        out += digest(vector.header)
    if data:
        padded = data + b"\0" * (-len(data) % 4)
        out += padded
        if data_digest:
            out += digest(padded)
    return out


def stream_wires(*, header_digest: bool, data_digest: bool) -> list[bytes]:
    return [
        wire_pdu(v, header_digest=header_digest, data_digest=data_digest) for v in STREAM_VECTORS
    ]


def expected_pdus() -> list[Pdu]:
    return [vector.parsed or vector.pdu for vector in STREAM_VECTORS]


def read_all(reader: PduReader, chunks: Iterable[bytes]) -> list[Pdu]:
    pdus = []
    for chunk in chunks:
        reader.feed(chunk)
        while (pdu := reader.next_pdu()) is not None:
            pdus.append(pdu)
    return pdus


DIGESTS = pytest.mark.parametrize(
    ("header_digest", "data_digest"),
    [(False, False), (True, False), (False, True), (True, True)],
    ids=["no-digests", "header-digest", "data-digest", "both-digests"],
)


@DIGESTS
def test_reader_whole_stream_at_once(header_digest: bool, data_digest: bool) -> None:
    wires = stream_wires(header_digest=header_digest, data_digest=data_digest)
    reader = PduReader(header_digest=header_digest, data_digest=data_digest)
    assert read_all(reader, [b"".join(wires)]) == expected_pdus()
    assert len(reader) == 0
    assert reader.next_pdu() is None


@DIGESTS
def test_reader_one_byte_at_a_time(header_digest: bool, data_digest: bool) -> None:
    wires = stream_wires(header_digest=header_digest, data_digest=data_digest)
    reader = PduReader(header_digest=header_digest, data_digest=data_digest)
    stream = b"".join(wires)
    got: list[tuple[int, Pdu]] = []
    for end in range(1, len(stream) + 1):
        reader.feed(stream[end - 1 : end])
        while (pdu := reader.next_pdu()) is not None:
            got.append((end, pdu))
    # Each PDU comes out with its last byte, not before and not later.
    ends = [sum(len(w) for w in wires[: i + 1]) for i in range(len(wires))]
    assert got == list(zip(ends, expected_pdus(), strict=True))
    assert len(reader) == 0


@DIGESTS
@pytest.mark.parametrize("leftover", [1, 47, 48, 52, 60])
def test_reader_with_trailing_bytes(header_digest: bool, data_digest: bool, leftover: int) -> None:
    wires = stream_wires(header_digest=header_digest, data_digest=data_digest)
    following = wire_pdu(TEXT_RESPONSE, header_digest=header_digest, data_digest=data_digest)
    reader = PduReader(header_digest=header_digest, data_digest=data_digest)
    assert read_all(reader, [b"".join(wires) + following[:leftover]]) == expected_pdus()
    assert reader.next_pdu() is None
    assert len(reader) == leftover  # the next PDU's first bytes wait in the buffer
    reader.feed(following[leftover:])
    assert reader.next_pdu() == TEXT_RESPONSE.pdu
    assert reader.next_pdu() is None
    assert len(reader) == 0


def test_reader_returns_data_without_padding_or_digest() -> None:
    reader = PduReader(header_digest=True, data_digest=True)
    reader.feed(wire_pdu(DATA_IN_STATUS, header_digest=True, data_digest=True))
    pdu = reader.next_pdu()
    assert isinstance(pdu, DataIn)
    assert bytes(pdu.data) == h("11 22 33 44 55")


def test_reader_wrong_header_digest() -> None:
    wire = bytearray(wire_pdu(NOP_IN_ANSWER, header_digest=True, data_digest=False))
    wire[BHS_LENGTH] ^= 0x01  # the digest itself
    reader = PduReader(header_digest=True)
    reader.feed(wire)
    with pytest.raises(DigestError) as info:
        reader.next_pdu()
    assert info.value.kind == "header"
    assert info.value.expected == reference_crc32c(NOP_IN_ANSWER.header)


def test_reader_header_changed_under_its_digest() -> None:
    wire = bytearray(wire_pdu(NOP_IN_ANSWER, header_digest=True, data_digest=False))
    wire[27] ^= 0x80  # StatSN
    reader = PduReader(header_digest=True)
    reader.feed(wire)
    with pytest.raises(DigestError, match="header digest"):
        reader.next_pdu()


def test_reader_wrong_header_digest_raises_before_the_data_comes() -> None:
    """A corrupt header may carry a wrong length: do not wait for its data."""
    wire = bytearray(wire_pdu(TEXT_RESPONSE, header_digest=True, data_digest=True))
    wire[BHS_LENGTH + 3] ^= 0x40
    reader = PduReader(header_digest=True, data_digest=True)
    reader.feed(wire[: BHS_LENGTH + 3])
    assert reader.next_pdu() is None
    reader.feed(wire[BHS_LENGTH + 3 : BHS_LENGTH + 4])
    with pytest.raises(DigestError, match="header digest"):
        reader.next_pdu()


@pytest.mark.parametrize("where", ["data", "padding", "digest"])
def test_reader_wrong_data_digest(where: str) -> None:
    wire = bytearray(wire_pdu(DATA_IN_STATUS, header_digest=False, data_digest=True))
    offset = {"data": BHS_LENGTH + 2, "padding": BHS_LENGTH + 6, "digest": len(wire) - 1}[where]
    wire[offset] ^= 0x10
    reader = PduReader(data_digest=True)
    reader.feed(wire)
    with pytest.raises(DigestError) as info:
        reader.next_pdu()
    assert info.value.kind == "data"


def oversized_header(data_length: int) -> bytes:
    """A Data-In header announcing ``data_length`` bytes of data."""
    return h("25 00 00 00 00") + data_length.to_bytes(3, "big") + DATA_IN_STATUS.header[8:]


@pytest.mark.parametrize("header_digest", [False, True])
def test_reader_data_segment_over_our_limit_fails_at_once(header_digest: bool) -> None:
    """MaxRecvDataSegmentLength is a promise the target must keep (RFC 7143 section 13.12);
    the reader says so as soon as the header is in, not after 16 MiB that never come."""
    header = oversized_header(8193)
    if header_digest:
        header += digest(header)
    reader = PduReader(header_digest=header_digest, max_data_segment_length=8192)
    reader.feed(header[:-1])
    assert reader.next_pdu() is None
    reader.feed(header[-1:])
    with pytest.raises(TargetProtocolError, match="MaxRecvDataSegmentLength"):
        reader.next_pdu()


def test_reader_data_segment_at_our_limit_is_fine() -> None:
    payload = bytes(range(256)) * 32  # 8192 bytes
    reader = PduReader(max_data_segment_length=8192)
    reader.feed(oversized_header(8192))
    assert reader.next_pdu() is None
    reader.feed(payload)
    pdu = reader.next_pdu()
    assert isinstance(pdu, DataIn)
    assert pdu.data == payload


def test_reader_with_digests_switched_on_after_login() -> None:
    """Digests start with the first PDU after the final Login Response (RFC 7143 13.1)."""
    reader = PduReader()
    reader.feed(wire_pdu(LOGIN_RESPONSE_OK, header_digest=False, data_digest=False))
    assert reader.next_pdu() == LOGIN_RESPONSE_OK.pdu
    reader.header_digest = reader.data_digest = True
    reader.feed(wire_pdu(NOP_IN_ANSWER, header_digest=True, data_digest=True))
    assert reader.next_pdu() == NOP_IN_ANSWER.pdu


# ---------------------------------------------------------------- hypothesis


@settings(max_examples=150, deadline=None)
@given(
    pdus=st.lists(any_pdu(), min_size=1, max_size=5),
    header_digest=st.booleans(),
    data_digest=st.booleans(),
    data=st.data(),
)
def test_encode_and_read_round_trip(
    pdus: list[Pdu], header_digest: bool, data_digest: bool, data: st.DataObject
) -> None:
    stream = b"".join(
        b"".join(encode_pdu(p, header_digest=header_digest, data_digest=data_digest)) for p in pdus
    )
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    reader = PduReader(header_digest=header_digest, data_digest=data_digest)
    assert read_all(reader, chunks) == [as_received(p) for p in pdus]
    assert len(reader) == 0


def drain(reader: PduReader) -> None:
    """Read PDUs until the reader wants more bytes or reports the target's mistake. Any
    exception but an ISCSIError fails the test."""
    for _ in range(64):
        try:
            if reader.next_pdu() is None:
                return
        except ISCSIError:
            return


@settings(max_examples=300, deadline=None)
@given(
    stream=st.binary(max_size=400),
    header_digest=st.booleans(),
    data_digest=st.booleans(),
    max_data_segment_length=st.sampled_from([512, 8192, (1 << 24) - 1]),
)
def test_reader_fuzz_random_bytes(
    stream: bytes, header_digest: bool, data_digest: bool, max_data_segment_length: int
) -> None:
    reader = PduReader(
        header_digest=header_digest,
        data_digest=data_digest,
        max_data_segment_length=max_data_segment_length,
    )
    reader.feed(stream)
    drain(reader)


@settings(max_examples=200, deadline=None)
@given(pdu=any_pdu(), header_digest=st.booleans(), data_digest=st.booleans(), data=st.data())
def test_reader_fuzz_truncated(
    pdu: Pdu, header_digest: bool, data_digest: bool, data: st.DataObject
) -> None:
    """A valid PDU cut short is not an error yet: the rest may still come."""
    wire = b"".join(encode_pdu(pdu, header_digest=header_digest, data_digest=data_digest))
    cut = data.draw(st.integers(0, len(wire) - 1))
    reader = PduReader(header_digest=header_digest, data_digest=data_digest)
    reader.feed(wire[:cut])
    assert reader.next_pdu() is None
    reader.feed(wire[cut:])
    assert reader.next_pdu() == as_received(pdu)


@settings(max_examples=300, deadline=None)
@given(pdu=any_pdu(), header_digest=st.booleans(), data_digest=st.booleans(), data=st.data())
def test_reader_fuzz_flipped_bytes(
    pdu: Pdu, header_digest: bool, data_digest: bool, data: st.DataObject
) -> None:
    wire = bytearray(
        b"".join(encode_pdu(pdu, header_digest=header_digest, data_digest=data_digest))
    )
    for _ in range(data.draw(st.integers(1, 4))):
        wire[data.draw(st.integers(0, len(wire) - 1))] ^= data.draw(st.integers(1, 255))
    reader = PduReader(header_digest=header_digest, data_digest=data_digest)
    reader.feed(wire)
    drain(reader)
    reader.feed(b"".join(encode_pdu(NopOut(), header_digest=header_digest)))
    drain(reader)


def test_scsi_command_through_the_reader() -> None:
    """A 32-byte CDB survives the trip through encode_pdu and the reader with digests."""
    command = ScsiCommand(
        read=True, attribute=TaskAttribute.SIMPLE, cdb=SCSI_READ32.pdu.cdb,
        expected_bidirectional_read_data_length=7, data=b"abcdef",
    )  # fmt: skip
    reader = PduReader(header_digest=True, data_digest=True)
    reader.feed(b"".join(encode_pdu(command, header_digest=True, data_digest=True)))
    assert reader.next_pdu() == command
