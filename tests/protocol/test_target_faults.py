"""What the core does when a target gets the data transfer wrong (RFC 7143 sections 11.4,
11.7, 11.8, 11.17, 13.17, 13.19): it fails the connection with :class:`TargetProtocolError`
rather than send a write twice, report a read whose bytes never came, or leave a request
unanswered.

The target is scripted (tests/protocol/scripted_target.py) on purpose: tgtd, the real target
of the integration tests, never sends a repeated R2T, a GOOD status after a short read, or a
Reject quoting a command it never received, so these faults can only be played by hand.
"""

from __future__ import annotations

from typing import Any

import pytest
from pyiscsid.protocol.connection import Connection, ConnectionState
from pyiscsid.protocol.errors import CommandRejected, TargetProtocolError, TaskAborted
from pyiscsid.protocol.events import (
    CommandCompleted,
    CommandFailed,
    PingCompleted,
    RejectReceived,
    TaskManagementCompleted,
)
from pyiscsid.protocol.pdu import (
    DataOut,
    NopIn,
    NopOut,
    Opcode,
    Reject,
    RejectReason,
    ScsiCommand,
    TaskManagementFunction,
    TaskManagementRequest,
    TaskManagementResponse,
    TaskManagementResponsePdu,
)

from tests.protocol.scripted_target import (
    CHECK_CONDITION,
    GOOD,
    ScriptedTarget,
    logged_in,
    make_config,
)

READ_10 = bytes.fromhex("28000000000000000800")
WRITE_10 = bytes.fromhex("2a000000000000000800")
TEST_UNIT_READY = bytes(6)
SENSE = bytes.fromhex("70000500000000180000000024000000000000")  # ILLEGAL REQUEST


def pattern(n: int) -> bytearray:
    return bytearray((i * 13 + 5) & 0xFF for i in range(n))


def solicited_session(
    *, operational: dict[str, str] | None = None, **chosen: str
) -> tuple[Connection, ScriptedTarget]:
    """No immediate or unsolicited data: every byte of a write waits for an R2T.
    MaxRecvDataSegmentLength 4 KiB, MaxBurstLength 32 KiB unless ``chosen`` says otherwise."""
    chosen = {"InitialR2T": "Yes", "ImmediateData": "No", "MaxBurstLength": "32768", **chosen}
    config = make_config(operational=operational or {})
    declarations = {"TargetPortalGroupTag": "1", "MaxRecvDataSegmentLength": "4096"}
    return logged_in(config, declarations=declarations, chosen=chosen)


def data_out_bytes(target: ScriptedTarget) -> int:
    return sum(len(pdu.data) for pdu in target.receive_all(DataOut))


def assert_failed(conn: Connection, target: ScriptedTarget) -> None:
    """The connection is over and sends nothing more, not even what it had queued."""
    assert conn.state is ConnectionState.FAILED
    assert target.receive() == []


# --- 1. a Reject quoting a command the target never received -----------------------------------


def test_reject_of_a_command_still_held_by_the_window_is_a_protocol_error() -> None:
    """The held command was never sent: a Reject cannot be about it. Failing it while it
    stays queued would report a write as failed and then send it once the window opens."""
    conn, target = logged_in(window=1)
    conn.send_command(READ_10, read_length=512)
    held = conn.send_command(WRITE_10, data_out=pattern(512))
    target.receive_one(ScsiCommand)
    assert conn.waiting == 1
    quoted = ScsiCommand(initiator_task_tag=held, cdb=WRITE_10, write=True)
    reject = target.make(Reject, reason=RejectReason.PROTOCOL_ERROR, data=target.bhs_of(quoted))
    target.open_window(1)  # the same PDU opens the window: the held command must stay put
    with pytest.raises(TargetProtocolError, match=f"0x{held:08x}, a command not sent yet"):
        target.send(reject)
    assert_failed(conn, target)


def test_reject_of_a_command_aborted_before_it_went_out_is_a_protocol_error() -> None:
    conn, target = logged_in(window=1)
    conn.send_command(READ_10, read_length=512)
    held = conn.send_command(READ_10, read_length=512)
    target.receive_one(ScsiCommand)
    conn.task_management(TaskManagementFunction.ABORT_TASK, referenced_task_tag=held)
    target.receive_one(TaskManagementRequest)
    quoted = ScsiCommand(initiator_task_tag=held, cdb=READ_10, read=True)
    reject = target.make(
        Reject, reason=RejectReason.COMMAND_NOT_SUPPORTED, data=target.bhs_of(quoted)
    )
    with pytest.raises(TargetProtocolError, match="unknown task tag"):
        target.send(reject)
    assert conn.state is ConnectionState.FAILED


# --- 2. R2T: sequence numbers, ranges, MaxOutstandingR2T (RFC 7143 11.8, 13.17, 13.19) --------


def test_a_repeated_r2t_is_answered_once_then_fails_the_connection() -> None:
    """The same 48-byte R2T again and again must not queue a full burst each time."""
    conn, target = solicited_session()
    itt = conn.send_command(WRITE_10, data_out=pattern(32768))
    target.receive_one(ScsiCommand)
    r2t = target.r2t(itt, 0, 32768, ttt=0x10, r2t_sn=0)
    assert target.send(r2t) == []
    assert data_out_bytes(target) == 32768
    with pytest.raises(TargetProtocolError, match="R2TSN 0, expected 1"):
        target.send(r2t)
    assert_failed(conn, target)


@pytest.mark.parametrize(
    ("r2ts", "message"),
    [
        ([(0, 8192, 1)], "R2TSN 1, expected 0"),
        ([(0, 8192, 0), (8192, 8192, 7)], "R2TSN 7, expected 1"),
        ([(0, 8192, 0), (8192, 8192, 1), (16384, 8192, 1)], "R2TSN 1, expected 2"),
        ([(0, 8192, 0), (4096, 8192, 1)], r"bytes 4096\.\.12288, already sent"),
        ([(0, 8192, 0), (0, 8192, 1)], r"bytes 0\.\.8192, already sent"),
        ([(0, 8192, 0), (16384, 8192, 1)], "offset 16384, the data sent so far ends at 8192"),
        ([(8192, 8192, 0)], "offset 8192, the data sent so far ends at 0"),
    ],
    ids=["first-not-zero", "skips-ahead", "goes-back", "overlaps", "same-range-new-sn", "gap",
         "does-not-start-at-zero"],
)  # fmt: skip
def test_r2t_out_of_sequence_or_for_data_already_sent_is_a_protocol_error(
    r2ts: list[tuple[int, int, int]], message: str
) -> None:
    conn, target = solicited_session()
    itt = conn.send_command(WRITE_10, data_out=pattern(65536))
    target.receive_one(ScsiCommand)
    *good, (offset, length, r2t_sn) = r2ts
    for n, (good_offset, good_length, good_sn) in enumerate(good):
        target.send(target.r2t(itt, good_offset, good_length, ttt=0x20 + n, r2t_sn=good_sn))
        assert data_out_bytes(target) == good_length
    with pytest.raises(TargetProtocolError, match=message):
        target.send(target.r2t(itt, offset, length, ttt=0x30, r2t_sn=r2t_sn))
    assert_failed(conn, target)


@pytest.mark.parametrize(
    ("chosen", "offset"),
    [({}, 0), ({"ImmediateData": "Yes"}, 2048), ({"InitialR2T": "No"}, 6000)],
    ids=["immediate-and-unsolicited", "immediate", "unsolicited"],
)
def test_r2t_for_data_that_went_unsolicited_is_a_protocol_error(
    chosen: dict[str, str], offset: int
) -> None:
    """Immediate and unsolicited data count as sent (RFC 7143 section 4.2.5)."""
    chosen = {"ImmediateData": "Yes", "InitialR2T": "No", "FirstBurstLength": "8192", **chosen}
    conn, target = solicited_session(**chosen)
    itt = conn.send_command(WRITE_10, data_out=pattern(20000))
    target.receive()
    with pytest.raises(TargetProtocolError, match="already sent or asked for"):
        target.send(target.r2t(itt, offset, 4096))
    assert_failed(conn, target)


def test_the_first_r2t_starts_where_the_unsolicited_data_ended() -> None:
    conn, target = solicited_session(ImmediateData="Yes", FirstBurstLength="8192")
    data = pattern(20000)
    itt = conn.send_command(WRITE_10, data_out=data)
    command = target.receive_one(ScsiCommand)
    assert len(command.data) == 4096  # immediate data, the rest waits (InitialR2T=Yes)
    target.send(target.r2t(itt, 4096, 15904))
    assert data_out_bytes(target) == 15904
    (done,) = target.send(target.scsi_response(itt))
    assert isinstance(done, CommandCompleted) and done.status == GOOD


def test_more_r2ts_than_max_outstanding_r2t_before_the_data_went_out() -> None:
    """With MaxOutstandingR2T=1, a second R2T in the same bytes as the first was sent before
    the target could have had the first one's Data-Out (RFC 7143 section 13.17)."""
    conn, target = solicited_session()
    assert conn.parameters is not None and conn.parameters.max_outstanding_r2t == 1
    itt = conn.send_command(WRITE_10, data_out=pattern(16384))
    target.receive_one(ScsiCommand)
    with pytest.raises(TargetProtocolError, match="makes 2 outstanding, MaxOutstandingR2T is 1"):
        target.send(target.r2t(itt, 0, 8192, ttt=1), target.r2t(itt, 8192, 8192, ttt=2, r2t_sn=1))
    assert_failed(conn, target)


def test_r2ts_up_to_max_outstanding_r2t_are_answered_together() -> None:
    conn, target = solicited_session(operational={"MaxOutstandingR2T": "4"}, MaxOutstandingR2T="2")
    assert conn.parameters is not None and conn.parameters.max_outstanding_r2t == 2
    data = pattern(8192 * 5)
    itt = conn.send_command(WRITE_10, data_out=data)
    target.receive_one(ScsiCommand)
    r2ts = [target.r2t(itt, n * 8192, 8192, ttt=n, r2t_sn=n) for n in range(5)]
    target.send(r2ts[0], r2ts[1])
    assert data_out_bytes(target) == 16384
    target.send(r2ts[2], r2ts[3])  # the first two bursts went out: two more may be asked for
    assert data_out_bytes(target) == 16384
    target.send(r2ts[4])
    assert data_out_bytes(target) == 8192
    (done,) = target.send(target.scsi_response(itt))
    assert isinstance(done, CommandCompleted)


def test_r2ts_out_of_offset_order_when_data_sequence_in_order_is_no() -> None:
    """RFC 7143 section 13.19: sequences may come in any order, but never twice."""
    conn, target = solicited_session(
        operational={"DataSequenceInOrder": "No"}, DataSequenceInOrder="No"
    )
    assert conn.parameters is not None and not conn.parameters.data_sequence_in_order
    data = pattern(24576)
    itt = conn.send_command(WRITE_10, data_out=data)
    target.receive_one(ScsiCommand)
    got = bytearray(len(data))
    for n, offset in enumerate((16384, 0, 8192)):
        target.send(target.r2t(itt, offset, 8192, ttt=n, r2t_sn=n))
        for pdu in target.receive_all(DataOut):
            got[pdu.buffer_offset : pdu.buffer_offset + len(pdu.data)] = pdu.data
    assert got == data
    with pytest.raises(TargetProtocolError, match=r"bytes 4096\.\.12288, already sent"):
        target.send(target.r2t(itt, 4096, 8192, ttt=3, r2t_sn=3))


def test_a_repeated_r2t_is_recovery_at_error_recovery_level_1() -> None:
    """Only ErrorRecoveryLevel 1 and above let a target ask for data again (RFC 7143 7.1.4.1)."""
    conn, target = solicited_session(
        operational={"ErrorRecoveryLevel": "1"}, ErrorRecoveryLevel="1"
    )
    assert conn.parameters is not None and conn.parameters.error_recovery_level == 1
    itt = conn.send_command(WRITE_10, data_out=pattern(16384))
    target.receive_one(ScsiCommand)
    r2t = target.r2t(itt, 0, 8192, ttt=1, r2t_sn=0)
    target.send(r2t)
    assert data_out_bytes(target) == 8192
    target.send(r2t)  # the same R2T again: its data goes again
    assert data_out_bytes(target) == 8192
    with pytest.raises(TargetProtocolError, match="R2TSN 5, expected 1"):
        target.send(target.r2t(itt, 8192, 8192, ttt=2, r2t_sn=5))


def test_good_status_before_the_write_data_was_asked_for_is_a_protocol_error() -> None:
    conn, target = solicited_session()
    itt = conn.send_command(WRITE_10, data_out=pattern(16384))
    target.receive_one(ScsiCommand)
    target.send(target.r2t(itt, 0, 8192))
    target.receive()
    with pytest.raises(TargetProtocolError, match="after 8192 bytes of write data"):
        target.send(target.scsi_response(itt))
    assert conn.state is ConnectionState.FAILED


def test_write_that_ends_early_with_a_residual_or_an_error_status() -> None:
    conn, target = solicited_session()
    short = conn.send_command(WRITE_10, data_out=pattern(16384))
    failed = conn.send_command(WRITE_10, data_out=pattern(16384))
    target.receive()
    target.send(target.r2t(short, 0, 8192))
    target.receive()
    done, error = target.send(
        target.scsi_response(short, residual_underflow=True, residual_count=8192),
        target.scsi_response(failed, CHECK_CONDITION, sense=SENSE),
    )
    assert isinstance(done, CommandCompleted) and done.residual_count == 8192
    assert isinstance(error, CommandCompleted) and error.status == CHECK_CONDITION


# --- 3. a GOOD status must account for every byte of a read (RFC 7143 11.4.5, 11.7.5) ----------


@pytest.mark.parametrize("status_in", ["data-in", "scsi-response"])
def test_a_residual_that_disowns_bytes_sent_trims_them(status_in: str) -> None:
    """All 1024 bytes arrived, yet the residual says only 96 were meant: nothing is missing,
    so the command completes with the 96 bytes (as Linux takes it), not a failed connection."""
    conn, target = logged_in()
    buffer = memoryview(bytearray(1024))
    itt = conn.send_command(READ_10, read_buffer=buffer)
    target.receive()
    fields: dict[str, Any] = {"residual_underflow": True, "residual_count": 928}
    if status_in == "data-in":
        events = target.send(target.data_in(itt, pattern(1024), status=GOOD, **fields))
    else:
        events = target.send(
            target.data_in(itt, pattern(1024)), target.scsi_response(itt, GOOD, **fields)
        )
    (done,) = [e for e in events if isinstance(e, CommandCompleted)]
    assert bytes(done.data) == pattern(1024)[:96]
    assert conn.state is ConnectionState.FULL_FEATURE


@pytest.mark.parametrize(
    ("received", "status_fields", "message"),
    [
        (1024, {}, "after 1024 bytes of Data-In, expected 4096"),
        (0, {}, "after 0 bytes of Data-In, expected 4096"),
        (4000, {}, "after 4000 bytes of Data-In, expected 4096"),
        (1024, {"residual_underflow": True, "residual_count": 1000},
         "after 1024 bytes of Data-In, expected 3096"),
        (1024, {"residual_overflow": True, "residual_count": 3072},
         "after 1024 bytes of Data-In, expected 4096"),
    ],
    ids=["short", "nothing", "one-pdu-missing", "residual-too-small",
         "overflow-is-no-underflow"],
)  # fmt: skip
@pytest.mark.parametrize("status_in", ["data-in", "scsi-response"])
def test_good_status_after_a_short_read_is_a_protocol_error(
    received: int, status_fields: dict[str, Any], message: str, status_in: str
) -> None:
    """The caller's buffer past the received bytes holds whatever it held before: handing it
    on as disk data would be silent corruption. The connection fails instead, and recovery
    issues the read again."""
    conn, target = logged_in()
    buffer = memoryview(bytearray(b"\xaa" * 4096))  # stale content
    itt = conn.send_command(READ_10, read_buffer=buffer)
    target.receive()
    pdus = []
    sent = 0
    for n, offset in enumerate(range(0, received, 1024)):
        size = min(1024, received - offset)
        pdus.append(target.data_in(itt, pattern(size), offset=offset, data_sn=n))
        sent += size
    if status_in == "data-in":
        if not pdus:
            pdus.append(target.data_in(itt, b""))
        last = pdus.pop()
        pdus.append(
            target.data_in(
                itt, last.data, offset=last.buffer_offset, data_sn=last.data_sn, status=GOOD,
                **status_fields,
            )
        )  # fmt: skip
    else:
        pdus.append(target.scsi_response(itt, GOOD, **status_fields))
    with pytest.raises(TargetProtocolError, match=message):
        target.send(*pdus)
    assert conn.state is ConnectionState.FAILED


@pytest.mark.parametrize("status_in", ["data-in", "scsi-response"])
def test_reads_that_legitimately_end_with_fewer_bytes(status_in: str) -> None:
    """Underflow with the residual that accounts for the rest, overflow with every byte,
    CHECK CONDITION with sense and no data, and a command that reads nothing."""
    conn, target = logged_in()
    short = conn.send_command(READ_10, read_length=4096)
    over = conn.send_command(READ_10, read_length=1024)
    checked = conn.send_command(READ_10, read_length=4096)
    nothing = conn.send_command(TEST_UNIT_READY)
    target.receive()

    def status(itt: int, data: bytes, **fields: Any) -> list[Any]:
        if status_in == "data-in" and data:
            return [target.data_in(itt, data, status=GOOD, **fields)]
        pdus = [target.data_in(itt, data, final=True)] if data else []
        return [*pdus, target.scsi_response(itt, GOOD, **fields)]

    events = target.send(
        *status(short, b"s" * 1000, residual_underflow=True, residual_count=3096),
        *status(over, b"o" * 1024, residual_overflow=True, residual_count=512),
        target.scsi_response(checked, CHECK_CONDITION, sense=SENSE),
        *status(nothing, b""),
    )
    assert [type(e) for e in events] == [CommandCompleted] * 4
    by_tag = {e.initiator_task_tag: e for e in events if isinstance(e, CommandCompleted)}
    assert bytes(by_tag[short].data) == b"s" * 1000
    assert bytes(by_tag[over].data) == b"o" * 1024 and by_tag[over].residual_overflow
    assert (by_tag[checked].status, len(by_tag[checked].data)) == (CHECK_CONDITION, 0)
    assert by_tag[checked].sense == SENSE
    assert (by_tag[nothing].status, len(by_tag[nothing].data)) == (GOOD, 0)
    assert conn.state is ConnectionState.FULL_FEATURE and conn.outstanding == 0


# --- 5. a Reject of a Task Management request or of a ping ends it -----------------------------


def test_rejected_task_management_request_is_answered_as_function_rejected() -> None:
    """The waiter gets the same event as for a TMF Response 255 (RFC 7143 section 11.6.1),
    and goes on to its next step; the task it was about is left alone."""
    conn, target = logged_in()
    victim = conn.send_command(READ_10, read_length=512)
    target.receive()
    itt = conn.task_management(TaskManagementFunction.ABORT_TASK, referenced_task_tag=victim)
    request = target.receive_one(TaskManagementRequest)
    reject = target.make(Reject, reason=RejectReason.INVALID_PDU_FIELD, data=target.bhs_of(request))
    rejected, answered = target.send(reject)
    assert rejected == RejectReceived(
        RejectReason.INVALID_PDU_FIELD, Opcode.TASK_MANAGEMENT_REQUEST, itt
    )
    assert answered == TaskManagementCompleted(
        itt,
        TaskManagementFunction.ABORT_TASK,
        TaskManagementResponse.FUNCTION_REJECTED,
        victim,
    )
    assert conn.outstanding == 1 and conn.state is ConnectionState.FULL_FEATURE
    (done,) = target.send(target.data_in(victim, bytes(512), status=GOOD))
    assert isinstance(done, CommandCompleted)
    # The request is over: a response for it now is one for no request.
    with pytest.raises(TargetProtocolError, match="Task Management Response for unknown tag"):
        target.send(target.make(TaskManagementResponsePdu, initiator_task_tag=itt))


def test_rejected_abort_of_a_command_that_never_went_out_still_ends_that_command() -> None:
    conn, target = logged_in(window=1)
    conn.send_command(READ_10, read_length=512)
    held = conn.send_command(READ_10, read_length=512)
    target.receive_one(ScsiCommand)
    itt = conn.task_management(TaskManagementFunction.ABORT_TASK, referenced_task_tag=held)
    request = target.receive_one(TaskManagementRequest)
    reject = target.make(
        Reject, reason=RejectReason.IMMEDIATE_COMMAND_REJECT, data=target.bhs_of(request)
    )
    _, aborted, answered = target.send(reject)
    assert isinstance(aborted, CommandFailed) and aborted.initiator_task_tag == held
    assert isinstance(aborted.error, TaskAborted)
    assert isinstance(answered, TaskManagementCompleted) and answered.initiator_task_tag == itt
    target.open_window(4)
    target.send(target.make(NopIn))
    assert target.receive() == []  # the aborted command never goes out


def test_rejected_ping_fails_its_waiter() -> None:
    conn, target = logged_in()
    itt = conn.ping(b"are you there", now=0.0)
    ping = target.receive_one(NopOut)
    reject = target.make(Reject, reason=RejectReason.PROTOCOL_ERROR, data=target.bhs_of(ping))
    _, failed = target.send(reject)
    assert isinstance(failed, CommandFailed) and failed.initiator_task_tag == itt
    assert isinstance(failed.error, CommandRejected)
    later = conn.ping(now=1.0)
    target.receive_one(NopOut)
    (pong,) = target.send(target.make(NopIn, initiator_task_tag=later), now=1.5)
    assert isinstance(pong, PingCompleted)
