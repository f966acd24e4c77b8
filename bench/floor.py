"""What one 4 KiB read at 1 in flight costs at least in Python, next to libiscsi and pyiscsid.

At 1 in flight the latency is a chain: the initiator's CPU time per command, plus the
wake-ups of tgtd and of the initiator. This part splits pyiscsid's share of that chain, on
one session logged in through the sans-IO core over a plain blocking socket:

- ``Python, no iSCSI logic``: a hand-written loop, the SCSI Command PDU packed with
  ``struct`` and the answer read with its StatSN noted, nothing else. No Python initiator
  can be cheaper per command.
- ``pyiscsid protocol core``: :class:`Connection` does the work (CmdSN window, ITTs, the
  task, framing, the Data-In into the caller's buffer), over the same blocking socket.
- ``pyiscsid session API``: the core under asyncio (uvloop), the path the daemon's NBD
  requests take; the same row as the main table's.
"""

from __future__ import annotations

import os
import socket
import struct
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass

from pyiscsid.daemon.session import Session
from pyiscsid.protocol import scsi
from pyiscsid.protocol.config import ConnectionConfig
from pyiscsid.protocol.connection import Connection, ConnectionState
from pyiscsid.protocol.discovery import parse_portal
from pyiscsid.protocol.events import CommandCompleted, LoginFailed
from pyiscsid.protocol.pdu import Buffer

from . import libiscsi, session_api
from .rig import DISK, READ_LUN, TARGET, Rig
from .workloads import SECTOR, Run, Workload

INITIATOR = "iqn.2026-11.bench.pyiscsid:floor"
RECEIVE = 1 << 18

# RFC 7143 section 11.3: opcode, flags (F, R, ATTR=SIMPLE), reserved, TotalAHSLength and
# DataSegmentLength, LUN, ITT, Expected Data Transfer Length, CmdSN, ExpStatSN, CDB.
_COMMAND = struct.Struct(">BBHI8sIIII16s")
_READ_FLAGS = 0x80 | 0x40 | 0x01
_DATA_IN, _SCSI_RESPONSE = 0x25, 0x21
_S_BIT = 0x01


@dataclass(frozen=True)
class FloorRow:
    name: str
    run: Run

    @property
    def cpu_us(self) -> float | None:
        """Initiator CPU time per command."""
        if self.run.initiator_cpu is None or not self.run.iops:
            return None
        return self.run.initiator_cpu / self.run.iops * 1e6


def _send(sock: socket.socket, buffers: Iterable[Buffer]) -> None:
    sock.sendall(b"".join(buffers))


def _logged_in(portal: str) -> tuple[socket.socket, Connection]:
    """A session to the bench target, logged in by the sans-IO core over a blocking socket."""
    address = parse_portal(portal)
    sock = socket.create_connection((address.address, address.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    config = ConnectionConfig(INITIATOR, TARGET, isid=Session.new_isid(), noop_out_interval=0)
    core = Connection(config, rng=os.urandom, now=time.monotonic())
    _send(sock, core.data_to_send())
    while core.state is not ConnectionState.FULL_FEATURE:
        data = sock.recv(RECEIVE)
        if not data:
            raise RuntimeError(f"{portal} closed the connection during the login")
        for event in core.receive_data(data, time.monotonic()):
            if isinstance(event, LoginFailed):
                raise RuntimeError(f"login to {TARGET} failed: {event.error}")
        _send(sock, core.data_to_send())
    if core.parameters is not None and (
        core.parameters.header_digest or core.parameters.data_digest
    ):
        raise RuntimeError("digests were negotiated: the hand-written loop reads none")
    return sock, core


def _core_read(
    sock: socket.socket, core: Connection, lba: int, blocks: int, buffer: memoryview
) -> int:
    """One READ(16) through the core; its status."""
    lun = scsi.lun_to_field(READ_LUN)
    itt = core.send_command(scsi.read16(lba, blocks), lun=lun, read_buffer=buffer)
    _send(sock, core.data_to_send())
    while True:
        data = sock.recv(RECEIVE)
        if not data:
            raise RuntimeError("tgtd closed the connection")
        for event in core.receive_data(data, time.monotonic()):
            if isinstance(event, CommandCompleted) and event.initiator_task_tag == itt:
                return event.status


def _core_loop(sock: socket.socket, core: Connection, workload: Workload, seconds: float) -> Run:
    buffer = memoryview(bytearray(workload.length))
    _core_read(sock, core, 0, workload.blocks, buffer)  # takes the power-on unit attention
    last = DISK // SECTOR - workload.blocks
    lba = done = 0
    cpu = time.process_time()
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        status = _core_read(sock, core, lba, workload.blocks, buffer)
        if status != 0:
            raise RuntimeError(f"READ(16) at {lba}: status 0x{status:02x}")
        lba = (lba + workload.blocks) % last
        done += 1
    elapsed = time.perf_counter() - started
    return Run(done / elapsed, workload.length, 1, (time.process_time() - cpu) / elapsed)


def _raw_loop(sock: socket.socket, core: Connection, workload: Workload, seconds: float) -> Run:
    """Carries on the core's session with its CmdSN and ExpStatSN; the core is left behind
    (its numbers are stale afterwards: the socket is only closed)."""
    lun = scsi.encode_lun(READ_LUN)
    cmd_sn, exp_stat_sn = core.cmd_sn, core.exp_stat_sn
    itt = 0x40000000  # clear of the core's tags, which are below 2**31 and not reused here
    last = DISK // SECTOR - workload.blocks
    received = bytearray(RECEIVE)
    view = memoryview(received)
    lba = done = 0
    cpu = time.process_time()
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        cdb = scsi.read16(lba, workload.blocks)
        sock.sendall(
            _COMMAND.pack(
                0x01, _READ_FLAGS, 0, 0, lun, itt, workload.length, cmd_sn, exp_stat_sn, cdb
            )
        )
        cmd_sn = (cmd_sn + 1) & 0xFFFFFFFF
        itt += 1
        filled = position = 0
        while True:  # PDUs until the one with the status: a Data-In with S, or a response
            if filled - position >= 48:
                size = 48 + received[position + 4] * 4
                length = int.from_bytes(received[position + 5 : position + 8], "big")
                size += length + (-length % 4)
                if filled - position >= size:
                    opcode, flags = received[position] & 0x3F, received[position + 1]
                    if opcode == _SCSI_RESPONSE or (opcode == _DATA_IN and flags & _S_BIT):
                        status = received[position + 3]
                        if status != 0:
                            raise RuntimeError(f"READ(16) at {lba}: status 0x{status:02x}")
                        stat_sn = int.from_bytes(received[position + 24 : position + 28], "big")
                        exp_stat_sn = (stat_sn + 1) & 0xFFFFFFFF
                        break
                    position += size
                    continue
            got = sock.recv_into(view[filled:])
            if not got:
                raise RuntimeError("tgtd closed the connection")
            filled += got
        lba = (lba + workload.blocks) % last
        done += 1
    elapsed = time.perf_counter() - started
    return Run(done / elapsed, workload.length, 1, (time.process_time() - cpu) / elapsed)


def run(rig: Rig, workload: Workload, seconds: float) -> list[FloorRow]:
    """libiscsi first, then the three Python rows, in the same run on the same LUN."""
    print("  floor: libiscsi, then three Python loops", file=sys.stderr, flush=True)
    theirs = libiscsi.iscsi_perf(rig.url(), workload, seconds, rig.tgtd_pid)
    sock, core = _logged_in(rig.portal)
    with sock:
        core_run = _core_loop(sock, core, workload, seconds)
        raw_run = _raw_loop(sock, core, workload, seconds)  # last: it leaves the core stale
    api = session_api.session_run(rig.portal, TARGET, READ_LUN, DISK, workload, seconds, None)
    return [
        FloorRow("libiscsi iscsi-perf", theirs),
        FloorRow("Python, no iSCSI logic", raw_run),
        FloorRow("pyiscsid protocol core", core_run),
        FloorRow("pyiscsid session API (uvloop)", api),
    ]
