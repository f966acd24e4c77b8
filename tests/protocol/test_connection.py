"""The full-feature phase of :class:`Connection` (RFC 7143 sections 4.2, 11.3-11.19) against
a target scripted PDU by PDU, on a virtual clock: every ``now`` is passed in, nothing sleeps.

The last part is an h2-style sweep: in each reachable state, any PDU or bytes from the
target either give events or raise :class:`TargetProtocolError`, never anything else.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyiscsid.protocol.chap import ChapCredentials
from pyiscsid.protocol.connection import Connection, ConnectionState
from pyiscsid.protocol.errors import (
    CommandRejected,
    InitiatorProtocolError,
    TargetFailure,
    TargetProtocolError,
    TaskAborted,
)
from pyiscsid.protocol.events import (
    AsyncMessageReceived,
    CommandCompleted,
    CommandFailed,
    Event,
    LogoutCompleted,
    PingCompleted,
    PingTimedOut,
    RejectReceived,
    TargetPinged,
    TaskManagementCompleted,
    TextExchangeCompleted,
)
from pyiscsid.protocol.pdu import (
    R2T,
    RESERVED_TAG,
    AsyncEvent,
    AsyncMessage,
    DataIn,
    DataOut,
    LoginRequest,
    LoginResponse,
    LoginStage,
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
    TaskManagementFunction,
    TaskManagementRequest,
    TaskManagementResponse,
    TaskManagementResponsePdu,
    TextRequest,
    TextResponse,
)
from pyiscsid.protocol.serial import sn_add, sn_le
from pyiscsid.protocol.text import encode_text

from tests.protocol.scripted_target import (
    CHECK_CONDITION,
    GOOD,
    INITIATOR_NAME,
    ScriptedTarget,
    connect,
    logged_in,
    make_config,
)

READ_10 = bytes.fromhex("28000000000000000800")
WRITE_10 = bytes.fromhex("2a000000000000000800")
LUN1 = 0x0001_0000_0000_0000
LUN2 = 0x0002_0000_0000_0000
SENSE = bytes.fromhex("70000600000000180000000029000000000000")  # UNIT ATTENTION, ASC 0x29


def pattern(n: int) -> bytearray:
    return bytearray((i * 7 + i // 256) & 0xFF for i in range(n))


def write_session(
    mrdsl: int = 4096, *, window: int = 16, **chosen: Any
) -> tuple[Connection, ScriptedTarget]:
    """Logged in with the target's MaxRecvDataSegmentLength ``mrdsl``, FirstBurstLength 16 KiB
    and MaxBurstLength 32 KiB unless ``chosen`` (the target's answers) says otherwise."""
    chosen.setdefault("FirstBurstLength", "16384")
    chosen.setdefault("MaxBurstLength", "32768")
    declarations = {"TargetPortalGroupTag": "1", "MaxRecvDataSegmentLength": str(mrdsl)}
    return logged_in(declarations=declarations, window=window, chosen=chosen)


def joined(pdus: list[DataOut]) -> tuple[int, bytes]:
    """(first offset, payload) of consecutive Data-Outs, checking they are contiguous."""
    offset = pdus[0].buffer_offset
    out = bytearray()
    for pdu in pdus:
        assert pdu.buffer_offset == offset + len(out)
        out += pdu.data
    return offset, bytes(out)


def check_sequence(pdus: list[DataOut], *, itt: int, ttt: int, max_segment: int) -> None:
    """RFC 7143 section 11.7: DataSN from 0, F on the last only, segments within the limit."""
    assert [p.data_sn for p in pdus] == list(range(len(pdus)))
    assert [p.final for p in pdus] == [False] * (len(pdus) - 1) + [True]
    assert all(p.initiator_task_tag == itt and p.target_transfer_tag == ttt for p in pdus)
    assert all(0 < len(p.data) <= max_segment for p in pdus)


# --- the CmdSN window (RFC 7143 section 4.2.2.1) ------------------------------------------------


@pytest.mark.parametrize("initial_cmd_sn", [1, 0xFFFFFFFE], ids=["plain", "wrapping"])
def test_window_of_two_releases_waiting_commands_in_order(initial_cmd_sn: int) -> None:
    conn, target = logged_in(make_config(initial_cmd_sn=initial_cmd_sn), window=2)
    itts = [conn.send_command(READ_10, read_length=512) for _ in range(10)]

    sent = target.receive_all(ScsiCommand)
    assert [c.initiator_task_tag for c in sent] == itts[:2]
    assert (conn.waiting, conn.outstanding, conn.window_open) == (8, 10, False)

    for done in range(10):
        command = sent[done]
        target.open_window()  # the command completes: its queue slot is free again
        (event,) = target.send(target.data_in(command.initiator_task_tag, bytes(512), status=GOOD))
        assert isinstance(event, CommandCompleted)
        released = target.receive_all(ScsiCommand)
        assert len(released) == (1 if done < 8 else 0)
        for pdu in released:
            assert pdu.exp_stat_sn == target.stat_sn  # the response is acknowledged
        sent += released

    assert [c.initiator_task_tag for c in sent] == itts
    assert [c.cmd_sn for c in sent] == [sn_add(initial_cmd_sn, i) for i in range(10)]
    # ScriptedTarget checked each CmdSN against the MaxCmdSN it had advertised.
    assert (conn.outstanding, conn.waiting) == (0, 0)


def test_commands_go_out_at_once_while_the_window_is_open() -> None:
    conn, target = logged_in(window=4)
    itts = [conn.send_command(READ_10, read_length=512) for _ in range(4)]
    assert [c.initiator_task_tag for c in target.receive_all(ScsiCommand)] == itts
    assert not conn.window_open
    conn.send_command(READ_10, read_length=512)
    assert target.receive() == []
    assert conn.waiting == 1


def test_max_cmd_sn_below_exp_cmd_sn_minus_one_is_ignored() -> None:
    conn, target = logged_in(window=2)
    before = conn.max_cmd_sn
    bogus = sn_add(conn.exp_cmd_sn, 0xFFFFFFFE)  # ExpCmdSN - 2
    # A NOP-In that is the target's own (no ping, no answer wanted) still carries the window.
    target.send(target.make(NopIn, max_cmd_sn=bogus))
    assert conn.max_cmd_sn == before
    for _ in range(3):
        conn.send_command(READ_10, read_length=512)
    assert len(target.receive()) == 2


def test_max_cmd_sn_never_goes_back() -> None:
    conn, target = logged_in(window=4)
    before = conn.max_cmd_sn
    target.send(target.make(NopIn, max_cmd_sn=sn_add(before, 0xFFFFFFFF)))  # valid, but lower
    assert conn.max_cmd_sn == before
    target.send(target.make(NopIn, max_cmd_sn=sn_add(before, 3)))
    assert conn.max_cmd_sn == sn_add(before, 3)


def test_zero_window_holds_everything() -> None:
    conn, target = logged_in(window=0)  # MaxCmdSN = ExpCmdSN - 1
    assert not conn.window_open
    itts = [conn.send_command(READ_10, read_length=512) for _ in range(3)]
    assert target.receive() == []
    assert conn.waiting == 3
    # Immediate PDUs do not wait for the window.
    conn.ping(now=1.0)
    assert isinstance(target.receive_one(NopOut), NopOut)

    target.open_window(3)
    target.send(target.make(NopIn))
    assert [c.initiator_task_tag for c in target.receive_all(ScsiCommand)] == itts


def test_stat_sn_is_acknowledged_in_exp_stat_sn() -> None:
    conn, target = logged_in()
    first = conn.send_command(READ_10, read_length=4)
    target.receive_one(ScsiCommand)
    target.send(target.data_in(first, b"abcd", status=GOOD))
    assert conn.exp_stat_sn == target.stat_sn
    conn.send_command(READ_10, read_length=4)
    assert target.receive_one(ScsiCommand).exp_stat_sn == target.stat_sn


# --- writes: immediate, unsolicited and solicited data (RFC 7143 sections 4.2.5, 11.7, 11.8) ---


@pytest.mark.parametrize(
    ("chosen", "mrdsl", "length", "immediate", "unsolicited"),
    [
        ({}, 4096, 65536, 4096, 12288),
        ({"InitialR2T": "Yes"}, 4096, 65536, 4096, 0),
        ({"ImmediateData": "No"}, 4096, 65536, 0, 16384),
        ({"ImmediateData": "No", "InitialR2T": "Yes"}, 4096, 65536, 0, 0),
        ({"FirstBurstLength": "8192"}, 65536, 65536, 8192, 0),
        ({}, 65536, 1000, 1000, 0),
        ({}, 4096, 10000, 4096, 5904),
    ],
    ids=[
        "immediate+unsolicited",
        "immediate-only",
        "unsolicited-only",
        "none",
        "first-burst-below-mrdsl",
        "small-write",
        "write-below-first-burst",
    ],
)
def test_unsolicited_data(
    chosen: dict[str, Any], mrdsl: int, length: int, immediate: int, unsolicited: int
) -> None:
    conn, target = write_session(mrdsl, **chosen)
    data = pattern(length)
    itt = conn.send_command(WRITE_10, lun=LUN1, data_out=data)
    command, *rest = target.receive()
    data_outs = [pdu for pdu in rest if isinstance(pdu, DataOut)]
    assert data_outs == rest

    assert isinstance(command, ScsiCommand)
    assert (command.write, command.read) == (True, False)
    assert command.expected_data_transfer_length == length
    assert bytes(command.data) == data[:immediate]
    assert command.final == (unsolicited == 0)
    if unsolicited:
        check_sequence(data_outs, itt=itt, ttt=RESERVED_TAG, max_segment=mrdsl)
        expected = bytes(data[immediate : immediate + unsolicited])
        assert joined(data_outs) == (immediate, expected)
        assert all(p.lun == LUN1 for p in data_outs)
    else:
        assert data_outs == []


def test_r2t_solicits_data_out_split_at_the_targets_max_recv_data_segment_length() -> None:
    conn, target = write_session(4096, InitialR2T="Yes", ImmediateData="No")
    data = pattern(20000)
    itt = conn.send_command(WRITE_10, lun=LUN1, data_out=data)
    assert target.receive_one(ScsiCommand).final

    assert target.send(target.r2t(itt, 0, 10000, ttt=0x11)) == []
    first = target.receive_all(DataOut)
    check_sequence(first, itt=itt, ttt=0x11, max_segment=4096)
    assert [len(p.data) for p in first] == [4096, 4096, 1808]
    assert joined(first) == (0, bytes(data[:10000]))
    assert all(p.lun == LUN1 and p.exp_stat_sn == conn.exp_stat_sn for p in first)

    target.send(target.r2t(itt, 10000, 10000, ttt=0x12, r2t_sn=1))
    second = target.receive_all(DataOut)
    check_sequence(second, itt=itt, ttt=0x12, max_segment=4096)  # DataSN starts again at 0
    assert joined(second) == (10000, bytes(data[10000:]))

    (event,) = target.send(target.scsi_response(itt))
    assert isinstance(event, CommandCompleted)
    assert (event.status, len(event.data)) == (GOOD, 0)


def test_full_write_reassembles_to_the_callers_data() -> None:
    conn, target = write_session(4096)  # 4 KiB immediate, 12 KiB unsolicited, then R2Ts
    data = pattern(65536)
    itt = conn.send_command(WRITE_10, data_out=data)
    command, *unsolicited = target.receive()
    got = bytearray(command.data)
    got += joined([pdu for pdu in unsolicited if isinstance(pdu, DataOut)])[1]
    for n, offset in enumerate(range(16384, 65536, 32768)):
        length = min(32768, 65536 - offset)
        target.send(target.r2t(itt, offset, length, ttt=0x100 + n, r2t_sn=n))
        got += joined(target.receive_all(DataOut))[1]
    assert got == data


@pytest.mark.parametrize("kind", [bytearray, bytes])
def test_data_out_payloads_are_views_of_the_callers_buffer(kind: type) -> None:
    conn, target = write_session(4096)
    data = kind(pattern(65536))
    itt = conn.send_command(WRITE_10, data_out=data)
    target.receive()
    views = [b for b in target.last_buffers if len(b) > 48]
    assert views and all(isinstance(v, memoryview) and v.obj is data for v in views)

    target.send(target.r2t(itt, 16384, 32768))
    target.receive()
    views = [b for b in target.last_buffers if len(b) > 48]
    assert len(views) == 8
    assert all(isinstance(v, memoryview) and v.obj is data for v in views)


def _write_and_read(conn: Connection, target: ScriptedTarget) -> tuple[int, int]:
    write = conn.send_command(WRITE_10, data_out=pattern(65536))
    read = conn.send_command(READ_10, read_length=4096)
    target.receive()
    return write, read


@pytest.mark.parametrize(
    "bad_r2t",
    [
        lambda t, w, r: t.r2t(w, 49152, 32768),  # runs past the end of the data
        lambda t, w, r: t.r2t(w, 0, 40000),  # above MaxBurstLength (32768)
        lambda t, w, r: t.r2t(w, 100, 0),  # asks for nothing
        lambda t, w, r: t.r2t(r, 0, 4096),  # for a read
        lambda t, w, r: t.r2t(0x5EE, 0, 4096),  # for a task we do not have
    ],
    ids=["past-end", "above-max-burst", "empty", "read-task", "unknown-itt"],
)
def test_bad_r2t_is_a_protocol_error(bad_r2t: Callable[..., R2T]) -> None:
    conn, target = write_session(4096)
    write, read = _write_and_read(conn, target)
    with pytest.raises(TargetProtocolError):
        target.send(bad_r2t(target, write, read))
    assert conn.state is ConnectionState.FAILED
    assert target.receive() == []
    assert conn.receive_data(target.encode(target.r2t(write, 16384, 4096)), 1.0) == []


# --- reads (RFC 7143 sections 11.4, 11.7) -------------------------------------------------------


def test_read_with_status_in_the_last_data_in() -> None:
    conn, target = logged_in()
    itt = conn.send_command(READ_10, lun=LUN1, read_length=12288)
    command = target.receive_one(ScsiCommand)
    assert (command.read, command.write, command.final) == (True, False, True)
    assert command.expected_data_transfer_length == 12288
    data = pattern(12288)
    assert target.send(target.data_in(itt, data[:4096])) == []
    assert target.send(target.data_in(itt, data[4096:8192], offset=4096, data_sn=1)) == []
    last = target.data_in(itt, data[8192:], offset=8192, data_sn=2, status=GOOD)
    (event,) = target.send(last)
    assert isinstance(event, CommandCompleted)
    assert (event.initiator_task_tag, event.status, event.sense) == (itt, GOOD, b"")
    assert event.data == data
    assert conn.outstanding == 0


def test_read_then_scsi_response_with_sense() -> None:
    conn, target = logged_in()
    itt = conn.send_command(READ_10, read_length=512)
    target.receive()
    events = target.send(
        target.data_in(itt, b"\x55" * 512, final=True),
        target.scsi_response(itt, CHECK_CONDITION, sense=SENSE),
    )
    (event,) = events
    assert isinstance(event, CommandCompleted)
    assert (event.status, event.sense) == (CHECK_CONDITION, SENSE)
    assert event.data == b"\x55" * 512


def test_residual_underflow_shortens_the_data() -> None:
    conn, target = logged_in()
    itt = conn.send_command(READ_10, read_length=4096)
    target.receive()
    (event,) = target.send(
        target.data_in(itt, b"x" * 1024, status=GOOD, residual_underflow=True, residual_count=3072)
    )
    assert isinstance(event, CommandCompleted)
    assert event.data == b"x" * 1024
    assert (event.residual_underflow, event.residual_count) == (True, 3072)


def test_residual_underflow_in_the_scsi_response() -> None:
    conn, target = logged_in()
    itt = conn.send_command(READ_10, read_length=4096)
    target.receive()
    (event,) = target.send(
        target.data_in(itt, b"y" * 100, final=True),
        target.scsi_response(itt, residual_underflow=True, residual_count=3996),
    )
    assert isinstance(event, CommandCompleted)
    assert event.data == b"y" * 100


def test_read_into_a_caller_provided_buffer() -> None:
    conn, target = logged_in()
    buffer = bytearray(8192)
    itt = conn.send_command(READ_10, read_buffer=memoryview(buffer))
    assert target.receive_one(ScsiCommand).expected_data_transfer_length == 8192
    data = pattern(8192)
    (event,) = target.send(
        target.data_in(itt, data[:4096]),
        target.data_in(itt, data[4096:], offset=4096, data_sn=1, status=GOOD),
    )
    assert isinstance(event, CommandCompleted)
    assert buffer == data
    assert event.data.obj is buffer


def test_read_bytes_may_arrive_one_at_a_time() -> None:
    conn, target = logged_in()
    itt = conn.send_command(READ_10, read_length=10)
    target.receive()
    wire = target.encode(target.data_in(itt, b"0123456789", status=GOOD))
    events: list[Event] = []
    for i in range(len(wire)):
        events += conn.receive_data(wire[i : i + 1], 0.0)
    (event,) = events
    assert isinstance(event, CommandCompleted) and bytes(event.data) == b"0123456789"


@pytest.mark.parametrize(
    "bad_data_in",
    [
        lambda t, r, w: [t.data_in(r, b"a" * 512), t.data_in(r, b"b" * 512, data_sn=2)],
        lambda t, r, w: [t.data_in(r, b"a" * 512, data_sn=1)],
        lambda t, r, w: [t.data_in(r, b"a" * 200, offset=4000)],
        lambda t, r, w: [t.data_in(0x5EE, b"a" * 512)],
        lambda t, r, w: [t.data_in(w, b"a" * 512)],
        lambda t, r, w: [t.scsi_response(0x5EE)],
    ],
    ids=["data-sn-gap", "data-sn-not-zero", "past-the-buffer", "unknown-itt", "write-task",
         "response-unknown-itt"],
)  # fmt: skip
def test_bad_data_in_is_a_protocol_error(bad_data_in: Callable[..., list[Pdu]]) -> None:
    conn, target = write_session(4096)
    write, read = _write_and_read(conn, target)
    with pytest.raises(TargetProtocolError):
        target.send(*bad_data_in(target, read, write))
    assert conn.state is ConnectionState.FAILED
    assert conn.receive_data(target.encode(target.data_in(read, b"z", status=GOOD)), 1.0) == []


def test_target_failure_response() -> None:
    conn, target = logged_in()
    itt = conn.send_command(READ_10, read_length=512)
    target.receive()
    (event,) = target.send(target.scsi_response(itt, response=0x01))
    assert isinstance(event, CommandFailed)
    assert isinstance(event.error, TargetFailure)
    assert conn.state is ConnectionState.FULL_FEATURE


# --- NOP-Out / NOP-In (RFC 7143 sections 11.18, 11.19) -----------------------------------------


def test_ping_round_trip() -> None:
    conn, target = logged_in(now=100.0)
    itt = conn.ping(b"are you there", now=100.0)
    ping = target.receive_one(NopOut)
    assert (ping.initiator_task_tag, ping.target_transfer_tag) == (itt, RESERVED_TAG)
    assert ping.immediate and ping.cmd_sn == conn.cmd_sn  # immediate: CmdSN not taken
    assert bytes(ping.data) == b"are you there"

    pong = target.make(NopIn, initiator_task_tag=itt, data=bytes(ping.data))
    (event,) = target.send(pong, now=100.25)
    assert event == PingCompleted(itt, b"are you there", 0.25)
    assert conn.exp_stat_sn == target.stat_sn


def test_target_ping_is_answered() -> None:
    conn, target = logged_in()
    stat_sn = conn.exp_stat_sn
    nop = target.make(NopIn, target_transfer_tag=0x1234, lun=LUN2, data=b"ping")
    (event,) = target.send(nop)
    assert event == TargetPinged(0x1234)
    answer = target.receive_one(NopOut)
    assert (answer.initiator_task_tag, answer.target_transfer_tag) == (RESERVED_TAG, 0x1234)
    assert answer.lun == LUN2
    assert answer.immediate
    assert conn.exp_stat_sn == stat_sn  # a NOP-In with ITT 0xffffffff takes no StatSN


def test_target_nop_in_that_wants_no_answer_is_ignored() -> None:
    _, target = logged_in()
    assert target.send(target.make(NopIn)) == []
    assert target.receive() == []


def test_nop_in_for_no_ping_of_ours_is_a_protocol_error() -> None:
    conn, target = logged_in()
    with pytest.raises(TargetProtocolError):
        target.send(target.make(NopIn, initiator_task_tag=0x777))
    assert conn.state is ConnectionState.FAILED


def keepalive(now: float = 100.0) -> tuple[Connection, ScriptedTarget]:
    config = make_config(noop_out_interval=5.0, noop_out_timeout=5.0)
    return logged_in(config, now=now)


def test_keepalive_ping_and_timeout() -> None:
    conn, target = keepalive(now=100.0)
    assert conn.next_deadline() == 105.0
    assert conn.handle_timer(104.9) == []
    assert target.receive() == []

    assert conn.handle_timer(105.0) == []
    ping = target.receive_one(NopOut)
    assert ping.initiator_task_tag != RESERVED_TAG
    assert conn.next_deadline() == 110.0
    assert conn.handle_timer(109.9) == []

    (event,) = conn.handle_timer(110.0)
    assert event == PingTimedOut(ping.initiator_task_tag, 5.0)
    assert conn.state is ConnectionState.FAILED
    assert conn.next_deadline() is None
    assert conn.handle_timer(200.0) == []


def test_any_pdu_received_pushes_the_ping_timeout() -> None:
    conn, target = keepalive(now=100.0)
    conn.handle_timer(105.0)
    ping = target.receive_one(NopOut)
    target.send(target.make(AsyncMessage, async_event=AsyncEvent.SCSI_ASYNC_EVENT), now=108.0)
    assert conn.next_deadline() == 113.0
    assert conn.handle_timer(110.0) == []
    assert conn.state is ConnectionState.FULL_FEATURE
    (event,) = conn.handle_timer(113.0)
    assert event == PingTimedOut(ping.initiator_task_tag, 8.0)


def test_answered_keepalive_schedules_the_next() -> None:
    conn, target = keepalive(now=0.0)
    conn.handle_timer(5.0)
    ping = target.receive_one(NopOut)
    (event,) = target.send(target.make(NopIn, initiator_task_tag=ping.initiator_task_tag), now=6.0)
    assert event == PingCompleted(ping.initiator_task_tag, b"", 1.0)
    assert conn.next_deadline() == 11.0
    conn.handle_timer(11.0)
    assert target.receive_one(NopOut).initiator_task_tag != ping.initiator_task_tag


def test_no_keepalive_when_disabled() -> None:
    conn, _ = logged_in(make_config(noop_out_interval=0))
    assert conn.next_deadline() is None
    assert conn.handle_timer(1e9) == []


def test_no_timer_during_login() -> None:
    conn = connect(make_config(noop_out_interval=5.0))
    assert conn.next_deadline() is None


# --- Asynchronous Message (RFC 7143 section 11.9) ----------------------------------------------


@pytest.mark.parametrize("event_code", [0, 1, 2, 3, 4, 5, 255])
def test_async_message_is_surfaced_with_its_parameters(event_code: int) -> None:
    conn, target = logged_in()
    message = target.make(
        AsyncMessage,
        lun=LUN1,
        async_event=event_code,
        async_vcode=9,
        parameter1=1,
        parameter2=2,
        parameter3=3,
        data=len(SENSE).to_bytes(2, "big") + SENSE,
    )
    (event,) = target.send(message)
    assert event == AsyncMessageReceived(
        async_event=event_code,
        lun=LUN1,
        sense=SENSE,
        parameter1=1,
        parameter2=2,
        parameter3=3,
        async_vcode=9,
    )
    assert conn.exp_stat_sn == target.stat_sn


def test_async_event_5_stops_data_out_for_that_lun_and_is_acknowledged() -> None:
    conn, target = write_session(4096, InitialR2T="Yes", ImmediateData="No")
    on_lun1 = conn.send_command(WRITE_10, lun=LUN1, data_out=pattern(8192))
    on_lun2 = conn.send_command(WRITE_10, lun=LUN2, data_out=pattern(8192))
    target.receive()

    target.send(target.make(AsyncMessage, lun=LUN1, async_event=AsyncEvent.TASK_TERMINATION))
    ack = target.receive_one(NopOut)
    assert (ack.initiator_task_tag, ack.target_transfer_tag) == (RESERVED_TAG, RESERVED_TAG)
    assert ack.lun == LUN1  # RFC 7143 11.9.1: the NOP-Out copies the LUN
    assert ack.exp_stat_sn == target.stat_sn  # acknowledges the Async Message's StatSN

    target.send(target.r2t(on_lun1, 0, 8192))
    assert target.receive() == []
    target.send(target.r2t(on_lun2, 0, 8192))
    assert joined(target.receive_all(DataOut)) == (0, bytes(pattern(8192)))


# --- Reject (RFC 7143 section 11.17) ------------------------------------------------------------


def test_rejected_command_fails_its_task() -> None:
    conn, target = logged_in()
    itt = conn.send_command(READ_10, read_length=512)
    other = conn.send_command(READ_10, read_length=512)
    command, _ = target.receive()
    reject = target.make(
        Reject, reason=RejectReason.COMMAND_NOT_SUPPORTED, data=target.bhs_of(command)
    )
    rejected, failed = target.send(reject)
    assert rejected == RejectReceived(RejectReason.COMMAND_NOT_SUPPORTED, Opcode.SCSI_COMMAND, itt)
    assert isinstance(failed, CommandFailed) and failed.initiator_task_tag == itt
    assert isinstance(failed.error, CommandRejected)
    assert failed.error.reason == RejectReason.COMMAND_NOT_SUPPORTED
    assert conn.outstanding == 1
    assert conn.state is ConnectionState.FULL_FEATURE
    (done,) = target.send(target.data_in(other, bytes(512), status=GOOD))
    assert isinstance(done, CommandCompleted)


def test_reject_without_the_header_is_only_reported() -> None:
    conn, target = logged_in()
    conn.send_command(READ_10, read_length=512)
    target.receive()
    (event,) = target.send(target.make(Reject, reason=RejectReason.PROTOCOL_ERROR, data=b"\0" * 8))
    assert event == RejectReceived(RejectReason.PROTOCOL_ERROR, None, None)
    assert conn.outstanding == 1


# --- task management (RFC 7143 sections 11.5, 11.6) ---------------------------------------------


def test_abort_task() -> None:
    conn, target = logged_in()
    victim = conn.send_command(READ_10, lun=LUN1, read_length=512)
    survivor = conn.send_command(READ_10, lun=LUN1, read_length=512)
    victim_command, _ = target.receive_all(ScsiCommand)

    itt = conn.task_management(TaskManagementFunction.ABORT_TASK, referenced_task_tag=victim)
    request = target.receive_one(TaskManagementRequest)
    assert request.immediate
    assert (request.function, request.lun) == (TaskManagementFunction.ABORT_TASK, LUN1)
    assert (request.initiator_task_tag, request.referenced_task_tag) == (itt, victim)
    assert request.ref_cmd_sn == victim_command.cmd_sn

    response = target.make(
        TaskManagementResponsePdu,
        initiator_task_tag=itt,
        response=TaskManagementResponse.FUNCTION_COMPLETE,
    )
    failed, completed = target.send(response)
    assert isinstance(failed, CommandFailed) and failed.initiator_task_tag == victim
    assert isinstance(failed.error, TaskAborted)
    assert completed == TaskManagementCompleted(
        itt, TaskManagementFunction.ABORT_TASK, TaskManagementResponse.FUNCTION_COMPLETE, victim
    )
    assert conn.outstanding == 1
    (done,) = target.send(target.data_in(survivor, bytes(512), status=GOOD))
    assert isinstance(done, CommandCompleted)


def test_abort_of_a_command_still_waiting_for_the_window() -> None:
    conn, target = logged_in(window=1)
    conn.send_command(READ_10, read_length=512)
    waiting = conn.send_command(READ_10, read_length=512)
    target.receive_one(ScsiCommand)
    assert conn.waiting == 1

    itt = conn.task_management(TaskManagementFunction.ABORT_TASK, referenced_task_tag=waiting)
    assert conn.waiting == 0
    target.receive_one(TaskManagementRequest)
    response = target.make(
        TaskManagementResponsePdu,
        initiator_task_tag=itt,
        response=TaskManagementResponse.TASK_DOES_NOT_EXIST,
    )
    failed, completed = target.send(response)
    assert isinstance(failed, CommandFailed) and failed.initiator_task_tag == waiting
    assert isinstance(completed, TaskManagementCompleted)
    # The aborted command never goes out, even once the window opens.
    target.open_window(4)
    target.send(target.make(NopIn))
    assert target.receive() == []
    assert conn.outstanding == 1


def test_rejected_task_management_leaves_the_task_alone() -> None:
    conn, target = logged_in()
    victim = conn.send_command(READ_10, read_length=512)
    target.receive()
    itt = conn.task_management(TaskManagementFunction.ABORT_TASK, referenced_task_tag=victim)
    target.receive()
    response = target.make(
        TaskManagementResponsePdu,
        initiator_task_tag=itt,
        response=TaskManagementResponse.FUNCTION_REJECTED,
    )
    (event,) = target.send(response)
    assert isinstance(event, TaskManagementCompleted)
    assert conn.outstanding == 1


def test_logical_unit_reset_fails_the_tasks_of_that_lun_only() -> None:
    conn, target = logged_in(window=3)
    on_lun1 = [conn.send_command(READ_10, lun=LUN1, read_length=512) for _ in range(2)]
    on_lun2 = conn.send_command(READ_10, lun=LUN2, read_length=512)
    waiting_on_lun1 = conn.send_command(READ_10, lun=LUN1, read_length=512)
    target.receive()
    assert conn.waiting == 1

    itt = conn.task_management(TaskManagementFunction.LOGICAL_UNIT_RESET, lun=LUN1)
    request = target.receive_one(TaskManagementRequest)
    assert (request.lun, request.referenced_task_tag) == (LUN1, RESERVED_TAG)
    events = target.send(target.make(TaskManagementResponsePdu, initiator_task_tag=itt))
    *failed, completed = events
    assert all(isinstance(e, CommandFailed) and isinstance(e.error, TaskAborted) for e in failed)
    assert {e.initiator_task_tag for e in failed if isinstance(e, CommandFailed)} == {
        *on_lun1,
        waiting_on_lun1,
    }
    assert isinstance(completed, TaskManagementCompleted)
    assert (conn.outstanding, conn.waiting) == (1, 0)
    (done,) = target.send(target.data_in(on_lun2, bytes(512), status=GOOD))
    assert isinstance(done, CommandCompleted)


def test_abort_of_an_unknown_task_is_our_mistake() -> None:
    conn, _ = logged_in()
    with pytest.raises(InitiatorProtocolError):
        conn.task_management(TaskManagementFunction.ABORT_TASK, referenced_task_tag=0x999)


# --- Text Request / Response (RFC 7143 sections 11.10, 11.11) -----------------------------------

TARGETS = [
    ("TargetName", "iqn.2024-01.org.example:disk1"),
    ("TargetAddress", "192.0.2.1:3260,1"),
    ("TargetName", "iqn.2024-01.org.example:disk2"),
    ("TargetAddress", "192.0.2.2:3260,1"),
    ("TargetAddress", "[2001:db8::2]:3260,1"),
]


def discovery_session() -> tuple[Connection, ScriptedTarget]:
    return logged_in(make_config(target_name=None))


def test_send_targets_answered_in_two_text_responses() -> None:
    conn, target = discovery_session()
    itt = conn.send_text([("SendTargets", "All")])
    request = target.receive_one(TextRequest)
    assert (request.final, request.continue_, request.target_transfer_tag) == (
        True,
        False,
        RESERVED_TAG,
    )
    assert request.initiator_task_tag == itt
    assert bytes(request.data) == b"SendTargets=All\0"

    first = target.make(
        TextResponse,
        initiator_task_tag=itt,
        final=False,
        target_transfer_tag=0x4242,
        data=encode_text(TARGETS[:2]),
    )
    assert target.send(first) == []
    more = target.receive_one(TextRequest)
    assert (more.initiator_task_tag, more.target_transfer_tag) == (itt, 0x4242)
    assert (more.data, more.final) == (b"", True)

    last = target.make(TextResponse, initiator_task_tag=itt, data=encode_text(TARGETS[2:]))
    (event,) = target.send(last)
    assert event == TextExchangeCompleted(itt, TARGETS)
    # The exchange is over: another may start.
    conn.send_text([("SendTargets", "All")])


def test_text_response_continued_inside_a_pair() -> None:
    conn, target = discovery_session()
    itt = conn.send_text([("SendTargets", "All")])
    target.receive()
    text = encode_text(TARGETS)
    first = target.make(
        TextResponse,
        initiator_task_tag=itt,
        final=False,
        continue_=True,
        target_transfer_tag=7,
        data=text[:20],
    )
    target.send(first)
    assert target.receive_one(TextRequest).target_transfer_tag == 7
    (event,) = target.send(target.make(TextResponse, initiator_task_tag=itt, data=text[20:]))
    assert event == TextExchangeCompleted(itt, TARGETS)


def test_text_requests_are_immediate_and_ignore_a_closed_window() -> None:
    """Immediate delivery takes no CmdSN (RFC 7143 section 3.2.2.1), so a SendTargets never
    goes beyond MaxCmdSN, nor waits behind queued commands."""
    conn, target = logged_in(make_config(target_name=None), window=0)
    cmd_sn = conn.cmd_sn
    itt = conn.send_text([("SendTargets", "All")])
    request = target.receive_one(TextRequest)
    assert request.immediate and request.cmd_sn == cmd_sn
    first = target.make(
        TextResponse, initiator_task_tag=itt, final=False, target_transfer_tag=1, data=b""
    )
    target.send(first)
    more = target.receive_one(TextRequest)
    assert more.immediate and more.cmd_sn == cmd_sn
    assert conn.cmd_sn == cmd_sn


def test_one_text_exchange_at_a_time() -> None:
    conn, _ = discovery_session()
    conn.send_text([("SendTargets", "All")])
    with pytest.raises(InitiatorProtocolError):
        conn.send_text([("SendTargets", "All")])


def test_text_response_for_another_tag_is_a_protocol_error() -> None:
    conn, target = discovery_session()
    itt = conn.send_text([("SendTargets", "All")])
    with pytest.raises(TargetProtocolError):
        target.send(target.make(TextResponse, initiator_task_tag=itt + 1))
    assert conn.state is ConnectionState.FAILED


# --- logout (RFC 7143 sections 11.14, 11.15) ----------------------------------------------------


def test_logout() -> None:
    conn, target = logged_in(make_config(cid=5))
    itt = conn.logout()
    request = target.receive_one(LogoutRequest)
    assert request.immediate and request.cid == 5
    assert request.initiator_task_tag == itt
    assert conn.state is ConnectionState.LOGGING_OUT
    with pytest.raises(InitiatorProtocolError):
        conn.send_command(READ_10, read_length=512)

    response = target.make(LogoutResponse, initiator_task_tag=itt, time2wait=2, time2retain=20)
    (event,) = target.send(response)
    assert event == LogoutCompleted(0, 2, 20)
    assert_logged_out(conn, target)


def assert_logged_out(conn: Connection, target: ScriptedTarget) -> None:
    """Nothing more goes out, and whatever comes in is ignored."""
    assert conn.state is ConnectionState.LOGGED_OUT
    with pytest.raises(InitiatorProtocolError):
        conn.send_command(READ_10, read_length=512)
    with pytest.raises(InitiatorProtocolError):
        conn.ping(now=1.0)
    with pytest.raises(InitiatorProtocolError):
        conn.logout()
    assert conn.receive_data(target.encode(target.make(NopIn)), 1.0) == []
    assert conn.next_deadline() is None


def test_logout_fails_the_commands_still_outstanding() -> None:
    conn, target = logged_in()
    itt = conn.send_command(READ_10, read_length=512)
    logout = conn.logout()
    target.receive()
    failed, completed = target.send(target.make(LogoutResponse, initiator_task_tag=logout))
    assert isinstance(failed, CommandFailed) and failed.initiator_task_tag == itt
    assert isinstance(completed, LogoutCompleted)


def test_nothing_is_read_after_the_logout_response() -> None:
    """Bytes behind the Logout Response in the same read are not ours to judge any more."""
    conn, target = logged_in()
    logout = conn.logout()
    target.receive()
    response = target.make(LogoutResponse, initiator_task_tag=logout)
    (event,) = target.send(response, target.data_in(0x5EE, b"junk"))
    assert isinstance(event, LogoutCompleted)
    assert conn.state is ConnectionState.LOGGED_OUT


def test_unasked_logout_response_is_a_protocol_error() -> None:
    conn, target = logged_in()
    with pytest.raises(TargetProtocolError):
        target.send(target.make(LogoutResponse, initiator_task_tag=1))
    assert conn.state is ConnectionState.FAILED


def test_nothing_before_login() -> None:
    conn = connect()
    with pytest.raises(InitiatorProtocolError):
        conn.send_command(READ_10, read_length=512)
    with pytest.raises(InitiatorProtocolError):
        conn.logout()


def test_fail_drops_what_was_not_sent() -> None:
    conn, _ = logged_in()
    conn.send_command(READ_10, read_length=512)
    conn.fail()
    assert conn.state is ConnectionState.FAILED
    assert conn.data_to_send() == []
    conn.fail()  # idempotent


# --- the sweep: any target input, in every reachable state (h2 / h11 fuzz) ---------------------


def _logging_in() -> tuple[Connection, ScriptedTarget]:
    conn = connect()
    target = ScriptedTarget(conn)
    target.receive()
    return conn, target


def _in_security_stage() -> tuple[Connection, ScriptedTarget]:
    conn = connect(make_config(chap=ChapCredentials(INITIATOR_NAME, b"secret-secret")))
    target = ScriptedTarget(conn)
    first = target.receive_one(LoginRequest)
    target.send(target.login_response(first, [("AuthMethod", "CHAP")]))
    target.receive()
    return conn, target


def _busy() -> tuple[Connection, ScriptedTarget]:
    """Full feature phase with one of everything outstanding."""
    conn, target = write_session(4096, window=4)
    read = conn.send_command(READ_10, lun=LUN1, read_length=8192)
    write = conn.send_command(WRITE_10, lun=LUN2, data_out=pattern(65536))
    conn.send_text([("SendTargets", "All")])
    conn.send_command(READ_10, read_length=512)
    conn.send_command(READ_10, read_length=512)  # waits for the window
    target.receive()
    target.send(target.data_in(read, bytes(1024)))
    target.send(target.r2t(write, 16384, 8192))
    conn.ping(b"hello", now=1.0)
    conn.task_management(TaskManagementFunction.ABORT_TASK, referenced_task_tag=read)
    target.receive()
    return conn, target


def _logging_out() -> tuple[Connection, ScriptedTarget]:
    conn, target = logged_in()
    conn.send_command(READ_10, read_length=512)
    conn.logout()
    target.receive()
    return conn, target


STATES: dict[str, Callable[[], tuple[Connection, ScriptedTarget]]] = {
    "logging-in": _logging_in,
    "security-stage": _in_security_stage,
    "full-feature-busy": _busy,
    "logging-out": _logging_out,
}

U8 = st.integers(0, 0xFF)
U16 = st.integers(0, 0xFFFF)
U32 = st.integers(0, 0xFFFFFFFF)
TEXT_KEYS = ["AuthMethod", "CHAP_A", "CHAP_I", "CHAP_C", "CHAP_N", "CHAP_R", "TargetAddress",
             "TargetName", "TargetPortalGroupTag", "MaxRecvDataSegmentLength", "HeaderDigest",
             "InitialR2T", "MaxBurstLength", "X-vendor", "SendTargets"]  # fmt: skip
TEXT_VALUES = ["CHAP", "None", "5", "7", "0x0102", "0x", "Yes", "No", "512", "1", "99999999999",
               "192.0.2.1:3260,1", "[::1]", "iqn.2024-01.org.example:x", "Reject",
               "NotUnderstood", "Irrelevant", ""]  # fmt: skip
TEXT = st.lists(st.tuples(st.sampled_from(TEXT_KEYS), st.sampled_from(TEXT_VALUES)), max_size=6)
DATA = st.one_of(st.binary(max_size=96), TEXT.map(encode_text))
TARGET_CLASSES = [NopIn, ScsiResponse, TaskManagementResponsePdu, LoginResponse, TextResponse,
                  DataIn, LogoutResponse, R2T, AsyncMessage, Reject]  # fmt: skip
_SMALL = ("status", "response", "reason", "async_event", "async_vcode", "status_class",
          "status_detail", "version_max", "version_active")  # fmt: skip
_SHORT = ("parameter1", "parameter2", "parameter3", "time2wait", "time2retain", "tsih")


def _field_strategy(name: str, kind: str, target: ScriptedTarget) -> st.SearchStrategy[Any]:
    """Values that are sometimes right (a tag we used, the current window) and often not."""
    conn = target.connection
    tags = sorted(
        {RESERVED_TAG}
        | {getattr(pdu, "initiator_task_tag", RESERVED_TAG) for pdu in target.received}
        | {getattr(pdu, "target_transfer_tag", RESERVED_TAG) for pdu in target.received}
    )
    near = [conn.exp_stat_sn, conn.exp_cmd_sn, conn.max_cmd_sn, sn_add(conn.max_cmd_sn, 2)]
    if kind == "bool":
        return st.booleans()
    if name == "data":
        return DATA
    if name in ("current_stage", "next_stage"):
        return st.sampled_from(LoginStage)
    if name == "lun":
        return st.one_of(st.sampled_from([0, LUN1, LUN2]), st.integers(0, 2**64 - 1))
    if name == "isid":
        return st.one_of(st.just(conn.config.isid), st.integers(0, 2**48 - 1))
    if name in _SMALL:
        return st.one_of(st.integers(0, 5), U8)
    if name in _SHORT:
        return U16
    if name in ("initiator_task_tag", "target_transfer_tag"):
        live = st.sampled_from(tags)
        return st.one_of(live, live, live, U32)  # mostly a tag that means something
    if name in ("stat_sn", "exp_cmd_sn", "max_cmd_sn"):
        return st.one_of(st.sampled_from(near), U32)
    return st.one_of(st.integers(0, 70000), U32)


@st.composite
def target_input(draw: st.DrawFn, target: ScriptedTarget) -> bytes:
    """Encoded target PDUs with random fields, sometimes corrupted, or plain random bytes."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(min_size=1, max_size=200))
    out = bytearray()
    for _ in range(draw(st.integers(1, 3))):
        cls = draw(st.sampled_from(TARGET_CLASSES))
        fields = {
            f.name: draw(_field_strategy(f.name, str(f.type), target))
            for f in dataclasses.fields(cls)
        }
        pdu = cls(**fields)
        out += target.encode(pdu)
    if draw(st.booleans()):
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(out) - 1))
            out[i] = draw(U8)
    return bytes(out)


@settings(
    max_examples=int(os.environ.get("SWEEP_EXAMPLES", "400")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(state=st.sampled_from(sorted(STATES)), data=st.data())
def test_any_target_input_gives_events_or_a_target_protocol_error(
    state: str, data: st.DataObject
) -> None:
    conn, target = STATES[state]()
    target.check_window = False
    now = 10.0
    for _ in range(data.draw(st.integers(1, 3), label="rounds")):
        wire = data.draw(target_input(target), label="input")
        try:
            events = conn.receive_data(wire, now)
        except TargetProtocolError:
            assert conn.state is ConnectionState.FAILED
            assert conn.data_to_send() == []
            assert conn.receive_data(wire, now + 1) == []
            assert conn.next_deadline() is None
            return
        assert all(isinstance(event, Event) for event in events)
        for pdu in target.receive():
            # Whatever it sent, it sent within the window it believes in.
            if isinstance(pdu, ScsiCommand | TextRequest) and not pdu.immediate:
                assert sn_le(pdu.cmd_sn, conn.max_cmd_sn)
        if conn.state in (ConnectionState.LOGGED_OUT, ConnectionState.FAILED):
            assert conn.receive_data(wire, now + 1) == []
            return
        now += 1.0
        conn.handle_timer(now)


def test_a_long_text_request_waits_for_the_target_between_parts() -> None:
    """RFC 7143 section 11.10.2: with C set, the target answers each part with an empty
    Text Response before the initiator sends the next."""
    conn, target = discovery_session()
    assert conn.parameters is not None
    segment = conn.parameters.target_max_recv_data_segment_length
    value = "x" * (2 * segment + 100)  # three PDUs' worth
    itt = conn.send_text([("X-pyiscsid-long", value)])
    first = target.receive_one(TextRequest)
    assert (first.continue_, first.final, len(first.data)) == (True, False, segment)
    assert target.receive() == []  # nothing more until the target answers
    parts = [bytes(first.data)]
    for ttt in (0x51, 0x52):
        target.send(
            target.make(TextResponse, initiator_task_tag=itt, final=False, target_transfer_tag=ttt)
        )
        part = target.receive_one(TextRequest)
        assert part.target_transfer_tag == ttt
        parts.append(bytes(part.data))
    assert part.final and not part.continue_
    assert b"".join(parts) == encode_text([("X-pyiscsid-long", value)])
    reply = target.make(
        TextResponse, initiator_task_tag=itt, data=b"X-pyiscsid-long=NotUnderstood\0"
    )
    (event,) = target.send(reply)
    assert event == TextExchangeCompleted(itt, [("X-pyiscsid-long", "NotUnderstood")])


def test_text_response_with_final_and_continue_is_a_protocol_error() -> None:
    conn, target = discovery_session()
    itt = conn.send_text([("SendTargets", "All")])
    target.receive()
    bad = target.make(TextResponse, initiator_task_tag=itt, final=True, continue_=True)
    with pytest.raises(TargetProtocolError, match="F and the C bit"):
        target.send(bad)
    assert conn.state is ConnectionState.FAILED


def test_data_in_that_skips_an_offset_is_a_protocol_error() -> None:
    """With DataSequenceInOrder and DataPDUInOrder, Data-In offsets follow each other."""
    conn, target = logged_in()
    itt = conn.send_command(READ_10, read_length=1024)
    target.receive()
    target.send(target.data_in(itt, bytes(256)))
    with pytest.raises(TargetProtocolError, match="offset 512"):
        target.send(target.data_in(itt, bytes(512), offset=512, data_sn=1))
    assert conn.state is ConnectionState.FAILED


@pytest.mark.parametrize("length", [17, 32, 260])
def test_a_long_cdb_goes_out_whole_in_an_extended_cdb_ahs(length: int) -> None:
    conn, target = logged_in()
    cdb = bytes([0x7F]) + bytes(i & 0xFF for i in range(1, length))  # variable-length CDB
    itt = conn.send_command(cdb, lun=1, read_length=512)
    command = target.receive_one(ScsiCommand)
    assert command.cdb == cdb  # the AHS carried the bytes past 16, none lost or added
    assert command.initiator_task_tag == itt


@pytest.mark.parametrize("length", [0, 261])
def test_a_cdb_that_cannot_be_sent_is_refused_at_once(length: int) -> None:
    conn, target = logged_in()
    with pytest.raises(InitiatorProtocolError, match=f"CDB length {length} is not between"):
        conn.send_command(bytes(length), lun=1)
    assert target.receive() == [] and conn.outstanding == 0
