"""SCSI commands an iSCSI initiator of disks issues: CDB builders and response parsers.

The CDBs follow SBC-3 and SPC-4; each builder checks its arguments against the field widths
so that a caller's mistake (an LBA beyond 32 bits in READ(10)) raises
:class:`InitiatorProtocolError` here instead of being truncated silently on the wire. The
parsers read what the target returned and raise :class:`ScsiFormatError`, and nothing else,
when it is not what SPC-4 describes.

Responses longer than the allocation length are cut short by the target (SPC-4 section
4.2.5.6). The list parsers then return the complete entries that arrived;
:func:`vpd_page_length` and :func:`report_luns_length` tell how much to ask for next time.
"""

from __future__ import annotations

import contextlib
import functools
import struct
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

from .errors import InitiatorProtocolError, ISCSIError, TargetProtocolError
from .sense import Sense, asc_description

__all__ = [
    "READ_CAPACITY10_OVERFLOW",
    "Association",
    "BlockLimits",
    "Capacity",
    "CodeSet",
    "Designator",
    "DesignatorType",
    "LogicalBlockProvisioning",
    "ModeParameterHeader",
    "Opcode",
    "PeripheralDeviceType",
    "ScsiCommandError",
    "ScsiFormatError",
    "ScsiStatus",
    "StandardInquiry",
    "VpdPage",
    "decode_lun",
    "encode_lun",
    "field_to_lun",
    "inquiry",
    "is_write_protected",
    "lun_to_field",
    "mode_sense6",
    "parse_block_limits",
    "parse_device_identification",
    "parse_logical_block_provisioning",
    "parse_mode_parameter_header6",
    "parse_read_capacity10",
    "parse_read_capacity16",
    "parse_report_luns",
    "parse_standard_inquiry",
    "parse_supported_vpd_pages",
    "parse_unit_serial_number",
    "read10",
    "read16",
    "read_capacity10",
    "read_capacity16",
    "report_luns",
    "report_luns_length",
    "synchronize_cache10",
    "synchronize_cache16",
    "test_unit_ready",
    "unmap",
    "unmap_parameter_list",
    "vpd_page_length",
    "write10",
    "write16",
    "write_same16",
]


class ScsiFormatError(TargetProtocolError):
    """The target returned SCSI data (INQUIRY, VPD, capacity, LUN list) that SPC-4/SBC-3
    does not allow."""


class ScsiStatus(IntEnum):
    """SCSI status codes, SAM-5 section 5.3.1 (the Status field of a SCSI Response PDU)."""

    GOOD = 0x00
    CHECK_CONDITION = 0x02
    CONDITION_MET = 0x04
    BUSY = 0x08
    RESERVATION_CONFLICT = 0x18
    TASK_SET_FULL = 0x28
    ACA_ACTIVE = 0x30
    TASK_ABORTED = 0x40

    @property
    def text(self) -> str:
        """The name as SAM writes it: ``CHECK CONDITION``."""
        return self.name.replace("_", " ")


class ScsiCommandError(ISCSIError):
    """A SCSI command ended with a status other than GOOD.

    The iSCSI exchange itself went fine, so the connection stays up; what to do (retry on
    BUSY or a unit attention, fail the I/O on a medium error) depends on ``status`` and
    ``sense``.
    """

    def __init__(self, status: ScsiStatus | int, sense: Sense | None = None) -> None:
        with contextlib.suppress(ValueError):  # keep unknown codes as plain ints
            status = ScsiStatus(status)
        self.status: ScsiStatus | int = status
        self.sense = sense
        text = status.text if isinstance(status, ScsiStatus) else f"status 0x{status:02x}"
        if sense is not None:
            text += f": {sense.key.text}, {asc_description(sense.asc, sense.ascq, with_code=True)}"
            if sense.field_pointer is not None:
                text += f" at {sense.field_pointer}"
            if sense.deferred:
                text += " (deferred error)"
        super().__init__(text)


class Opcode(IntEnum):
    """Operation codes of the commands built here (SPC-4 and SBC-3)."""

    TEST_UNIT_READY = 0x00
    INQUIRY = 0x12
    MODE_SENSE_6 = 0x1A
    READ_CAPACITY_10 = 0x25
    READ_10 = 0x28
    WRITE_10 = 0x2A
    SYNCHRONIZE_CACHE_10 = 0x35
    UNMAP = 0x42
    READ_16 = 0x88
    WRITE_16 = 0x8A
    SYNCHRONIZE_CACHE_16 = 0x91
    WRITE_SAME_16 = 0x93
    SERVICE_ACTION_IN_16 = 0x9E
    REPORT_LUNS = 0xA0


SERVICE_ACTION_READ_CAPACITY_16 = 0x10

READ_CAPACITY10_OVERFLOW = 0xFFFFFFFF
"""RETURNED LOGICAL BLOCK ADDRESS of READ CAPACITY(10) for a disk too large for it
(SBC-3 section 5.15.2): issue READ CAPACITY(16)."""


class VpdPage(IntEnum):
    """Vital product data page codes (SPC-4 section 7.8, SBC-3 section 6.5)."""

    SUPPORTED_PAGES = 0x00
    UNIT_SERIAL_NUMBER = 0x80
    DEVICE_IDENTIFICATION = 0x83
    BLOCK_LIMITS = 0xB0
    BLOCK_DEVICE_CHARACTERISTICS = 0xB1
    LOGICAL_BLOCK_PROVISIONING = 0xB2


class PeripheralDeviceType(IntEnum):
    """PERIPHERAL DEVICE TYPE, SPC-4 section 6.4.2 table 141 (the common ones)."""

    DIRECT_ACCESS = 0x00
    SEQUENTIAL_ACCESS = 0x01
    PROCESSOR = 0x03
    CD_DVD = 0x05
    OPTICAL_MEMORY = 0x07
    MEDIUM_CHANGER = 0x08
    STORAGE_ARRAY_CONTROLLER = 0x0C
    ENCLOSURE_SERVICES = 0x0D
    SIMPLIFIED_DIRECT_ACCESS = 0x0E
    WELL_KNOWN_LU = 0x1E
    UNKNOWN = 0x1F


# --- argument checks -------------------------------------------------------------------


def _check(name: str, value: int, bits: int, minimum: int = 0) -> None:
    limit = (1 << bits) - 1
    if not minimum <= value <= limit:
        raise InitiatorProtocolError(f"{name} {value} out of range {minimum}..{limit}")


def _view(data: bytes | memoryview) -> memoryview:
    mv = memoryview(data)
    if mv.ndim != 1 or mv.format != "B":
        mv = mv.cast("B")
    return mv


def _need(mv: memoryview, length: int, what: str) -> None:
    if len(mv) < length:
        raise ScsiFormatError(f"{what} truncated: {len(mv)} bytes, needs at least {length}")


def _ascii(raw: bytes | memoryview) -> str:
    """SPC-4 ASCII fields are space padded; some targets pad with NUL instead."""
    return bytes(raw).decode("ascii", errors="replace").strip(" \x00")


# --- CDB builders ----------------------------------------------------------------------


def test_unit_ready() -> bytes:
    """TEST UNIT READY (SPC-4 section 6.47): clears a pending unit attention after login."""
    return bytes(6)


def inquiry(allocation_length: int = 255, evpd: bool = False, page_code: int = 0) -> bytes:
    """INQUIRY (SPC-4 section 6.6): standard data, or the VPD page ``page_code`` if ``evpd``.

    The default of 255 keeps the allocation length in byte 4 alone, which SPC-2 devices that
    treat byte 3 as reserved still understand.
    """
    _check("allocation length", allocation_length, 16)
    _check("page code", page_code, 8)
    if not evpd and page_code:
        raise InitiatorProtocolError("INQUIRY page code must be 0 without EVPD (SPC-4 6.6.1)")
    return struct.pack(">BBBHB", Opcode.INQUIRY, int(evpd), page_code, allocation_length, 0)


def read_capacity10() -> bytes:
    """READ CAPACITY(10) (SBC-3 section 5.15): LBA and PMI are obsolete and left zero."""
    return struct.pack(">B9x", Opcode.READ_CAPACITY_10)


def read_capacity16(allocation_length: int = 32) -> bytes:
    """READ CAPACITY(16), a SERVICE ACTION IN(16) (SBC-3 section 5.16)."""
    _check("allocation length", allocation_length, 32)
    return struct.pack(
        ">BB8xIBB",
        Opcode.SERVICE_ACTION_IN_16,
        SERVICE_ACTION_READ_CAPACITY_16,
        allocation_length,
        0,
        0,
    )


def report_luns(allocation_length: int = 4096, select_report: int = 0) -> bytes:
    """REPORT LUNS (SPC-4 section 6.33). SPC-4 asks for an allocation length of at least 16.

    The default holds 511 LUNs; :func:`report_luns_length` says whether more were cut off.
    """
    _check("allocation length", allocation_length, 32, minimum=16)
    _check("select report", select_report, 8)
    return struct.pack(">BxB3xIxB", Opcode.REPORT_LUNS, select_report, allocation_length, 0)


_RW10 = struct.Struct(">BBIBHB")
_RW16 = struct.Struct(">BBQIBB")


def _rw10(opcode: Opcode, lba: int, blocks: int, fua: bool) -> bytes:
    try:  # the checks only to explain a failure: this is every I/O's path
        return _RW10.pack(opcode, 0x08 if fua else 0, lba, 0, blocks, 0)
    except struct.error:
        _check("LBA", lba, 32)
        _check("transfer length", blocks, 16)
        raise


def _rw16(opcode: Opcode, lba: int, blocks: int, fua: bool) -> bytes:
    try:
        return _RW16.pack(opcode, 0x08 if fua else 0, lba, blocks, 0, 0)
    except struct.error:
        _check("LBA", lba, 64)
        _check("transfer length", blocks, 32)
        raise


def read10(lba: int, blocks: int, fua: bool = False) -> bytes:
    """READ(10) (SBC-3 section 5.11). ``blocks`` 0 transfers nothing, and is no error."""
    return _rw10(Opcode.READ_10, lba, blocks, fua)


def read16(lba: int, blocks: int, fua: bool = False) -> bytes:
    """READ(16) (SBC-3 section 5.13): for LBAs past 2**32 or more than 65535 blocks."""
    return _rw16(Opcode.READ_16, lba, blocks, fua)


def write10(lba: int, blocks: int, fua: bool = False) -> bytes:
    """WRITE(10) (SBC-3 section 5.32). FUA makes the target write through its cache."""
    return _rw10(Opcode.WRITE_10, lba, blocks, fua)


def write16(lba: int, blocks: int, fua: bool = False) -> bytes:
    """WRITE(16) (SBC-3 section 5.34)."""
    return _rw16(Opcode.WRITE_16, lba, blocks, fua)


def synchronize_cache10(lba: int = 0, blocks: int = 0, immed: bool = False) -> bytes:
    """SYNCHRONIZE CACHE(10) (SBC-3 section 5.22). ``blocks`` 0 means up to the last LBA."""
    _check("LBA", lba, 32)
    _check("number of logical blocks", blocks, 16)
    return struct.pack(
        ">BBIBHB", Opcode.SYNCHRONIZE_CACHE_10, 0x02 if immed else 0, lba, 0, blocks, 0
    )


def synchronize_cache16(lba: int = 0, blocks: int = 0, immed: bool = False) -> bytes:
    """SYNCHRONIZE CACHE(16) (SBC-3 section 5.23). ``blocks`` 0 means up to the last LBA."""
    _check("LBA", lba, 64)
    _check("number of logical blocks", blocks, 32)
    return struct.pack(
        ">BBQIBB", Opcode.SYNCHRONIZE_CACHE_16, 0x02 if immed else 0, lba, blocks, 0, 0
    )


def unmap(parameter_list_length: int, anchor: bool = False) -> bytes:
    """UNMAP (SBC-3 section 5.28); the Data-Out is :func:`unmap_parameter_list`."""
    _check("parameter list length", parameter_list_length, 16)
    return struct.pack(">BB4xBHB", Opcode.UNMAP, 0x01 if anchor else 0, 0, parameter_list_length, 0)


def unmap_parameter_list(ranges: Sequence[tuple[int, int]]) -> bytes:
    """The UNMAP parameter list (SBC-3 section 5.28.2): one descriptor per (lba, blocks).

    Respect the target's MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT and MAXIMUM UNMAP LBA COUNT
    (:func:`parse_block_limits`); this only checks the field widths.
    """
    descriptors_length = 16 * len(ranges)
    if 8 + descriptors_length > 0xFFFF:
        raise InitiatorProtocolError(
            f"{len(ranges)} UNMAP block descriptors do not fit a 16-bit parameter list length"
        )
    out = bytearray(struct.pack(">HH4x", 6 + descriptors_length, descriptors_length))
    for lba, blocks in ranges:
        _check("UNMAP LBA", lba, 64)
        _check("UNMAP number of logical blocks", blocks, 32)
        out += struct.pack(">QI4x", lba, blocks)
    return bytes(out)


def write_same16(lba: int, blocks: int, unmap: bool = False, ndob: bool = False) -> bytes:
    """WRITE SAME(16) (SBC-3 section 5.42), with UNMAP for thin provisioning.

    NDOB (no Data-Out buffer, SBC-3 r35) writes zeros without sending a block. Beware that
    ``blocks`` 0 means "to the last LBA" on targets whose WSNZ bit is zero.
    """
    _check("LBA", lba, 64)
    _check("number of logical blocks", blocks, 32)
    flags = (0x08 if unmap else 0) | (0x01 if ndob else 0)
    return struct.pack(">BBQIBB", Opcode.WRITE_SAME_16, flags, lba, blocks, 0, 0)


def mode_sense6(
    page_code: int = 0x3F,
    subpage_code: int = 0,
    allocation_length: int = 255,
    dbd: bool = False,
    page_control: int = 0,
) -> bytes:
    """MODE SENSE(6) (SPC-4 section 6.11), by default all pages with current values.

    The initiator reads it for the header's write-protect bit (:func:`is_write_protected`).
    """
    _check("page code", page_code, 6)
    _check("subpage code", subpage_code, 8)
    _check("allocation length", allocation_length, 8)
    _check("page control", page_control, 2)
    return struct.pack(
        ">6B",
        Opcode.MODE_SENSE_6,
        0x08 if dbd else 0,
        (page_control << 6) | page_code,
        subpage_code,
        allocation_length,
        0,
    )


# --- standard INQUIRY ------------------------------------------------------------------


@dataclass(frozen=True)
class StandardInquiry:
    """Standard INQUIRY data, SPC-4 section 6.4.2.

    ``peripheral_qualifier`` 0 with ``device_type`` 0 is a disk that is there; qualifier 3
    means no logical unit at this LUN.
    """

    peripheral_qualifier: int
    device_type: int
    removable: bool
    version: int
    response_data_format: int
    tpgs: int
    protect: bool
    cmdque: bool
    vendor: str
    product: str
    revision: str


def parse_standard_inquiry(data: bytes | memoryview) -> StandardInquiry:
    """Decode standard INQUIRY data; SPC-4 requires at least 36 bytes of it."""
    mv = _view(data)
    _need(mv, 36, "standard INQUIRY data")
    return StandardInquiry(
        peripheral_qualifier=mv[0] >> 5,
        device_type=mv[0] & 0x1F,
        removable=bool(mv[1] & 0x80),
        version=mv[2],
        response_data_format=mv[3] & 0x0F,
        tpgs=(mv[5] >> 4) & 0x03,
        protect=bool(mv[5] & 0x01),
        cmdque=bool(mv[7] & 0x02),
        vendor=_ascii(mv[8:16]),
        product=_ascii(mv[16:32]),
        revision=_ascii(mv[32:36]),
    )


# --- VPD pages -------------------------------------------------------------------------


def vpd_page_length(data: bytes | memoryview) -> int:
    """The whole size of a VPD page (4 + PAGE LENGTH), to compare with what arrived."""
    mv = _view(data)
    _need(mv, 4, "VPD page header")
    return 4 + ((mv[2] << 8) | mv[3])


def _vpd_body(data: bytes | memoryview, page: VpdPage) -> memoryview:
    """The page's payload after the 4-byte header, clipped to what arrived."""
    mv = _view(data)
    _need(mv, 4, f"VPD page 0x{page:02x} header")
    if mv[1] != page:
        raise ScsiFormatError(f"expected VPD page 0x{page:02x}, the target returned 0x{mv[1]:02x}")
    end = 4 + ((mv[2] << 8) | mv[3])
    return mv[4:end]


def parse_supported_vpd_pages(data: bytes | memoryview) -> list[int]:
    """Supported VPD Pages (SPC-4 section 7.8.14): the page codes the target implements."""
    return list(_vpd_body(data, VpdPage.SUPPORTED_PAGES))


def parse_unit_serial_number(data: bytes | memoryview) -> str:
    """Unit Serial Number (SPC-4 section 7.8.15): ASCII, stripped of its padding."""
    return _ascii(_vpd_body(data, VpdPage.UNIT_SERIAL_NUMBER))


class CodeSet(IntEnum):
    """CODE SET of a designation descriptor, SPC-4 section 7.8.6.1 table 493."""

    BINARY = 1
    ASCII = 2
    UTF8 = 3


class Association(IntEnum):
    """What a designator names, SPC-4 section 7.8.6.1 table 494."""

    LOGICAL_UNIT = 0
    TARGET_PORT = 1
    TARGET_DEVICE = 2


class DesignatorType(IntEnum):
    """DESIGNATOR TYPE, SPC-4 section 7.8.6.1 table 495."""

    VENDOR_SPECIFIC = 0x0
    T10_VENDOR_ID = 0x1
    EUI64 = 0x2
    NAA = 0x3
    RELATIVE_TARGET_PORT = 0x4
    TARGET_PORT_GROUP = 0x5
    LOGICAL_UNIT_GROUP = 0x6
    MD5_LOGICAL_UNIT = 0x7
    SCSI_NAME_STRING = 0x8
    PROTOCOL_SPECIFIC_PORT = 0x9
    UUID = 0xA


@dataclass(frozen=True)
class Designator:
    """One designation descriptor of the Device Identification page (SPC-4 section 7.8.6).

    ``str()`` gives the names Linux uses for wwids: ``naa.6001405...``, ``eui.…``,
    ``t10.VENDOR…``, the text of a SCSI name string (an IQN for iSCSI).
    """

    code_set: int
    association: int
    designator_type: int
    protocol_identifier: int
    piv: bool
    identifier: bytes

    def _text(self) -> str:
        return self.identifier.decode("utf-8", errors="replace").rstrip(" \x00")

    def __str__(self) -> str:
        kind, ident = self.designator_type, self.identifier
        if kind == DesignatorType.NAA:
            return "naa." + ident.hex()
        if kind == DesignatorType.EUI64:
            return "eui." + ident.hex()
        if kind == DesignatorType.T10_VENDOR_ID:
            return "t10." + self._text()
        if kind == DesignatorType.UUID and len(ident) >= 18:
            return "uuid." + str(uuid.UUID(bytes=ident[2:18]))
        if kind == DesignatorType.RELATIVE_TARGET_PORT and len(ident) >= 4:
            return f"relative target port {int.from_bytes(ident[2:4], 'big')}"
        if kind == DesignatorType.TARGET_PORT_GROUP and len(ident) >= 4:
            return f"target port group {int.from_bytes(ident[2:4], 'big')}"
        if kind == DesignatorType.LOGICAL_UNIT_GROUP and len(ident) >= 4:
            return f"logical unit group {int.from_bytes(ident[2:4], 'big')}"
        if self.code_set in (CodeSet.ASCII, CodeSet.UTF8):
            return self._text()
        return ident.hex()


def parse_device_identification(data: bytes | memoryview) -> list[Designator]:
    """Device Identification (SPC-4 section 7.8.6): the LU's and ports' names.

    A descriptor cut off by the allocation length is dropped; one that overruns the PAGE
    LENGTH the target itself announced is an error.
    """
    mv = _view(data)
    body = _vpd_body(mv, VpdPage.DEVICE_IDENTIFICATION)
    page_end = (mv[2] << 8) | mv[3]
    out: list[Designator] = []
    offset = 0
    while offset < len(body):
        if offset + 4 > page_end:
            raise ScsiFormatError(f"designation descriptor header at byte {4 + offset} overruns")
        if offset + 4 > len(body):
            break  # truncated by the allocation length
        length = body[offset + 3]
        end = offset + 4 + length
        if end > page_end:
            raise ScsiFormatError(
                f"designation descriptor at byte {4 + offset} ({length} bytes) runs past "
                f"the PAGE LENGTH"
            )
        if end > len(body):
            break
        out.append(
            Designator(
                code_set=body[offset] & 0x0F,
                association=(body[offset + 1] >> 4) & 0x03,
                designator_type=body[offset + 1] & 0x0F,
                protocol_identifier=body[offset] >> 4,
                piv=bool(body[offset + 1] & 0x80),
                identifier=bytes(body[offset + 4 : end]),
            )
        )
        offset = end
    return out


@dataclass(frozen=True)
class BlockLimits:
    """Block Limits VPD page (SBC-3 section 6.5.3). Lengths count logical blocks.

    Zero means "no limit reported" for the transfer lengths, and "UNMAP not supported" for
    the two unmap counts. Fields beyond a short (SBC-2 era, 16-byte) page read as zero.
    """

    wsnz: bool
    max_compare_and_write_length: int
    optimal_transfer_length_granularity: int
    max_transfer_length: int
    optimal_transfer_length: int
    max_prefetch_length: int
    max_unmap_lba_count: int
    max_unmap_block_descriptor_count: int
    optimal_unmap_granularity: int
    unmap_granularity_alignment: int | None
    max_write_same_length: int


def parse_block_limits(data: bytes | memoryview) -> BlockLimits:
    """Decode VPD page 0xB0; the session caps each READ/WRITE at ``max_transfer_length``."""
    body = _vpd_body(data, VpdPage.BLOCK_LIMITS)
    if len(body) < 12:
        raise ScsiFormatError(f"Block Limits VPD page truncated: {4 + len(body)} bytes, needs 16")
    raw = bytes(body[:60]).ljust(60, b"\x00")
    (
        wsnz,
        mcawl,
        otlg,
        mtl,
        otl,
        mpl,
        mulc,
        mubdc,
        oug,
        uga,
        mwsl,
    ) = struct.unpack_from(">BBHIIIIIIIQ", raw, 0)
    return BlockLimits(
        wsnz=bool(wsnz & 0x01),
        max_compare_and_write_length=mcawl,
        optimal_transfer_length_granularity=otlg,
        max_transfer_length=mtl,
        optimal_transfer_length=otl,
        max_prefetch_length=mpl,
        max_unmap_lba_count=mulc,
        max_unmap_block_descriptor_count=mubdc,
        optimal_unmap_granularity=oug,
        unmap_granularity_alignment=uga & 0x7FFFFFFF if uga & 0x80000000 else None,
        max_write_same_length=mwsl,
    )


@dataclass(frozen=True)
class LogicalBlockProvisioning:
    """Logical Block Provisioning VPD page (SBC-3 section 6.5.4): what thin provisioning the
    LU offers. ``lbpu``: UNMAP works; ``lbpws``/``lbpws10``: WRITE SAME(16)/(10) with UNMAP
    works; ``lbprz``: unmapped blocks read as zeros."""

    threshold_exponent: int
    lbpu: bool
    lbpws: bool
    lbpws10: bool
    lbprz: bool
    anc_sup: bool
    dp: bool
    provisioning_type: int


def parse_logical_block_provisioning(data: bytes | memoryview) -> LogicalBlockProvisioning:
    """Decode VPD page 0xB2. LBPRZ is read from bit 2 (SBC-4 widened it to bits 4..2, where
    any value with bit 2 set still means zeros)."""
    body = _vpd_body(data, VpdPage.LOGICAL_BLOCK_PROVISIONING)
    if len(body) < 3:
        raise ScsiFormatError(
            f"Logical Block Provisioning VPD page truncated: {4 + len(body)} bytes, needs 7"
        )
    flags = body[1]
    return LogicalBlockProvisioning(
        threshold_exponent=body[0],
        lbpu=bool(flags & 0x80),
        lbpws=bool(flags & 0x40),
        lbpws10=bool(flags & 0x20),
        lbprz=bool(flags & 0x04),
        anc_sup=bool(flags & 0x02),
        dp=bool(flags & 0x01),
        provisioning_type=body[2] & 0x07,
    )


# --- READ CAPACITY ---------------------------------------------------------------------


@dataclass(frozen=True)
class Capacity:
    """The LU's size (SBC-3 sections 5.15.2 and 5.16.2). ``last_lba`` is the last
    addressable block, so there are ``last_lba + 1`` blocks.

    ``needs_read_capacity16`` is set when READ CAPACITY(10) returned
    :data:`READ_CAPACITY10_OVERFLOW`: the LU is larger than 2**32 blocks and ``last_lba`` is
    not its size. The other fields beyond ``block_size`` come only from READ CAPACITY(16).
    """

    last_lba: int
    block_size: int
    needs_read_capacity16: bool = False
    prot_en: bool = False
    p_type: int = 0
    p_i_exponent: int = 0
    logical_blocks_per_physical_block_exponent: int = 0
    lbpme: bool = False
    lbprz: bool = False
    lowest_aligned_lba: int = 0

    @property
    def blocks(self) -> int:
        return self.last_lba + 1

    @property
    def size_bytes(self) -> int:
        return self.blocks * self.block_size

    @property
    def physical_block_size(self) -> int:
        return self.block_size << self.logical_blocks_per_physical_block_exponent

    @property
    def protection_type(self) -> int:
        """T10 PI type 1..3, or 0 without protection (SBC-3 section 4.22.2)."""
        return self.p_type + 1 if self.prot_en else 0


def parse_read_capacity10(data: bytes | memoryview) -> Capacity:
    """Decode the 8 bytes of READ CAPACITY(10) parameter data."""
    mv = _view(data)
    _need(mv, 8, "READ CAPACITY(10) data")
    last_lba, block_size = struct.unpack_from(">II", mv, 0)
    return Capacity(
        last_lba=last_lba,
        block_size=block_size,
        needs_read_capacity16=last_lba == READ_CAPACITY10_OVERFLOW,
    )


def parse_read_capacity16(data: bytes | memoryview) -> Capacity:
    """Decode READ CAPACITY(16) parameter data (32 bytes; the first 12 are required)."""
    mv = _view(data)
    _need(mv, 12, "READ CAPACITY(16) data")
    raw = bytes(mv[:16]).ljust(16, b"\x00")
    last_lba, block_size, b12, b13, aligned = struct.unpack_from(">QIBBH", raw, 0)
    return Capacity(
        last_lba=last_lba,
        block_size=block_size,
        prot_en=bool(b12 & 0x01),
        p_type=(b12 >> 1) & 0x07,
        p_i_exponent=b13 >> 4,
        logical_blocks_per_physical_block_exponent=b13 & 0x0F,
        lbpme=bool(aligned & 0x8000),
        lbprz=bool(aligned & 0x4000),
        lowest_aligned_lba=aligned & 0x3FFF,
    )


# --- MODE SENSE ------------------------------------------------------------------------


@dataclass(frozen=True)
class ModeParameterHeader:
    """The mode parameter header(6) (SPC-4 section 7.5.5), with the SBC-3 section 6.4.1
    meaning of the DEVICE-SPECIFIC PARAMETER for a disk: WP and DPOFUA."""

    mode_data_length: int
    medium_type: int
    write_protect: bool
    dpofua: bool
    block_descriptor_length: int


def parse_mode_parameter_header6(data: bytes | memoryview) -> ModeParameterHeader:
    mv = _view(data)
    _need(mv, 4, "MODE SENSE(6) parameter header")
    return ModeParameterHeader(
        mode_data_length=mv[0],
        medium_type=mv[1],
        write_protect=bool(mv[2] & 0x80),
        dpofua=bool(mv[2] & 0x10),
        block_descriptor_length=mv[3],
    )


def is_write_protected(mode_sense6_data: bytes | memoryview) -> bool:
    """The WP bit of MODE SENSE(6) data: a read-only LU is exported read-only over NBD."""
    return parse_mode_parameter_header6(mode_sense6_data).write_protect


# --- REPORT LUNS and LUN encoding ------------------------------------------------------


def report_luns_length(data: bytes | memoryview) -> int:
    """The whole size of REPORT LUNS data (8 + LUN LIST LENGTH): when larger than what
    arrived, issue the command again with this allocation length."""
    mv = _view(data)
    _need(mv, 8, "REPORT LUNS header")
    return 8 + int.from_bytes(mv[:4], "big")


def parse_report_luns(data: bytes | memoryview) -> list[int]:
    """The LUNs of REPORT LUNS parameter data (SPC-4 section 6.33.2), decoded as
    :func:`decode_lun` does. Entries cut off by the allocation length are left out."""
    mv = _view(data)
    total = report_luns_length(mv)
    if (total - 8) % 8:
        raise ScsiFormatError(f"REPORT LUNS LUN LIST LENGTH {total - 8} is not a multiple of 8")
    end = 8 + (min(total, len(mv)) - 8) // 8 * 8
    return [decode_lun(mv[offset : offset + 8]) for offset in range(8, end, 8)]


_PERIPHERAL = 0x00  # address method 00b, SAM-5 section 4.7.7.2
_FLAT = 0x40  # address method 01b, SAM-5 section 4.7.7.4


def decode_lun(raw: bytes | memoryview) -> int:
    """The LUN number of an 8-byte SAM-5 LUN structure (SAM-5 section 4.7).

    Single-level peripheral device addressing (bus 0) and flat space addressing give the
    plain number, 0..16383. Any other structure (hierarchical, extended, logical unit
    addressing) comes back as the raw 64-bit value, which :func:`encode_lun` turns back into
    the same bytes; such values are at least 16384 unless the structure is an odd multi-level
    one whose first six bytes are zero, which no known target uses.
    """
    mv = _view(raw)
    if len(mv) != 8:
        raise ScsiFormatError(f"a LUN is 8 bytes, got {len(mv)}")
    value = int.from_bytes(mv, "big")
    if value & 0xFFFF_FFFF_FFFF:  # levels 2..4 in use
        return value
    first, second = mv[0], mv[1]
    if first == _PERIPHERAL:
        return second
    if first & 0xC0 == _FLAT:
        return ((first & 0x3F) << 8) | second
    return value


def encode_lun(lun: int) -> bytes:
    """The 8-byte SAM-5 LUN structure for ``lun``: peripheral device addressing below 256
    (as tgt and Linux do), flat space addressing below 16384, and any larger value taken
    as a raw structure from :func:`decode_lun`."""
    _check("LUN", lun, 64)
    if lun < 256:
        return bytes((_PERIPHERAL, lun)) + bytes(6)
    if lun < 16384:
        return bytes((_FLAT | (lun >> 8), lun & 0xFF)) + bytes(6)
    raw = lun.to_bytes(8, "big")
    if decode_lun(raw) != lun:
        raise InitiatorProtocolError(
            f"LUN {lun:#018x} is a single-level structure for LUN {decode_lun(raw)}; use that"
        )
    return raw


@functools.lru_cache(maxsize=1024)
def lun_to_field(lun: int) -> int:
    """The LUN as the 64-bit big-endian integer that sits in the BHS (RFC 7143 section
    11.3.4). Cached: a session uses a handful of LUNs, for every command."""
    return int.from_bytes(encode_lun(lun), "big")


def field_to_lun(field: int) -> int:
    """Inverse of :func:`lun_to_field`: the BHS's 64-bit LUN field to a LUN number."""
    _check("LUN field", field, 64)
    return decode_lun(field.to_bytes(8, "big"))
