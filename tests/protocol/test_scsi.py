"""CDB builders and response parsers (SBC-3, SPC-4, SAM-5 LUNs): hand-written vectors."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

# The module, not its names: pytest would collect an imported ``test_unit_ready``.
from pyiscsid.protocol import scsi
from pyiscsid.protocol.errors import (
    InitiatorProtocolError,
    ISCSIError,
    ProtocolError,
    TargetProtocolError,
)
from pyiscsid.protocol.scsi import (
    BlockLimits,
    Capacity,
    Designator,
    LogicalBlockProvisioning,
    ScsiCommandError,
    ScsiFormatError,
    ScsiStatus,
    StandardInquiry,
)
from pyiscsid.protocol.sense import parse_sense


def h(text: str) -> bytes:
    return bytes.fromhex(text)


# --- CDBs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cdb", "expected"),
    [
        (scsi.test_unit_ready(), "00 00 00 00 00 00"),
        (scsi.inquiry(), "12 00 00 00 ff 00"),
        (scsi.inquiry(allocation_length=0x1000, evpd=True, page_code=0x83), "12 01 83 10 00 00"),
        (scsi.inquiry(allocation_length=0xFFFF, evpd=True, page_code=0x00), "12 01 00 ff ff 00"),
        (scsi.read_capacity10(), "25 00 00 00 00 00 00 00 00 00"),
        (scsi.read_capacity16(), "9e 10 00 00 00 00 00 00 00 00 00 00 00 20 00 00"),
        (
            scsi.read_capacity16(allocation_length=0xFFFFFFFF),
            "9e 10 00 00 00 00 00 00 00 00 ff ff ff ff 00 00",
        ),
        (scsi.report_luns(), "a0 00 00 00 00 00 00 00 10 00 00 00"),
        (scsi.report_luns(16, select_report=2), "a0 00 02 00 00 00 00 00 00 10 00 00"),
        (scsi.read10(0x12345678, 0x100), "28 00 12 34 56 78 00 01 00 00"),
        (scsi.read10(0, 0), "28 00 00 00 00 00 00 00 00 00"),
        (scsi.read10(0xFFFFFFFF, 0xFFFF), "28 00 ff ff ff ff 00 ff ff 00"),
        (scsi.read10(7, 1, fua=True), "28 08 00 00 00 07 00 00 01 00"),
        (
            scsi.read16(0xFFFFFFFFFFFFFFFF, 0xFFFFFFFF),
            "88 00 ff ff ff ff ff ff ff ff ff ff ff ff 00 00",
        ),
        (scsi.read16(0x100000000, 1, fua=True), "88 08 00 00 00 01 00 00 00 00 00 00 00 01 00 00"),
        (scsi.write10(1, 8, fua=True), "2a 08 00 00 00 01 00 00 08 00"),
        (scsi.write10(0xFFFFFFFF, 0xFFFF), "2a 00 ff ff ff ff 00 ff ff 00"),
        (
            scsi.write16(0x0123456789ABCDEF, 0x10000),
            "8a 00 01 23 45 67 89 ab cd ef 00 01 00 00 00 00",
        ),
        (scsi.synchronize_cache10(), "35 00 00 00 00 00 00 00 00 00"),
        (scsi.synchronize_cache10(0x10, 0x20, immed=True), "35 02 00 00 00 10 00 00 20 00"),
        (scsi.synchronize_cache16(), "91 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00"),
        (
            scsi.synchronize_cache16(lba=5, blocks=7, immed=True),
            "91 02 00 00 00 00 00 00 00 05 00 00 00 07 00 00",
        ),
        (scsi.unmap(24), "42 00 00 00 00 00 00 00 18 00"),
        (scsi.unmap(0xFFFF, anchor=True), "42 01 00 00 00 00 00 ff ff 00"),
        (
            scsi.write_same16(0x100, 0x800, unmap=True),
            "93 08 00 00 00 00 00 00 01 00 00 00 08 00 00 00",
        ),
        (
            scsi.write_same16(0, 1, unmap=True, ndob=True),
            "93 09 00 00 00 00 00 00 00 00 00 00 00 01 00 00",
        ),
        (scsi.write_same16(2, 3), "93 00 00 00 00 00 00 00 00 02 00 00 00 03 00 00"),
        (scsi.mode_sense6(), "1a 00 3f 00 ff 00"),
        (scsi.mode_sense6(page_code=0x08, allocation_length=4, dbd=True), "1a 08 08 00 04 00"),
        (scsi.mode_sense6(page_control=2), "1a 00 bf 00 ff 00"),
    ],
)
def test_cdb_bytes(cdb: bytes, expected: str) -> None:
    assert isinstance(cdb, bytes)
    assert cdb == h(expected)


@pytest.mark.parametrize(
    "build",
    [
        lambda: scsi.read10(2**32, 1),
        lambda: scsi.read10(-1, 1),
        lambda: scsi.read10(0, 0x10000),
        lambda: scsi.read10(0, -1),
        lambda: scsi.write10(2**32, 1),
        lambda: scsi.write10(0, 0x10000),
        lambda: scsi.read16(2**64, 1),
        lambda: scsi.read16(0, 2**32),
        lambda: scsi.write16(2**64, 1),
        lambda: scsi.write16(0, 2**32),
        lambda: scsi.synchronize_cache10(2**32, 0),
        lambda: scsi.synchronize_cache10(0, 0x10000),
        lambda: scsi.synchronize_cache16(2**64, 0),
        lambda: scsi.synchronize_cache16(0, 2**32),
        lambda: scsi.write_same16(2**64, 1),
        lambda: scsi.write_same16(0, 2**32),
        lambda: scsi.unmap(0x10000),
        lambda: scsi.inquiry(allocation_length=0x10000),
        lambda: scsi.inquiry(page_code=0x80),  # page code without EVPD
        lambda: scsi.inquiry(evpd=True, page_code=0x100),
        lambda: scsi.read_capacity16(allocation_length=2**32),
        lambda: scsi.report_luns(15),
        lambda: scsi.report_luns(2**32),
        lambda: scsi.report_luns(select_report=0x100),
        lambda: scsi.mode_sense6(page_code=0x40),
        lambda: scsi.mode_sense6(allocation_length=256),
        lambda: scsi.mode_sense6(page_control=4),
        lambda: scsi.unmap_parameter_list([(2**64, 1)]),
        lambda: scsi.unmap_parameter_list([(0, 2**32)]),
    ],
)
def test_cdb_out_of_range(build: Callable[[], bytes]) -> None:
    with pytest.raises(InitiatorProtocolError):
        build()


def test_unmap_parameter_list() -> None:
    data = scsi.unmap_parameter_list([(0x10, 8), (2**40, 0xFFFFFFFF)])
    assert data == h(
        "00 26 00 20 00 00 00 00"
        " 00 00 00 00 00 00 00 10 00 00 00 08 00 00 00 00"
        " 00 00 01 00 00 00 00 00 ff ff ff ff 00 00 00 00"
    )
    assert scsi.unmap(len(data)) == h("42 00 00 00 00 00 00 00 28 00")


def test_unmap_parameter_list_empty_and_limit() -> None:
    assert scsi.unmap_parameter_list([]) == h("00 06 00 00 00 00 00 00")
    assert len(scsi.unmap_parameter_list([(0, 1)] * 4095)) == 8 + 16 * 4095
    with pytest.raises(InitiatorProtocolError, match="4096 UNMAP block descriptors"):
        scsi.unmap_parameter_list([(0, 1)] * 4096)


# --- status and errors -------------------------------------------------------------------


def test_scsi_command_error_message() -> None:
    sense = parse_sense(h("70 00 05 00 00 00 00 0a 00 00 00 00 21 00 00 00 00 00"))
    err = ScsiCommandError(ScsiStatus.CHECK_CONDITION, sense)
    assert str(err) == (
        "CHECK CONDITION: ILLEGAL REQUEST, logical block address out of range (0x21/0x00)"
    )
    assert err.status is ScsiStatus.CHECK_CONDITION
    assert err.sense is sense
    assert isinstance(err, ISCSIError)
    assert not isinstance(err, ProtocolError)  # the connection is fine


def test_scsi_command_error_without_sense() -> None:
    err = ScsiCommandError(0x08)
    assert err.status is ScsiStatus.BUSY
    assert str(err) == "BUSY"
    assert str(ScsiCommandError(ScsiStatus.RESERVATION_CONFLICT)) == "RESERVATION CONFLICT"


def test_scsi_command_error_unknown_status() -> None:
    err = ScsiCommandError(0x22)
    assert err.status == 0x22
    assert not isinstance(err.status, ScsiStatus)
    assert str(err) == "status 0x22"


def test_scsi_command_error_unknown_asc() -> None:
    sense = parse_sense(h("70 00 03 00 00 00 00 0a 00 00 00 00 99 42 00 00 00 00"))
    assert str(ScsiCommandError(2, sense)) == "CHECK CONDITION: MEDIUM ERROR, ASC 0x99 ASCQ 0x42"


def test_status_values() -> None:
    assert [int(s) for s in ScsiStatus] == [0, 2, 4, 8, 0x18, 0x28, 0x30, 0x40]


# --- standard INQUIRY --------------------------------------------------------------------

TGT_INQUIRY = h(
    "00 00 05 12 3b 00 00 02"
    " 49 45 54 20 20 20 20 20"  # "IET     "
    " 56 49 52 54 55 41 4c 2d 44 49 53 4b 20 20 20 20"  # "VIRTUAL-DISK    "
    " 30 30 30 31" + " 00" * 24  # "0001"
)


def test_standard_inquiry_disk() -> None:
    assert scsi.parse_standard_inquiry(TGT_INQUIRY) == StandardInquiry(
        peripheral_qualifier=0,
        device_type=0,
        removable=False,
        version=5,
        response_data_format=2,
        tpgs=0,
        protect=False,
        cmdque=True,
        vendor="IET",
        product="VIRTUAL-DISK",
        revision="0001",
    )


def test_standard_inquiry_minimum_and_flags() -> None:
    data = h(
        "7f 80 06 02 1f 31 00 00"
        " 4c 49 4f 2d 4f 52 47 00"  # "LIO-ORG" NUL padded
        " 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00"
        " 34 2e 30 20"
    )
    inq = scsi.parse_standard_inquiry(data)
    assert (inq.peripheral_qualifier, inq.device_type) == (3, 0x1F)
    assert inq.removable
    assert inq.tpgs == 3
    assert inq.protect
    assert not inq.cmdque
    assert (inq.vendor, inq.product, inq.revision) == ("LIO-ORG", "", "4.0")


def test_standard_inquiry_truncated() -> None:
    with pytest.raises(ScsiFormatError, match="needs at least 36"):
        scsi.parse_standard_inquiry(TGT_INQUIRY[:35])


# --- VPD pages ---------------------------------------------------------------------------


def test_supported_vpd_pages() -> None:
    data = h("00 00 00 05 00 80 83 b0 b2")
    assert scsi.parse_supported_vpd_pages(data) == [0x00, 0x80, 0x83, 0xB0, 0xB2]
    assert scsi.parse_supported_vpd_pages(data + h("ff ff")) == [0x00, 0x80, 0x83, 0xB0, 0xB2]


def test_supported_vpd_pages_cut_by_allocation_length() -> None:
    data = h("00 00 00 05 00 80")
    assert scsi.parse_supported_vpd_pages(data) == [0x00, 0x80]
    assert scsi.vpd_page_length(data) == 9


def test_vpd_wrong_page() -> None:
    with pytest.raises(ScsiFormatError, match="expected VPD page 0x80"):
        scsi.parse_unit_serial_number(h("00 83 00 00"))


def test_unit_serial_number() -> None:
    data = h("00 80 00 0a 62 65 61 66 31 30 20 20 20 20")
    assert scsi.parse_unit_serial_number(data) == "beaf10"
    assert scsi.parse_unit_serial_number(h("00 80 00 00")) == ""


DEVICE_IDENTIFICATION = (
    h("00 83 00 82")  # 20 + 16 + 36 + 8 + 8 + 22 + 12 + 8 = 130 bytes of descriptors
    # NAA 6 (IEEE registered extended), binary, LU
    + h("01 03 00 10 60 01 40 50 5e 3d 0b 1a 4a 84 2c e5 5a 8d 7d 2e")
    # T10 vendor ID, ASCII, LU
    + h("02 01 00 0c 4c 49 4f 2d 4f 52 47 20 64 69 73 6b")  # "LIO-ORG disk"
    # SCSI name string, iSCSI, UTF-8, PIV, target port: "iqn.2003-01.org.x:t1,t,0x0001" + 3 NUL
    + h("53 98 00 20")
    + b"iqn.2003-01.org.x:t1,t,0x0001\x00\x00\x00"
    # relative target port 1, iSCSI, binary, PIV, target port
    + h("51 94 00 04 00 00 00 01")
    # target port group 0x0102
    + h("51 95 00 04 00 00 01 02")
    # UUID, binary, LU
    + h("01 0a 00 12 10 00 12 34 56 78 9a bc de f0 01 23 45 67 89 ab cd ef")
    # EUI-64
    + h("01 02 00 08 00 14 05 00 00 00 00 01")
    # vendor specific, ASCII
    + h("02 00 00 04 41 42 43 20")
)


def test_device_identification() -> None:
    designators = scsi.parse_device_identification(DEVICE_IDENTIFICATION)
    assert designators[0] == Designator(
        code_set=1,
        association=0,
        designator_type=3,
        protocol_identifier=0,
        piv=False,
        identifier=h("60 01 40 50 5e 3d 0b 1a 4a 84 2c e5 5a 8d 7d 2e"),
    )
    assert designators[2] == Designator(
        code_set=3,
        association=1,
        designator_type=8,
        protocol_identifier=5,
        piv=True,
        identifier=b"iqn.2003-01.org.x:t1,t,0x0001\x00\x00\x00",
    )
    assert [str(d) for d in designators] == [
        "naa.600140505e3d0b1a4a842ce55a8d7d2e",
        "t10.LIO-ORG disk",
        "iqn.2003-01.org.x:t1,t,0x0001",
        "relative target port 1",
        "target port group 258",
        "uuid.12345678-9abc-def0-0123-456789abcdef",
        "eui.0014050000000001",
        "ABC",
    ]


def test_device_identification_cut_by_allocation_length() -> None:
    # The first descriptor whole, the second cut: only the first comes back.
    designators = scsi.parse_device_identification(DEVICE_IDENTIFICATION[:30])
    assert [str(d) for d in designators] == ["naa.600140505e3d0b1a4a842ce55a8d7d2e"]
    assert scsi.vpd_page_length(DEVICE_IDENTIFICATION[:30]) == len(DEVICE_IDENTIFICATION)


@pytest.mark.parametrize(
    "data",
    [
        h("00 83 00 06 01 03 00 08 60 01"),  # descriptor longer than the page
        h("00 83 00 08 01 03 00 02 60 01 02 01"),  # the page ends inside a second header
        h("00 83 00 02 01 03"),  # a header that does not fit the page
    ],
)
def test_device_identification_malformed(data: bytes) -> None:
    with pytest.raises(ScsiFormatError):
        scsi.parse_device_identification(data)


BLOCK_LIMITS = h(
    "00 b0 00 3c"
    " 01 00 00 08"  # WSNZ, MAX COMPARE AND WRITE 0, OPTIMAL GRANULARITY 8
    " 00 00 40 00"  # MAXIMUM TRANSFER LENGTH 16384
    " 00 00 04 00"  # OPTIMAL TRANSFER LENGTH 1024
    " 00 00 00 00"  # MAXIMUM PREFETCH LENGTH
    " 00 40 00 00"  # MAXIMUM UNMAP LBA COUNT 4194304
    " 00 00 00 01"  # MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT 1
    " 00 00 00 08"  # OPTIMAL UNMAP GRANULARITY 8
    " 80 00 00 03"  # UGAVALID, alignment 3
    " 00 00 00 00 00 40 00 00" + " 00" * 20  # MAXIMUM WRITE SAME LENGTH 0x400000
)


def test_block_limits() -> None:
    assert scsi.parse_block_limits(BLOCK_LIMITS) == BlockLimits(
        wsnz=True,
        max_compare_and_write_length=0,
        optimal_transfer_length_granularity=8,
        max_transfer_length=16384,
        optimal_transfer_length=1024,
        max_prefetch_length=0,
        max_unmap_lba_count=0x400000,
        max_unmap_block_descriptor_count=1,
        optimal_unmap_granularity=8,
        unmap_granularity_alignment=3,
        max_write_same_length=0x400000,
    )


def test_block_limits_short_sbc2_page() -> None:
    data = h("00 b0 00 0c 00 00 00 00 00 00 01 00 00 00 00 80")
    limits = scsi.parse_block_limits(data)
    assert limits.max_transfer_length == 256
    assert limits.optimal_transfer_length == 128
    assert limits.max_unmap_lba_count == 0
    assert limits.unmap_granularity_alignment is None
    assert limits.max_write_same_length == 0


def test_block_limits_too_short() -> None:
    with pytest.raises(ScsiFormatError, match="Block Limits"):
        scsi.parse_block_limits(h("00 b0 00 08 00 00 00 00 00 00 01 00"))


def test_logical_block_provisioning() -> None:
    lbp = scsi.parse_logical_block_provisioning(h("00 b2 00 04 00 e4 02 00"))
    assert lbp == LogicalBlockProvisioning(
        threshold_exponent=0,
        lbpu=True,
        lbpws=True,
        lbpws10=True,
        lbprz=True,
        anc_sup=False,
        dp=False,
        provisioning_type=2,
    )
    lbp = scsi.parse_logical_block_provisioning(h("00 b2 00 04 0a 03 00 00"))
    assert (lbp.threshold_exponent, lbp.lbpu, lbp.lbprz, lbp.anc_sup, lbp.dp) == (
        10,
        False,
        False,
        True,
        True,
    )


def test_logical_block_provisioning_too_short() -> None:
    with pytest.raises(ScsiFormatError):
        scsi.parse_logical_block_provisioning(h("00 b2 00 02 00 e4"))


# --- READ CAPACITY -----------------------------------------------------------------------


def test_read_capacity10() -> None:
    cap = scsi.parse_read_capacity10(h("00 00 ff ff 00 00 02 00"))
    assert cap == Capacity(last_lba=0xFFFF, block_size=512)
    assert cap.blocks == 0x10000
    assert cap.size_bytes == 32 * 1024 * 1024
    assert not cap.needs_read_capacity16


def test_read_capacity10_overflow_asks_for_16() -> None:
    cap = scsi.parse_read_capacity10(h("ff ff ff ff 00 00 02 00"))
    assert cap.needs_read_capacity16
    assert cap.last_lba == scsi.READ_CAPACITY10_OVERFLOW


def test_read_capacity10_truncated() -> None:
    with pytest.raises(ScsiFormatError):
        scsi.parse_read_capacity10(h("00 00 ff ff 00 00 02"))


def test_read_capacity16() -> None:
    data = h("00 00 00 01 00 00 00 00 00 00 10 00 05 13 c0 07" + " 00" * 16)
    cap = scsi.parse_read_capacity16(data)
    assert cap == Capacity(
        last_lba=0x100000000,
        block_size=4096,
        prot_en=True,
        p_type=2,
        p_i_exponent=1,
        logical_blocks_per_physical_block_exponent=3,
        lbpme=True,
        lbprz=True,
        lowest_aligned_lba=7,
    )
    assert cap.blocks == 0x100000001
    assert cap.size_bytes == 0x100000001 * 4096
    assert cap.physical_block_size == 32768
    assert cap.protection_type == 3


def test_read_capacity16_plain_and_short() -> None:
    cap = scsi.parse_read_capacity16(h("00 00 00 00 00 1f ff ff 00 00 02 00"))
    assert cap == Capacity(last_lba=0x1FFFFF, block_size=512)
    assert cap.protection_type == 0
    assert cap.physical_block_size == 512
    with pytest.raises(ScsiFormatError):
        scsi.parse_read_capacity16(h("00 00 00 00 00 1f ff ff 00 00 02"))


# --- MODE SENSE --------------------------------------------------------------------------


def test_write_protect_bit() -> None:
    assert scsi.is_write_protected(h("0b 00 80 08 00 00 00 00 00 00 02 00"))
    assert not scsi.is_write_protected(h("03 00 10 00"))
    header = scsi.parse_mode_parameter_header6(h("03 00 10 00"))
    assert header.dpofua
    assert not header.write_protect
    with pytest.raises(ScsiFormatError):
        scsi.is_write_protected(h("03 00 80"))


# --- REPORT LUNS and LUNs ----------------------------------------------------------------

REPORT_LUNS = h(
    "00 00 00 20 00 00 00 00"
    " 00 00 00 00 00 00 00 00"  # LUN 0, peripheral
    " 00 01 00 00 00 00 00 00"  # LUN 1, peripheral
    " 41 2c 00 00 00 00 00 00"  # LUN 300, flat space
    " 00 01 00 02 00 00 00 00"  # two levels: raw value
)


def test_report_luns() -> None:
    assert scsi.parse_report_luns(REPORT_LUNS) == [0, 1, 300, 0x0001000200000000]
    assert scsi.report_luns_length(REPORT_LUNS) == len(REPORT_LUNS)
    assert scsi.parse_report_luns(REPORT_LUNS + h("ff" * 8)) == [0, 1, 300, 0x0001000200000000]


def test_report_luns_cut_by_allocation_length() -> None:
    data = REPORT_LUNS[:20]  # the header, LUN 0 and half of LUN 1
    assert scsi.parse_report_luns(data) == [0]
    assert scsi.report_luns_length(data) == 40


def test_report_luns_empty() -> None:
    assert scsi.parse_report_luns(h("00 00 00 00 00 00 00 00")) == []


def test_report_luns_malformed() -> None:
    with pytest.raises(ScsiFormatError, match="multiple of 8"):
        scsi.parse_report_luns(h("00 00 00 0c 00 00 00 00" + " 00" * 12))
    with pytest.raises(ScsiFormatError, match="truncated"):
        scsi.parse_report_luns(h("00 00 00 08 00 00 00"))


@pytest.mark.parametrize(
    ("lun", "raw"),
    [
        (0, "00 00 00 00 00 00 00 00"),
        (5, "00 05 00 00 00 00 00 00"),
        (255, "00 ff 00 00 00 00 00 00"),
        (256, "41 00 00 00 00 00 00 00"),
        (300, "41 2c 00 00 00 00 00 00"),
        (16383, "7f ff 00 00 00 00 00 00"),
    ],
)
def test_lun_encoding(lun: int, raw: str) -> None:
    assert scsi.encode_lun(lun) == h(raw)
    assert scsi.decode_lun(h(raw)) == lun
    assert scsi.lun_to_field(lun) == int(raw.replace(" ", ""), 16)
    assert scsi.field_to_lun(int(raw.replace(" ", ""), 16)) == lun


def test_lun_other_addressing_methods_decode_raw() -> None:
    # Peripheral device addressing on bus 1, and an extended flat space LUN (11b, 0xD2).
    assert scsi.decode_lun(h("01 05 00 00 00 00 00 00")) == 0x0105000000000000
    assert scsi.decode_lun(h("d2 01 23 45 00 00 00 00")) == 0xD201234500000000
    assert scsi.encode_lun(0xD201234500000000) == h("d2 01 23 45 00 00 00 00")
    # Flat space written as peripheral on level one: taken as the plain LUN.
    assert scsi.decode_lun(memoryview(h("41 00 00 00 00 00 00 00"))) == 256


def test_lun_all_small_values_round_trip() -> None:
    for lun in range(16384):
        assert scsi.decode_lun(scsi.encode_lun(lun)) == lun


def test_lun_errors() -> None:
    with pytest.raises(InitiatorProtocolError):
        scsi.encode_lun(-1)
    with pytest.raises(InitiatorProtocolError):
        scsi.encode_lun(2**64)
    with pytest.raises(InitiatorProtocolError, match="single-level"):
        scsi.encode_lun(0x0001000000000000)  # is LUN 1
    with pytest.raises(InitiatorProtocolError):
        scsi.field_to_lun(2**64)
    with pytest.raises(ScsiFormatError):
        scsi.decode_lun(h("00 01 00 00 00 00 00"))


@given(st.binary(min_size=8, max_size=8))
def test_decoded_lun_encodes_back(raw: bytes) -> None:
    lun = scsi.decode_lun(raw)
    if lun >= 16384:
        assert scsi.encode_lun(lun) == raw
    else:
        assert scsi.decode_lun(scsi.encode_lun(lun)) == lun
    assert scsi.field_to_lun(int.from_bytes(raw, "big")) == lun


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_encoded_lun_decodes_back(lun: int) -> None:
    try:
        raw = scsi.encode_lun(lun)
    except InitiatorProtocolError:
        return
    assert scsi.decode_lun(raw) == lun
    assert scsi.field_to_lun(scsi.lun_to_field(lun)) == lun


# --- fuzz: only ScsiFormatError escapes --------------------------------------------------

PARSERS: list[Callable[[bytes], object]] = [
    scsi.parse_standard_inquiry,
    scsi.parse_supported_vpd_pages,
    scsi.parse_unit_serial_number,
    scsi.parse_device_identification,
    scsi.parse_block_limits,
    scsi.parse_logical_block_provisioning,
    scsi.parse_read_capacity10,
    scsi.parse_read_capacity16,
    scsi.parse_report_luns,
    scsi.parse_mode_parameter_header6,
    scsi.is_write_protected,
    scsi.vpd_page_length,
    scsi.report_luns_length,
]


def _only_our_error(parser: Callable[[bytes], object], data: bytes) -> None:
    try:
        result = parser(data)
    except ScsiFormatError:
        return
    str(result)  # __str__ of designators etc. must not raise either


@given(st.sampled_from(PARSERS), st.binary(max_size=96))
def test_any_bytes_only_raise_scsi_format_error(
    parser: Callable[[bytes], object], data: bytes
) -> None:
    _only_our_error(parser, data)


@given(
    st.sampled_from(
        [
            (scsi.parse_supported_vpd_pages, 0x00),
            (scsi.parse_unit_serial_number, 0x80),
            (scsi.parse_device_identification, 0x83),
            (scsi.parse_block_limits, 0xB0),
            (scsi.parse_logical_block_provisioning, 0xB2),
        ]
    ),
    st.integers(min_value=0, max_value=0xFFFF),
    st.binary(max_size=96),
)
def test_vpd_pages_with_right_code_only_raise_scsi_format_error(
    parser_page: tuple[Callable[[bytes], object], int], length: int, body: bytes
) -> None:
    parser, page = parser_page
    # Half the time, a PAGE LENGTH that matches the body.
    length = len(body) if length & 1 else length
    _only_our_error(parser, bytes([0, page]) + length.to_bytes(2, "big") + body)


@given(st.lists(st.binary(max_size=24), max_size=6), st.booleans())
def test_designator_lists_only_raise_scsi_format_error(parts: list[bytes], cut: bool) -> None:
    body = b"".join(p[:2].ljust(2, b"\x00") + b"\x00" + bytes([len(p[2:])]) + p[2:] for p in parts)
    data = h("00 83") + len(body).to_bytes(2, "big") + body
    _only_our_error(scsi.parse_device_identification, data[: len(data) // 2] if cut else data)


def test_format_error_is_a_target_error() -> None:
    assert issubclass(ScsiFormatError, TargetProtocolError)
