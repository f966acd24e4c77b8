"""One SCSI task's data transfer state: what was read, what is still to be written.

RFC 7143 sections 4.2.5 (unsolicited data), 11.7 (Data-In and Data-Out) and 11.8 (R2T).
The write payload is kept as a view and cut into Data-Out PDUs without copying.

Everything the target says about the transfer is checked against what the task has seen:
an R2T must ask for data not yet sent, in R2TSN order, within MaxOutstandingR2T; a GOOD
status must account for every byte of the command (received, or reported as residual).
A target that breaks these rules gets a :class:`TargetProtocolError`: the connection is
dropped and session recovery issues the command again, rather than a write going out twice
or a read returning bytes the target never sent.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass

from .errors import TargetProtocolError
from .pdu import RESERVED_TAG, Buffer, DataOut, TaskAttribute
from .serial import sn_add, sn_diff

GOOD = 0x00  # SCSI status (SAM-5): the only one that promises the whole transfer happened


@dataclass(slots=True, eq=False)
class ScsiTask:
    """A SCSI command from submission to its status."""

    initiator_task_tag: int
    lun: int
    cdb: bytes
    attribute: TaskAttribute
    expected_data_transfer_length: int
    read_buffer: memoryview | None = None
    write_data: memoryview | None = None
    cmd_sn: int | None = None  # set when the command goes out (it may wait for the window)
    data_in_received: int = 0
    next_data_sn: int = 0
    data_out_stopped: bool = False  # Async Message event 5 (RFC 7143 section 11.9.1)
    # Writes: the byte ranges sent unsolicited or solicited by an R2T, sorted, disjoint and
    # merged when they touch (one range when the target asks in order); the next R2TSN; and
    # R2Ts answered since the caller last took the output (see :meth:`accept_r2t`).
    data_out_ranges: list[tuple[int, int]] | None = None
    next_r2t_sn: int = 0
    r2ts_unflushed: int = 0

    @property
    def is_read(self) -> bool:
        return self.read_buffer is not None

    @property
    def is_write(self) -> bool:
        return self.write_data is not None

    def accept_data_in(self, data_sn: int, buffer_offset: int, data: Buffer) -> None:
        """Copy one Data-In's data into the read buffer, checking it fits and comes in
        order."""
        buffer = self.read_buffer
        if buffer is None:
            raise TargetProtocolError(
                f"Data-In for task 0x{self.initiator_task_tag:08x}, which reads nothing"
            )
        if data_sn != self.next_data_sn:
            raise TargetProtocolError(
                f"Data-In DataSN {data_sn} for task 0x{self.initiator_task_tag:08x}, "
                f"expected {self.next_data_sn} (DataPDUInOrder)"
            )
        if buffer_offset != self.data_in_received:
            raise TargetProtocolError(
                f"Data-In at offset {buffer_offset} for task 0x{self.initiator_task_tag:08x}"
                f", expected {self.data_in_received} (DataSequenceInOrder)"
            )
        length = len(data)
        end = buffer_offset + length
        if end > len(buffer):
            raise TargetProtocolError(
                f"Data-In at offset {buffer_offset} + {length} runs past the "
                f"{len(buffer)} bytes the command expects"
            )
        buffer[buffer_offset:end] = data
        self.next_data_sn = sn_add(self.next_data_sn, 1)
        self.data_in_received += length

    def received_view(self, residual_underflow: bool, residual_count: int) -> memoryview:
        """The part of the read buffer that holds data from the target."""
        if self.read_buffer is None:
            return memoryview(b"")
        if residual_underflow:
            end = max(0, self.expected_data_transfer_length - residual_count)
            return self.read_buffer[: min(end, self.data_in_received, len(self.read_buffer))]
        return self.read_buffer[: self.data_in_received]

    def completed_view(
        self, status: int, residual_underflow: bool, residual_count: int, what: str
    ) -> memoryview:
        """The read data of the command that just ended with ``status``.

        A GOOD status says the command transferred all its data, less the residual the
        target reports with the U bit (RFC 7143 sections 11.4.5, 11.7.5). A read with fewer
        bytes than that would hand the caller's untouched buffer on as the disk's data, and
        a write the target never asked the rest of would be lost: both are the target's
        fault. Data-In already arrives without gaps or overlap (:meth:`accept_data_in`),
        so the bytes received are ``data_in_received``. Other statuses (CHECK CONDITION...)
        may end a transfer anywhere and are not checked.
        """
        if status == GOOD:
            expected = self.expected_data_transfer_length
            due = expected - residual_count if residual_underflow else expected
            if self.read_buffer is not None:
                # More than due (a residual that disowns bytes the target did send) is
                # trimmed to what the residual leaves, as Linux does: nothing is missing.
                if self.data_in_received < due:
                    raise TargetProtocolError(
                        f"{what} GOOD for task 0x{self.initiator_task_tag:08x} after "
                        f"{self.data_in_received} bytes of Data-In, expected {due} "
                        f"({expected} asked, residual underflow "
                        f"{residual_count if residual_underflow else 0})"
                    )
            elif self.write_data is not None:
                sent = sum(end - start for start, end in self.data_out_ranges or ())
                if sent < due:
                    raise TargetProtocolError(
                        f"{what} GOOD for task 0x{self.initiator_task_tag:08x} after "
                        f"{sent} bytes of write data were sent or asked for, expected {due} "
                        f"({expected} to write, residual underflow "
                        f"{residual_count if residual_underflow else 0})"
                    )
        return self.received_view(residual_underflow, residual_count)

    # -- writes

    def sent_unsolicited(self, length: int) -> None:
        """The immediate and unsolicited data went out: bytes 0..length (RFC 7143 4.2.5)."""
        self.data_out_ranges = [(0, length)] if length else []

    def accept_r2t(
        self,
        r2t_sn: int,
        buffer_offset: int,
        length: int,
        *,
        max_burst_length: int,
        max_outstanding_r2t: int,
        data_sequence_in_order: bool,
        error_recovery_level: int,
    ) -> None:
        """Check one R2T against what this task has sent and been asked for.

        RFC 7143 section 11.8: R2TSN counts the task's R2Ts from 0, and the range lies
        within the write, at most MaxBurstLength long (13.13). Section 13.17: at most
        MaxOutstandingR2T R2Ts are outstanding, each until its last Data-Out is
        transferred. The core answers an R2T at once, so one is outstanding from the
        target's point of view until the caller takes the Data-Out (the next
        ``data_to_send``): R2Ts beyond the limit before that were sent before the target
        could have had the data. Section 13.19: with DataSequenceInOrder=Yes, the
        sequences follow each other, so an R2T starts where the data sent so far ends.

        Asking again for data already sent, or repeating an R2TSN, is recovery (R2T
        retransmission, recovery R2T: RFC 7143 sections 7.1.4.1 and 11.8), which only
        ErrorRecoveryLevel 1 and above allow; at level 0 it is a target bug, and answering
        it would send the same data again for every copy of a 48-byte R2T.
        """
        itt = self.initiator_task_tag
        data = self.write_data
        if data is None:
            raise TargetProtocolError(f"R2T for task 0x{itt:08x}, a read")
        end = buffer_offset + length
        if end > len(data) or length == 0:
            raise TargetProtocolError(
                f"R2T asks for {length} bytes at offset {buffer_offset}, "
                f"the command writes {len(data)}"
            )
        if length > max_burst_length:
            raise TargetProtocolError(
                f"R2T Desired Data Transfer Length {length} exceeds "
                f"MaxBurstLength {max_burst_length}"
            )
        recovery_allowed = error_recovery_level > 0
        ahead = sn_diff(r2t_sn, self.next_r2t_sn)
        if ahead > 0 or (ahead < 0 and not recovery_allowed):
            raise TargetProtocolError(
                f"R2T for task 0x{itt:08x} has R2TSN {r2t_sn}, expected {self.next_r2t_sn}"
                + ("" if ahead > 0 else " (a repeated R2T needs ErrorRecoveryLevel > 0)")
            )
        ranges = self.data_out_ranges
        if ranges is None:  # the command has not gone out: the target cannot ask for data
            raise TargetProtocolError(f"R2T for task 0x{itt:08x}, which was never sent")
        sent_end = ranges[-1][1] if ranges else 0
        if _overlaps(ranges, buffer_offset, end):
            if not recovery_allowed:
                raise TargetProtocolError(
                    f"R2T for task 0x{itt:08x} asks again for bytes {buffer_offset}..{end}, "
                    f"already sent or asked for (recovery needs ErrorRecoveryLevel > 0)"
                )
        elif data_sequence_in_order and buffer_offset != sent_end:
            raise TargetProtocolError(
                f"R2T for task 0x{itt:08x} asks for offset {buffer_offset}, the data sent so "
                f"far ends at {sent_end} (DataSequenceInOrder=Yes)"
            )
        if ahead == 0:
            if self.r2ts_unflushed >= max_outstanding_r2t:
                raise TargetProtocolError(
                    f"R2T for task 0x{itt:08x} makes {self.r2ts_unflushed + 1} outstanding, "
                    f"MaxOutstandingR2T is {max_outstanding_r2t}"
                )
            self.next_r2t_sn = sn_add(r2t_sn, 1)
        self.r2ts_unflushed += 1
        _add_range(ranges, buffer_offset, end)

    def data_out_sequence(
        self,
        offset: int,
        length: int,
        *,
        target_transfer_tag: int,
        max_segment: int,
        exp_stat_sn: int,
    ) -> list[DataOut]:
        """The Data-Out PDUs of one sequence (unsolicited or answering an R2T, 11.7.5)."""
        data = self.write_data
        assert data is not None
        pdus = []
        end = offset + length
        data_sn = 0
        while offset < end:
            size = min(max_segment, end - offset)
            pdus.append(
                DataOut(
                    final=offset + size == end,
                    lun=self.lun,
                    initiator_task_tag=self.initiator_task_tag,
                    target_transfer_tag=target_transfer_tag,
                    exp_stat_sn=exp_stat_sn,
                    data_sn=data_sn,
                    buffer_offset=offset,
                    data=data[offset : offset + size],
                )
            )
            offset += size
            data_sn += 1
        return pdus


def _overlaps(ranges: list[tuple[int, int]], start: int, end: int) -> bool:
    """Does [start, end) share a byte with one of the sorted, disjoint ``ranges``?"""
    i = bisect_right(ranges, (start, end))
    if i > 0 and ranges[i - 1][1] > start:
        return True
    return i < len(ranges) and ranges[i][0] < end


def _add_range(ranges: list[tuple[int, int]], start: int, end: int) -> None:
    """Add [start, end) to the sorted ``ranges``, merging the ranges it touches."""
    lo = bisect_left(ranges, start, key=lambda r: r[1])  # the first that ends at start or later
    hi = bisect_right(ranges, end, key=lambda r: r[0])  # past the last that starts by end
    if lo < hi:
        start = min(start, ranges[lo][0])
        end = max(end, ranges[hi - 1][1])
    ranges[lo:hi] = [(start, end)]


UNSOLICITED = RESERVED_TAG
