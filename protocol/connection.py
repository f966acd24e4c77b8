"""One iSCSI connection, sans-IO: login, full-feature phase, logout (RFC 7143).

The caller feeds received bytes with :meth:`Connection.receive_data` and the time with
``now``; it sends what :meth:`Connection.data_to_send` returns, keeps one timer at
:meth:`Connection.next_deadline` and calls :meth:`Connection.handle_timer` when it fires.
Nothing here touches a socket or a clock (aioquic's ``QuicConnection`` is the model).

The connection leads a session of its own (MC/S is not offered: MaxConnections=1), so it
also owns the session's CmdSN window: commands wait in order while the window is closed
(RFC 7143 section 4.2.2.1).
"""

from __future__ import annotations

import enum
import struct
from collections import deque
from collections.abc import Callable, Sequence

from .config import ConnectionConfig
from .errors import (
    CommandRejected,
    DigestError,
    InitiatorProtocolError,
    TargetFailure,
    TargetProtocolError,
    TaskAborted,
)
from .events import (
    AsyncMessageReceived,
    CommandCompleted,
    CommandFailed,
    Event,
    LoginCompleted,
    LoginFailed,
    LoginRedirected,
    LogoutCompleted,
    PingCompleted,
    PingTimedOut,
    RejectReceived,
    TargetPinged,
    TaskManagementCompleted,
    TextExchangeCompleted,
)
from .framing import PduReader, encode_pdu, frame
from .login import Login
from .negotiation import SessionParameters
from .pdu import (
    BHS_LENGTH,
    DATA_IN_OPCODE,
    R2T,
    RESERVED_TAG,
    AsyncEvent,
    AsyncMessage,
    Buffer,
    LoginResponse,
    LogoutReason,
    LogoutRequest,
    LogoutResponse,
    NopIn,
    NopOut,
    Opcode,
    Pdu,
    Reject,
    RejectReason,
    ScsiCommand,
    ScsiResponse,
    ScsiResponseCode,
    TaskAttribute,
    TaskManagementFunction,
    TaskManagementRequest,
    TaskManagementResponse,
    TaskManagementResponsePdu,
    TextRequest,
    TextResponse,
    pack_scsi_command,
    parse_pdu,
    unpack_data_in,
)
from .serial import sn_add, sn_ge, sn_gt, sn_le, sn_lt
from .stats import ConnectionStats
from .tasks import UNSOLICITED, ScsiTask
from .text import TextAssembler, encode_text, split_text

# The login phase never lets a PDU carry more than 8192 bytes of data (RFC 7143 13.12).
LOGIN_MAX_DATA_SEGMENT_LENGTH = 8192


_SCSI_COMMAND = int(Opcode.SCSI_COMMAND)  # stats keys, looked up once
_DATA_IN = DATA_IN_OPCODE


class ConnectionState(enum.Enum):
    LOGGING_IN = "logging in"
    FULL_FEATURE = "logged in"
    LOGGING_OUT = "logging out"
    LOGGED_OUT = "logged out"
    FAILED = "failed"


# The states tested on every PDU, looked up once: a class attribute lookup on an Enum costs
# several times a global's on Python 3.11.
_FULL_FEATURE = ConnectionState.FULL_FEATURE
_LOGGED_OUT = ConnectionState.LOGGED_OUT
_LOGGING_IN = ConnectionState.LOGGING_IN
_FAILED = ConnectionState.FAILED


class _Input(enum.Enum):
    LOGIN_COMPLETED = enum.auto()
    LOGIN_ENDED = enum.auto()  # rejected or redirected: this connection is over
    LOGOUT_SENT = enum.auto()
    LOGOUT_COMPLETED = enum.auto()
    FAILURE = enum.auto()  # protocol error or ping timeout


# The one place that says which input moves which state where; anything else is a bug.
_TRANSITIONS: dict[ConnectionState, dict[_Input, ConnectionState]] = {
    ConnectionState.LOGGING_IN: {
        _Input.LOGIN_COMPLETED: ConnectionState.FULL_FEATURE,
        _Input.LOGIN_ENDED: ConnectionState.LOGGED_OUT,
        _Input.FAILURE: ConnectionState.FAILED,
    },
    ConnectionState.FULL_FEATURE: {
        _Input.LOGOUT_SENT: ConnectionState.LOGGING_OUT,
        _Input.FAILURE: ConnectionState.FAILED,
    },
    ConnectionState.LOGGING_OUT: {
        _Input.LOGOUT_COMPLETED: ConnectionState.LOGGED_OUT,
        _Input.FAILURE: ConnectionState.FAILED,
    },
    ConnectionState.LOGGED_OUT: {},
    ConnectionState.FAILED: {},
}

_REJECT_TEXT = {
    RejectReason.DATA_DIGEST_ERROR: "data digest error",
    RejectReason.SNACK_REJECT: "SNACK reject",
    RejectReason.PROTOCOL_ERROR: "protocol error",
    RejectReason.COMMAND_NOT_SUPPORTED: "command not supported",
    RejectReason.IMMEDIATE_COMMAND_REJECT: "immediate command rejected: too many",
    RejectReason.TASK_IN_PROGRESS: "task in progress",
    RejectReason.INVALID_DATA_ACK: "invalid data ack",
    RejectReason.INVALID_PDU_FIELD: "invalid PDU field",
    RejectReason.LONG_OPERATION_REJECT: "out of resources: long operation",
    RejectReason.DEPRECATED_NEGOTIATION_RESET: "negotiation reset",
    RejectReason.WAITING_FOR_LOGOUT: "waiting for logout",
}


# A SendTargets answer of a large target lists many portals; bound it all the same.
MAX_TEXT_RESPONSE = 1 << 20


class _TextExchange:
    """One Text Request/Response exchange, with continuation both ways (RFC 7143 11.10)."""

    __slots__ = ("assembler", "initiator_task_tag", "unsent")

    def __init__(self, initiator_task_tag: int, chunks: list[bytes]) -> None:
        self.initiator_task_tag = initiator_task_tag
        self.assembler = TextAssembler(max_size=MAX_TEXT_RESPONSE)
        self.unsent = deque(chunks)


class Connection:
    """The initiator side of one connection, from the first Login Request to the logout."""

    def __init__(
        self, config: ConnectionConfig, *, rng: Callable[[int], bytes], now: float
    ) -> None:
        self.config = config
        self.state = ConnectionState.LOGGING_IN
        self.parameters: SessionParameters | None = None
        self.tsih = config.tsih
        # CmdSN window (RFC 7143 section 4.2.2.1) and StatSN acknowledgement (4.2.2.2).
        self.cmd_sn = config.initial_cmd_sn & 0xFFFFFFFF
        self.exp_cmd_sn = self.cmd_sn
        self.max_cmd_sn = self.cmd_sn
        self.exp_stat_sn = 0
        self.stats = ConnectionStats()
        self._out: list[Buffer] = []
        self._header_digest = False
        self._data_digest = False
        self._reader = PduReader(max_data_segment_length=LOGIN_MAX_DATA_SEGMENT_LENGTH)
        self._next_itt = int.from_bytes(rng(4), "big") & 0x7FFFFFFF
        self._tasks: dict[int, ScsiTask] = {}
        self._waiting: deque[ScsiTask] = deque()  # commands held until the window opens
        self._pings: dict[int, float] = {}  # our NOP-Out ITT -> time sent
        self._task_management: dict[int, TaskManagementRequest] = {}
        self._aborted_unsent: set[int] = set()  # tasks aborted before they went out
        self._r2t_answered: list[ScsiTask] = []  # R2Ts answered since data_to_send()
        self._text: _TextExchange | None = None
        self._logout_itt: int | None = None
        self._last_received = now
        self._login = Login(
            config, initiator_task_tag=self._allocate_itt(), cmd_sn=self.cmd_sn, rng=rng
        )
        self._send(self._login.start())

    # ----------------------------------------------------------------- state machine

    def _move(self, event: _Input) -> None:
        new = _TRANSITIONS[self.state].get(event)
        if new is None:
            raise InitiatorProtocolError(f"{event.name} is not possible while {self.state.value}")
        self.state = new

    def _require(self, state: ConnectionState, action: str) -> None:
        if self.state is not state:
            raise InitiatorProtocolError(f"cannot {action}: the connection is {self.state.value}")

    # ----------------------------------------------------------------- output

    def _send(self, pdu: Pdu) -> None:
        self.stats.sent[pdu.opcode] += 1
        if pdu.opcode in (Opcode.SCSI_COMMAND, Opcode.DATA_OUT):
            self.stats.txdata_octets += len(pdu.data)
        self._out.extend(
            encode_pdu(pdu, header_digest=self._header_digest, data_digest=self._data_digest)
        )

    def data_to_send(self) -> list[Buffer]:
        """Buffers to write to the socket, in order (one ``writelines`` call).

        The Data-Out answering an R2T leaves here: from now on the target may have it, and
        the R2T stops counting against MaxOutstandingR2T (:meth:`ScsiTask.accept_r2t`).
        """
        out, self._out = self._out, []
        if self._r2t_answered:
            for task in self._r2t_answered:
                task.r2ts_unflushed = 0
            self._r2t_answered.clear()
        return out

    def _allocate_itt(self) -> int:
        while True:
            itt = self._next_itt
            self._next_itt = (itt + 1) & 0xFFFFFFFF
            if itt != RESERVED_TAG and itt not in self._tasks and itt not in self._pings:
                return itt

    @property
    def window_open(self) -> bool:
        return sn_le(self.cmd_sn, self.max_cmd_sn)

    @property
    def outstanding(self) -> int:
        """Commands submitted and not yet completed, sent or waiting for the window."""
        return len(self._tasks)

    @property
    def waiting(self) -> int:
        """Commands held back because the CmdSN window is closed."""
        return len(self._waiting)

    # ----------------------------------------------------------------- requests

    def send_command(
        self,
        cdb: bytes,
        *,
        lun: int = 0,
        data_out: Buffer | None = None,
        read_length: int = 0,
        read_buffer: memoryview | None = None,
        attribute: TaskAttribute = TaskAttribute.SIMPLE,
    ) -> int:
        """Queue a SCSI command; returns its Initiator Task Tag (RFC 7143 section 11.3).

        ``data_out`` is written to the target; ``read_length`` bytes (or ``read_buffer``)
        receive Data-In. The command goes out at once if the CmdSN window is open.
        """
        if self.state is not _FULL_FEATURE:
            self._require(ConnectionState.FULL_FEATURE, "send a SCSI command")
        if not 1 <= len(cdb) <= 260:  # refused here, not when the window opens
            raise InitiatorProtocolError(f"CDB length {len(cdb)} is not between 1 and 260")
        if read_buffer is not None:
            read_length = len(read_buffer)
        elif read_length:
            read_buffer = memoryview(bytearray(read_length))
        write = memoryview(data_out).cast("B") if data_out is not None else None
        if write is not None and read_buffer is not None:
            raise InitiatorProtocolError("bidirectional commands are not supported")
        task = ScsiTask(
            initiator_task_tag=self._allocate_itt(),
            lun=lun,
            cdb=bytes(cdb),
            attribute=attribute,
            expected_data_transfer_length=len(write) if write is not None else read_length,
            read_buffer=read_buffer,
            write_data=write,
        )
        self._tasks[task.initiator_task_tag] = task
        if self._waiting or not self.window_open:
            self._waiting.append(task)
        else:
            self._issue(task)
        return task.initiator_task_tag

    def _issue(self, task: ScsiTask) -> None:
        """Send the command with its immediate and unsolicited data (RFC 7143 4.2.5)."""
        params = self.parameters
        assert params is not None
        task.cmd_sn = self.cmd_sn
        self.cmd_sn = sn_add(self.cmd_sn, 1)
        immediate: Buffer = b""
        unsolicited = 0
        data = task.write_data
        if data is not None:
            first_burst = min(params.first_burst_length, len(data))
            if params.immediate_data:
                size = min(first_burst, params.target_max_recv_data_segment_length)
                immediate = data[:size]
            unsolicited = first_burst - len(immediate) if not params.initial_r2t else 0
            task.sent_unsolicited(len(immediate) + unsolicited)
        # Packed straight from the task: a ScsiCommand object would be built only to be
        # packed (this runs for every READ and WRITE).
        header = pack_scsi_command(
            final=unsolicited == 0,
            read=task.read_buffer is not None,
            write=data is not None,
            attribute=task.attribute,
            lun=task.lun,
            initiator_task_tag=task.initiator_task_tag,
            expected_data_transfer_length=task.expected_data_transfer_length,
            cmd_sn=task.cmd_sn,
            exp_stat_sn=self.exp_stat_sn,
            cdb=task.cdb,
            data_segment_length=len(immediate),
        )
        self.stats.sent[_SCSI_COMMAND] += 1
        self.stats.txdata_octets += len(immediate)
        self._out.extend(
            frame(
                header, immediate, header_digest=self._header_digest, data_digest=self._data_digest
            )
        )
        if unsolicited:
            for pdu in task.data_out_sequence(
                len(immediate),
                unsolicited,
                target_transfer_tag=UNSOLICITED,
                max_segment=params.target_max_recv_data_segment_length,
                exp_stat_sn=self.exp_stat_sn,
            ):
                self._send(pdu)

    def _issue_waiting(self) -> None:
        while self._waiting and self.window_open:
            self._issue(self._waiting.popleft())

    def ping(self, data: bytes = b"", *, now: float) -> int:
        """Send a NOP-Out that asks for a NOP-In (RFC 7143 section 11.18)."""
        self._require(ConnectionState.FULL_FEATURE, "ping")
        itt = self._allocate_itt()
        self._pings[itt] = now
        self._send(
            NopOut(
                initiator_task_tag=itt,
                cmd_sn=self.cmd_sn,
                exp_stat_sn=self.exp_stat_sn,
                data=data,
            )
        )
        return itt

    def task_management(
        self,
        function: TaskManagementFunction,
        *,
        lun: int = 0,
        referenced_task_tag: int = RESERVED_TAG,
    ) -> int:
        """Send a Task Management Function Request (RFC 7143 section 11.5), immediate."""
        self._require(ConnectionState.FULL_FEATURE, "send task management")
        ref_cmd_sn = self.cmd_sn
        if function is TaskManagementFunction.ABORT_TASK:
            task = self._tasks.get(referenced_task_tag)
            if task is None:
                raise InitiatorProtocolError(
                    f"no task 0x{referenced_task_tag:08x} to abort on this connection"
                )
            lun = task.lun
            if task.cmd_sn is None:  # never sent: abort it here, the target never saw it
                self._waiting.remove(task)
                del self._tasks[referenced_task_tag]
                self._aborted_unsent.add(referenced_task_tag)
                ref_cmd_sn = self.cmd_sn
            else:
                ref_cmd_sn = task.cmd_sn
        itt = self._allocate_itt()
        request = TaskManagementRequest(
            function=function,
            lun=lun,
            initiator_task_tag=itt,
            referenced_task_tag=referenced_task_tag,
            cmd_sn=self.cmd_sn,
            exp_stat_sn=self.exp_stat_sn,
            ref_cmd_sn=ref_cmd_sn,
        )
        self._task_management[itt] = request
        self._send(request)
        return itt

    def send_text(self, pairs: Sequence[tuple[str, str]]) -> int:
        """Start a Text Request exchange (RFC 7143 section 11.10), e.g. SendTargets=All.

        Text Requests go out for immediate delivery (as libiscsi sends them): they take no
        CmdSN, so they never wait for, nor overrun, a closed CmdSN window (4.2.2.1).
        """
        self._require(ConnectionState.FULL_FEATURE, "send a Text Request")
        if self._text is not None:
            raise InitiatorProtocolError("a text exchange is already in progress")
        assert self.parameters is not None
        itt = self._allocate_itt()
        chunks = split_text(encode_text(pairs), self.parameters.target_max_recv_data_segment_length)
        self._text = _TextExchange(itt, chunks)
        self._send_text_part(self._text, RESERVED_TAG)
        return itt

    def _send_text_part(self, exchange: _TextExchange, target_transfer_tag: int) -> None:
        """The next part of our text; with C set the target answers empty before the next."""
        chunk = exchange.unsent.popleft() if exchange.unsent else b""
        self._send(
            TextRequest(
                immediate=True,
                final=not exchange.unsent,
                continue_=bool(exchange.unsent),
                initiator_task_tag=exchange.initiator_task_tag,
                target_transfer_tag=target_transfer_tag,
                cmd_sn=self.cmd_sn,
                exp_stat_sn=self.exp_stat_sn,
                data=chunk,
            )
        )

    def logout(self, reason: LogoutReason = LogoutReason.CLOSE_SESSION) -> int:
        """Send a Logout Request (RFC 7143 section 11.14). Nothing may be sent after it."""
        self._require(ConnectionState.FULL_FEATURE, "log out")
        itt = self._allocate_itt()
        self._logout_itt = itt
        self._send(
            LogoutRequest(
                immediate=True,
                reason=reason,
                initiator_task_tag=itt,
                cid=self.config.cid,
                cmd_sn=self.cmd_sn,
                exp_stat_sn=self.exp_stat_sn,
            )
        )
        self._move(_Input.LOGOUT_SENT)
        return itt

    def fail(self) -> None:
        """The caller lost the connection (EOF, socket error): nothing more is sent."""
        if self.state not in (ConnectionState.LOGGED_OUT, ConnectionState.FAILED):
            self._move(_Input.FAILURE)
        self._out.clear()

    # ----------------------------------------------------------------- timers

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` must next run (NOP-Out interval or ping timeout)."""
        if self.state not in (ConnectionState.FULL_FEATURE, ConnectionState.LOGGING_OUT):
            return None
        cfg = self.config
        if self._pings:
            # Any PDU received counts as life: a ping times out only after silence.
            return max(min(self._pings.values()), self._last_received) + cfg.noop_out_timeout
        if cfg.noop_out_interval > 0 and self.state is ConnectionState.FULL_FEATURE:
            return self._last_received + cfg.noop_out_interval
        return None

    def handle_timer(self, now: float) -> list[Event]:
        deadline = self.next_deadline()
        if deadline is None or now < deadline:
            return []
        if self._pings:
            itt, sent = min(self._pings.items(), key=lambda item: item[1])
            self._pings.clear()
            self.stats.timeout_err += 1
            self._move(_Input.FAILURE)
            return [PingTimedOut(itt, now - sent)]
        self.ping(now=now)
        return []

    # ----------------------------------------------------------------- input

    def receive_data(self, data: Buffer, now: float) -> list[Event]:
        """Feed bytes from the socket; returns what happened, in order.

        Raises :class:`TargetProtocolError` (and moves to FAILED) if the target broke the
        protocol; the caller then drops the connection.
        """
        if self.state is _FAILED or self.state is _LOGGED_OUT:
            return []
        self._last_received = now
        reader = self._reader
        reader.feed(data)
        events: list[Event] = []
        try:
            # Stop at the end of the login or the logout: what follows is not ours to judge.
            while (raw := reader.next_raw()) is not None:
                bhs = raw[0]
                if bhs[0] & 0x3F == DATA_IN_OPCODE and self.state is not _LOGGING_IN:
                    self._handle_data_in(bhs, raw[2], events)  # every read: no DataIn object
                else:
                    self._handle(parse_pdu(*raw), now, events)
                if self.state is _LOGGED_OUT:
                    break
        except TargetProtocolError as exc:
            if isinstance(exc, DigestError):
                self.stats.digest_err += 1
            self._move(_Input.FAILURE)
            self._out.clear()
            raise
        if self._waiting and self.state is ConnectionState.FULL_FEATURE:
            self._issue_waiting()
        return events

    def _handle(self, pdu: Pdu, now: float, events: list[Event]) -> None:
        self.stats.received[pdu.opcode] += 1
        if self.state is _LOGGING_IN:
            if not isinstance(pdu, LoginResponse):
                raise TargetProtocolError(
                    f"{type(pdu).__name__} received during login, expected a Login Response"
                )
            self._handle_login(pdu, events)
            return
        match pdu:
            case ScsiResponse():
                self._acknowledge(pdu.stat_sn, pdu.exp_cmd_sn, pdu.max_cmd_sn)
                self._handle_scsi_response(pdu, events)
            case R2T():
                self._update_window(pdu.exp_cmd_sn, pdu.max_cmd_sn)
                self._handle_r2t(pdu)
            case NopIn():
                self._handle_nop_in(pdu, now, events)
            case TaskManagementResponsePdu():
                self._acknowledge(pdu.stat_sn, pdu.exp_cmd_sn, pdu.max_cmd_sn)
                self._handle_task_management_response(pdu, events)
            case TextResponse():
                self._acknowledge(pdu.stat_sn, pdu.exp_cmd_sn, pdu.max_cmd_sn)
                self._handle_text_response(pdu, events)
            case AsyncMessage():
                self._acknowledge(pdu.stat_sn, pdu.exp_cmd_sn, pdu.max_cmd_sn)
                self._handle_async_message(pdu, events)
            case Reject():
                self._acknowledge(pdu.stat_sn, pdu.exp_cmd_sn, pdu.max_cmd_sn)
                self._handle_reject(pdu, events)
            case LogoutResponse():
                self._acknowledge(pdu.stat_sn, pdu.exp_cmd_sn, pdu.max_cmd_sn)
                self._handle_logout_response(pdu, events)
            case _:
                raise TargetProtocolError(f"{type(pdu).__name__} is not a PDU a target sends")

    # -- sequence numbers

    def _acknowledge(self, stat_sn: int, exp_cmd_sn: int, max_cmd_sn: int) -> None:
        """A PDU that consumes a StatSN: acknowledge it and update the window."""
        if sn_ge(stat_sn, self.exp_stat_sn):
            self.exp_stat_sn = sn_add(stat_sn, 1)
        self._update_window(exp_cmd_sn, max_cmd_sn)

    def _update_window(self, exp_cmd_sn: int, max_cmd_sn: int) -> None:
        """RFC 7143 section 4.2.2.1: ignore a MaxCmdSN below ExpCmdSN - 1, never go back."""
        if sn_lt(max_cmd_sn, sn_add(exp_cmd_sn, 0xFFFFFFFF)):
            return
        if sn_gt(exp_cmd_sn, self.exp_cmd_sn):
            self.exp_cmd_sn = exp_cmd_sn
        if sn_gt(max_cmd_sn, self.max_cmd_sn):
            self.max_cmd_sn = max_cmd_sn

    # -- login

    def _handle_login(self, pdu: LoginResponse, events: list[Event]) -> None:
        request, event = self._login.receive(pdu)
        self.exp_stat_sn = self._login.exp_stat_sn
        if request is not None:
            self._send(request)
        match event:
            case LoginCompleted():
                self._move(_Input.LOGIN_COMPLETED)
                self.parameters = event.parameters
                self.tsih = event.tsih
                self.exp_cmd_sn = pdu.exp_cmd_sn
                self.max_cmd_sn = pdu.max_cmd_sn
                self._update_window(pdu.exp_cmd_sn, pdu.max_cmd_sn)
                # Digests start with the first PDU after the final Login Response (13.1).
                self._header_digest = event.parameters.header_digest
                self._data_digest = event.parameters.data_digest
                self._reader.header_digest = self._header_digest
                self._reader.data_digest = self._data_digest
                self._reader.max_data_segment_length = (
                    event.parameters.initiator_max_recv_data_segment_length
                )
                events.append(event)
            case LoginFailed() | LoginRedirected():
                self._move(_Input.LOGIN_ENDED)
                events.append(event)
            case None:
                pass

    # -- SCSI

    def _task_for(self, itt: int, what: str) -> ScsiTask:
        task = self._tasks.get(itt)
        if task is None or task.cmd_sn is None:
            if task is not None:
                raise TargetProtocolError(
                    f"{what} for task tag 0x{itt:08x}, a command not sent yet (it waits for "
                    "the CmdSN window)"
                )
            raise TargetProtocolError(f"{what} for unknown task tag 0x{itt:08x}")
        return task

    def _handle_data_in(self, bhs: memoryview, data: memoryview, events: list[Event]) -> None:
        """SCSI Data-In (11.7), decoded straight from its BHS: one per read, and often the
        read's status too (the S bit), so no :class:`DataIn` is built for it."""
        (_, flags, _, status, _, _, itt, _, stat_sn, exp_cmd_sn, max_cmd_sn, data_sn,
         buffer_offset, residual_count) = unpack_data_in(bhs)  # fmt: skip
        stats = self.stats
        stats.received[_DATA_IN] += 1
        stats.rxdata_octets += len(data)
        status_present = flags & 0x01
        if status_present:
            self._acknowledge(stat_sn, exp_cmd_sn, max_cmd_sn)
        else:
            self._update_window(exp_cmd_sn, max_cmd_sn)
        task = self._task_for(itt, "Data-In")
        task.accept_data_in(data_sn, buffer_offset, data)
        if status_present:
            underflow = bool(flags & 0x02)
            received = task.completed_view(status, underflow, residual_count, "Data-In status")
            del self._tasks[itt]
            events.append(
                CommandCompleted(
                    initiator_task_tag=itt,
                    status=status,
                    sense=b"",
                    data=received,
                    residual_underflow=underflow,
                    residual_overflow=bool(flags & 0x04),
                    residual_count=residual_count,
                )
            )

    def _handle_scsi_response(self, pdu: ScsiResponse, events: list[Event]) -> None:
        task = self._task_for(pdu.initiator_task_tag, "SCSI Response")
        if pdu.response != ScsiResponseCode.COMMAND_COMPLETED:
            del self._tasks[task.initiator_task_tag]
            events.append(
                CommandFailed(
                    task.initiator_task_tag,
                    TargetFailure(f"target failure (iSCSI Response 0x{pdu.response:02x})"),
                )
            )
            return
        received = task.completed_view(
            pdu.status, pdu.residual_underflow, pdu.residual_count, "SCSI Response"
        )
        del self._tasks[task.initiator_task_tag]
        events.append(
            CommandCompleted(
                initiator_task_tag=task.initiator_task_tag,
                status=pdu.status,
                sense=bytes(pdu.sense_data),
                data=received,
                residual_underflow=pdu.residual_underflow,
                residual_overflow=pdu.residual_overflow,
                residual_count=pdu.residual_count,
            )
        )

    def _handle_r2t(self, pdu: R2T) -> None:
        """Answer an R2T with one Data-Out sequence (RFC 7143 section 11.8), once the task
        has checked that it asks for new data, in order, within MaxOutstandingR2T."""
        task = self._task_for(pdu.initiator_task_tag, "R2T")
        params = self.parameters
        assert params is not None
        task.accept_r2t(
            pdu.r2t_sn,
            pdu.buffer_offset,
            pdu.desired_data_transfer_length,
            max_burst_length=params.max_burst_length,
            max_outstanding_r2t=params.max_outstanding_r2t,
            data_sequence_in_order=params.data_sequence_in_order,
            error_recovery_level=params.error_recovery_level,
        )
        if task.r2ts_unflushed == 1:
            self._r2t_answered.append(task)
        if task.data_out_stopped:
            return
        for data_out in task.data_out_sequence(
            pdu.buffer_offset,
            pdu.desired_data_transfer_length,
            target_transfer_tag=pdu.target_transfer_tag,
            max_segment=params.target_max_recv_data_segment_length,
            exp_stat_sn=self.exp_stat_sn,
        ):
            self._send(data_out)

    # -- NOP

    def _handle_nop_in(self, pdu: NopIn, now: float, events: list[Event]) -> None:
        if pdu.initiator_task_tag == RESERVED_TAG:
            # The target's own NOP-In: StatSN is not advanced (RFC 7143 section 11.19.2).
            self._update_window(pdu.exp_cmd_sn, pdu.max_cmd_sn)
            if pdu.target_transfer_tag != RESERVED_TAG:
                self._send(
                    NopOut(
                        lun=pdu.lun,
                        target_transfer_tag=pdu.target_transfer_tag,
                        cmd_sn=self.cmd_sn,
                        exp_stat_sn=self.exp_stat_sn,
                    )
                )
                events.append(TargetPinged(pdu.target_transfer_tag))
            return
        self._acknowledge(pdu.stat_sn, pdu.exp_cmd_sn, pdu.max_cmd_sn)
        sent = self._pings.pop(pdu.initiator_task_tag, None)
        if sent is None:
            raise TargetProtocolError(
                f"NOP-In for task tag 0x{pdu.initiator_task_tag:08x}, which is no ping of ours"
            )
        self.stats.last_nop_rtt = now - sent
        events.append(PingCompleted(pdu.initiator_task_tag, bytes(pdu.data), now - sent))

    # -- task management, text, async, reject, logout

    def _handle_task_management_response(
        self, pdu: TaskManagementResponsePdu, events: list[Event]
    ) -> None:
        request = self._task_management.pop(pdu.initiator_task_tag, None)
        if request is None:
            raise TargetProtocolError(
                f"Task Management Response for unknown tag 0x{pdu.initiator_task_tag:08x}"
            )
        function = request.function
        self._end_aborted_unsent(request, events)
        done = pdu.response in (
            TaskManagementResponse.FUNCTION_COMPLETE,
            TaskManagementResponse.TASK_DOES_NOT_EXIST,
        )
        if done:
            # The affected tasks will get no response of their own (RFC 7143 section 4.2.3.3).
            if function is TaskManagementFunction.ABORT_TASK:
                victims = [request.referenced_task_tag]
            elif function in (
                TaskManagementFunction.LOGICAL_UNIT_RESET,
                TaskManagementFunction.ABORT_TASK_SET,
                TaskManagementFunction.CLEAR_TASK_SET,
            ):
                victims = [t for t, task in self._tasks.items() if task.lun == request.lun]
            elif function in (
                TaskManagementFunction.TARGET_WARM_RESET,
                TaskManagementFunction.TARGET_COLD_RESET,
            ):
                victims = list(self._tasks)
            else:
                victims = []
            for itt in victims:
                task = self._tasks.pop(itt, None)
                if task is None:
                    continue
                if task in self._waiting:
                    self._waiting.remove(task)
                events.append(CommandFailed(itt, TaskAborted(f"aborted by {function.name}")))
        events.append(
            TaskManagementCompleted(
                pdu.initiator_task_tag, function, pdu.response, request.referenced_task_tag
            )
        )

    def _end_aborted_unsent(self, request: TaskManagementRequest, events: list[Event]) -> None:
        """The ABORT TASK of a command that never went out got its answer (or a Reject):
        the command is over whatever the target said, since the target never saw it."""
        if request.referenced_task_tag in self._aborted_unsent:
            self._aborted_unsent.discard(request.referenced_task_tag)
            aborted = TaskAborted(f"aborted by {request.function.name}")
            events.append(CommandFailed(request.referenced_task_tag, aborted))

    def _handle_text_response(self, pdu: TextResponse, events: list[Event]) -> None:
        exchange = self._text
        if exchange is None or pdu.initiator_task_tag != exchange.initiator_task_tag:
            raise TargetProtocolError(
                f"Text Response for unknown tag 0x{pdu.initiator_task_tag:08x}"
            )
        if pdu.final and pdu.continue_:
            raise TargetProtocolError("Text Response has both the F and the C bit set (11.11.2)")
        if exchange.unsent:
            # Our text is not all sent: the target acknowledges each part empty (11.10.2).
            if len(pdu.data) or pdu.final:
                raise TargetProtocolError("target answered before our continued text ended")
            self._send_text_part(exchange, pdu.target_transfer_tag)
            return
        pairs = exchange.assembler.add(pdu.data, more=pdu.continue_ or not pdu.final)
        if pdu.final:
            self._text = None
            events.append(TextExchangeCompleted(exchange.initiator_task_tag, pairs or []))
            return
        # More to come: ask for it with an empty Text Request carrying the TTT (11.10.4).
        self._send_text_part(exchange, pdu.target_transfer_tag)

    def _handle_async_message(self, pdu: AsyncMessage, events: list[Event]) -> None:
        sense = b""
        if len(pdu.data) >= 2:
            (length,) = struct.unpack_from(">H", pdu.data)
            sense = bytes(memoryview(pdu.data)[2 : 2 + length])
        if pdu.async_event == AsyncEvent.TASK_TERMINATION:
            # RFC 7143 section 11.9.1 event 5: stop Data-Out to that LU, then acknowledge
            # the StatSN with a NOP-Out that asks for no answer.
            for task in self._tasks.values():
                if task.lun == pdu.lun:
                    task.data_out_stopped = True
            self._send(NopOut(lun=pdu.lun, cmd_sn=self.cmd_sn, exp_stat_sn=self.exp_stat_sn))
        events.append(
            AsyncMessageReceived(
                async_event=pdu.async_event,
                lun=pdu.lun,
                sense=sense,
                parameter1=pdu.parameter1,
                parameter2=pdu.parameter2,
                parameter3=pdu.parameter3,
                async_vcode=pdu.async_vcode,
            )
        )

    def _handle_reject(self, pdu: Reject, events: list[Event]) -> None:
        header = pdu.rejected_header
        opcode = itt = None
        if header is not None and len(header) == BHS_LENGTH:
            opcode = header[0] & 0x3F
            (itt,) = struct.unpack_from(">I", header, 16)
        events.append(RejectReceived(pdu.reason, opcode, itt))
        if itt is None:
            return
        try:
            description = _REJECT_TEXT[RejectReason(pdu.reason)]
        except (ValueError, KeyError):
            description = "unknown reason"
        error = CommandRejected(pdu.reason, description)
        if opcode == ScsiCommand.opcode:
            # Only a command the target received can be rejected: one still held back by
            # the CmdSN window (or aborted before it went out) was never sent, and failing
            # it here would not stop it going out later.
            self._task_for(itt, "Reject of a SCSI Command")
            del self._tasks[itt]
            events.append(CommandFailed(itt, error))
        elif opcode == TaskManagementRequest.opcode and itt in self._task_management:
            # The request is over: answer its waiter as a refused function, as the target
            # would with Response 255 (RFC 7143 section 11.6.1), so it moves on.
            request = self._task_management.pop(itt)
            self._end_aborted_unsent(request, events)
            events.append(
                TaskManagementCompleted(
                    itt,
                    request.function,
                    TaskManagementResponse.FUNCTION_REJECTED,
                    request.referenced_task_tag,
                )
            )
        elif itt in self._pings:
            del self._pings[itt]
            events.append(CommandFailed(itt, error))
        elif self._text is not None and itt == self._text.initiator_task_tag:
            self._text = None
            events.append(CommandFailed(itt, error))

    def _handle_logout_response(self, pdu: LogoutResponse, events: list[Event]) -> None:
        if self.state is not ConnectionState.LOGGING_OUT or (
            pdu.initiator_task_tag != self._logout_itt
        ):
            raise TargetProtocolError("Logout Response without a Logout Request")
        self._move(_Input.LOGOUT_COMPLETED)
        for itt in list(self._tasks):
            events.append(CommandFailed(itt, TaskAborted("the session was logged out")))
        self._tasks.clear()
        self._waiting.clear()
        events.append(LogoutCompleted(pdu.response, pdu.time2wait, pdu.time2retain))


__all__ = ["Connection", "ConnectionState", "LogoutReason"]
