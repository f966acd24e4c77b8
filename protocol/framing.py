"""Cutting PDUs out of a TCP byte stream and putting them back in (RFC 7143 section 11.2).

A PDU on the wire is BHS, AHS, optional HeaderDigest, data segment padded to 4 bytes,
optional DataDigest. Digests are CRC32C (RFC 7143 section 13.1) from the C-accelerated
``crc32c`` package, stored little-endian as open-iscsi, libiscsi and tgt do.
"""

from __future__ import annotations

import struct

import crc32c

from .errors import DigestError, InitiatorProtocolError, TargetProtocolError
from .pdu import BHS_LENGTH, MAX_DATA_SEGMENT_LENGTH, Buffer, Pdu, header_lengths, parse_pdu

DIGEST_LENGTH = 4
_PADDING = (b"", b"\0\0\0", b"\0\0", b"\0")
_DIGEST = struct.Struct("<I")


def crc32c_of(*parts: Buffer) -> int:
    """CRC32C over the concatenation of ``parts``, without joining them."""
    value = 0
    for part in parts:
        value = crc32c.crc32c(part, value)
    return int(value)


def padding_for(length: int) -> bytes:
    """The zero bytes that pad a data segment of ``length`` bytes to a 4-byte boundary."""
    return _PADDING[length & 3]


def encode_pdu(pdu: Pdu, *, header_digest: bool = False, data_digest: bool = False) -> list[Buffer]:
    """The PDU as buffers for ``writelines``: the data payload is passed through, not copied."""
    return frame(pdu.pack_bhs(), pdu.data, header_digest=header_digest, data_digest=data_digest)


def frame(
    header: bytes, data: Buffer, *, header_digest: bool = False, data_digest: bool = False
) -> list[Buffer]:
    """A packed BHS (and AHS) and its data segment as buffers for ``writelines``, with the
    padding and digests the connection uses."""
    if header_digest:
        header += _DIGEST.pack(crc32c_of(header))
    if not len(data):
        return [header]
    pad = padding_for(len(data))
    trailer = pad + _DIGEST.pack(crc32c_of(data, pad)) if data_digest else pad
    return [header, data, trailer] if trailer else [header, data]


class PduReader:
    """Incremental decoder: :meth:`feed` bytes as they arrive, :meth:`next_pdu` whole PDUs.

    Like h11's receive buffer, a short header is not an error: ``next_pdu`` returns ``None``
    until the whole PDU is there. Digests are switched on by the caller once login is over
    (RFC 7143 section 13.1: they start with the first PDU after the final Login Response).
    ``max_data_segment_length`` is the MaxRecvDataSegmentLength we declared: a peer that sends
    more breaks the protocol.
    """

    def __init__(
        self,
        *,
        header_digest: bool = False,
        data_digest: bool = False,
        max_data_segment_length: int = MAX_DATA_SEGMENT_LENGTH,
    ) -> None:
        self.header_digest = header_digest
        self.data_digest = data_digest
        self.max_data_segment_length = max_data_segment_length
        self._buffer = bytearray()
        # Bytes fed while the buffer was empty, parsed in place (PDUs are views into them)
        # and copied into the buffer only if they end in the middle of a PDU.
        self._chunk: memoryview | None = None

    def __len__(self) -> int:
        chunk = self._chunk
        return len(self._buffer) + (len(chunk) if chunk is not None else 0)

    def feed(self, data: Buffer) -> None:
        if self._chunk is not None:
            self._spill()
        if not self._buffer and isinstance(data, bytes):
            self._chunk = memoryview(data)  # immutable: views into it stay valid
        else:
            self._buffer += data

    def _spill(self) -> None:
        assert self._chunk is not None
        self._buffer += self._chunk
        self._chunk = None

    def next_pdu(self) -> Pdu | None:
        raw = self.next_raw()
        return parse_pdu(*raw) if raw is not None else None

    def next_raw(self) -> tuple[memoryview, memoryview, memoryview] | None:
        """The next whole PDU as (BHS, AHS, data segment) views, digests checked, not yet
        decoded: the caller may decode the common PDUs its own way (Data-In)."""
        chunk = self._chunk
        if chunk is not None:
            raw, used = self._cut(chunk)
            if raw is not None:
                self._chunk = chunk[used:] if used < len(chunk) else None
                return raw
            self._spill()  # a part of a PDU: wait for the rest in the buffer
        buf = self._buffer
        if len(buf) < BHS_LENGTH:
            return None
        with memoryview(buf) as pending:  # buf[:total] would copy once more before bytes()
            total = self._complete(pending)
            if total is None:
                return None
            whole = bytes(pending[:total])  # the one copy out of the receive buffer
        del buf[:total]
        raw, _ = self._cut(memoryview(whole))
        assert raw is not None
        return raw

    def _layout(self, view: memoryview) -> tuple[int, int, int, int]:
        """Where the first PDU's parts end: (header, data start, data length, whole PDU)."""
        ahs_length, data_length = header_lengths(view)
        header_end = BHS_LENGTH + ahs_length
        data_start = header_end + (DIGEST_LENGTH if self.header_digest else 0)
        padded = data_length + (-data_length & 3)
        total = data_start + padded + (DIGEST_LENGTH if self.data_digest and data_length else 0)
        return header_end, data_start, data_length, total

    def _complete(self, view: memoryview) -> int | None:
        """The length of the first PDU in ``view`` if all of it is there, else None."""
        header_end, data_start, data_length, total = self._layout(view)
        if len(view) < total:
            # Check the header digest and the length limit as soon as the header is here, so
            # that a corrupt DataSegmentLength cannot make us wait for 16 MiB that never come.
            if len(view) >= data_start:
                self._check_header(view, header_end, data_length)
            return None
        return total

    def _cut(
        self, view: memoryview
    ) -> tuple[tuple[memoryview, memoryview, memoryview] | None, int]:
        """The first PDU of ``view`` (an immutable buffer) as (BHS, AHS, data) and its
        length, or (None, 0)."""
        if len(view) < BHS_LENGTH:
            return None, 0
        header_end, data_start, data_length, total = self._layout(view)
        if len(view) < total:
            return None, 0
        self._check_header(view, header_end, data_length)
        data = view[data_start : data_start + data_length]
        if self.data_digest and data_length:
            padded = total - DIGEST_LENGTH - data_start
            received = _DIGEST.unpack_from(view, data_start + padded)[0]
            expected = crc32c_of(view[data_start : data_start + padded])
            if received != expected:
                raise DigestError("data", expected, received)
        return (view[:BHS_LENGTH], view[BHS_LENGTH:header_end], data), total

    def _check_header(self, view: memoryview, header_end: int, data_length: int) -> None:
        if self.header_digest:
            received = _DIGEST.unpack_from(view, header_end)[0]
            expected = crc32c_of(view[:header_end])
            if received != expected:
                raise DigestError("header", expected, received)
        if data_length > self.max_data_segment_length:
            raise TargetProtocolError(
                f"DataSegmentLength {data_length} exceeds our MaxRecvDataSegmentLength "
                f"{self.max_data_segment_length} (opcode 0x{view[0] & 0x3F:02x})"
            )


def split_data(length: int, segment: int) -> list[tuple[int, int]]:
    """(offset, length) pieces of at most ``segment`` bytes covering ``length`` bytes."""
    if segment <= 0:
        raise InitiatorProtocolError(f"segment size {segment} must be positive")
    return [(off, min(segment, length - off)) for off in range(0, length, segment)]
