"""Sense data decoding (SPC-4 section 4.5): hand-written vectors and a fuzz sweep."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pyiscsid.protocol.errors import TargetProtocolError
from pyiscsid.protocol.sense import (
    FieldPointer,
    Sense,
    SenseFormatError,
    SenseKey,
    asc_description,
    parse_sense,
)


def h(text: str) -> bytes:
    return bytes.fromhex(text)


# What tgt returns on the first command of every new session.
TGT_UNIT_ATTENTION = h("70 00 06 00 00 00 00 0a 00 00 00 00 29 00 00 00 00 00")


def test_tgt_unit_attention() -> None:
    sense = parse_sense(TGT_UNIT_ATTENTION)
    assert sense == Sense(
        response_code=0x70,
        key=SenseKey.UNIT_ATTENTION,
        asc=0x29,
        ascq=0x00,
        deferred=False,
        descriptor_format=False,
        information=None,
    )
    assert sense.is_unit_attention
    assert sense.is_power_on_reset
    assert sense.description == (
        "UNIT ATTENTION: power on, reset, or bus device reset occurred (0x29/0x00)"
    )
    assert str(sense) == sense.description


def test_memoryview_input() -> None:
    buf = bytearray(b"\xee\xee" + TGT_UNIT_ATTENTION)
    assert parse_sense(memoryview(buf)[2:]) == parse_sense(TGT_UNIT_ATTENTION)


@pytest.mark.parametrize("ascq", [0x00, 0x01, 0x03, 0x07])
def test_power_on_reset_family(ascq: int) -> None:
    data = h(f"70 00 06 00 00 00 00 0a 00 00 00 00 29 {ascq:02x} 00 00 00 00")
    assert parse_sense(data).is_power_on_reset


def test_other_unit_attention_is_not_power_on_reset() -> None:
    sense = parse_sense(h("70 00 06 00 00 00 00 0a 00 00 00 00 2a 09 00 00 00 00"))
    assert sense.is_unit_attention
    assert not sense.is_power_on_reset
    assert sense.description == "UNIT ATTENTION: capacity data has changed (0x2a/0x09)"


def test_asc_29_with_another_key_is_not_power_on_reset() -> None:
    sense = parse_sense(h("70 00 05 00 00 00 00 0a 00 00 00 00 29 00 00 00 00 00"))
    assert not sense.is_power_on_reset


def test_fixed_medium_error_with_valid_information() -> None:
    sense = parse_sense(h("f0 00 03 12 34 56 78 0a 00 00 00 00 11 00 00 00 00 00"))
    assert sense.key is SenseKey.MEDIUM_ERROR
    assert sense.information == 0x12345678
    assert sense.description == "MEDIUM ERROR: unrecovered read error (0x11/0x00)"


def test_fixed_information_ignored_without_valid_bit() -> None:
    sense = parse_sense(h("70 00 03 12 34 56 78 0a 00 00 00 00 11 00 00 00 00 00"))
    assert sense.information is None


def test_fixed_illegal_request_field_pointer() -> None:
    # SKSV, C/D (CDB), BPV with bit 3; field pointer byte 2.
    sense = parse_sense(h("70 00 05 00 00 00 00 0a 00 00 00 00 24 00 00 cb 00 02"))
    assert sense.key is SenseKey.ILLEGAL_REQUEST
    assert sense.field_pointer == FieldPointer(in_cdb=True, byte=2, bit=3)
    assert (
        sense.description == "ILLEGAL REQUEST: invalid field in CDB (0x24/0x00) at CDB byte 2 bit 3"
    )


def test_fixed_field_pointer_into_parameter_data_without_bit() -> None:
    sense = parse_sense(h("70 00 05 00 00 00 00 0a 00 00 00 00 26 00 00 80 01 10"))
    assert sense.field_pointer == FieldPointer(in_cdb=False, byte=0x110, bit=None)
    assert str(sense.field_pointer) == "parameter data byte 272"


def test_fixed_sense_key_specific_ignored_without_sksv() -> None:
    sense = parse_sense(h("70 00 05 00 00 00 00 0a 00 00 00 00 24 00 00 4b 00 02"))
    assert sense.field_pointer is None


def test_fixed_not_ready_progress() -> None:
    sense = parse_sense(h("70 00 02 00 00 00 00 0a 00 00 00 00 04 04 00 80 80 00"))
    assert sense.key is SenseKey.NOT_READY
    assert sense.progress == 0x8000
    assert sense.field_pointer is None
    assert sense.description == "NOT READY: logical unit not ready, format in progress (0x04/0x04)"


def test_fixed_deferred() -> None:
    sense = parse_sense(h("71 00 04 00 00 00 00 0a 00 00 00 00 44 00 00 00 00 00"))
    assert sense.deferred
    assert sense.response_code == 0x71
    assert (
        sense.description == "deferred error: HARDWARE ERROR: internal target failure (0x44/0x00)"
    )


def test_short_fixed_sense_is_valid() -> None:
    # ADDITIONAL SENSE LENGTH 6: ASC/ASCQ present, FRU and sense-key specific absent.
    sense = parse_sense(h("70 00 02 00 00 00 00 06 00 00 00 00 04 01"))
    assert (sense.key, sense.asc, sense.ascq) == (SenseKey.NOT_READY, 0x04, 0x01)
    # ADDITIONAL SENSE LENGTH 0: only the sense key.
    sense = parse_sense(h("70 00 06 00 00 00 00 00"))
    assert (sense.key, sense.asc, sense.ascq) == (SenseKey.UNIT_ATTENTION, 0, 0)


def test_short_fixed_sense_does_not_read_bytes_past_its_length() -> None:
    # ADDITIONAL SENSE LENGTH 4 stops before the ASC: the trailing 0x29 is not sense data.
    sense = parse_sense(h("70 00 06 00 00 00 00 04 00 00 00 00 29 00"))
    assert sense.asc == 0


def test_fixed_sense_with_longer_additional_bytes_cut_short() -> None:
    # Announces 24 bytes; the 18 standard ones are there, the vendor tail is not read.
    sense = parse_sense(h("70 00 06 00 00 00 00 10 00 00 00 00 29 00 00 00 00 00"))
    assert sense.is_power_on_reset


def test_fixed_trailing_bytes_ignored() -> None:
    assert parse_sense(TGT_UNIT_ATTENTION + h("de ad be ef")) == parse_sense(TGT_UNIT_ATTENTION)


def test_descriptor_format_header_only() -> None:
    sense = parse_sense(h("72 06 29 00 00 00 00 00"))
    assert sense == Sense(
        response_code=0x72,
        key=SenseKey.UNIT_ATTENTION,
        asc=0x29,
        ascq=0x00,
        deferred=False,
        descriptor_format=True,
        information=None,
    )
    assert sense.is_power_on_reset


def test_descriptor_information() -> None:
    sense = parse_sense(h("72 03 11 00 00 00 00 0c 00 0a 80 00 00 00 00 01 23 45 67 89"))
    assert sense.key is SenseKey.MEDIUM_ERROR
    assert sense.information == 0x123456789
    assert sense.descriptor_format


def test_descriptor_information_without_valid_bit() -> None:
    sense = parse_sense(h("72 03 11 00 00 00 00 0c 00 0a 00 00 00 00 00 01 23 45 67 89"))
    assert sense.information is None


def test_descriptor_deferred_with_sense_key_specific_and_unknown_descriptor() -> None:
    data = h(
        "73 05 24 00 00 00 00 18"
        " 80 02 aa bb"  # vendor-specific descriptor, skipped
        " 00 0a 80 00 00 00 00 00 00 00 00 10"  # information = 0x10
        " 02 06 00 00 c8 00 01 00"  # SKSV, C/D, BPV bit 0, field pointer 1
    )
    sense = parse_sense(data)
    assert sense.deferred
    assert sense.key is SenseKey.ILLEGAL_REQUEST
    assert sense.information == 0x10
    assert sense.field_pointer == FieldPointer(in_cdb=True, byte=1, bit=0)


def test_descriptor_trailing_bytes_ignored() -> None:
    data = h("72 06 29 00 00 00 00 00")
    assert parse_sense(data + h("00 0a")) == parse_sense(data)


def test_unknown_asc_falls_back_to_numbers() -> None:
    sense = parse_sense(h("70 00 05 00 00 00 00 0a 00 00 00 00 99 01 00 00 00 00"))
    assert sense.description == "ILLEGAL REQUEST: ASC 0x99 ASCQ 0x01"
    assert asc_description(0x80, 0xFE) == "ASC 0x80 ASCQ 0xfe"


def test_asc_with_numbered_ascq() -> None:
    assert asc_description(0x4D, 0x2A) == "tagged overlapped commands (task tag 0x2a)"


@pytest.mark.parametrize(
    ("asc", "ascq", "text"),
    [
        (0x04, 0x00, "logical unit not ready, cause not reportable"),
        (0x04, 0x01, "logical unit is in process of becoming ready"),
        (0x04, 0x02, "logical unit not ready, initializing command required"),
        (0x04, 0x03, "logical unit not ready, manual intervention required"),
        (0x04, 0x0A, "logical unit not accessible, asymmetric access state transition"),
        (0x0C, 0x00, "write error"),
        (0x11, 0x00, "unrecovered read error"),
        (0x1A, 0x00, "parameter list length error"),
        (0x20, 0x00, "invalid command operation code"),
        (0x21, 0x00, "logical block address out of range"),
        (0x24, 0x00, "invalid field in CDB"),
        (0x25, 0x00, "logical unit not supported"),
        (0x26, 0x00, "invalid field in parameter list"),
        (0x27, 0x00, "write protected"),
        (0x28, 0x00, "not ready to ready change, medium may have changed"),
        (0x29, 0x00, "power on, reset, or bus device reset occurred"),
        (0x29, 0x01, "power on occurred"),
        (0x29, 0x02, "SCSI bus reset occurred"),
        (0x29, 0x03, "bus device reset function occurred"),
        (0x29, 0x04, "device internal reset"),
        (0x29, 0x05, "transceiver mode changed to single-ended"),
        (0x29, 0x06, "transceiver mode changed to LVD"),
        (0x29, 0x07, "I_T nexus loss occurred"),
        (0x2A, 0x01, "mode parameters changed"),
        (0x2A, 0x09, "capacity data has changed"),
        (0x2F, 0x00, "commands cleared by another initiator"),
        (0x3A, 0x00, "medium not present"),
        (0x3E, 0x02, "timeout on logical unit"),
        (0x3F, 0x03, "inquiry data has changed"),
        (0x3F, 0x0E, "reported luns data has changed"),
        (0x44, 0x00, "internal target failure"),
        (0x47, 0x00, "SCSI parity error"),
        (0x4B, 0x00, "data phase error"),
        (0x55, 0x03, "insufficient resources"),
    ],
)
def test_asc_table(asc: int, ascq: int, text: str) -> None:
    assert asc_description(asc, ascq) == text
    assert asc_description(asc, ascq, with_code=True) == f"{text} (0x{asc:02x}/0x{ascq:02x})"


def test_every_sense_key_has_a_name() -> None:
    for value in range(16):
        data = bytes([0x70, 0x00, value, 0, 0, 0, 0, 0])
        assert parse_sense(data).key == value
    assert SenseKey(0xF).text == "COMPLETED"
    assert SenseKey.ABORTED_COMMAND.text == "ABORTED COMMAND"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (h("00 00 06 00"), "RESPONSE CODE 0x00"),
        (h("7f 00 06 00 00 00 00 00"), "RESPONSE CODE 0x7f"),
        (h("74 00 06 00 00 00 00 00"), "RESPONSE CODE 0x74"),
        (h("70"), "truncated"),
        (h("70 00 06 00 00 00 00"), "truncated"),
        (h("70 00 06 00 00 00 00 0a 00 00 00 00 29"), "truncated"),  # announces 18, has 13
        (h("70 00 06 00 00 00 00 0a 00 00 00 00 29 00 00 00 00"), "truncated"),  # 17 of 18
        (h("72 06 29"), "truncated"),
        (h("72 06 29 00 00 00 00 04 00 0a"), "truncated"),  # announces 12, has 10
        (h("72 06 29 00 00 00 00 01 00"), "no length byte"),
        (h("72 06 29 00 00 00 00 04 00 0a 80 00"), "runs past the end"),
        (h("72 06 29 00 00 00 00 04 00 02 80 00"), "information sense descriptor too short"),
        (h("72 06 29 00 00 00 00 06 02 04 00 00 80 00"), "sense key specific descriptor too short"),
    ],
)
def test_malformed(data: bytes, message: str) -> None:
    with pytest.raises(SenseFormatError, match=message):
        parse_sense(data)


def test_sense_format_error_is_a_target_error() -> None:
    assert issubclass(SenseFormatError, TargetProtocolError)


def _check_total(data: bytes) -> None:
    try:
        sense = parse_sense(data)
    except SenseFormatError:
        return
    assert isinstance(sense.key, SenseKey)
    assert 0 <= sense.asc <= 0xFF and 0 <= sense.ascq <= 0xFF
    assert isinstance(str(sense), str)


@given(st.binary(max_size=64))
def test_any_bytes_only_raise_sense_format_error(data: bytes) -> None:
    _check_total(data)


@given(st.sampled_from([0x70, 0x71, 0x72, 0x73, 0xF0, 0xF1, 0xF2]), st.binary(max_size=64))
def test_plausible_headers_only_raise_sense_format_error(code: int, rest: bytes) -> None:
    _check_total(bytes([code]) + rest)


@given(st.binary(min_size=7, max_size=7), st.lists(st.binary(max_size=14), max_size=4))
def test_descriptor_lists_only_raise_sense_format_error(head: bytes, parts: list[bytes]) -> None:
    body = b"".join(bytes([p[0] if p else 0, len(p)]) + p for p in parts)
    data = bytes([0x72]) + head[:6] + bytes([len(body) & 0xFF]) + body
    _check_total(data)
