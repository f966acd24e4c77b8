"""BHS codec (RFC 7143 section 11): known answers for every PDU, then hypothesis.

Every expected header below is written out by hand from the RFC's PDU diagrams, one 4-byte row
per line with its byte offset, so that the codec is checked against RFC 7143 and not against
itself. The SCSI Read (10) command is the PDU of RFC 3720 appendix B.4.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyiscsid.protocol import pdu as pdu_module
from pyiscsid.protocol.errors import InitiatorProtocolError, ISCSIError, TargetProtocolError
from pyiscsid.protocol.pdu import (
    BHS_LENGTH,
    PDU_CLASSES,
    R2T,
    RESERVED_TAG,
    AsyncEvent,
    AsyncMessage,
    DataIn,
    DataOut,
    LoginRequest,
    LoginResponse,
    LoginStage,
    LogoutReason,
    LogoutRequest,
    LogoutResponse,
    LogoutResponseCode,
    NopIn,
    NopOut,
    Opcode,
    Pdu,
    Reject,
    RejectReason,
    ScsiCommand,
    ScsiResponse,
    SnackRequest,
    SnackType,
    TaskAttribute,
    TaskManagementFunction,
    TaskManagementRequest,
    TaskManagementResponse,
    TaskManagementResponsePdu,
    TextRequest,
    TextResponse,
    header_lengths,
    iter_ahs,
    parse_pdu,
)


def h(text: str) -> bytes:
    return bytes.fromhex(text)


LUN1 = 0x0001_0000_0000_0000  # LUN 1, single-level addressing (SAM)
RESERVED_16 = "00 00 00 00  00 00 00 00  00 00 00 00  00 00 00 00"
RESERVED_12 = "00 00 00 00  00 00 00 00  00 00 00 00"
RESERVED_8 = "00 00 00 00  00 00 00 00"
# tgt's unit attention (power on, reset or bus device reset occurred), fixed format.
SENSE_UA = h("70 00 06 00 00 00 00 0a 00 00 00 00 29 00 00 00 00 00")


@dataclass(frozen=True)
class Vector:
    pdu: Pdu  # what we pack
    header: bytes  # BHS followed by any AHS, written out from the RFC
    parsed: Pdu | None = None  # what parse_pdu gives back when it differs (short CDBs)


# ---------------------------------------------------------------- initiator PDUs (11.3-11.18)

NOP_OUT_PING = Vector(
    NopOut(
        immediate=True, lun=LUN1, initiator_task_tag=0x10, target_transfer_tag=RESERVED_TAG,
        cmd_sn=0x21, exp_stat_sn=0x32, data=b"ping",
    ),
    h(
        "40 80 00 00"  # 0: .|I| 0x00, F=1, reserved
        "00 00 00 04"  # 4: TotalAHSLength 0, DataSegmentLength 4
        "00 01 00 00  00 00 00 00"  # 8: LUN
        "00 00 00 10"  # 16: Initiator Task Tag
        "ff ff ff ff"  # 20: Target Transfer Tag
        "00 00 00 21"  # 24: CmdSN
        "00 00 00 32"  # 28: ExpStatSN
        + RESERVED_16  # 32-47
    ),
)  # fmt: skip

NOP_OUT_ANSWER = Vector(
    NopOut(
        immediate=False, initiator_task_tag=RESERVED_TAG, target_transfer_tag=0x12345678,
        cmd_sn=0x22, exp_stat_sn=0x33,
    ),
    h(
        "00 80 00 00"  # 0: I=0
        "00 00 00 00"  # 4
        + RESERVED_8 +  # 8: LUN 0
        "ff ff ff ff"  # 16: ITT reserved: no NOP-In wanted back
        "12 34 56 78"  # 20: TTT copied from the target's NOP-In
        "00 00 00 22"  # 24: CmdSN
        "00 00 00 33"  # 28: ExpStatSN
        + RESERVED_16
    ),
)  # fmt: skip

# RFC 3720 appendix B.4: "An iSCSI - SCSI Read (10) Command PDU" (its CRC32C is 0xd9963a56).
RFC3720_READ10_BHS = h(
    "01 c0 00 00"  # 0: SCSI Command, F|R, ATTR 0 (untagged)
    "00 00 00 00"  # 4
    "00 00 00 00  00 00 00 00"  # 8: LUN 0
    "14 00 00 00"  # 16: ITT
    "00 00 04 00"  # 20: Expected Data Transfer Length 1024
    "00 00 00 14"  # 24: CmdSN
    "00 00 00 18"  # 28: ExpStatSN
    "28 00 00 00  00 00 00 00  02 00 00 00  00 00 00 00"  # 32: READ (10) of 2 blocks, zero-padded
)  # fmt: skip
READ10_CDB = h("28 00 00 00 00 00 00 00 02 00")

SCSI_READ10 = Vector(
    ScsiCommand(
        read=True, attribute=TaskAttribute.UNTAGGED, initiator_task_tag=0x14000000,
        expected_data_transfer_length=1024, cmd_sn=0x14, exp_stat_sn=0x18, cdb=READ10_CDB,
    ),
    RFC3720_READ10_BHS,
    ScsiCommand(
        read=True, attribute=TaskAttribute.UNTAGGED, initiator_task_tag=0x14000000,
        expected_data_transfer_length=1024, cmd_sn=0x14, exp_stat_sn=0x18,
        cdb=READ10_CDB + bytes(6),
    ),
)  # fmt: skip

WRITE10_CDB = h("2a 00 00 00 00 10 00 00 08 00")
SCSI_WRITE10 = Vector(
    ScsiCommand(
        write=True, attribute=TaskAttribute.SIMPLE, lun=LUN1, initiator_task_tag=0xABCD,
        expected_data_transfer_length=0x1000, cmd_sn=0xFFFFFFFE, exp_stat_sn=7,
        cdb=WRITE10_CDB, data=bytes(range(8)),
    ),
    h(
        "01 a1 00 00"  # 0: F|W, ATTR 1 (simple)
        "00 00 00 08"  # 4: 8 bytes of immediate data
        "00 01 00 00  00 00 00 00"  # 8: LUN
        "00 00 ab cd"  # 16: ITT
        "00 00 10 00"  # 20: Expected Data Transfer Length
        "ff ff ff fe"  # 24: CmdSN
        "00 00 00 07"  # 28: ExpStatSN
        "2a 00 00 00  00 10 00 00  08 00 00 00  00 00 00 00"  # 32: WRITE (10) CDB
    ),
    ScsiCommand(
        write=True, attribute=TaskAttribute.SIMPLE, lun=LUN1, initiator_task_tag=0xABCD,
        expected_data_transfer_length=0x1000, cmd_sn=0xFFFFFFFE, exp_stat_sn=7,
        cdb=WRITE10_CDB + bytes(6), data=bytes(range(8)),
    ),
)  # fmt: skip

# READ (32): variable-length CDB 0x7f, service action 0x0009, LBA 0x1234, 8 blocks.
READ32_CDB = h(
    "7f 00 00 00  00 00 00 18  00 09 00 00  00 00 00 00"
    "00 00 12 34  00 00 00 00  00 00 00 00  00 00 00 08"
)
SCSI_READ32 = Vector(
    ScsiCommand(
        read=True, attribute=TaskAttribute.SIMPLE, lun=LUN1, initiator_task_tag=0x101,
        expected_data_transfer_length=0x1000, cmd_sn=0x40, exp_stat_sn=0x41, cdb=READ32_CDB,
    ),
    h(
        "01 c1 00 00"  # 0: F|R, simple
        "05 00 00 00"  # 4: TotalAHSLength 5 words (20 bytes)
        "00 01 00 00  00 00 00 00"  # 8: LUN
        "00 00 01 01"  # 16: ITT
        "00 00 10 00"  # 20: Expected Data Transfer Length
        "00 00 00 40"  # 24: CmdSN
        "00 00 00 41"  # 28: ExpStatSN
        "7f 00 00 00  00 00 00 18  00 09 00 00  00 00 00 00"  # 32: CDB bytes 0-15
        # 48: Extended CDB AHS (11.3.4.2): AHSLength = CDB length - 15 = 17, AHSType 1, reserved
        "00 11 01 00"
        "00 00 12 34  00 00 00 00  00 00 00 00  00 00 00 08"  # 52: CDB bytes 16-31
    ),
)  # fmt: skip

ODD_CDB = bytes(range(0x80, 0x91))  # 17 bytes: one byte spills into the AHS, then 3 of padding
SCSI_BIDI = Vector(
    ScsiCommand(
        immediate=True, read=True, write=True, attribute=TaskAttribute.ORDERED,
        initiator_task_tag=0x202, expected_data_transfer_length=0x200, cmd_sn=0x50,
        exp_stat_sn=0x51, cdb=ODD_CDB, expected_bidirectional_read_data_length=0x400,
        data=b"\x01\x02\x03",
    ),
    h(
        "41 e2 00 00"  # 0: .|I| 0x01; F|R|W, ATTR 2 (ordered)
        "04 00 00 03"  # 4: TotalAHSLength 4 words, DataSegmentLength 3
        + RESERVED_8 +  # 8: LUN 0
        "00 00 02 02"  # 16: ITT
        "00 00 02 00"  # 20: Expected Data Transfer Length (the write part)
        "00 00 00 50"  # 24: CmdSN
        "00 00 00 51"  # 28: ExpStatSN
        "80 81 82 83  84 85 86 87  88 89 8a 8b  8c 8d 8e 8f"  # 32: CDB bytes 0-15
        "00 02 01 00  90 00 00 00"  # 48: Extended CDB AHS: length 2, CDB byte 16, padding
        "00 05 02 00  00 00 04 00"  # 56: Bidirectional Read Expected Data Transfer Length AHS
    ),
    ScsiCommand(
        immediate=True, read=True, write=True, attribute=TaskAttribute.ORDERED,
        initiator_task_tag=0x202, expected_data_transfer_length=0x200, cmd_sn=0x50,
        exp_stat_sn=0x51, cdb=ODD_CDB, expected_bidirectional_read_data_length=0x400,
        data=b"\x01\x02\x03",
    ),
)  # fmt: skip

TMF_ABORT_TASK = Vector(
    TaskManagementRequest(
        immediate=True, function=TaskManagementFunction.ABORT_TASK, lun=LUN1,
        initiator_task_tag=0x20, referenced_task_tag=0x10, cmd_sn=0x30, exp_stat_sn=0x40,
        ref_cmd_sn=0x2F, exp_data_sn=3,
    ),
    h(
        "42 81 00 00"  # 0: .|I| 0x02; 1|Function 1
        "00 00 00 00"  # 4
        "00 01 00 00  00 00 00 00"  # 8: LUN
        "00 00 00 20"  # 16: ITT
        "00 00 00 10"  # 20: Referenced Task Tag
        "00 00 00 30"  # 24: CmdSN
        "00 00 00 40"  # 28: ExpStatSN
        "00 00 00 2f"  # 32: RefCmdSN
        "00 00 00 03"  # 36: ExpDataSN
        + RESERVED_8  # 40-47
    ),
)  # fmt: skip

TMF_LU_RESET = Vector(
    TaskManagementRequest(
        immediate=False, function=TaskManagementFunction.LOGICAL_UNIT_RESET, lun=LUN1,
        initiator_task_tag=0x21, cmd_sn=0x31, exp_stat_sn=0x41,
    ),
    h(
        "02 85 00 00"  # 0: I=0; 1|Function 5
        "00 00 00 00"
        "00 01 00 00  00 00 00 00"
        "00 00 00 21"  # 16: ITT
        "ff ff ff ff"  # 20: Referenced Task Tag: reserved
        "00 00 00 31"
        "00 00 00 41"
        "00 00 00 00"  # 32: RefCmdSN
        "00 00 00 00"  # 36: ExpDataSN
        + RESERVED_8
    ),
)  # fmt: skip

LOGIN_SECURITY = Vector(
    LoginRequest(
        transit=True, current_stage=LoginStage.SECURITY_NEGOTIATION,
        next_stage=LoginStage.LOGIN_OPERATIONAL_NEGOTIATION, isid=0x00023D000001, tsih=0,
        initiator_task_tag=0x0A0B0C0D, cid=0x0102, cmd_sn=1, exp_stat_sn=0,
        data=b"AuthMethod=None\x00",
    ),
    h(
        "43 81 00 00"  # 0: I=1, 0x03; T, CSG 0, NSG 1; Version-max 0; Version-min 0
        "00 00 00 10"  # 4: DataSegmentLength 16
        "00 02 3d 00  00 01 00 00"  # 8: ISID (6 bytes), 14: TSIH 0
        "0a 0b 0c 0d"  # 16: ITT
        "01 02 00 00"  # 20: CID, reserved
        "00 00 00 01"  # 24: CmdSN
        "00 00 00 00"  # 28: ExpStatSN
        + RESERVED_16
    ),
)  # fmt: skip

LOGIN_CONTINUE = Vector(
    LoginRequest(
        continue_=True, current_stage=LoginStage.LOGIN_OPERATIONAL_NEGOTIATION,
        version_max=1, version_min=0, isid=0x80123456789A, tsih=0x1234, initiator_task_tag=1,
        cid=5, cmd_sn=2, exp_stat_sn=0x55, data=b"MaxRecvDataSegmentLength=262144\x00",
    ),
    h(
        "43 44 01 00"  # 0: T=0, C=1, CSG 1, NSG reserved; Version-max 1; Version-min 0
        "00 00 00 20"  # 4: DataSegmentLength 32
        "80 12 34 56  78 9a 12 34"  # 8: ISID, 14: TSIH 0x1234
        "00 00 00 01"
        "00 05 00 00"  # 20: CID 5
        "00 00 00 02"
        "00 00 00 55"
        + RESERVED_16
    ),
)  # fmt: skip

LOGIN_TO_FULL_FEATURE = Vector(
    LoginRequest(
        transit=True, current_stage=LoginStage.LOGIN_OPERATIONAL_NEGOTIATION,
        next_stage=LoginStage.FULL_FEATURE_PHASE, isid=0x00023D000001,
        initiator_task_tag=0x0A0B0C0E, cmd_sn=1, exp_stat_sn=0x4D3,
    ),
    h(
        "43 87 00 00"  # 0: T, CSG 1, NSG 3
        "00 00 00 00"
        "00 02 3d 00  00 01 00 00"
        "0a 0b 0c 0e"
        "00 00 00 00"
        "00 00 00 01"
        "00 00 04 d3"
        + RESERVED_16
    ),
)  # fmt: skip

TEXT_REQUEST = Vector(
    TextRequest(
        initiator_task_tag=5, target_transfer_tag=RESERVED_TAG, cmd_sn=2, exp_stat_sn=3,
        data=b"SendTargets=All\x00",
    ),
    h(
        "04 80 00 00"  # 0: I=0, 0x04; F=1, C=0
        "00 00 00 10"
        + RESERVED_8 +  # 8: LUN
        "00 00 00 05"  # 16: ITT
        "ff ff ff ff"  # 20: TTT
        "00 00 00 02"  # 24: CmdSN
        "00 00 00 03"  # 28: ExpStatSN
        + RESERVED_16
    ),
)  # fmt: skip

TEXT_REQUEST_CONTINUE = Vector(
    TextRequest(
        immediate=True, final=False, continue_=True, lun=LUN1, initiator_task_tag=6,
        target_transfer_tag=0x99, cmd_sn=4, exp_stat_sn=5,
    ),
    h(
        "44 40 00 00"  # 0: I=1; F=0, C=1
        "00 00 00 00"
        "00 01 00 00  00 00 00 00"
        "00 00 00 06"
        "00 00 00 99"
        "00 00 00 04"
        "00 00 00 05"
        + RESERVED_16
    ),
)  # fmt: skip

DATA_OUT = Vector(
    DataOut(
        final=True, lun=LUN1, initiator_task_tag=0xABCD, target_transfer_tag=0x1111,
        exp_stat_sn=8, data_sn=2, buffer_offset=0x2000, data=h("de ad be ef 01 02"),
    ),
    h(
        "05 80 00 00"  # 0: 0x05; F=1
        "00 00 00 06"  # 4: DataSegmentLength 6
        "00 01 00 00  00 00 00 00"  # 8: LUN
        "00 00 ab cd"  # 16: ITT
        "00 00 11 11"  # 20: TTT
        "00 00 00 00"  # 24: reserved
        "00 00 00 08"  # 28: ExpStatSN
        "00 00 00 00"  # 32: reserved
        "00 00 00 02"  # 36: DataSN
        "00 00 20 00"  # 40: Buffer Offset
        "00 00 00 00"  # 44: reserved
    ),
)  # fmt: skip

LOGOUT_SESSION = Vector(
    LogoutRequest(
        immediate=True, reason=LogoutReason.CLOSE_SESSION, initiator_task_tag=0x77, cid=2,
        cmd_sn=9, exp_stat_sn=10,
    ),
    h(
        "46 80 00 00"  # 0: .|I| 0x06; 1|Reason 0
        "00 00 00 00"
        + RESERVED_8 +
        "00 00 00 77"  # 16: ITT
        "00 02 00 00"  # 20: CID, reserved
        "00 00 00 09"  # 24: CmdSN
        "00 00 00 0a"  # 28: ExpStatSN
        + RESERVED_16
    ),
)  # fmt: skip

LOGOUT_RECOVERY = Vector(
    LogoutRequest(
        reason=LogoutReason.REMOVE_CONNECTION_FOR_RECOVERY, initiator_task_tag=0x78, cid=3,
        cmd_sn=11, exp_stat_sn=12,
    ),
    h(
        "06 82 00 00"  # 0: I=0; 1|Reason 2
        "00 00 00 00"
        + RESERVED_8 +
        "00 00 00 78"
        "00 03 00 00"
        "00 00 00 0b"
        "00 00 00 0c"
        + RESERVED_16
    ),
)  # fmt: skip

SNACK_DATA = Vector(
    SnackRequest(
        type=SnackType.DATA_R2T, lun=LUN1, initiator_task_tag=0xABCD,
        target_transfer_tag=RESERVED_TAG, exp_stat_sn=0x11, beg_run=5, run_length=2,
    ),
    h(
        "10 80 00 00"  # 0: 0x10; 1|Type 0
        "00 00 00 00"
        "00 01 00 00  00 00 00 00"  # 8: LUN
        "00 00 ab cd"  # 16: ITT
        "ff ff ff ff"  # 20: TTT or SNACK Tag
        "00 00 00 00"  # 24: reserved
        "00 00 00 11"  # 28: ExpStatSN
        + RESERVED_8 +  # 32-39
        "00 00 00 05"  # 40: BegRun
        "00 00 00 02"  # 44: RunLength
    ),
)  # fmt: skip

SNACK_R_DATA = Vector(
    SnackRequest(
        type=SnackType.R_DATA, lun=LUN1, initiator_task_tag=0xABCD,
        target_transfer_tag=0xCAFE0001, exp_stat_sn=0x12,
    ),
    h(
        "10 83 00 00"  # 0: 1|Type 3 (R-Data)
        "00 00 00 00"
        "00 01 00 00  00 00 00 00"
        "00 00 ab cd"
        "ca fe 00 01"  # 20: SNACK Tag
        "00 00 00 00"
        "00 00 00 12"
        + RESERVED_8 +
        "00 00 00 00"
        "00 00 00 00"
    ),
)  # fmt: skip

# ---------------------------------------------------------------- target PDUs (11.4-11.19)

NOP_IN_ANSWER = Vector(
    NopIn(
        initiator_task_tag=0x10, target_transfer_tag=RESERVED_TAG, stat_sn=0x100,
        exp_cmd_sn=0x22, max_cmd_sn=0xA1, data=b"ping",
    ),
    h(
        "20 80 00 00"  # 0: 0x20, F=1
        "00 00 00 04"
        + RESERVED_8 +  # 8: LUN
        "00 00 00 10"  # 16: ITT of our NOP-Out
        "ff ff ff ff"  # 20: TTT
        "00 00 01 00"  # 24: StatSN
        "00 00 00 22"  # 28: ExpCmdSN
        "00 00 00 a1"  # 32: MaxCmdSN
        + RESERVED_12  # 36-47
    ),
)  # fmt: skip

NOP_IN_PING = Vector(
    NopIn(
        lun=LUN1, initiator_task_tag=RESERVED_TAG, target_transfer_tag=0x77, stat_sn=0x101,
        exp_cmd_sn=0x22, max_cmd_sn=0xA1,
    ),
    h(
        "20 80 00 00"
        "00 00 00 00"
        "00 01 00 00  00 00 00 00"
        "ff ff ff ff"  # 16: ITT reserved: the target's own ping
        "00 00 00 77"  # 20: TTT to echo back
        "00 00 01 01"
        "00 00 00 22"
        "00 00 00 a1"
        + RESERVED_12
    ),
)  # fmt: skip

SCSI_RESPONSE_SENSE = Vector(
    ScsiResponse(
        residual_underflow=True, status=0x02, initiator_task_tag=0xABCD, stat_sn=0x101,
        exp_cmd_sn=0x23, max_cmd_sn=0xA2, exp_data_sn=1, residual_count=0x200,
        data=h("00 12") + SENSE_UA,
    ),
    h(
        "21 82 00 02"  # 0: 0x21; 1|.|.|o=0|u=0|O=0|U=1|.; Response 0; Status CHECK CONDITION
        "00 00 00 14"  # 4: DataSegmentLength 20 = SenseLength (2) + 18
        + RESERVED_8 +
        "00 00 ab cd"  # 16: ITT
        "00 00 00 00"  # 20: SNACK Tag
        "00 00 01 01"  # 24: StatSN
        "00 00 00 23"  # 28: ExpCmdSN
        "00 00 00 a2"  # 32: MaxCmdSN
        "00 00 00 01"  # 36: ExpDataSN
        "00 00 00 00"  # 40: Bidirectional Read Residual Count
        "00 00 02 00"  # 44: Residual Count
    ),
)  # fmt: skip

SCSI_RESPONSE_BIDI_OVERFLOW = Vector(
    ScsiResponse(
        bidirectional_overflow=True, residual_overflow=True, response=0x01, status=0,
        initiator_task_tag=0x202, snack_tag=5, stat_sn=0x102, exp_cmd_sn=0x24, max_cmd_sn=0xA3,
        bidirectional_read_residual_count=0x100, residual_count=0x40,
    ),
    h(
        "21 94 01 00"  # 0: o=1, O=1; Response 1 (target failure)
        "00 00 00 00"
        + RESERVED_8 +
        "00 00 02 02"
        "00 00 00 05"  # 20: SNACK Tag
        "00 00 01 02"
        "00 00 00 24"
        "00 00 00 a3"
        "00 00 00 00"
        "00 00 01 00"  # 40: Bidirectional Read Residual Count
        "00 00 00 40"  # 44: Residual Count
    ),
)  # fmt: skip

SCSI_RESPONSE_BIDI_UNDERFLOW = Vector(
    ScsiResponse(bidirectional_underflow=True, initiator_task_tag=0x203, stat_sn=0x103),
    h(
        "21 88 00 00"  # 0: u=1
        "00 00 00 00"
        + RESERVED_8 +
        "00 00 02 03"
        "00 00 00 00"
        "00 00 01 03"
        "00 00 00 00"
        "00 00 00 00"
        "00 00 00 00"
        "00 00 00 00"
        "00 00 00 00"
    ),
)  # fmt: skip

TMF_RESPONSE = Vector(
    TaskManagementResponsePdu(
        response=TaskManagementResponse.TASK_DOES_NOT_EXIST, initiator_task_tag=0x20,
        stat_sn=0x102, exp_cmd_sn=0x31, max_cmd_sn=0xB0,
    ),
    h(
        "22 80 01 00"  # 0: 0x22; F; Response 1 (task does not exist)
        "00 00 00 00"
        + RESERVED_8 +
        "00 00 00 20"  # 16: ITT
        "00 00 00 00"  # 20: reserved
        "00 00 01 02"  # 24: StatSN
        "00 00 00 31"  # 28: ExpCmdSN
        "00 00 00 b0"  # 32: MaxCmdSN
        + RESERVED_12
    ),
)  # fmt: skip

LOGIN_RESPONSE_OK = Vector(
    LoginResponse(
        transit=True, current_stage=LoginStage.LOGIN_OPERATIONAL_NEGOTIATION,
        next_stage=LoginStage.FULL_FEATURE_PHASE, isid=0x00023D000001, tsih=1,
        initiator_task_tag=0x0A0B0C0D, stat_sn=0x4D2, exp_cmd_sn=2, max_cmd_sn=0x21,
        data=b"HeaderDigest=None\x00",
    ),
    h(
        "23 87 00 00"  # 0: 0x23; T, CSG 1, NSG 3; Version-max 0; Version-active 0
        "00 00 00 12"  # 4: DataSegmentLength 18
        "00 02 3d 00  00 01 00 01"  # 8: ISID, 14: TSIH 1
        "0a 0b 0c 0d"  # 16: ITT
        "00 00 00 00"  # 20: reserved
        "00 00 04 d2"  # 24: StatSN
        "00 00 00 02"  # 28: ExpCmdSN
        "00 00 00 21"  # 32: MaxCmdSN
        "00 00 00 00"  # 36: Status-Class 0, Status-Detail 0, reserved
        + RESERVED_8
    ),
)  # fmt: skip

LOGIN_RESPONSE_AUTH_FAILED = Vector(
    LoginResponse(
        version_max=1, version_active=0, isid=0x80123456789A, initiator_task_tag=7,
        stat_sn=0x10, exp_cmd_sn=1, max_cmd_sn=1, status_class=0x02, status_detail=0x01,
    ),
    h(
        "23 00 01 00"  # 0: T=0, C=0, CSG 0; Version-max 1; Version-active 0
        "00 00 00 00"
        "80 12 34 56  78 9a 00 00"
        "00 00 00 07"
        "00 00 00 00"
        "00 00 00 10"
        "00 00 00 01"
        "00 00 00 01"
        "02 01 00 00"  # 36: Status-Class 2 (initiator error), Status-Detail 1 (auth failure)
        + RESERVED_8
    ),
)  # fmt: skip

SEND_TARGETS = b"TargetName=iqn.2026-11.test.pyiscsid:disk1\x00TargetAddress=127.0.0.1:3260,1\x00"
TEXT_RESPONSE = Vector(
    TextResponse(
        initiator_task_tag=5, target_transfer_tag=RESERVED_TAG, stat_sn=0x103, exp_cmd_sn=3,
        max_cmd_sn=0x22, data=SEND_TARGETS,
    ),
    h(
        "24 80 00 00"  # 0: 0x24; F=1, C=0
        "00 00 00 4a"  # 4: DataSegmentLength 74
        + RESERVED_8 +  # 8: LUN
        "00 00 00 05"  # 16: ITT
        "ff ff ff ff"  # 20: TTT
        "00 00 01 03"  # 24: StatSN
        "00 00 00 03"  # 28: ExpCmdSN
        "00 00 00 22"  # 32: MaxCmdSN
        + RESERVED_12
    ),
)  # fmt: skip

TEXT_RESPONSE_CONTINUE = Vector(
    TextResponse(
        final=False, continue_=True, initiator_task_tag=5, target_transfer_tag=0x99,
        stat_sn=0x104, exp_cmd_sn=3, max_cmd_sn=0x22,
    ),
    h(
        "24 40 00 00"  # 0: F=0, C=1
        "00 00 00 00"
        + RESERVED_8 +
        "00 00 00 05"
        "00 00 00 99"  # 20: TTT: ask for the rest with it
        "00 00 01 04"
        "00 00 00 03"
        "00 00 00 22"
        + RESERVED_12
    ),
)  # fmt: skip

DATA_IN_FIRST = Vector(
    DataIn(
        lun=LUN1, initiator_task_tag=0xABCD, exp_cmd_sn=0x24, max_cmd_sn=0xA3,
        data=bytes(range(8)),
    ),
    h(
        "25 00 00 00"  # 0: 0x25; F=0, A=0, O=0, U=0, S=0; Status reserved
        "00 00 00 08"
        "00 01 00 00  00 00 00 00"  # 8: LUN
        "00 00 ab cd"  # 16: ITT
        "ff ff ff ff"  # 20: TTT
        "00 00 00 00"  # 24: StatSN (reserved without S)
        "00 00 00 24"  # 28: ExpCmdSN
        "00 00 00 a3"  # 32: MaxCmdSN
        "00 00 00 00"  # 36: DataSN
        "00 00 00 00"  # 40: Buffer Offset
        "00 00 00 00"  # 44: Residual Count
    ),
)  # fmt: skip

DATA_IN_STATUS = Vector(
    DataIn(
        final=True, residual_underflow=True, status_present=True, status=0x00, lun=LUN1,
        initiator_task_tag=0xABCD, stat_sn=0x104, exp_cmd_sn=0x25, max_cmd_sn=0xA4, data_sn=1,
        buffer_offset=0x2000, residual_count=0x200, data=b"\x11\x22\x33\x44\x55",
    ),
    h(
        "25 83 00 00"  # 0: F=1, U=1, S=1; Status GOOD
        "00 00 00 05"
        "00 01 00 00  00 00 00 00"
        "00 00 ab cd"
        "ff ff ff ff"
        "00 00 01 04"  # 24: StatSN
        "00 00 00 25"
        "00 00 00 a4"
        "00 00 00 01"  # 36: DataSN
        "00 00 20 00"  # 40: Buffer Offset
        "00 00 02 00"  # 44: Residual Count
    ),
)  # fmt: skip

DATA_IN_ACK_OVERFLOW = Vector(
    DataIn(
        final=True, acknowledge=True, residual_overflow=True, status_present=True, status=0x04,
        initiator_task_tag=0x300, target_transfer_tag=0x12345678, stat_sn=0x105,
        exp_cmd_sn=0x26, max_cmd_sn=0xA5, data_sn=7, buffer_offset=0x10000, residual_count=0x80,
    ),
    h(
        "25 c5 00 04"  # 0: F=1, A=1, O=1, S=1; Status 4 (condition met)
        "00 00 00 00"
        + RESERVED_8 +
        "00 00 03 00"
        "12 34 56 78"  # 20: TTT (for the DataACK SNACK)
        "00 00 01 05"
        "00 00 00 26"
        "00 00 00 a5"
        "00 00 00 07"
        "00 01 00 00"
        "00 00 00 80"
    ),
)  # fmt: skip

LOGOUT_RESPONSE = Vector(
    LogoutResponse(
        response=LogoutResponseCode.CLEANUP_FAILED, initiator_task_tag=0x77, stat_sn=0x105,
        exp_cmd_sn=0x0A, max_cmd_sn=0x29, time2wait=2, time2retain=20,
    ),
    h(
        "26 80 03 00"  # 0: 0x26; F; Response 3 (cleanup failed)
        "00 00 00 00"
        + RESERVED_8 +
        "00 00 00 77"  # 16: ITT
        "00 00 00 00"  # 20: reserved
        "00 00 01 05"  # 24: StatSN
        "00 00 00 0a"  # 28: ExpCmdSN
        "00 00 00 29"  # 32: MaxCmdSN
        "00 00 00 00"  # 36: reserved
        "00 02 00 14"  # 40: Time2Wait 2, 42: Time2Retain 20
        "00 00 00 00"  # 44: reserved
    ),
)  # fmt: skip

R2T_VECTOR = Vector(
    R2T(
        lun=LUN1, initiator_task_tag=0xABCD, target_transfer_tag=0x1111, stat_sn=0x106,
        exp_cmd_sn=0x25, max_cmd_sn=0xA4, r2t_sn=1, buffer_offset=0x2000,
        desired_data_transfer_length=0x3000,
    ),
    h(
        "31 80 00 00"  # 0: 0x31; F
        "00 00 00 00"
        "00 01 00 00  00 00 00 00"  # 8: LUN
        "00 00 ab cd"  # 16: ITT
        "00 00 11 11"  # 20: TTT
        "00 00 01 06"  # 24: StatSN
        "00 00 00 25"  # 28: ExpCmdSN
        "00 00 00 a4"  # 32: MaxCmdSN
        "00 00 00 01"  # 36: R2TSN
        "00 00 20 00"  # 40: Buffer Offset
        "00 00 30 00"  # 44: Desired Data Transfer Length
    ),
)  # fmt: skip

ASYNC_CONNECTION_DROP = Vector(
    AsyncMessage(
        async_event=AsyncEvent.CONNECTION_DROP, parameter1=1, parameter2=2, parameter3=20,
        stat_sn=0x107, exp_cmd_sn=0x26, max_cmd_sn=0xA5,
    ),
    h(
        "32 80 00 00"  # 0: 0x32; F
        "00 00 00 00"
        + RESERVED_8 +  # 8: LUN or reserved
        "ff ff ff ff"  # 16: 0xffffffff
        "00 00 00 00"  # 20: reserved
        "00 00 01 07"  # 24: StatSN
        "00 00 00 26"  # 28: ExpCmdSN
        "00 00 00 a5"  # 32: MaxCmdSN
        "02 00 00 01"  # 36: AsyncEvent 2, AsyncVCode 0, Parameter1 (CID) 1
        "00 02 00 14"  # 40: Parameter2 (Time2Wait) 2, Parameter3 (Time2Retain) 20
        "00 00 00 00"  # 44: reserved
    ),
)  # fmt: skip

ASYNC_SCSI_EVENT = Vector(
    AsyncMessage(
        lun=LUN1, async_event=AsyncEvent.VENDOR_SPECIFIC, async_vcode=0x42, stat_sn=0x108,
        exp_cmd_sn=0x27, max_cmd_sn=0xA6, data=h("00 12") + SENSE_UA,
    ),
    h(
        "32 80 00 00"
        "00 00 00 14"
        "00 01 00 00  00 00 00 00"  # 8: LUN
        "ff ff ff ff"
        "00 00 00 00"
        "00 00 01 08"
        "00 00 00 27"
        "00 00 00 a6"
        "ff 42 00 00"  # 36: AsyncEvent 255, AsyncVCode 0x42
        "00 00 00 00"
        "00 00 00 00"
    ),
)  # fmt: skip

REJECT = Vector(
    Reject(
        reason=RejectReason.INVALID_PDU_FIELD, stat_sn=0x108, exp_cmd_sn=0x27, max_cmd_sn=0xA6,
        data_sn=3, data=NOP_OUT_PING.header,
    ),
    h(
        "3f 80 09 00"  # 0: 0x3f; F; Reason 9 (invalid PDU field)
        "00 00 00 30"  # 4: DataSegmentLength 48: the rejected BHS
        + RESERVED_8 +
        "ff ff ff ff"  # 16: 0xffffffff
        "00 00 00 00"  # 20: reserved
        "00 00 01 08"  # 24: StatSN
        "00 00 00 27"  # 28: ExpCmdSN
        "00 00 00 a6"  # 32: MaxCmdSN
        "00 00 00 03"  # 36: DataSN/R2TSN
        + RESERVED_8
    ),
)  # fmt: skip

VECTORS: dict[str, Vector] = {
    "nop-out-ping": NOP_OUT_PING,
    "nop-out-answer": NOP_OUT_ANSWER,
    "scsi-read10-rfc3720": SCSI_READ10,
    "scsi-write10-immediate": SCSI_WRITE10,
    "scsi-read32-extended-cdb": SCSI_READ32,
    "scsi-bidi-odd-cdb": SCSI_BIDI,
    "tmf-abort-task": TMF_ABORT_TASK,
    "tmf-lu-reset": TMF_LU_RESET,
    "login-security": LOGIN_SECURITY,
    "login-continue": LOGIN_CONTINUE,
    "login-to-full-feature": LOGIN_TO_FULL_FEATURE,
    "text-request": TEXT_REQUEST,
    "text-request-continue": TEXT_REQUEST_CONTINUE,
    "data-out": DATA_OUT,
    "logout-session": LOGOUT_SESSION,
    "logout-recovery": LOGOUT_RECOVERY,
    "snack-data": SNACK_DATA,
    "snack-r-data": SNACK_R_DATA,
    "nop-in-answer": NOP_IN_ANSWER,
    "nop-in-ping": NOP_IN_PING,
    "scsi-response-sense": SCSI_RESPONSE_SENSE,
    "scsi-response-bidi-overflow": SCSI_RESPONSE_BIDI_OVERFLOW,
    "scsi-response-bidi-underflow": SCSI_RESPONSE_BIDI_UNDERFLOW,
    "tmf-response": TMF_RESPONSE,
    "login-response-ok": LOGIN_RESPONSE_OK,
    "login-response-auth-failed": LOGIN_RESPONSE_AUTH_FAILED,
    "text-response": TEXT_RESPONSE,
    "text-response-continue": TEXT_RESPONSE_CONTINUE,
    "data-in-first": DATA_IN_FIRST,
    "data-in-status": DATA_IN_STATUS,
    "data-in-ack-overflow": DATA_IN_ACK_OVERFLOW,
    "logout-response": LOGOUT_RESPONSE,
    "r2t": R2T_VECTOR,
    "async-connection-drop": ASYNC_CONNECTION_DROP,
    "async-vendor": ASYNC_SCSI_EVENT,
    "reject": REJECT,
}


def test_every_pdu_class_has_a_vector() -> None:
    covered = {type(vector.pdu) for vector in VECTORS.values()}
    assert covered == set(PDU_CLASSES.values())


@pytest.mark.parametrize("vector", VECTORS.values(), ids=VECTORS.keys())
def test_pack_bhs_known_answer(vector: Vector) -> None:
    assert vector.pdu.pack_bhs() == vector.header
    ahs_length, data_length = header_lengths(vector.header)
    assert len(vector.header) == BHS_LENGTH + ahs_length
    assert data_length == len(vector.pdu.data)


@pytest.mark.parametrize("vector", VECTORS.values(), ids=VECTORS.keys())
def test_parse_pdu_known_answer(vector: Vector) -> None:
    header = memoryview(vector.header)
    parsed = parse_pdu(header[:BHS_LENGTH], header[BHS_LENGTH:], vector.pdu.data)
    assert type(parsed) is type(vector.pdu)
    assert parsed == (vector.parsed or vector.pdu)


def test_opcodes_are_rfc_7143_values() -> None:
    """RFC 7143 section 11.2.1.2."""
    assert {op.name: op.value for op in Opcode} == {
        "NOP_OUT": 0x00, "SCSI_COMMAND": 0x01, "TASK_MANAGEMENT_REQUEST": 0x02,
        "LOGIN_REQUEST": 0x03, "TEXT_REQUEST": 0x04, "DATA_OUT": 0x05, "LOGOUT_REQUEST": 0x06,
        "SNACK_REQUEST": 0x10, "NOP_IN": 0x20, "SCSI_RESPONSE": 0x21,
        "TASK_MANAGEMENT_RESPONSE": 0x22, "LOGIN_RESPONSE": 0x23, "TEXT_RESPONSE": 0x24,
        "DATA_IN": 0x25, "LOGOUT_RESPONSE": 0x26, "R2T": 0x31, "ASYNC_MESSAGE": 0x32,
        "REJECT": 0x3F,
    }  # fmt: skip
    assert {op: cls.opcode for op, cls in PDU_CLASSES.items()} == {op: op for op in Opcode}


def test_reserved_bytes_are_ignored_on_receipt() -> None:
    """Reserved fields are sent as zero and not checked on receipt (RFC 7143 section 11)."""
    dirty = bytearray(NOP_IN_ANSWER.header)
    dirty[2:4] = b"\xff\xff"  # bytes 2-3 reserved
    dirty[36:48] = b"\xaa" * 12
    assert parse_pdu(bytes(dirty), b"", b"ping") == NOP_IN_ANSWER.pdu


# ---------------------------------------------------------------- field semantics


def test_scsi_response_sense_data_skips_sense_length() -> None:
    """The data segment is a 2-byte SenseLength, then the sense (RFC 7143 section 11.4.7.2)."""
    response = parse_pdu(SCSI_RESPONSE_SENSE.header, b"", SCSI_RESPONSE_SENSE.pdu.data)
    assert isinstance(response, ScsiResponse)
    assert bytes(response.sense_data) == SENSE_UA
    # Response data may follow the sense: SenseLength says where the sense ends.
    with_more = ScsiResponse(status=2, data=h("00 03 70 00 06") + b"response data")
    assert bytes(with_more.sense_data) == h("70 00 06")
    assert bytes(ScsiResponse().sense_data) == b""
    assert bytes(ScsiResponse(data=h("00 00")).sense_data) == b""


def test_scsi_response_sense_length_past_the_segment() -> None:
    with pytest.raises(TargetProtocolError, match="SenseLength"):
        _ = ScsiResponse(status=2, data=h("00 13") + SENSE_UA).sense_data


def test_reject_rejected_header() -> None:
    reject = parse_pdu(REJECT.header, b"", REJECT.pdu.data)
    assert isinstance(reject, Reject)
    assert reject.rejected_header is not None
    assert bytes(reject.rejected_header) == NOP_OUT_PING.header
    assert Reject(data=bytes(47)).rejected_header is None
    assert parse_pdu(bytes(reject.rejected_header), b"", b"ping") == NOP_OUT_PING.pdu


def _with_byte(header: bytes, offset: int, value: int) -> bytes:
    out = bytearray(header)
    out[offset] = value
    return bytes(out)


@pytest.mark.parametrize(
    ("header", "flags", "message"),
    [
        (DATA_IN_FIRST.header, 0x01, "S bit without the F bit"),
        (DATA_IN_FIRST.header, 0x86, "both residual overflow and underflow"),
        (SCSI_RESPONSE_SENSE.header, 0x86, "both residual overflow and underflow"),
        (SCSI_RESPONSE_SENSE.header, 0x98, "both residual overflow and underflow"),
    ],
    ids=["data-in-S-without-F", "data-in-O-and-U", "response-O-and-U", "response-o-and-u"],
)
def test_contradictory_flags_are_target_errors(header: bytes, flags: int, message: str) -> None:
    with pytest.raises(TargetProtocolError, match=message):
        parse_pdu(_with_byte(header, 1, flags))


@pytest.mark.parametrize("flags", [0x08, 0x88, 0x82, 0x86])  # CSG 2, or NSG 2 with T
def test_login_stage_2_is_undefined(flags: int) -> None:
    """Stage 2 is reserved (RFC 7143 section 11.12.3)."""
    for vector in (LOGIN_SECURITY, LOGIN_RESPONSE_OK):
        with pytest.raises(TargetProtocolError, match="login stage"):
            parse_pdu(_with_byte(vector.header, 1, flags))


def test_login_nsg_is_reserved_without_transit() -> None:
    """NSG is only meaningful with T=1; without it the bits are ignored."""
    parsed = parse_pdu(_with_byte(LOGIN_CONTINUE.header, 1, 0x47), b"", LOGIN_CONTINUE.pdu.data)
    assert parsed == LOGIN_CONTINUE.pdu


@pytest.mark.parametrize(
    ("header", "flags"),
    [
        (SCSI_READ10.header, 0x85),  # ATTR 5-7 are reserved
        (TMF_ABORT_TASK.header, 0x80),  # Function 0 is not defined
        (TMF_ABORT_TASK.header, 0xFF),
        (LOGOUT_SESSION.header, 0x83),  # reason 3 is reserved
        (SNACK_DATA.header, 0x84),  # SNACK Type 4 is reserved
    ],
    ids=["attr", "tmf-0", "tmf-127", "logout-3", "snack-4"],
)
def test_undefined_codes_are_target_errors(header: bytes, flags: int) -> None:
    with pytest.raises(TargetProtocolError):
        parse_pdu(_with_byte(header, 1, flags))


@pytest.mark.parametrize("opcode", [0x07, 0x0F, 0x1C, 0x27, 0x30, 0x33, 0x3C])
def test_unknown_opcode(opcode: int) -> None:
    with pytest.raises(TargetProtocolError, match="unknown opcode"):
        parse_pdu(_with_byte(NOP_IN_ANSWER.header, 0, opcode))


def test_short_bhs() -> None:
    with pytest.raises(TargetProtocolError, match="47 bytes"):
        parse_pdu(NOP_IN_ANSWER.header[:47])


def test_ahs_running_past_total_ahs_length() -> None:
    ahs = h("00 11 01 00") + bytes(12)  # says 17 bytes after the type, has 13
    with pytest.raises(TargetProtocolError, match="AHS"):
        iter_ahs(ahs)
    with pytest.raises(TargetProtocolError, match="AHS"):
        parse_pdu(SCSI_READ32.header[:BHS_LENGTH], ahs)


def test_iter_ahs_splits_and_skips_padding() -> None:
    ahs = SCSI_BIDI.header[BHS_LENGTH:]
    assert [(t, bytes(v)) for t, v in iter_ahs(ahs)] == [
        (1, h("00 90")),
        (2, h("00 00 00 04 00")),
    ]


def test_header_lengths() -> None:
    assert header_lengths(h("01 c1 00 00 05 00 00 00")) == (20, 0)
    assert header_lengths(h("25 00 00 00 ff ff ff ff")) == (1020, 0xFFFFFF)


@pytest.mark.parametrize("length", [0, 261])
def test_cdb_length_limits(length: int) -> None:
    """A CDB is 1 to 260 bytes: 16 in the BHS and up to 244 in the Extended CDB AHS."""
    with pytest.raises(InitiatorProtocolError, match="CDB length"):
        ScsiCommand(cdb=bytes(length)).pack_bhs()


def test_longest_cdb() -> None:
    cdb = bytes(i & 0xFF for i in range(260))
    header = ScsiCommand(cdb=cdb).pack_bhs()
    assert header[4] == (4 + 244) // 4
    assert header[48:52] == h("00 f5 01 00")  # AHSLength 245 = 260 - 15
    parsed = parse_pdu(header[:48], header[48:])
    assert isinstance(parsed, ScsiCommand)
    assert parsed.cdb == cdb


def test_data_segment_longer_than_24_bits() -> None:
    too_long = memoryview(bytearray(1 << 24))
    with pytest.raises(InitiatorProtocolError, match="24 bits"):
        DataOut(data=too_long).pack_bhs()
    assert DataOut(data=too_long[1:]).pack_bhs()[5:8] == h("ff ff ff")


def test_sweep_of_every_opcode_and_flags_byte() -> None:
    """Whatever bytes 0 and 1 say, parse_pdu returns a PDU or raises TargetProtocolError."""
    for first in range(256):
        for flags in range(256):
            bhs = bytes((first, flags)) + bytes(46)
            with contextlib.suppress(TargetProtocolError):
                parse_pdu(bhs, b"", b"")


# ---------------------------------------------------------------- hypothesis

U8 = st.integers(0, 0xFF)
U16 = st.integers(0, 0xFFFF)
U32 = st.integers(0, 0xFFFF_FFFF)

# Fields whose width is not the common 32 bits, by name.
_FIELD_STRATEGIES: dict[str, st.SearchStrategy[Any]] = {
    "lun": st.integers(0, 2**64 - 1),
    "isid": st.integers(0, 2**48 - 1),
    "tsih": U16,
    "cid": U16,
    "time2wait": U16,
    "time2retain": U16,
    "parameter1": U16,
    "parameter2": U16,
    "parameter3": U16,
    "version_max": U8,
    "version_min": U8,
    "version_active": U8,
    "response": U8,
    "status": U8,
    "reason": U8,
    "status_class": U8,
    "status_detail": U8,
    "async_event": U8,
    "async_vcode": U8,
    "cdb": st.binary(min_size=1, max_size=260),
    "expected_bidirectional_read_data_length": st.none() | U32,
    "data": st.binary(max_size=64),
}


def _field_strategy(field: dataclasses.Field[Any]) -> st.SearchStrategy[Any]:
    # Annotations are strings here (``from __future__ import annotations`` in pdu.py).
    enum = getattr(pdu_module, str(field.type), None)
    if isinstance(enum, type) and issubclass(enum, IntEnum):
        return st.sampled_from(enum)
    if field.type == "bool":
        return st.booleans()
    if field.name in _FIELD_STRATEGIES:
        return _FIELD_STRATEGIES[field.name]
    assert field.type == "int", f"no strategy for {field.name}: {field.type}"
    return U32


def _legal(pdu: Pdu) -> Pdu:
    """Drop flag combinations RFC 7143 forbids and the codec rejects on receipt."""
    if isinstance(pdu, DataIn):
        if pdu.status_present:
            pdu = dataclasses.replace(pdu, final=True)
        if pdu.residual_overflow and pdu.residual_underflow:
            pdu = dataclasses.replace(pdu, residual_underflow=False)
    if isinstance(pdu, ScsiResponse):
        if pdu.residual_overflow and pdu.residual_underflow:
            pdu = dataclasses.replace(pdu, residual_underflow=False)
        if pdu.bidirectional_overflow and pdu.bidirectional_underflow:
            pdu = dataclasses.replace(pdu, bidirectional_underflow=False)
    return pdu


def pdus_of(cls: type[Pdu]) -> st.SearchStrategy[Pdu]:
    fields = {f.name: _field_strategy(f) for f in dataclasses.fields(cls)}
    return st.builds(cls, **fields).map(_legal)


def any_pdu() -> st.SearchStrategy[Pdu]:
    return st.one_of([pdus_of(cls) for cls in PDU_CLASSES.values()])


def as_received(pdu: Pdu) -> Pdu:
    """What parse_pdu gives back for ``pdu``: short CDBs come back zero-padded to 16 bytes,
    and NSG reads as 0 when T is clear (it is reserved then)."""
    if isinstance(pdu, ScsiCommand) and len(pdu.cdb) < 16:
        pdu = dataclasses.replace(pdu, cdb=pdu.cdb.ljust(16, b"\0"))
    if isinstance(pdu, LoginRequest | LoginResponse) and not pdu.transit:
        pdu = dataclasses.replace(pdu, next_stage=LoginStage.SECURITY_NEGOTIATION)
    return pdu


@pytest.mark.parametrize("cls", PDU_CLASSES.values(), ids=lambda cls: cls.__name__)
@settings(max_examples=60)
@given(data=st.data())
def test_round_trip(cls: type[Pdu], data: st.DataObject) -> None:
    pdu = data.draw(pdus_of(cls))
    header = pdu.pack_bhs()
    assert len(header) % 4 == 0
    ahs_length, data_length = header_lengths(header)
    assert len(header) == BHS_LENGTH + ahs_length
    assert data_length == len(pdu.data)
    assert header[0] & 0x3F == cls.opcode
    parsed = parse_pdu(header[:BHS_LENGTH], header[BHS_LENGTH:], pdu.data)
    assert parsed == as_received(pdu)
    assert parsed.pack_bhs() == header


@settings(max_examples=300)
@given(
    bhs=st.binary(min_size=BHS_LENGTH, max_size=BHS_LENGTH + 8),
    ahs=st.binary(max_size=64),
    data=st.binary(max_size=64),
)
def test_parse_pdu_fuzz(bhs: bytes, ahs: bytes, data: bytes) -> None:
    """Any bytes: a PDU or a TargetProtocolError, never struct.error, ValueError..."""
    try:
        pdu = parse_pdu(bhs, ahs, data)
    except ISCSIError:
        return
    if isinstance(pdu, ScsiResponse):
        with contextlib.suppress(ISCSIError):
            _ = pdu.sense_data
    if isinstance(pdu, Reject):
        _ = pdu.rejected_header


@settings(max_examples=200)
@given(st.data())
def test_parse_pdu_fuzz_from_valid_headers(data: st.DataObject) -> None:
    """Valid headers with random bytes changed, or cut short."""
    pdu = data.draw(any_pdu())
    header = bytearray(pdu.pack_bhs())
    for _ in range(data.draw(st.integers(1, 4))):
        header[data.draw(st.integers(0, len(header) - 1))] ^= data.draw(st.integers(1, 255))
    cut = data.draw(st.integers(0, len(header)))
    ahs_start = min(cut, BHS_LENGTH)
    with contextlib.suppress(ISCSIError):
        parse_pdu(header[:ahs_start], header[ahs_start:cut], pdu.data)
