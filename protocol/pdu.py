"""Basic Header Segment codec for every iSCSI opcode (RFC 7143 section 11).

Each PDU is a small frozen dataclass named after the RFC's PDU; fields carry the RFC's names
in snake case (``cmd_sn`` is CmdSN, ``exp_stat_sn`` is ExpStatSN). ``pack_bhs()`` gives the
48-byte BHS plus any AHS; :func:`parse_pdu` turns a received header and data segment back
into the right class. Framing, padding and digests live in :mod:`framing`; this module knows
only the layout of one header.
"""

from __future__ import annotations

import struct
from enum import IntEnum
from typing import ClassVar, TypeAlias, TypeVar

from .errors import InitiatorProtocolError, TargetProtocolError
from .record import record

Buffer: TypeAlias = bytes | bytearray | memoryview

BHS_LENGTH = 48
RESERVED_TAG = 0xFFFFFFFF
MAX_DATA_SEGMENT_LENGTH = (1 << 24) - 1

_FINAL = 0x80
_IMMEDIATE = 0x40
_OPCODE_MASK = 0x3F


class Opcode(IntEnum):
    """PDU opcodes (RFC 7143 section 11.2.1.2)."""

    NOP_OUT = 0x00
    SCSI_COMMAND = 0x01
    TASK_MANAGEMENT_REQUEST = 0x02
    LOGIN_REQUEST = 0x03
    TEXT_REQUEST = 0x04
    DATA_OUT = 0x05
    LOGOUT_REQUEST = 0x06
    SNACK_REQUEST = 0x10
    NOP_IN = 0x20
    SCSI_RESPONSE = 0x21
    TASK_MANAGEMENT_RESPONSE = 0x22
    LOGIN_RESPONSE = 0x23
    TEXT_RESPONSE = 0x24
    DATA_IN = 0x25
    LOGOUT_RESPONSE = 0x26
    R2T = 0x31
    ASYNC_MESSAGE = 0x32
    REJECT = 0x3F


class TaskAttribute(IntEnum):
    """The ATTR field of a SCSI Command (RFC 7143 section 11.3.1)."""

    UNTAGGED = 0
    SIMPLE = 1
    ORDERED = 2
    HEAD_OF_QUEUE = 3
    ACA = 4


class TaskManagementFunction(IntEnum):
    """RFC 7143 section 11.5.1."""

    ABORT_TASK = 1
    ABORT_TASK_SET = 2
    CLEAR_ACA = 3
    CLEAR_TASK_SET = 4
    LOGICAL_UNIT_RESET = 5
    TARGET_WARM_RESET = 6
    TARGET_COLD_RESET = 7
    TASK_REASSIGN = 8


class TaskManagementResponse(IntEnum):
    """RFC 7143 section 11.6.1."""

    FUNCTION_COMPLETE = 0
    TASK_DOES_NOT_EXIST = 1
    LUN_DOES_NOT_EXIST = 2
    TASK_STILL_ALLEGIANT = 3
    TASK_REASSIGNMENT_NOT_SUPPORTED = 4
    FUNCTION_NOT_SUPPORTED = 5
    AUTHORIZATION_FAILED = 6
    FUNCTION_REJECTED = 255


class LogoutReason(IntEnum):
    """RFC 7143 section 11.14.1."""

    CLOSE_SESSION = 0
    CLOSE_CONNECTION = 1
    REMOVE_CONNECTION_FOR_RECOVERY = 2


class LogoutResponseCode(IntEnum):
    """RFC 7143 section 11.15.1."""

    CLOSED = 0
    CID_NOT_FOUND = 1
    RECOVERY_NOT_SUPPORTED = 2
    CLEANUP_FAILED = 3


class ScsiResponseCode(IntEnum):
    """The Response field of a SCSI Response (RFC 7143 section 11.4.3)."""

    COMMAND_COMPLETED = 0x00
    TARGET_FAILURE = 0x01


class AsyncEvent(IntEnum):
    """AsyncEvent codes (RFC 7143 section 11.9.1)."""

    SCSI_ASYNC_EVENT = 0
    LOGOUT_REQUESTED = 1
    CONNECTION_DROP = 2
    SESSION_DROP = 3
    NEGOTIATION_REQUESTED = 4
    TASK_TERMINATION = 5
    VENDOR_SPECIFIC = 255


class RejectReason(IntEnum):
    """RFC 7143 section 11.17.1."""

    DATA_DIGEST_ERROR = 0x02
    SNACK_REJECT = 0x03
    PROTOCOL_ERROR = 0x04
    COMMAND_NOT_SUPPORTED = 0x05
    IMMEDIATE_COMMAND_REJECT = 0x06
    TASK_IN_PROGRESS = 0x07
    INVALID_DATA_ACK = 0x08
    INVALID_PDU_FIELD = 0x09
    LONG_OPERATION_REJECT = 0x0A
    DEPRECATED_NEGOTIATION_RESET = 0x0B
    WAITING_FOR_LOGOUT = 0x0C


class SnackType(IntEnum):
    """RFC 7143 section 11.16.1."""

    DATA_R2T = 0
    STATUS = 1
    DATA_ACK = 2
    R_DATA = 3


class LoginStage(IntEnum):
    """CSG and NSG values (RFC 7143 section 11.12.3)."""

    SECURITY_NEGOTIATION = 0
    LOGIN_OPERATIONAL_NEGOTIATION = 1
    FULL_FEATURE_PHASE = 3


# Bytes 0-7 of every BHS: opcode, flags, two opcode-specific bytes, TotalAHSLength and the
# 24-bit DataSegmentLength sharing one 32-bit word.
_HEAD = ">BBBBI"
_AHS_TYPE_EXTENDED_CDB = 1
_AHS_TYPE_BIDI_READ_LENGTH = 2


def _head(first: int, flags: int, b2: int, b3: int, ahs_len: int, data_len: int) -> tuple[int, ...]:
    if data_len > MAX_DATA_SEGMENT_LENGTH:
        raise InitiatorProtocolError(f"DataSegmentLength {data_len} does not fit in 24 bits")
    return (first, flags, b2, b3, ((ahs_len // 4) << 24) | data_len)


@record(kw_only=True)
class Pdu:
    """Common to all PDUs: the data segment (without padding or digest)."""

    opcode: ClassVar[Opcode]
    data: Buffer = b""

    def pack_bhs(self) -> bytes:
        """The BHS followed by any AHS, ready for a header digest."""
        raise NotImplementedError

    @classmethod
    def unpack(cls, bhs: Buffer, ahs: Buffer, data: Buffer) -> Pdu:
        raise NotImplementedError


# ---------------------------------------------------------------- initiator PDUs


@record(kw_only=True)
class NopOut(Pdu):
    """NOP-Out (RFC 7143 section 11.18): a ping, or the answer to a target's NOP-In."""

    opcode = Opcode.NOP_OUT
    _S: ClassVar[struct.Struct] = struct.Struct(_HEAD + "QIIII16x")
    immediate: bool = True
    lun: int = 0
    initiator_task_tag: int = RESERVED_TAG
    target_transfer_tag: int = RESERVED_TAG
    cmd_sn: int = 0
    exp_stat_sn: int = 0

    def pack_bhs(self) -> bytes:
        return self._S.pack(
            *_head(
                self.opcode | (_IMMEDIATE if self.immediate else 0), _FINAL, 0, 0, 0, len(self.data)
            ),
            self.lun,
            self.initiator_task_tag,
            self.target_transfer_tag,
            self.cmd_sn,
            self.exp_stat_sn,
        )

    @classmethod
    def unpack(cls, bhs: Buffer, ahs: Buffer, data: Buffer) -> NopOut:
        b0, _, _, _, _, lun, itt, ttt, cmd_sn, exp_stat_sn = cls._S.unpack_from(bhs)
        return cls(
            immediate=bool(b0 & _IMMEDIATE), lun=lun, initiator_task_tag=itt,
            target_transfer_tag=ttt, cmd_sn=cmd_sn, exp_stat_sn=exp_stat_sn, data=data,
        )  # fmt: skip


@record(kw_only=True)
class ScsiCommand(Pdu):
    """SCSI Command (RFC 7143 section 11.3). CDBs over 16 bytes go in an Extended CDB AHS."""

    opcode = Opcode.SCSI_COMMAND
    _S: ClassVar[struct.Struct] = struct.Struct(_HEAD + "QIIII16s")
    immediate: bool = False
    final: bool = True
    read: bool = False
    write: bool = False
    attribute: TaskAttribute = TaskAttribute.SIMPLE
    lun: int = 0
    initiator_task_tag: int = 0
    expected_data_transfer_length: int = 0
    cmd_sn: int = 0
    exp_stat_sn: int = 0
    cdb: bytes = b""
    expected_bidirectional_read_data_length: int | None = None

    def pack_bhs(self) -> bytes:
        return pack_scsi_command(
            final=self.final, read=self.read, write=self.write, attribute=self.attribute,
            lun=self.lun, initiator_task_tag=self.initiator_task_tag,
            expected_data_transfer_length=self.expected_data_transfer_length,
            cmd_sn=self.cmd_sn, exp_stat_sn=self.exp_stat_sn, cdb=self.cdb,
            data_segment_length=len(self.data), immediate=self.immediate,
            expected_bidirectional_read_data_length=self.expected_bidirectional_read_data_length,
        )  # fmt: skip

    @classmethod
    def unpack(cls, bhs: Buffer, ahs: Buffer, data: Buffer) -> ScsiCommand:
        b0, flags, _, _, _, lun, itt, edtl, cmd_sn, exp_stat_sn, cdb = cls._S.unpack_from(bhs)
        bidi: int | None = None
        for ahs_type, value in iter_ahs(ahs):
            if ahs_type == _AHS_TYPE_EXTENDED_CDB:
                cdb += bytes(value[1:])
            elif ahs_type == _AHS_TYPE_BIDI_READ_LENGTH and len(value) >= 5:
                (bidi,) = struct.unpack_from(">I", value, 1)
        return cls(
            immediate=bool(b0 & _IMMEDIATE), final=bool(flags & _FINAL), read=bool(flags & 0x40),
            write=bool(flags & 0x20), attribute=TaskAttribute(flags & 0x07), lun=lun,
            initiator_task_tag=itt, expected_data_transfer_length=edtl, cmd_sn=cmd_sn,
            exp_stat_sn=exp_stat_sn, cdb=cdb, expected_bidirectional_read_data_length=bidi,
            data=data,
        )  # fmt: skip


_SCSI_COMMAND = struct.Struct(_HEAD + "QIIII16s")
_SCSI_COMMAND_OPCODE = int(Opcode.SCSI_COMMAND)


def pack_scsi_command(
    *,
    final: bool,
    read: bool,
    write: bool,
    attribute: int,
    lun: int,
    initiator_task_tag: int,
    expected_data_transfer_length: int,
    cmd_sn: int,
    exp_stat_sn: int,
    cdb: bytes,
    data_segment_length: int,
    immediate: bool = False,
    expected_bidirectional_read_data_length: int | None = None,
) -> bytes:
    """The BHS and AHS of a SCSI Command (11.3), without building a :class:`ScsiCommand`:
    the connection sends one per READ or WRITE and never looks at it again. A CDB over 16
    bytes continues in an Extended CDB AHS (11.2.2.3)."""
    if not 1 <= len(cdb) <= 260:
        raise InitiatorProtocolError(f"CDB length {len(cdb)} is not between 1 and 260")
    if data_segment_length > MAX_DATA_SEGMENT_LENGTH:
        _head(0, 0, 0, 0, 0, data_segment_length)  # raises, saying why
    ahs = b""
    if len(cdb) > 16:
        extra = cdb[16:]
        pad = -len(extra) % 4
        ahs += struct.pack(">HBx", len(extra) + 1, _AHS_TYPE_EXTENDED_CDB) + extra + bytes(pad)
    if expected_bidirectional_read_data_length is not None:
        ahs += struct.pack(
            ">HBxI", 5, _AHS_TYPE_BIDI_READ_LENGTH, expected_bidirectional_read_data_length
        )
    bhs = _SCSI_COMMAND.pack(
        _SCSI_COMMAND_OPCODE | (_IMMEDIATE if immediate else 0),
        (_FINAL if final else 0) | (0x40 if read else 0) | (0x20 if write else 0)
        | (attribute & 0x07),
        0, 0, ((len(ahs) // 4) << 24) | data_segment_length,
        lun, initiator_task_tag, expected_data_transfer_length, cmd_sn, exp_stat_sn, cdb[:16],
    )  # fmt: skip
    return bhs + ahs if ahs else bhs


@record(kw_only=True)
class TaskManagementRequest(Pdu):
    """SCSI Task Management Function Request (RFC 7143 section 11.5)."""

    opcode = Opcode.TASK_MANAGEMENT_REQUEST
    _S: ClassVar[struct.Struct] = struct.Struct(_HEAD + "QIIIIII8x")
    immediate: bool = True
    function: TaskManagementFunction = TaskManagementFunction.ABORT_TASK
    lun: int = 0
    initiator_task_tag: int = 0
    referenced_task_tag: int = RESERVED_TAG
    cmd_sn: int = 0
    exp_stat_sn: int = 0
    ref_cmd_sn: int = 0
    exp_data_sn: int = 0

    def pack_bhs(self) -> bytes:
        first = self.opcode | (_IMMEDIATE if self.immediate else 0)
        return self._S.pack(
            *_head(first, _FINAL | self.function, 0, 0, 0, len(self.data)),
            self.lun, self.initiator_task_tag, self.referenced_task_tag, self.cmd_sn,
            self.exp_stat_sn, self.ref_cmd_sn, self.exp_data_sn,
        )  # fmt: skip

    @classmethod
    def unpack(cls, bhs: Buffer, ahs: Buffer, data: Buffer) -> TaskManagementRequest:
        b0, flags, _, _, _, lun, itt, rtt, cmd_sn, esn, ref, eds = cls._S.unpack_from(bhs)
        return cls(
            immediate=bool(b0 & _IMMEDIATE), function=TaskManagementFunction(flags & 0x7F),
            lun=lun, initiator_task_tag=itt, referenced_task_tag=rtt, cmd_sn=cmd_sn,
            exp_stat_sn=esn, ref_cmd_sn=ref, exp_data_sn=eds, data=data,
        )  # fmt: skip


def _stage_flags(transit: bool, cont: bool, csg: LoginStage, nsg: LoginStage) -> int:
    return (0x80 if transit else 0) | (0x40 if cont else 0) | (csg << 2) | (nsg if transit else 0)


@record(kw_only=True)
class LoginRequest(Pdu):
    """Login Request (RFC 7143 section 11.12). Always immediate."""

    opcode = Opcode.LOGIN_REQUEST
    _S: ClassVar[struct.Struct] = struct.Struct(_HEAD + "6sHIHxxII16x")
    transit: bool = False
    continue_: bool = False
    current_stage: LoginStage = LoginStage.SECURITY_NEGOTIATION
    next_stage: LoginStage = LoginStage.SECURITY_NEGOTIATION
    version_max: int = 0
    version_min: int = 0
    isid: int = 0
    tsih: int = 0
    initiator_task_tag: int = 0
    cid: int = 0
    cmd_sn: int = 0
    exp_stat_sn: int = 0

    def pack_bhs(self) -> bytes:
        flags = _stage_flags(self.transit, self.continue_, self.current_stage, self.next_stage)
        return self._S.pack(
            *_head(self.opcode | _IMMEDIATE, flags, self.version_max, self.version_min, 0,
                   len(self.data)),
            self.isid.to_bytes(6, "big"), self.tsih, self.initiator_task_tag, self.cid,
            self.cmd_sn, self.exp_stat_sn,
        )  # fmt: skip

    @classmethod
    def unpack(cls, bhs: Buffer, ahs: Buffer, data: Buffer) -> LoginRequest:
        _, flags, vmax, vmin, _, isid, tsih, itt, cid, cmd_sn, esn = cls._S.unpack_from(bhs)
        transit = bool(flags & 0x80)
        return cls(
            transit=transit, continue_=bool(flags & 0x40),
            current_stage=_login_stage((flags >> 2) & 3),
            next_stage=_login_stage(flags & 3) if transit else LoginStage.SECURITY_NEGOTIATION,
            version_max=vmax, version_min=vmin, isid=int.from_bytes(isid, "big"), tsih=tsih,
            initiator_task_tag=itt, cid=cid, cmd_sn=cmd_sn, exp_stat_sn=esn, data=data,
        )  # fmt: skip


@record(kw_only=True)
class TextRequest(Pdu):
    """Text Request (RFC 7143 section 11.10)."""

    opcode = Opcode.TEXT_REQUEST
    _S: ClassVar[struct.Struct] = struct.Struct(_HEAD + "QIIII16x")
    immediate: bool = False
    final: bool = True
    continue_: bool = False
    lun: int = 0
    initiator_task_tag: int = 0
    target_transfer_tag: int = RESERVED_TAG
    cmd_sn: int = 0
    exp_stat_sn: int = 0

    def pack_bhs(self) -> bytes:
        flags = (_FINAL if self.final else 0) | (0x40 if self.continue_ else 0)
        first = self.opcode | (_IMMEDIATE if self.immediate else 0)
        return self._S.pack(
            *_head(first, flags, 0, 0, 0, len(self.data)),
            self.lun, self.initiator_task_tag, self.target_transfer_tag, self.cmd_sn,
            self.exp_stat_sn,
        )  # fmt: skip

    @classmethod
    def unpack(cls, bhs: Buffer, ahs: Buffer, data: Buffer) -> TextRequest:
        b0, flags, _, _, _, lun, itt, ttt, cmd_sn, esn = cls._S.unpack_from(bhs)
        return cls(
            immediate=bool(b0 & _IMMEDIATE), final=bool(flags & _FINAL),
            continue_=bool(flags & 0x40), lun=lun, initiator_task_tag=itt,
            target_transfer_tag=ttt, cmd_sn=cmd_sn, exp_stat_sn=esn, data=data,
        )  # fmt: skip


@record(kw_only=True)
class DataOut(Pdu):
    """SCSI Data-Out (RFC 7143 section 11.7)."""

    opcode = Opcode.DATA_OUT
    _S: ClassVar[struct.Struct] = struct.Struct(_HEAD + "QII4xI4xII4x")
    final: bool = False
    lun: int = 0
    initiator_task_tag: int = 0
    target_transfer_tag: int = RESERVED_TAG
    exp_stat_sn: int = 0
    data_sn: int = 0
    buffer_offset: int = 0

    def pack_bhs(self) -> bytes:
        return self._S.pack(
            *_head(self.opcode, _FINAL if self.final else 0, 0, 0, 0, len(self.data)),
            self.lun, self.initiator_task_tag, self.target_transfer_tag, self.exp_stat_sn,
            self.data_sn, self.buffer_offset,
        )  # fmt: skip

    @classmethod
    def unpack(cls, bhs: Buffer, ahs: Buffer, data: Buffer) -> DataOut:
        _, flags, _, _, _, lun, itt, ttt, esn, dsn, offset = cls._S.unpack_from(bhs)
        return cls(
            final=bool(flags & _FINAL), lun=lun, initiator_task_tag=itt, target_transfer_tag=ttt,
            exp_stat_sn=esn, data_sn=dsn, buffer_offset=offset, data=data,
        )  # fmt: skip


@record(kw_only=True)
class LogoutRequest(Pdu):
    """Logout Request (RFC 7143 section 11.14)."""

    opcode = Opcode.LOGOUT_REQUEST
    _S: ClassVar[struct.Struct] = struct.Struct(_HEAD + "8xIHxxII16x")
    immediate: bool = False
    reason: LogoutReason = LogoutReason.CLOSE_SESSION
    initiator_task_tag: int = 0
    cid: int = 0
    cmd_sn: int = 0
    exp_stat_sn: int = 0

    def pack_bhs(self) -> bytes:
        first = self.opcode | (_IMMEDIATE if self.immediate else 0)
        return self._S.pack(
            *_head(first, _FINAL | self.reason, 0, 0, 0, len(self.data)),
            self.initiator_task_tag, self.cid, self.cmd_sn, self.exp_stat_sn,
        )  # fmt: skip

    @classmethod
    def unpack(cls, bhs: Buffer, ahs: Buffer, data: Buffer) -> LogoutRequest:
        b0, flags, _, _, _, itt, cid, cmd_sn, esn = cls._S.unpack_from(bhs)
        return cls(
            immediate=bool(b0 & _IMMEDIATE), reason=LogoutReason(flags & 0x7F),
            initiator_task_tag=itt, cid=cid, cmd_sn=cmd_sn, exp_stat_sn=esn, data=data,
        )  # fmt: skip


@record(kw_only=True)
class SnackRequest(Pdu):
    """SNACK Request (RFC 7143 section 11.16); only meaningful at ErrorRecoveryLevel > 0."""

    opcode = Opcode.SNACK_REQUEST
    _S: ClassVar[struct.Struct] = struct.Struct(_HEAD + "QII4xI8xII")
    type: SnackType = SnackType.DATA_R2T
    lun: int = 0
    initiator_task_tag: int = RESERVED_TAG
    target_transfer_tag: int = RESERVED_TAG
    exp_stat_sn: int = 0
    beg_run: int = 0
    run_length: int = 0

    def pack_bhs(self) -> bytes:
        return self._S.pack(
            *_head(self.opcode, _FINAL | self.type, 0, 0, 0, len(self.data)),
            self.lun, self.initiator_task_tag, self.target_transfer_tag, self.exp_stat_sn,
            self.beg_run, self.run_length,
        )  # fmt: skip

    @classmethod
    def unpack(cls, bhs: Buffer, ahs: Buffer, data: Buffer) -> SnackRequest:
        _, flags, _, _, _, lun, itt, ttt, esn, beg, run = cls._S.unpack_from(bhs)
        return cls(
            type=_enum(SnackType, flags & 0x0F, "SNACK Type"), lun=lun, initiator_task_tag=itt,
            target_transfer_tag=ttt, exp_stat_sn=esn, beg_run=beg, run_length=run, data=data,
        )  # fmt: skip


# ---------------------------------------------------------------- target PDUs


@record(kw_only=True)
class TargetPdu(Pdu):
    """Every target PDU but Data-In without status carries StatSN, ExpCmdSN and MaxCmdSN."""

    stat_sn: int = 0
    exp_cmd_sn: int = 0
    max_cmd_sn: int = 0


@record(kw_only=True)
class NopIn(TargetPdu):
    """NOP-In (RFC 7143 section 11.19): an answer to our ping, or the target's own ping."""

    opcode = Opcode.NOP_IN
    _S: ClassVar[struct.Struct] = struct.Struct(_HEAD + "QIIIII12x")
    lun: int = 0
    initiator_task_tag: int = RESERVED_TAG
    target_transfer_tag: int = RESERVED_TAG

    def pack_bhs(self) -> bytes:
        return self._S.pack(
            *_head(self.opcode, _FINAL, 0, 0, 0, len(self.data)),
            self.lun, self.initiator_task_tag, self.target_transfer_tag, self.stat_sn,
            self.exp_cmd_sn, self.max_cmd_sn,
        )  # fmt: skip

    @classmethod
    def unpack(cls, bhs: Buffer, ahs: Buffer, data: Buffer) -> NopIn:
        _, _, _, _, _, lun, itt, ttt, ssn, ecs, mcs = cls._S.unpack_from(bhs)
        return cls(
            lun=lun, initiator_task_tag=itt, target_transfer_tag=ttt, stat_sn=ssn,
            exp_cmd_sn=ecs, max_cmd_sn=mcs, data=data,
        )  # fmt: skip


@record(kw_only=True)
class ScsiResponse(TargetPdu):
    """SCSI Response (RFC 7143 section 11.4). Its data segment holds SenseLength + sense."""

    opcode = Opcode.SCSI_RESPONSE
    _S: ClassVar[struct.Struct] = struct.Struct(_HEAD + "8xIIIIIIII")
    bidirectional_overflow: bool = False
    bidirectional_underflow: bool = False
    residual_overflow: bool = False
    residual_underflow: bool = False
    response: int = ScsiResponseCode.COMMAND_COMPLETED
    status: int = 0
    initiator_task_tag: int = 0
    snack_tag: int = 0
    exp_data_sn: int = 0
    bidirectional_read_residual_count: int = 0
    residual_count: int = 0

    def pack_bhs(self) -> bytes:
        flags = (
            _FINAL
            | (0x10 if self.bidirectional_overflow else 0)
            | (0x08 if self.bidirectional_underflow else 0)
            | (0x04 if self.residual_overflow else 0)
            | (0x02 if self.residual_underflow else 0)
        )
        return self._S.pack(
            *_head(self.opcode, flags, self.response, self.status, 0, len(self.data)),
            self.initiator_task_tag, self.snack_tag, self.stat_sn, self.exp_cmd_sn,
            self.max_cmd_sn, self.exp_data_sn, self.bidirectional_read_residual_count,
            self.residual_count,
        )  # fmt: skip

    @classmethod
    def unpack(cls, bhs: Buffer, ahs: Buffer, data: Buffer) -> ScsiResponse:
        _, flags, resp, status, _, itt, snack, ssn, ecs, mcs, eds, brr, rc = cls._S.unpack_from(bhs)
        if flags & 0x06 == 0x06 or flags & 0x18 == 0x18:
            raise TargetProtocolError("SCSI Response sets both residual overflow and underflow")
        return cls(
            bidirectional_overflow=bool(flags & 0x10), bidirectional_underflow=bool(flags & 0x08),
            residual_overflow=bool(flags & 0x04), residual_underflow=bool(flags & 0x02),
            response=resp, status=status, initiator_task_tag=itt, snack_tag=snack, stat_sn=ssn,
            exp_cmd_sn=ecs, max_cmd_sn=mcs, exp_data_sn=eds,
            bidirectional_read_residual_count=brr, residual_count=rc, data=data,
        )  # fmt: skip

    @property
    def sense_data(self) -> memoryview:
        """The sense bytes, without the 2-byte SenseLength (RFC 7143 section 11.4.7.2)."""
        view = memoryview(self.data)
        if len(view) < 2:
            return view[:0]
        (length,) = struct.unpack_from(">H", view)
        if 2 + length > len(view):
            raise TargetProtocolError(
                f"SCSI Response SenseLength {length} exceeds its data segment ({len(view) - 2})"
            )
        return view[2 : 2 + length]


@record(kw_only=True)
class TaskManagementResponsePdu(TargetPdu):
    """SCSI Task Management Function Response (RFC 7143 section 11.6)."""

    opcode = Opcode.TASK_MANAGEMENT_RESPONSE
    _S: ClassVar[struct.Struct] = struct.Struct(_HEAD + "8xI4xIII12x")
    response: int = TaskManagementResponse.FUNCTION_COMPLETE
    initiator_task_tag: int = 0

    def pack_bhs(self) -> bytes:
        return self._S.pack(
            *_head(self.opcode, _FINAL, self.response, 0, 0, len(self.data)),
            self.initiator_task_tag, self.stat_sn, self.exp_cmd_sn, self.max_cmd_sn,
        )  # fmt: skip

    @classmethod
    def unpack(cls, bhs: Buffer, ahs: Buffer, data: Buffer) -> TaskManagementResponsePdu:
        _, _, resp, _, _, itt, ssn, ecs, mcs = cls._S.unpack_from(bhs)
        return cls(
            response=resp, initiator_task_tag=itt, stat_sn=ssn, exp_cmd_sn=ecs, max_cmd_sn=mcs,
            data=data,
        )  # fmt: skip


@record(kw_only=True)
class LoginResponse(TargetPdu):
    """Login Response (RFC 7143 section 11.13)."""

    opcode = Opcode.LOGIN_RESPONSE
    _S: ClassVar[struct.Struct] = struct.Struct(_HEAD + "6sHI4xIIIBB10x")
    transit: bool = False
    continue_: bool = False
    current_stage: LoginStage = LoginStage.SECURITY_NEGOTIATION
    next_stage: LoginStage = LoginStage.SECURITY_NEGOTIATION
    version_max: int = 0
    version_active: int = 0
    isid: int = 0
    tsih: int = 0
    initiator_task_tag: int = 0
    status_class: int = 0
    status_detail: int = 0

    def pack_bhs(self) -> bytes:
        flags = _stage_flags(self.transit, self.continue_, self.current_stage, self.next_stage)
        return self._S.pack(
            *_head(self.opcode, flags, self.version_max, self.version_active, 0, len(self.data)),
            self.isid.to_bytes(6, "big"), self.tsih, self.initiator_task_tag, self.stat_sn,
            self.exp_cmd_sn, self.max_cmd_sn, self.status_class, self.status_detail,
        )  # fmt: skip

    @classmethod
    def unpack(cls, bhs: Buffer, ahs: Buffer, data: Buffer) -> LoginResponse:
        (_, flags, vmax, vact, _, isid, tsih, itt, ssn, ecs, mcs, sclass, sdetail) = (
            cls._S.unpack_from(bhs)
        )
        transit = bool(flags & 0x80)
        return cls(
            transit=transit, continue_=bool(flags & 0x40),
            current_stage=_login_stage((flags >> 2) & 3),
            next_stage=_login_stage(flags & 3) if transit else LoginStage.SECURITY_NEGOTIATION,
            version_max=vmax, version_active=vact, isid=int.from_bytes(isid, "big"), tsih=tsih,
            initiator_task_tag=itt, stat_sn=ssn, exp_cmd_sn=ecs, max_cmd_sn=mcs,
            status_class=sclass, status_detail=sdetail, data=data,
        )  # fmt: skip


@record(kw_only=True)
class TextResponse(TargetPdu):
    """Text Response (RFC 7143 section 11.11)."""

    opcode = Opcode.TEXT_RESPONSE
    _S: ClassVar[struct.Struct] = struct.Struct(_HEAD + "QIIIII12x")
    final: bool = True
    continue_: bool = False
    lun: int = 0
    initiator_task_tag: int = 0
    target_transfer_tag: int = RESERVED_TAG

    def pack_bhs(self) -> bytes:
        flags = (_FINAL if self.final else 0) | (0x40 if self.continue_ else 0)
        return self._S.pack(
            *_head(self.opcode, flags, 0, 0, 0, len(self.data)),
            self.lun, self.initiator_task_tag, self.target_transfer_tag, self.stat_sn,
            self.exp_cmd_sn, self.max_cmd_sn,
        )  # fmt: skip

    @classmethod
    def unpack(cls, bhs: Buffer, ahs: Buffer, data: Buffer) -> TextResponse:
        _, flags, _, _, _, lun, itt, ttt, ssn, ecs, mcs = cls._S.unpack_from(bhs)
        return cls(
            final=bool(flags & _FINAL), continue_=bool(flags & 0x40), lun=lun,
            initiator_task_tag=itt, target_transfer_tag=ttt, stat_sn=ssn, exp_cmd_sn=ecs,
            max_cmd_sn=mcs, data=data,
        )  # fmt: skip


@record(kw_only=True)
class DataIn(TargetPdu):
    """SCSI Data-In (RFC 7143 section 11.7). StatSN and Status are valid only with S set."""

    opcode = Opcode.DATA_IN
    _S: ClassVar[struct.Struct] = struct.Struct(_HEAD + "QIIIIIIII")  # as _DATA_IN
    final: bool = False
    acknowledge: bool = False
    residual_overflow: bool = False
    residual_underflow: bool = False
    status_present: bool = False
    status: int = 0
    lun: int = 0
    initiator_task_tag: int = 0
    target_transfer_tag: int = RESERVED_TAG
    data_sn: int = 0
    buffer_offset: int = 0
    residual_count: int = 0

    def pack_bhs(self) -> bytes:
        flags = (
            (_FINAL if self.final else 0)
            | (0x40 if self.acknowledge else 0)
            | (0x04 if self.residual_overflow else 0)
            | (0x02 if self.residual_underflow else 0)
            | (0x01 if self.status_present else 0)
        )
        return self._S.pack(
            *_head(self.opcode, flags, 0, self.status, 0, len(self.data)),
            self.lun, self.initiator_task_tag, self.target_transfer_tag, self.stat_sn,
            self.exp_cmd_sn, self.max_cmd_sn, self.data_sn, self.buffer_offset,
            self.residual_count,
        )  # fmt: skip

    @classmethod
    def unpack(cls, bhs: Buffer, ahs: Buffer, data: Buffer) -> DataIn:
        (_, flags, _, status, _, lun, itt, ttt, ssn, ecs, mcs, dsn, offset, rc) = unpack_data_in(
            bhs
        )
        return cls(
            final=bool(flags & _FINAL), acknowledge=bool(flags & 0x40),
            residual_overflow=bool(flags & 0x04), residual_underflow=bool(flags & 0x02),
            status_present=bool(flags & 0x01), status=status, lun=lun, initiator_task_tag=itt,
            target_transfer_tag=ttt, stat_sn=ssn, exp_cmd_sn=ecs, max_cmd_sn=mcs, data_sn=dsn,
            buffer_offset=offset, residual_count=rc, data=data,
        )  # fmt: skip


_DATA_IN = struct.Struct(_HEAD + "QIIIIIIII")
DATA_IN_OPCODE = int(Opcode.DATA_IN)


def unpack_data_in(bhs: Buffer) -> tuple[int, ...]:
    """A Data-In BHS as its 14 struct fields (see :class:`DataIn`), flags checked: the
    connection reads every Data-In this way, without building a :class:`DataIn`."""
    fields = _DATA_IN.unpack_from(bhs)
    flags = fields[1]
    if flags & 0x01 and not flags & _FINAL:
        raise TargetProtocolError("Data-In has the S bit without the F bit")
    if flags & 0x06 == 0x06:
        raise TargetProtocolError("Data-In sets both residual overflow and underflow")
    return fields


@record(kw_only=True)
class LogoutResponse(TargetPdu):
    """Logout Response (RFC 7143 section 11.15)."""

    opcode = Opcode.LOGOUT_RESPONSE
    _S: ClassVar[struct.Struct] = struct.Struct(_HEAD + "8xI4xIII4xHH4x")
    response: int = LogoutResponseCode.CLOSED
    initiator_task_tag: int = 0
    time2wait: int = 0
    time2retain: int = 0

    def pack_bhs(self) -> bytes:
        return self._S.pack(
            *_head(self.opcode, _FINAL, self.response, 0, 0, len(self.data)),
            self.initiator_task_tag, self.stat_sn, self.exp_cmd_sn, self.max_cmd_sn,
            self.time2wait, self.time2retain,
        )  # fmt: skip

    @classmethod
    def unpack(cls, bhs: Buffer, ahs: Buffer, data: Buffer) -> LogoutResponse:
        _, _, resp, _, _, itt, ssn, ecs, mcs, t2w, t2r = cls._S.unpack_from(bhs)
        return cls(
            response=resp, initiator_task_tag=itt, stat_sn=ssn, exp_cmd_sn=ecs, max_cmd_sn=mcs,
            time2wait=t2w, time2retain=t2r, data=data,
        )  # fmt: skip


@record(kw_only=True)
class R2T(TargetPdu):
    """Ready To Transfer (RFC 7143 section 11.8). Its StatSN field is reserved-ish: the target
    carries the next StatSN but does not advance it."""

    opcode = Opcode.R2T
    _S: ClassVar[struct.Struct] = struct.Struct(_HEAD + "QIIIIIIII")
    lun: int = 0
    initiator_task_tag: int = 0
    target_transfer_tag: int = 0
    r2t_sn: int = 0
    buffer_offset: int = 0
    desired_data_transfer_length: int = 0

    def pack_bhs(self) -> bytes:
        return self._S.pack(
            *_head(self.opcode, _FINAL, 0, 0, 0, len(self.data)),
            self.lun, self.initiator_task_tag, self.target_transfer_tag, self.stat_sn,
            self.exp_cmd_sn, self.max_cmd_sn, self.r2t_sn, self.buffer_offset,
            self.desired_data_transfer_length,
        )  # fmt: skip

    @classmethod
    def unpack(cls, bhs: Buffer, ahs: Buffer, data: Buffer) -> R2T:
        (_, _, _, _, _, lun, itt, ttt, ssn, ecs, mcs, r2tsn, offset, ddtl) = cls._S.unpack_from(bhs)
        return cls(
            lun=lun, initiator_task_tag=itt, target_transfer_tag=ttt, stat_sn=ssn,
            exp_cmd_sn=ecs, max_cmd_sn=mcs, r2t_sn=r2tsn, buffer_offset=offset,
            desired_data_transfer_length=ddtl, data=data,
        )  # fmt: skip


@record(kw_only=True)
class AsyncMessage(TargetPdu):
    """Asynchronous Message (RFC 7143 section 11.9)."""

    opcode = Opcode.ASYNC_MESSAGE
    _S: ClassVar[struct.Struct] = struct.Struct(_HEAD + "QI4xIIIBBHHH4x")
    lun: int = 0
    async_event: int = AsyncEvent.SCSI_ASYNC_EVENT
    async_vcode: int = 0
    parameter1: int = 0
    parameter2: int = 0
    parameter3: int = 0

    def pack_bhs(self) -> bytes:
        return self._S.pack(
            *_head(self.opcode, _FINAL, 0, 0, 0, len(self.data)),
            self.lun, RESERVED_TAG, self.stat_sn, self.exp_cmd_sn, self.max_cmd_sn,
            self.async_event, self.async_vcode, self.parameter1, self.parameter2,
            self.parameter3,
        )  # fmt: skip

    @classmethod
    def unpack(cls, bhs: Buffer, ahs: Buffer, data: Buffer) -> AsyncMessage:
        (_, _, _, _, _, lun, _, ssn, ecs, mcs, event, vcode, p1, p2, p3) = cls._S.unpack_from(bhs)
        return cls(
            lun=lun, stat_sn=ssn, exp_cmd_sn=ecs, max_cmd_sn=mcs, async_event=event,
            async_vcode=vcode, parameter1=p1, parameter2=p2, parameter3=p3, data=data,
        )  # fmt: skip


@record(kw_only=True)
class Reject(TargetPdu):
    """Reject (RFC 7143 section 11.17); its data segment is the header of the rejected PDU."""

    opcode = Opcode.REJECT
    _S: ClassVar[struct.Struct] = struct.Struct(_HEAD + "8xI4xIIII8x")
    reason: int = RejectReason.PROTOCOL_ERROR
    data_sn: int = 0

    def pack_bhs(self) -> bytes:
        return self._S.pack(
            *_head(self.opcode, _FINAL, self.reason, 0, 0, len(self.data)),
            RESERVED_TAG, self.stat_sn, self.exp_cmd_sn, self.max_cmd_sn, self.data_sn,
        )  # fmt: skip

    @classmethod
    def unpack(cls, bhs: Buffer, ahs: Buffer, data: Buffer) -> Reject:
        _, _, reason, _, _, _, ssn, ecs, mcs, dsn = cls._S.unpack_from(bhs)
        return cls(
            reason=reason, stat_sn=ssn, exp_cmd_sn=ecs, max_cmd_sn=mcs, data_sn=dsn, data=data
        )

    @property
    def rejected_header(self) -> memoryview | None:
        """The BHS of the PDU that was rejected, when the target sent all 48 bytes of it."""
        view = memoryview(self.data)
        return view[:BHS_LENGTH] if len(view) >= BHS_LENGTH else None


# ---------------------------------------------------------------- dispatch

PDU_CLASSES: dict[int, type[Pdu]] = {
    cls.opcode: cls
    for cls in (
        NopOut, ScsiCommand, TaskManagementRequest, LoginRequest, TextRequest, DataOut,
        LogoutRequest, SnackRequest, NopIn, ScsiResponse, TaskManagementResponsePdu,
        LoginResponse, TextResponse, DataIn, LogoutResponse, R2T, AsyncMessage, Reject,
    )
}  # fmt: skip

TARGET_OPCODES = frozenset(op for op in PDU_CLASSES if op >= 0x20)


def header_lengths(bhs: Buffer) -> tuple[int, int]:
    """(TotalAHSLength in bytes, DataSegmentLength) read from the first 8 bytes of a BHS."""
    (word,) = struct.unpack_from(">I", bhs, 4)
    return (word >> 24) * 4, word & MAX_DATA_SEGMENT_LENGTH


def parse_pdu(bhs: Buffer, ahs: Buffer = b"", data: Buffer = b"") -> Pdu:
    """Decode one PDU whose header (and AHS) and data segment have been cut from the stream.

    Raises :class:`TargetProtocolError` for an unknown opcode or a field with no legal meaning.
    """
    if len(bhs) < BHS_LENGTH:
        raise TargetProtocolError(f"PDU header is {len(bhs)} bytes, a BHS is {BHS_LENGTH}")
    code = bhs[0] & _OPCODE_MASK
    cls = PDU_CLASSES.get(code)
    if cls is None:
        raise TargetProtocolError(f"unknown opcode 0x{code:02x}")
    try:
        return cls.unpack(bhs, ahs, data)
    except ValueError as exc:  # an IntEnum field with an undefined value
        raise TargetProtocolError(f"{cls.__name__}: {exc}") from None


def iter_ahs(ahs: Buffer) -> list[tuple[int, memoryview]]:
    """Split a run of AHSs into (AHSType, AHS-Specific incl. its first byte) pairs (11.2.2)."""
    view = memoryview(ahs)
    out: list[tuple[int, memoryview]] = []
    pos = 0
    while pos + 4 <= len(view):
        length, ahs_type = struct.unpack_from(">HB", view, pos)
        end = pos + 3 + length
        if end > len(view):
            raise TargetProtocolError(f"AHS of type {ahs_type} runs past TotalAHSLength")
        out.append((ahs_type, view[pos + 3 : end]))
        pos = end + (-(3 + length) % 4)
    return out


def _login_stage(value: int) -> LoginStage:
    return _enum(LoginStage, value, "login stage")


_E = TypeVar("_E", bound=IntEnum)


def _enum(cls: type[_E], value: int, what: str) -> _E:
    try:
        return cls(value)
    except ValueError:
        raise TargetProtocolError(f"{what} {value} is not defined") from None
