"""SCSI sense data (SPC-4 section 4.5): what a CHECK CONDITION tells the initiator.

iSCSI carries autosense in the SCSI Response data segment (RFC 7143 section 11.4.7); the
caller strips the two-byte SenseLength and hands the sense bytes to :func:`parse_sense`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from .errors import TargetProtocolError

__all__ = [
    "FieldPointer",
    "Sense",
    "SenseFormatError",
    "SenseKey",
    "asc_description",
    "parse_sense",
]


class SenseFormatError(TargetProtocolError):
    """The target sent sense data that SPC-4 section 4.5 does not allow."""


class SenseKey(IntEnum):
    """SENSE KEY values, SPC-4 section 4.5.6 table 48."""

    NO_SENSE = 0x0
    RECOVERED_ERROR = 0x1
    NOT_READY = 0x2
    MEDIUM_ERROR = 0x3
    HARDWARE_ERROR = 0x4
    ILLEGAL_REQUEST = 0x5
    UNIT_ATTENTION = 0x6
    DATA_PROTECT = 0x7
    BLANK_CHECK = 0x8
    VENDOR_SPECIFIC = 0x9
    COPY_ABORTED = 0xA
    ABORTED_COMMAND = 0xB
    RESERVED = 0xC  # EQUAL before SPC-3; the field is four bits, so every value needs a name
    VOLUME_OVERFLOW = 0xD
    MISCOMPARE = 0xE
    COMPLETED = 0xF

    @property
    def text(self) -> str:
        """The name as SPC writes it: ``UNIT ATTENTION``."""
        return self.name.replace("_", " ")


# Response codes, SPC-4 section 4.5.1 table 26.
FIXED_CURRENT = 0x70
FIXED_DEFERRED = 0x71
DESCRIPTOR_CURRENT = 0x72
DESCRIPTOR_DEFERRED = 0x73

# ASC/ASCQ assignments an initiator of disks meets, from SPC-4 Annex D (T10 asc-num.txt).
_ASC_ASCQ: dict[tuple[int, int], str] = {
    (0x00, 0x00): "no additional sense information",
    (0x00, 0x06): "I/O process terminated",
    (0x00, 0x16): "operation in progress",
    (0x00, 0x17): "cleaning requested",
    (0x00, 0x1D): "ATA pass through information available",
    (0x02, 0x00): "no seek complete",
    (0x03, 0x00): "peripheral device write fault",
    (0x04, 0x00): "logical unit not ready, cause not reportable",
    (0x04, 0x01): "logical unit is in process of becoming ready",
    (0x04, 0x02): "logical unit not ready, initializing command required",
    (0x04, 0x03): "logical unit not ready, manual intervention required",
    (0x04, 0x04): "logical unit not ready, format in progress",
    (0x04, 0x05): "logical unit not ready, rebuild in progress",
    (0x04, 0x06): "logical unit not ready, recalculation in progress",
    (0x04, 0x07): "logical unit not ready, operation in progress",
    (0x04, 0x08): "logical unit not ready, long write in progress",
    (0x04, 0x09): "logical unit not ready, self-test in progress",
    (0x04, 0x0A): "logical unit not accessible, asymmetric access state transition",
    (0x04, 0x0B): "logical unit not accessible, target port in standby state",
    (0x04, 0x0C): "logical unit not accessible, target port in unavailable state",
    (0x04, 0x0D): "logical unit not ready, structure check required",
    (0x04, 0x10): "logical unit not ready, auxiliary memory not accessible",
    (0x04, 0x11): "logical unit not ready, notify (enable spinup) required",
    (0x04, 0x12): "logical unit not ready, offline",
    (0x04, 0x13): "logical unit not ready, SA creation in progress",
    (0x04, 0x14): "logical unit not ready, space allocation in progress",
    (0x04, 0x1A): "logical unit not ready, start stop unit command in progress",
    (0x04, 0x1B): "logical unit not ready, sanitize in progress",
    (0x04, 0x1C): "logical unit not ready, additional power use not yet granted",
    (0x05, 0x00): "logical unit does not respond to selection",
    (0x08, 0x00): "logical unit communication failure",
    (0x08, 0x01): "logical unit communication time-out",
    (0x08, 0x02): "logical unit communication parity error",
    (0x0C, 0x00): "write error",
    (0x0C, 0x02): "write error - auto reallocation failed",
    (0x0C, 0x03): "write error - recommend reassignment",
    (0x0C, 0x07): "write error - recovery needed",
    (0x0E, 0x00): "invalid information unit",
    (0x0E, 0x01): "information unit too short",
    (0x0E, 0x02): "information unit too long",
    (0x0E, 0x03): "invalid field in command information unit",
    (0x10, 0x00): "ID CRC or ECC error",
    (0x10, 0x01): "logical block guard check failed",
    (0x10, 0x02): "logical block application tag check failed",
    (0x10, 0x03): "logical block reference tag check failed",
    (0x11, 0x00): "unrecovered read error",
    (0x11, 0x01): "read retries exhausted",
    (0x11, 0x02): "error too long to correct",
    (0x11, 0x04): "unrecovered read error - auto reallocate failed",
    (0x11, 0x0A): "miscorrected error",
    (0x11, 0x0B): "unrecovered read error - recommend reassignment",
    (0x11, 0x0C): "unrecovered read error - recommend rewrite the data",
    (0x14, 0x01): "record not found",
    (0x1A, 0x00): "parameter list length error",
    (0x1B, 0x00): "synchronous data transfer error",
    (0x1D, 0x00): "miscompare during verify operation",
    (0x20, 0x00): "invalid command operation code",
    (0x20, 0x01): "access denied - initiator pending-enrolled",
    (0x20, 0x02): "access denied - no access rights",
    (0x20, 0x09): "access denied - invalid LU identifier",
    (0x21, 0x00): "logical block address out of range",
    (0x21, 0x01): "invalid element address",
    (0x21, 0x02): "invalid address for write",
    (0x24, 0x00): "invalid field in CDB",
    (0x24, 0x01): "CDB decryption error",
    (0x25, 0x00): "logical unit not supported",
    (0x26, 0x00): "invalid field in parameter list",
    (0x26, 0x01): "parameter not supported",
    (0x26, 0x02): "parameter value invalid",
    (0x26, 0x03): "threshold parameters not supported",
    (0x26, 0x04): "invalid release of persistent reservation",
    (0x27, 0x00): "write protected",
    (0x27, 0x01): "hardware write protected",
    (0x27, 0x02): "logical unit software write protected",
    (0x27, 0x07): "space allocation failed write protect",
    (0x28, 0x00): "not ready to ready change, medium may have changed",
    (0x28, 0x01): "import or export element accessed",
    (0x29, 0x00): "power on, reset, or bus device reset occurred",
    (0x29, 0x01): "power on occurred",
    (0x29, 0x02): "SCSI bus reset occurred",
    (0x29, 0x03): "bus device reset function occurred",
    (0x29, 0x04): "device internal reset",
    (0x29, 0x05): "transceiver mode changed to single-ended",
    (0x29, 0x06): "transceiver mode changed to LVD",
    (0x29, 0x07): "I_T nexus loss occurred",
    (0x2A, 0x00): "parameters changed",
    (0x2A, 0x01): "mode parameters changed",
    (0x2A, 0x02): "log parameters changed",
    (0x2A, 0x03): "reservations preempted",
    (0x2A, 0x04): "reservations released",
    (0x2A, 0x05): "registrations preempted",
    (0x2A, 0x06): "asymmetric access state changed",
    (0x2A, 0x07): "implicit asymmetric access state transition failed",
    (0x2A, 0x08): "priority changed",
    (0x2A, 0x09): "capacity data has changed",
    (0x2A, 0x10): "timestamp changed",
    (0x2C, 0x00): "command sequence error",
    (0x2E, 0x00): "insufficient time for operation",
    (0x2F, 0x00): "commands cleared by another initiator",
    (0x2F, 0x01): "commands cleared by power loss notification",
    (0x2F, 0x02): "commands cleared by device server",
    (0x31, 0x00): "medium format corrupted",
    (0x32, 0x00): "no defect spare location available",
    (0x38, 0x07): "thin provisioning soft threshold reached",
    (0x3A, 0x00): "medium not present",
    (0x3A, 0x01): "medium not present - tray closed",
    (0x3A, 0x02): "medium not present - tray open",
    (0x3D, 0x00): "invalid bits in identify message",
    (0x3E, 0x00): "logical unit has not self-configured yet",
    (0x3E, 0x01): "logical unit failure",
    (0x3E, 0x02): "timeout on logical unit",
    (0x3E, 0x03): "logical unit failed self-test",
    (0x3F, 0x00): "target operating conditions have changed",
    (0x3F, 0x01): "microcode has been changed",
    (0x3F, 0x02): "changed operating definition",
    (0x3F, 0x03): "inquiry data has changed",
    (0x3F, 0x04): "component device attached",
    (0x3F, 0x05): "device identifier changed",
    (0x3F, 0x06): "redundancy group created or modified",
    (0x3F, 0x07): "redundancy group deleted",
    (0x3F, 0x0E): "reported luns data has changed",
    (0x3F, 0x0F): "echo buffer overwritten",
    (0x3F, 0x12): "iSCSI IP address added",
    (0x3F, 0x13): "iSCSI IP address removed",
    (0x3F, 0x14): "iSCSI IP address changed",
    (0x43, 0x00): "message error",
    (0x44, 0x00): "internal target failure",
    (0x44, 0x71): "ATA device failed set features",
    (0x45, 0x00): "select or reselect failure",
    (0x47, 0x00): "SCSI parity error",
    (0x47, 0x01): "data phase CRC error detected",
    (0x47, 0x03): "information unit iuCRC error detected",
    (0x47, 0x05): "protocol service CRC error",
    (0x47, 0x7F): "some commands cleared by iSCSI protocol event",
    (0x48, 0x00): "initiator detected error message received",
    (0x49, 0x00): "invalid message error",
    (0x4A, 0x00): "command phase error",
    (0x4B, 0x00): "data phase error",
    (0x4B, 0x01): "invalid target port transfer tag received",
    (0x4B, 0x02): "too much write data",
    (0x4B, 0x03): "ACK/NAK timeout",
    (0x4B, 0x04): "NAK received",
    (0x4B, 0x05): "data offset error",
    (0x4B, 0x06): "initiator response timeout",
    (0x4B, 0x07): "connection lost",
    (0x4C, 0x00): "logical unit failed self-configuration",
    (0x4E, 0x00): "overlapped commands attempted",
    (0x53, 0x02): "medium removal prevented",
    (0x55, 0x00): "system resource failure",
    (0x55, 0x01): "system buffer full",
    (0x55, 0x02): "insufficient reservation resources",
    (0x55, 0x03): "insufficient resources",
    (0x55, 0x04): "insufficient registration resources",
    (0x5D, 0x00): "failure prediction threshold exceeded",
    (0x5D, 0xFF): "failure prediction threshold exceeded (false)",
    (0x5E, 0x00): "low power condition on",
    (0x5E, 0x01): "idle condition activated by timer",
    (0x5E, 0x02): "standby condition activated by timer",
    (0x68, 0x00): "logical unit not configured",
    (0x74, 0x71): "logical unit access not authorized",
}


def _known_description(asc: int, ascq: int) -> str | None:
    text = _ASC_ASCQ.get((asc, ascq))
    if text is not None:
        return text
    if asc == 0x4D:  # the ASCQ carries the task tag (SAM-5 section 5.14)
        return f"tagged overlapped commands (task tag 0x{ascq:02x})"
    if asc == 0x40 and ascq >= 0x80:
        return f"diagnostic failure on component 0x{ascq:02x}"
    return None


def asc_description(asc: int, ascq: int, *, with_code: bool = False) -> str:
    """The SPC-4 Annex D text for an ASC/ASCQ pair, or ``ASC 0xNN ASCQ 0xNN`` when unknown.

    ``with_code`` appends ``(0xNN/0xNN)`` to a known text, so that a log line can be matched
    against target documentation, which quotes the numbers.
    """
    text = _known_description(asc, ascq)
    if text is None:
        return f"ASC 0x{asc:02x} ASCQ 0x{ascq:02x}"
    return f"{text} (0x{asc:02x}/0x{ascq:02x})" if with_code else text


@dataclass(frozen=True)
class FieldPointer:
    """Where an ILLEGAL REQUEST points, SPC-4 section 4.5.2.4.2.

    ``in_cdb`` is the C/D bit: True for a byte of the CDB, False for the parameter list
    (Data-Out). ``bit`` is None unless the target named the bit (BPV set).
    """

    in_cdb: bool
    byte: int
    bit: int | None

    def __str__(self) -> str:
        where = "CDB" if self.in_cdb else "parameter data"
        bit = f" bit {self.bit}" if self.bit is not None else ""
        return f"{where} byte {self.byte}{bit}"


@dataclass(frozen=True)
class Sense:
    """Decoded sense data, whichever of the two formats the target used.

    ``information`` is the INFORMATION field when the target marked it valid (for a medium
    error, the first failing LBA); ``field_pointer`` and ``progress`` come from the
    sense-key specific bytes (SPC-4 section 4.5.2.4) when SKSV is set and the sense key
    gives them that meaning. ``progress`` counts in 65536ths of the operation.
    """

    response_code: int
    key: SenseKey
    asc: int
    ascq: int
    deferred: bool
    descriptor_format: bool
    information: int | None = None
    field_pointer: FieldPointer | None = None
    progress: int | None = None

    @property
    def description(self) -> str:
        """``UNIT ATTENTION: power on, reset, or bus device reset occurred (0x29/0x00)``."""
        text = f"{self.key.text}: {asc_description(self.asc, self.ascq, with_code=True)}"
        if self.field_pointer is not None:
            text += f" at {self.field_pointer}"
        if self.deferred:
            text = "deferred error: " + text
        return text

    @property
    def code(self) -> str:
        """``0x29/0x00``: the pair as logs and target documentation quote it."""
        return f"0x{self.asc:02x}/0x{self.ascq:02x}"

    @property
    def is_unit_attention(self) -> bool:
        return self.key == SenseKey.UNIT_ATTENTION

    @property
    def is_power_on_reset(self) -> bool:
        """ASC 0x29, any ASCQ: every new I_T nexus starts with one (tgt reports 0x29/0x00).

        The initiator absorbs it after login and retries the command; it is not an error.
        """
        return self.key == SenseKey.UNIT_ATTENTION and self.asc == 0x29

    def __str__(self) -> str:
        return self.description


def _sense_key_specific(
    key: SenseKey, sks: bytes | memoryview
) -> tuple[FieldPointer | None, int | None]:
    """Decode the three sense-key specific bytes (SPC-4 section 4.5.2.4); SKSV was checked."""
    value = (sks[1] << 8) | sks[2]
    if key == SenseKey.ILLEGAL_REQUEST:
        bit = sks[0] & 0x07 if sks[0] & 0x08 else None
        return FieldPointer(in_cdb=bool(sks[0] & 0x40), byte=value, bit=bit), None
    if key in (SenseKey.NOT_READY, SenseKey.NO_SENSE):
        return None, value
    return None, None


def _parse_fixed(mv: memoryview, code: int) -> Sense:
    """Fixed format, SPC-4 section 4.5.3: the fields sit at set offsets up to byte 17."""
    if len(mv) < 8:
        raise SenseFormatError(
            f"fixed-format sense data truncated: {len(mv)} bytes, the header needs 8"
        )
    end = 8 + mv[7]
    # Short sense (ADDITIONAL SENSE LENGTH below 10) is valid: the absent fields read as zero.
    # Bytes past the sense-key specific field are vendor-specific and not read, so a buffer
    # cut short there is accepted.
    if len(mv) < min(end, 18):
        raise SenseFormatError(
            f"fixed-format sense data truncated: ADDITIONAL SENSE LENGTH {mv[7]} "
            f"announces {end} bytes, only {len(mv)} present"
        )
    body = bytes(mv[: min(end, 18)]).ljust(18, b"\x00")
    key = SenseKey(body[2] & 0x0F)
    (information,) = struct.unpack_from(">I", body, 3)
    field_pointer: FieldPointer | None = None
    progress: int | None = None
    if body[15] & 0x80:
        field_pointer, progress = _sense_key_specific(key, body[15:18])
    return Sense(
        response_code=code,
        key=key,
        asc=body[12],
        ascq=body[13],
        deferred=code == FIXED_DEFERRED,
        descriptor_format=False,
        information=information if mv[0] & 0x80 else None,
        field_pointer=field_pointer,
        progress=progress,
    )


def _parse_descriptor(mv: memoryview, code: int) -> Sense:
    """Descriptor format, SPC-4 section 4.5.2: a header, then type/length descriptors."""
    if len(mv) < 8:
        raise SenseFormatError(
            f"descriptor-format sense data truncated: {len(mv)} bytes, the header needs 8"
        )
    end = 8 + mv[7]
    if len(mv) < end:
        raise SenseFormatError(
            f"descriptor-format sense data truncated: ADDITIONAL SENSE LENGTH {mv[7]} "
            f"announces {end} bytes, only {len(mv)} present"
        )
    key = SenseKey(mv[1] & 0x0F)
    information: int | None = None
    field_pointer: FieldPointer | None = None
    progress: int | None = None
    offset = 8
    while offset < end:
        if offset + 2 > end:
            raise SenseFormatError(f"sense descriptor at byte {offset} has no length byte")
        kind, length = mv[offset], mv[offset + 1]
        if offset + 2 + length > end:
            raise SenseFormatError(
                f"sense descriptor type 0x{kind:02x} at byte {offset} runs past the end "
                f"of the sense data ({length} bytes announced)"
            )
        desc = mv[offset : offset + 2 + length]
        if kind == 0x00:  # information, SPC-4 section 4.5.2.2
            if length < 0x0A:
                raise SenseFormatError(
                    f"information sense descriptor too short: length {length}, needs 10"
                )
            if desc[2] & 0x80:
                (information,) = struct.unpack_from(">Q", desc, 4)
        elif kind == 0x02:  # sense key specific, SPC-4 section 4.5.2.4
            if length < 0x06:
                raise SenseFormatError(
                    f"sense key specific descriptor too short: length {length}, needs 6"
                )
            if desc[4] & 0x80:
                field_pointer, progress = _sense_key_specific(key, desc[4:7])
        offset += 2 + length
    return Sense(
        response_code=code,
        key=key,
        asc=mv[2],
        ascq=mv[3],
        deferred=code == DESCRIPTOR_DEFERRED,
        descriptor_format=True,
        information=information,
        field_pointer=field_pointer,
        progress=progress,
    )


def parse_sense(data: bytes | memoryview) -> Sense:
    """Decode sense data in fixed (0x70/0x71) or descriptor (0x72/0x73) format.

    Raises :class:`SenseFormatError`, and nothing else, when the bytes are not sense data.
    """
    mv = memoryview(data)
    if mv.ndim != 1 or mv.format != "B":
        mv = mv.cast("B")
    if not mv:
        raise SenseFormatError("empty sense data")
    code = mv[0] & 0x7F
    if code in (FIXED_CURRENT, FIXED_DEFERRED):
        return _parse_fixed(mv, code)
    if code in (DESCRIPTOR_CURRENT, DESCRIPTOR_DEFERRED):
        return _parse_descriptor(mv, code)
    raise SenseFormatError(f"unknown sense data RESPONSE CODE 0x{code:02x}")
