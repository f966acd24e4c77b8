"""A small iSCSI target on loopback, only for the faults that no real target produces on demand.

Every integration test runs against tgtd (``tests/conftest.py``), and anything tgtd can do is
tested there. tgtd cannot be made to send an Asynchronous Message (RFC 7143 section 11.9):
a target that asks for a logout, drops a connection with a Time2Wait of its choice or reports
a SCSI event; nor answer one command BUSY, or never, while it goes on answering the rest.
This target exists for those tests and nothing else; it is not a model of a good target and
no test should reach for it when tgtd would do.

It serves one target name with one LUN backed by a ``bytearray``, built from the same PDU
classes and framing as the initiator (:mod:`pyiscsid.protocol.pdu`,
:mod:`pyiscsid.protocol.framing`): login without authentication (accepting the initiator's
offers, declaring MaxRecvDataSegmentLength=8192, session reinstatement on a second login with
the same ISID and TSIH 0), NOP-Out, TEST UNIT READY, INQUIRY (standard, VPD 0x00 and 0x80),
REPORT LUNS, READ CAPACITY(10/16), READ(10/16) with the status in the last Data-In, WRITE(10/16)
with immediate data, unsolicited Data-Out and R2Ts, task management, and Logout. Like tgtd, a
new session starts with a power-on unit attention. ``latency`` delays every SCSI command's
final answer so that tests can catch commands in flight.

It checks what the initiator sends (CmdSN order and window, Data-Out within what it asked for)
and records any breach in :attr:`FakeTarget.errors` before dropping the connection.
"""

from __future__ import annotations

import asyncio
import itertools
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pyiscsid.protocol.errors import ProtocolError
from pyiscsid.protocol.framing import PduReader, encode_pdu
from pyiscsid.protocol.keys import KEYS, KeyType, KeyUse, ResultRule
from pyiscsid.protocol.pdu import (
    BHS_LENGTH,
    R2T,
    RESERVED_TAG,
    AsyncMessage,
    DataIn,
    DataOut,
    LoginRequest,
    LoginResponse,
    LoginStage,
    LogoutRequest,
    LogoutResponse,
    LogoutResponseCode,
    NopIn,
    NopOut,
    Pdu,
    Reject,
    RejectReason,
    ScsiCommand,
    ScsiResponse,
    TargetPdu,
    TaskManagementFunction,
    TaskManagementRequest,
    TaskManagementResponse,
    TaskManagementResponsePdu,
)
from pyiscsid.protocol.scsi import encode_lun, field_to_lun
from pyiscsid.protocol.serial import sn_add, sn_le
from pyiscsid.protocol.text import decode_text, encode_text

TARGET_NAME = "iqn.2026-11.test.pyiscsid:fake"
DISK_SIZE = 8 << 20
BLOCK_SIZE = 512
WINDOW = 32  # commands the target takes at once: MaxCmdSN - ExpCmdSN + 1 when idle
MAX_RECV_DATA_SEGMENT_LENGTH = 8192  # what the target declares (and tgt assumes)
FIRST_STAT_SN = 0x5000
VENDOR = "PYISCSID"
PRODUCT = "FAKE"
REVISION = "0001"
SERIAL = "PYISCSIDFAKE0001"

GOOD = 0x00
CHECK_CONDITION = 0x02
UNIT_ATTENTION = 0x06
ILLEGAL_REQUEST = 0x05

# Login Status-Class 2 details (RFC 7143 section 11.13.5).
_LOGIN_AUTH_FAILURE = 0x01
_LOGIN_NOT_FOUND = 0x03
_LOGIN_SESSION_TYPE_NOT_SUPPORTED = 0x0B
_LOGIN_SESSION_DOES_NOT_EXIST = 0x0C

# Commands that do not report a pending unit attention (SPC-4 section 5.14).
_NO_UNIT_ATTENTION = frozenset({0x12, 0xA0, 0x03})  # INQUIRY, REPORT LUNS, REQUEST SENSE


def fixed_sense(key: int, asc: int, ascq: int = 0) -> bytes:
    """Fixed-format sense data (SPC-4 section 4.5.3), current error."""
    return bytes([0x70, 0, key, 0, 0, 0, 0, 10, 0, 0, 0, 0, asc, ascq, 0, 0, 0, 0])


def _padded(text: str, width: int) -> bytes:
    return text.encode("ascii").ljust(width)[:width]


@dataclass(frozen=True, slots=True)
class _Reply:
    """A SCSI command's outcome: data for Data-In (reads) and a status with sense."""

    status: int = GOOD
    sense: bytes = b""
    data: bytes | None = None

    @classmethod
    def check(cls, key: int, asc: int, ascq: int = 0) -> _Reply:
        return cls(CHECK_CONDITION, fixed_sense(key, asc, ascq))


@dataclass(slots=True, eq=False)
class _Task:
    """A SCSI command the target has taken and not yet answered."""

    command: ScsiCommand
    lun: int
    write_buffer: bytearray | None = None
    received: int = 0
    unsolicited_end: int = 0  # bytes that come without an R2T (RFC 7143 section 4.2.5)
    r2t_end: int | None = None  # end offset of the outstanding R2T, None when none is
    r2t_ttt: int = RESERVED_TAG
    r2t_sn: int = 0
    timer: asyncio.TimerHandle | None = None

    @property
    def initiator_task_tag(self) -> int:
        return self.command.initiator_task_tag


class FakeConnection(asyncio.Protocol):
    """One TCP connection and the session it leads (MaxConnections=1)."""

    def __init__(self, target: FakeTarget) -> None:
        self.target = target
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.reader = PduReader(max_data_segment_length=MAX_RECV_DATA_SEGMENT_LENGTH)
        self.connected_at = time.monotonic()
        self.logged_in_at: float | None = None
        self.closed_at: float | None = None
        self.closed: asyncio.Future[None] = self._loop.create_future()
        self.received: list[Pdu] = []  # every PDU the initiator sent on this connection
        self.isid: int | None = None
        self.tsih = 0
        self.initiator_name: str | None = None
        self.full_feature = False
        self.logged_out = False
        self.parameters: dict[str, str] = {}  # the negotiated values, RFC key names
        self.stat_sn = FIRST_STAT_SN
        self.exp_cmd_sn = 0
        self.advertised_max_cmd_sn: int | None = None
        self._login_keys: dict[str, str] = {}
        self._login_text = bytearray()
        self._answered: set[str] = set()
        self._header_digest = False
        self._data_digest = False
        self._unit_attention = target.unit_attention
        self._tasks: dict[int, _Task] = {}
        self._transfer_tags = itertools.count(0x1000)

    # ---------------------------------------------------------------- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.target._connected(self)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        try:
            while not self.logged_out and (pdu := self.reader.next_pdu()) is not None:
                self.received.append(pdu)
                self._handle(pdu)
        except (ProtocolError, AssertionError, ValueError) as exc:
            self.target.errors.append(f"{type(exc).__name__}: {exc}")
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._end_tasks(list(self._tasks.values()))
        self.closed_at = time.monotonic()
        if not self.closed.done():
            self.closed.set_result(None)
        self.target._disconnected(self)

    # ---------------------------------------------------------------- controls

    @property
    def alive(self) -> bool:
        return not self.closed.done()

    @property
    def in_progress(self) -> int:
        """SCSI commands taken and not yet answered."""
        return len(self._tasks)

    def abort(self) -> None:
        """Drop the connection at once (RST), as a failing target would."""
        if self.transport is not None:
            self.transport.abort()

    async def wait_closed(self, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            await asyncio.shield(self.closed)

    # ---------------------------------------------------------------- output

    @property
    def max_cmd_sn(self) -> int:
        """The window closes by one for every command taken and not yet answered."""
        return sn_add(self.exp_cmd_sn, WINDOW - 1 - len(self._tasks))

    def make(self, cls: type[TargetPdu], *, consumes: bool = True, **fields: Any) -> TargetPdu:
        """A target PDU carrying the session's StatSN, ExpCmdSN and MaxCmdSN."""
        if consumes:
            fields["stat_sn"], self.stat_sn = self.stat_sn, sn_add(self.stat_sn, 1)
        else:
            fields["stat_sn"] = self.stat_sn
        fields["exp_cmd_sn"] = self.exp_cmd_sn
        fields["max_cmd_sn"] = max_cmd_sn = self.max_cmd_sn
        if self.advertised_max_cmd_sn is None or sn_le(self.advertised_max_cmd_sn, max_cmd_sn):
            self.advertised_max_cmd_sn = max_cmd_sn
        return cls(**fields)

    def send(self, *pdus: Pdu) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        buffers: list[Any] = []
        for pdu in pdus:
            buffers += encode_pdu(
                pdu, header_digest=self._header_digest, data_digest=self._data_digest
            )
        self.transport.writelines(buffers)

    # ---------------------------------------------------------------- input

    def _handle(self, pdu: Pdu) -> None:
        if not self.full_feature:
            if not isinstance(pdu, LoginRequest):
                raise AssertionError(f"{type(pdu).__name__} before the login completed")
            self._login(pdu)
            return
        self._check_cmd_sn(pdu)
        match pdu:
            case ScsiCommand():
                self._scsi_command(pdu)
            case DataOut():
                self._data_out(pdu)
            case NopOut():
                self._nop_out(pdu)
            case TaskManagementRequest():
                self._task_management(pdu)
            case LogoutRequest():
                self._logout(pdu)
            case _:
                self.send(
                    self.make(
                        Reject,
                        reason=RejectReason.COMMAND_NOT_SUPPORTED,
                        data=pdu.pack_bhs()[:BHS_LENGTH],
                    )
                )

    def _check_cmd_sn(self, pdu: Pdu) -> None:
        """RFC 7143 section 4.2.2.1: CmdSN in order and within the window we advertised;
        an immediate PDU carries the next CmdSN without taking it."""
        cmd_sn = getattr(pdu, "cmd_sn", None)
        if cmd_sn is None:
            return
        if cmd_sn != self.exp_cmd_sn:
            raise AssertionError(
                f"{type(pdu).__name__} has CmdSN {cmd_sn:#x}, expected {self.exp_cmd_sn:#x}"
            )
        if getattr(pdu, "immediate", False):
            return
        limit = self.advertised_max_cmd_sn
        if limit is None or not sn_le(cmd_sn, limit):
            raise AssertionError(f"{type(pdu).__name__} CmdSN {cmd_sn:#x} is past MaxCmdSN")
        self.exp_cmd_sn = sn_add(cmd_sn, 1)

    # ---------------------------------------------------------------- login

    def _login(self, request: LoginRequest) -> None:
        if self.isid is None:
            self.isid = request.isid
            self.exp_cmd_sn = request.cmd_sn
        self._login_text += request.data
        if request.continue_:  # more text to come: ask for it (RFC 7143 section 11.12.2)
            self.send(self._login_response(request, [], transit=False))
            return
        pairs = decode_text(bytes(self._login_text))
        self._login_text.clear()
        self._login_keys.update(pairs)
        keys = self._login_keys
        failure = self._login_refusal(request, keys)
        if failure is not None:
            self.send(self._login_response(request, [], transit=False, status_detail=failure))
            self.logged_out = True
            assert self.transport is not None
            self.transport.close()
            return
        self.initiator_name = keys["InitiatorName"]
        answers: list[tuple[str, str]] = []
        if request.current_stage is LoginStage.SECURITY_NEGOTIATION:
            if "AuthMethod" in dict(pairs) and "AuthMethod" not in self._answered:
                self._answered.add("AuthMethod")
                answers.append(("AuthMethod", "None"))
        else:
            if "TargetPortalGroupTag" not in self._answered:
                self._answered.add("TargetPortalGroupTag")
                answers += [
                    ("TargetPortalGroupTag", "1"),
                    ("MaxRecvDataSegmentLength", str(MAX_RECV_DATA_SEGMENT_LENGTH)),
                ]
            answers += self._negotiate(pairs)
        final = request.transit and request.next_stage is LoginStage.FULL_FEATURE_PHASE
        if final:
            self.tsih = self.target._new_session(self, request)
        self.send(self._login_response(request, answers, transit=request.transit))
        if final:
            self._header_digest = self.parameters.get("HeaderDigest") == "CRC32C"
            self._data_digest = self.parameters.get("DataDigest") == "CRC32C"
            self.reader.header_digest = self._header_digest
            self.reader.data_digest = self._data_digest
            self.full_feature = True
            self.logged_in_at = time.monotonic()
            self.target._logged_in(self, request)

    def _login_refusal(self, request: LoginRequest, keys: Mapping[str, str]) -> int | None:
        """The Status-Detail (class 2) that refuses this login, or None to go on."""
        if "InitiatorName" not in keys:
            return _LOGIN_NOT_FOUND
        if keys.get("SessionType", "Normal") != "Normal":
            return _LOGIN_SESSION_TYPE_NOT_SUPPORTED
        if keys.get("TargetName") != self.target.name:
            return _LOGIN_NOT_FOUND
        if request.tsih != 0:  # no second connection: MaxConnections=1
            return _LOGIN_SESSION_DOES_NOT_EXIST
        methods = keys.get("AuthMethod")
        if methods is not None and "None" not in methods.split(","):
            return _LOGIN_AUTH_FAILURE
        return None

    def _login_response(
        self,
        request: LoginRequest,
        pairs: list[tuple[str, str]],
        *,
        transit: bool,
        status_detail: int = 0,
    ) -> TargetPdu:
        final = transit and request.next_stage is LoginStage.FULL_FEATURE_PHASE
        return self.make(
            LoginResponse,
            transit=transit,
            current_stage=request.current_stage,
            next_stage=request.next_stage if transit else LoginStage.SECURITY_NEGOTIATION,
            isid=request.isid,
            tsih=self.tsih if final else request.tsih,
            initiator_task_tag=request.initiator_task_tag,
            status_class=2 if status_detail else 0,
            status_detail=status_detail,
            data=encode_text(pairs),
        )

    def _negotiate(self, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """Answer the initiator's operational offers: accept them, unless the test chose
        another value (:attr:`FakeTarget.answers`), and note the results."""
        answers = []
        for key, offered in pairs:
            spec = KEYS.get(key)
            if spec is None:
                if key not in ("InitiatorName", "TargetName", "SessionType", "InitiatorAlias"):
                    answers.append((key, "NotUnderstood"))
                continue
            if spec.declarative:
                self.parameters[key] = offered
                continue
            if spec.use is KeyUse.SECURITY or key in self._answered:
                continue
            self._answered.add(key)
            answer = self.target.answers.get(key, offered.split(",")[0])
            answers.append((key, answer))
            self.parameters[key] = _result(spec.type, spec.rule, offered, answer)
        return answers

    def _value(self, key: str) -> str:
        """A negotiated value, or the RFC default when nobody named the key."""
        value = self.parameters.get(key)
        if value is None:
            value = KEYS[key].default
            assert value is not None, key
        return value

    def _number(self, key: str) -> int:
        return int(self._value(key))

    # ---------------------------------------------------------------- full-feature phase

    def _nop_out(self, pdu: NopOut) -> None:
        if pdu.initiator_task_tag == RESERVED_TAG:
            return  # an answer to our ping, or an acknowledgement: nothing to say
        self.send(
            self.make(
                NopIn,
                lun=pdu.lun,
                initiator_task_tag=pdu.initiator_task_tag,
                target_transfer_tag=RESERVED_TAG,
                data=bytes(pdu.data),
            )
        )

    def _logout(self, pdu: LogoutRequest) -> None:
        """Answer, then close: tasks still open are ended with the session (11.14)."""
        self.target._logged_out(self, pdu)
        self._end_tasks(list(self._tasks.values()))
        self.send(
            self.make(
                LogoutResponse,
                response=LogoutResponseCode.CLOSED,
                initiator_task_tag=pdu.initiator_task_tag,
                time2wait=0,
                time2retain=0,
            )
        )
        self.logged_out = True
        assert self.transport is not None
        self.transport.close()

    def _task_management(self, pdu: TaskManagementRequest) -> None:
        """ABORT TASK and the resets end the matching tasks without an answer of their own."""
        function = pdu.function
        self.target.task_management.append(function)
        self.target._changed()
        if function in self.target.ignore_task_management:
            return  # a target that has stopped answering task management
        if function is TaskManagementFunction.ABORT_TASK:
            victim = self._tasks.get(pdu.referenced_task_tag)
            victims = [victim] if victim is not None else []
            response = (
                TaskManagementResponse.FUNCTION_COMPLETE
                if victims
                else TaskManagementResponse.TASK_DOES_NOT_EXIST
            )
        elif function in (
            TaskManagementFunction.ABORT_TASK_SET,
            TaskManagementFunction.CLEAR_TASK_SET,
            TaskManagementFunction.LOGICAL_UNIT_RESET,
        ):
            victims = [t for t in self._tasks.values() if t.lun == field_to_lun(pdu.lun)]
            response = TaskManagementResponse.FUNCTION_COMPLETE
        elif function is TaskManagementFunction.TARGET_WARM_RESET:
            victims = list(self._tasks.values())
            response = TaskManagementResponse.FUNCTION_COMPLETE
        else:
            victims = []
            response = TaskManagementResponse.FUNCTION_NOT_SUPPORTED
        self._end_tasks(victims)
        self.send(
            self.make(
                TaskManagementResponsePdu,
                response=response,
                initiator_task_tag=pdu.initiator_task_tag,
            )
        )

    def _end_tasks(self, tasks: list[_Task]) -> None:
        """End tasks without an answer (aborted, logged out, connection gone)."""
        for task in tasks:
            if task.timer is not None:
                task.timer.cancel()
            del self._tasks[task.initiator_task_tag]
        if tasks:
            self.target._changed()

    # ---------------------------------------------------------------- SCSI

    def _scsi_command(self, command: ScsiCommand) -> None:
        reject = self.target.reject
        reason = reject(bytes(command.cdb)) if reject is not None else None
        if reason is not None:  # as if its Data-Out had come with a bad digest, say
            self.send(self.make(Reject, reason=reason, data=command.pack_bhs()[:BHS_LENGTH]))
            return
        task = _Task(command, field_to_lun(command.lun))
        if command.initiator_task_tag in self._tasks:
            raise AssertionError(f"task tag {command.initiator_task_tag:#x} is already in use")
        self._tasks[command.initiator_task_tag] = task
        self.target._changed()
        if not command.write:
            if len(command.data):
                raise AssertionError("data with a command that writes nothing")
            self._finish(task)
            return
        length = command.expected_data_transfer_length
        if len(command.data) > length:
            raise AssertionError("more immediate data than ExpectedDataTransferLength")
        if len(command.data) and self._value("ImmediateData") != "Yes":
            raise AssertionError("immediate data although ImmediateData=No")
        task.write_buffer = bytearray(length)
        task.write_buffer[: len(command.data)] = command.data
        task.received = len(command.data)
        task.unsolicited_end = (
            len(command.data) if command.final else min(self._number("FirstBurstLength"), length)
        )
        if not command.final and self._value("InitialR2T") == "Yes":
            raise AssertionError("unsolicited Data-Out although InitialR2T=Yes")
        self._advance_write(task)

    def _data_out(self, pdu: DataOut) -> None:
        task = self._tasks.get(pdu.initiator_task_tag)
        if task is None or task.write_buffer is None:
            raise AssertionError(f"Data-Out for unknown task {pdu.initiator_task_tag:#x}")
        solicited = pdu.target_transfer_tag != RESERVED_TAG
        end = pdu.buffer_offset + len(pdu.data)
        limit = task.r2t_end if solicited else task.unsolicited_end
        if solicited and pdu.target_transfer_tag != task.r2t_ttt:
            raise AssertionError(f"Data-Out with an unknown TTT {pdu.target_transfer_tag:#x}")
        if pdu.buffer_offset != task.received or limit is None or end > limit:
            raise AssertionError(
                f"Data-Out at {pdu.buffer_offset}+{len(pdu.data)}: expected offset "
                f"{task.received}, up to {limit}"
            )
        task.write_buffer[pdu.buffer_offset : end] = pdu.data
        task.received = end
        if pdu.final != (end == limit):
            raise AssertionError("Data-Out F bit does not end the sequence")
        if solicited and end == limit:
            task.r2t_end = None
        self._advance_write(task)

    def _advance_write(self, task: _Task) -> None:
        """Ask for the next burst once the last one is in; finish when all data is."""
        assert task.write_buffer is not None
        length = len(task.write_buffer)
        if task.received == length:
            self._finish(task)
            return
        if task.received < task.unsolicited_end or task.r2t_end is not None:
            return  # data already on its way
        burst = min(self._number("MaxBurstLength"), length - task.received)
        task.r2t_end = task.received + burst
        task.r2t_ttt = next(self._transfer_tags)
        self.send(
            self.make(
                R2T,
                consumes=False,
                lun=task.command.lun,
                initiator_task_tag=task.initiator_task_tag,
                target_transfer_tag=task.r2t_ttt,
                r2t_sn=task.r2t_sn,
                buffer_offset=task.received,
                desired_data_transfer_length=burst,
            )
        )
        task.r2t_sn += 1

    def _finish(self, task: _Task) -> None:
        """Run the command now; its answer goes out after :attr:`FakeTarget.latency`."""
        swallow = self.target.swallow
        if swallow is not None and swallow(bytes(task.command.cdb)):
            self.target._changed()
            return  # never answered: stays in progress until task management ends it
        busy = self.target.status
        status = busy(bytes(task.command.cdb)) if busy is not None else None
        reply = _Reply(status=status) if status is not None else self._execute(task)
        latency = self.target.latency
        if latency > 0:
            task.timer = self._loop.call_later(latency, self._answer, task, reply)
        else:
            self._answer(task, reply)

    def _answer(self, task: _Task, reply: _Reply) -> None:
        if self._tasks.pop(task.initiator_task_tag, None) is not task:
            return  # aborted meanwhile
        self.target._changed()
        command = task.command
        if reply.data is not None and reply.status == GOOD:
            self.send(*self._data_in(task, reply.data))
            return
        residual: dict[str, Any] = {}
        if command.read and command.expected_data_transfer_length:
            residual = dict(
                residual_underflow=True, residual_count=command.expected_data_transfer_length
            )
        sense = len(reply.sense).to_bytes(2, "big") + reply.sense if reply.sense else b""
        self.send(
            self.make(
                ScsiResponse,
                initiator_task_tag=command.initiator_task_tag,
                status=reply.status,
                data=sense,
                **residual,
            )
        )

    def _data_in(self, task: _Task, data: bytes) -> list[Pdu]:
        """Data-In PDUs of at most the initiator's MaxRecvDataSegmentLength, a sequence per
        MaxBurstLength, the status in the last one (RFC 7143 section 11.7)."""
        command = task.command
        expected = command.expected_data_transfer_length
        send = data[:expected]
        segment = self._number("MaxRecvDataSegmentLength")
        burst = self._number("MaxBurstLength")
        residual: dict[str, Any] = {}
        if len(data) > expected:
            residual = {"residual_overflow": True, "residual_count": len(data) - expected}
        elif len(data) < expected:
            residual = {"residual_underflow": True, "residual_count": expected - len(data)}
        if not send:
            return [
                self.make(ScsiResponse, initiator_task_tag=command.initiator_task_tag, **residual)
            ]
        pdus: list[Pdu] = []
        offsets = list(range(0, len(send), segment))
        for data_sn, offset in enumerate(offsets):
            chunk = send[offset : offset + segment]
            last = data_sn == len(offsets) - 1
            end = offset + len(chunk)
            fields: dict[str, Any] = dict(
                lun=command.lun,
                initiator_task_tag=command.initiator_task_tag,
                data_sn=data_sn,
                buffer_offset=offset,
                data=chunk,
                final=last or end % burst == 0,
            )
            if last:
                fields.update(status_present=True, status=GOOD, **residual)
            pdus.append(self.make(DataIn, consumes=last, **fields))
        return pdus

    def _execute(self, task: _Task) -> _Reply:
        """What the LUN does with the command (SPC-4, SBC-3)."""
        cdb = task.command.cdb
        opcode = cdb[0]
        lun_known = task.lun == self.target.lun
        if opcode == 0x12:  # INQUIRY answers for every LUN
            return self._inquiry(cdb, lun_known)
        if opcode == 0xA0:  # REPORT LUNS
            allocation = struct.unpack_from(">I", cdb, 6)[0]
            body = struct.pack(">I4x", 8) + encode_lun(self.target.lun)
            return _Reply(data=body[:allocation])
        if not lun_known:
            return _Reply.check(ILLEGAL_REQUEST, 0x25)  # LOGICAL UNIT NOT SUPPORTED
        if self._unit_attention and opcode not in _NO_UNIT_ATTENTION:
            self._unit_attention = False
            return _Reply.check(UNIT_ATTENTION, 0x29)  # POWER ON, RESET, OR BUS DEVICE RESET
        if self.target.unit_attentions and opcode not in _NO_UNIT_ATTENTION:
            return _Reply.check(UNIT_ATTENTION, *self.target.unit_attentions.pop(0))
        disk = self.target.disk
        blocks_total = len(disk) // BLOCK_SIZE
        match opcode:
            case 0x00 | 0x35 | 0x91:  # TEST UNIT READY, SYNCHRONIZE CACHE(10/16)
                return _Reply()
            case 0x1A:  # MODE SENSE(6): a header, no pages, not write-protected
                return _Reply(data=bytes([3, 0, 0, 0])[: cdb[4]])
            case 0x25:  # READ CAPACITY(10)
                last = min(blocks_total - 1, 0xFFFFFFFF)
                return _Reply(data=struct.pack(">II", last, BLOCK_SIZE))
            case 0x9E if cdb[1] & 0x1F == 0x10:  # READ CAPACITY(16)
                allocation = struct.unpack_from(">I", cdb, 10)[0]
                body = struct.pack(">QI20x", blocks_total - 1, BLOCK_SIZE)
                return _Reply(data=body[:allocation])
            case 0x28 | 0x88 | 0x2A | 0x8A:
                if opcode in (0x28, 0x2A):
                    lba, blocks = struct.unpack_from(">IxH", cdb, 2)
                else:
                    lba, blocks = struct.unpack_from(">QI", cdb, 2)
                if lba + blocks > blocks_total:
                    return _Reply.check(ILLEGAL_REQUEST, 0x21)  # LBA OUT OF RANGE
                start, end = lba * BLOCK_SIZE, (lba + blocks) * BLOCK_SIZE
                if opcode in (0x28, 0x88):
                    return _Reply(data=bytes(disk[start:end]))
                data = task.write_buffer
                if data is None or len(data) != end - start:
                    return _Reply.check(ILLEGAL_REQUEST, 0x24)  # INVALID FIELD IN CDB
                disk[start:end] = data
                return _Reply()
        return _Reply.check(ILLEGAL_REQUEST, 0x20)  # INVALID COMMAND OPERATION CODE

    def _inquiry(self, cdb: bytes, lun_known: bool) -> _Reply:
        allocation = struct.unpack_from(">H", cdb, 3)[0]
        evpd, page = cdb[1] & 1, cdb[2]
        if not lun_known:
            body = bytes([0x7F]) + bytes(35)  # qualifier 3, type 0x1F: no LU here
        elif not evpd:
            body = (
                bytes([0, 0, 6, 0x02, 31, 0, 0, 0x02])
                + _padded(VENDOR, 8)
                + _padded(PRODUCT, 16)
                + _padded(REVISION, 4)
            )
        elif page == 0x00:
            body = bytes([0, 0x00, 0, 2, 0x00, 0x80])
        elif page == 0x80:
            serial = self.target.serial.encode("ascii")
            body = bytes([0, 0x80, 0, len(serial)]) + serial
        else:
            return _Reply.check(ILLEGAL_REQUEST, 0x24)
        return _Reply(data=body[:allocation])


def _result(kind: KeyType, rule: ResultRule, offered: str, answer: str) -> str:
    """The value both sides end up with (RFC 7143 sections 6.2.1 and 6.2.2)."""
    if kind is KeyType.BOOLEAN and rule is ResultRule.AND:
        return "Yes" if offered == answer == "Yes" else "No"
    if kind is KeyType.BOOLEAN and rule is ResultRule.OR:
        return "Yes" if "Yes" in (offered, answer) else "No"
    if rule is ResultRule.MIN:
        return str(min(int(offered), int(answer)))
    if rule is ResultRule.MAX:
        return str(max(int(offered), int(answer)))
    return answer


class FakeTarget:
    """The server: one target name, one LUN, and the controls tests need.

    ``logins`` holds (ISID, TSIH) of every login as the initiator sent them (TSIH 0 for a new
    or reinstated session); ``logouts`` counts Logout Requests; ``answers`` overrides the
    target's answer to an operational key (``{"InitialR2T": "Yes"}``).
    """

    def __init__(
        self,
        *,
        name: str = TARGET_NAME,
        lun: int = 0,
        size: int = DISK_SIZE,
        latency: float = 0.0,
        answers: Mapping[str, str] | None = None,
        unit_attention: bool = True,
        serial: str = SERIAL,
    ) -> None:
        self.name = name
        self.lun = lun
        self.disk = bytearray(size)
        self.latency = latency
        self.answers = dict(answers or {})
        self.unit_attention = unit_attention
        self.serial = serial
        # Faults for task-management tests: commands whose CDB makes ``swallow`` true are
        # taken and never answered; functions in ``ignore_task_management`` get no answer.
        self.swallow: Callable[[bytes], bool] | None = None
        self.ignore_task_management: set[TaskManagementFunction] = set()
        # (ASC, ASCQ) of unit attentions to report, one per command, in order: a capacity
        # or mode parameters change, which tgtd cannot be made to report.
        self.unit_attentions: list[tuple[int, int]] = []
        self.task_management: list[TaskManagementFunction] = []
        # ``reject`` returns a Reject reason for a CDB the target refuses (None: no Reject).
        self.reject: Callable[[bytes], int | None] | None = None
        # ``status`` returns a SCSI status without sense (BUSY, TASK SET FULL) to answer a CDB
        # with instead of running it; None runs it. tgtd never answers BUSY on demand.
        self.status: Callable[[bytes], int | None] | None = None
        self.address = "127.0.0.1"
        self.port = 0
        self.connections: list[FakeConnection] = []  # open ones, oldest first
        self.logins: list[tuple[int, int]] = []
        self.login_connections: list[FakeConnection] = []  # the connection of each login
        self.logouts = 0
        self.logout_in_progress: list[int] = []  # commands unanswered at each Logout Request
        self.reinstatements = 0
        self.errors: list[str] = []  # protocol breaches by the initiator
        self.history: list[tuple[float, str]] = []  # (time.monotonic(), what happened)
        self._server: asyncio.AbstractServer | None = None
        self._tsihs = itertools.count(1)
        self._watchers: list[asyncio.Future[None]] = []
        self._login_futures: list[asyncio.Future[FakeConnection]] = []

    @property
    def portal(self) -> str:
        return f"{self.address}:{self.port}"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: FakeConnection(self), self.address, 0, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Close the server and every connection; nothing of the target is left running."""
        if self._server is not None:
            self._server.close()
        connections = list(self.connections)
        for connection in connections:
            connection.abort()
        if connections:
            await asyncio.wait([c.closed for c in connections], timeout=5)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        for future in [*self._watchers, *self._login_futures]:
            future.cancel()

    async def __aenter__(self) -> FakeTarget:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---------------------------------------------------------------- controls

    @property
    def current(self) -> FakeConnection:
        """The newest connection in full-feature phase."""
        for connection in reversed(self.connections):
            if connection.full_feature and not connection.logged_out:
                return connection
        raise AssertionError("no logged-in connection")

    async def send_async(
        self,
        event: int,
        parameter1: int = 0,
        parameter2: int = 0,
        parameter3: int = 0,
        lun: int = 0,
        *,
        sense: bytes = b"",
    ) -> float:
        """Send an Asynchronous Message (RFC 7143 section 11.9) on the current connection;
        returns the time.monotonic() at which it went out. ``sense`` goes in with its
        SenseLength (event 0 carries sense data, 11.9.4)."""
        connection = self.current
        data = len(sense).to_bytes(2, "big") + sense if sense else b""
        pdu = connection.make(
            AsyncMessage,
            lun=int.from_bytes(encode_lun(lun), "big"),
            async_event=event,
            parameter1=parameter1,
            parameter2=parameter2,
            parameter3=parameter3,
            data=data,
        )
        sent = time.monotonic()
        connection.send(pdu)
        self._note(f"async {event}", when=sent)
        return sent

    def next_login(self) -> asyncio.Future[FakeConnection]:
        """Resolves with the connection of the next login to complete."""
        future: asyncio.Future[FakeConnection] = asyncio.get_running_loop().create_future()
        self._login_futures.append(future)
        return future

    async def wait_login(self, count: int, timeout: float) -> FakeConnection:
        """Until ``count`` logins have completed in all; the connection of the last one."""
        await self.wait_until(lambda: len(self.logins) >= count, timeout)
        return self.login_connections[count - 1]

    async def wait_until(self, predicate: Callable[[], bool], timeout: float) -> None:
        """Until ``predicate()`` holds, checked whenever the target's state changes."""
        async with asyncio.timeout(timeout):
            while not predicate():
                watcher = asyncio.get_running_loop().create_future()
                self._watchers.append(watcher)
                await watcher

    # ---------------------------------------------------------------- bookkeeping

    def _note(self, what: str, *, when: float | None = None) -> None:
        self.history.append((time.monotonic() if when is None else when, what))
        self._changed()

    def _changed(self) -> None:
        """Wake :meth:`wait_until`: something a predicate may look at has changed."""
        watchers, self._watchers = self._watchers, []
        for watcher in watchers:
            if not watcher.done():
                watcher.set_result(None)

    def _connected(self, connection: FakeConnection) -> None:
        self.connections.append(connection)
        self._note("connected")

    def _disconnected(self, connection: FakeConnection) -> None:
        if connection in self.connections:
            self.connections.remove(connection)
        self._note("closed")

    def _new_session(self, connection: FakeConnection, request: LoginRequest) -> int:
        """A TSIH for a new session; an older session with the same ISID and initiator is
        reinstated (RFC 7143 section 6.3.5): its connection is dropped."""
        for other in list(self.connections):
            if (
                other is not connection
                and other.full_feature
                and other.isid == request.isid
                and other.initiator_name == connection.initiator_name
            ):
                self.reinstatements += 1
                other.abort()
        return next(self._tsihs)

    def _logged_in(self, connection: FakeConnection, request: LoginRequest) -> None:
        self.logins.append((request.isid, request.tsih))
        self.login_connections.append(connection)
        futures, self._login_futures = self._login_futures, []
        for future in futures:
            if not future.done():
                future.set_result(connection)
        self._note(f"login isid={request.isid:012x} tsih={request.tsih}")

    def _logged_out(self, connection: FakeConnection, request: LogoutRequest) -> None:
        self.logouts += 1
        self.logout_in_progress.append(connection.in_progress)
        self._note(f"logout reason={request.reason}")
