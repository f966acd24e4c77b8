"""One SCSI task's data transfer state: what was read, what is still to be written.

RFC 7143 sections 4.2.5 (unsolicited data), 11.7 (Data-In and Data-Out) and 11.8 (R2T).
The write payload is kept as a view and cut into Data-Out PDUs without copying.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import TargetProtocolError
from .pdu import RESERVED_TAG, Buffer, DataOut, TaskAttribute
from .serial import sn_add


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


UNSOLICITED = RESERVED_TAG
