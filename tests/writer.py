"""The checksummed writer of the fault tests: writers on disjoint LBA ranges keep several
commands in flight through a session; afterwards every write the target acknowledged must
be found, byte for byte, where it was written."""

from __future__ import annotations

import asyncio
import os
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

from pyiscsid.daemon.session import Session
from pyiscsid.protocol import scsi
from pyiscsid.protocol.errors import ISCSIError

BLOCK = 4096
SECTORS = BLOCK // 512
BLOCKS_PER_WRITER = 64
WRITERS = 4
TIMEOUT = 30.0


def block_for(lba: int, sequence: int) -> bytes:
    """A block that names itself: its LBA, a sequence number, random bytes, a CRC."""
    body = struct.pack(">QQ", lba, sequence) + os.urandom(BLOCK - 20)
    return body + struct.pack(">I", zlib.crc32(body))


@dataclass
class Writer:
    """Writes checksummed blocks until stopped; remembers what the target acknowledged."""

    session: Session
    lun: int = 1
    acked: dict[int, bytes] = field(default_factory=dict)
    errors: list[ISCSIError] = field(default_factory=list)
    acks: list[float] = field(default_factory=list)  # monotonic time of each acknowledgement
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _progress: asyncio.Event = field(default_factory=asyncio.Event)

    def start(self, writers: int = WRITERS) -> list[asyncio.Task[None]]:
        self.tasks = [
            asyncio.create_task(self._one(i * BLOCKS_PER_WRITER * SECTORS)) for i in range(writers)
        ]
        return self.tasks

    async def _one(self, first_lba: int) -> None:
        sequence = 0
        while not self.stop.is_set():
            lba = first_lba + (sequence % BLOCKS_PER_WRITER) * SECTORS
            data = block_for(lba, sequence)
            try:
                result = await self.session.execute(
                    scsi.write10(lba, SECTORS), lun=self.lun, data_out=data
                )
                result.check()
                self.acked[lba] = data
                self.acks.append(time.monotonic())
            except ISCSIError as exc:
                self.errors.append(exc)
                await asyncio.sleep(0.05)  # pacing after a failure, not synchronisation
            sequence += 1
            self._progress.set()

    async def wait_acks(self, count: int, timeout: float = TIMEOUT) -> None:
        """Until ``count`` more writes were acknowledged."""
        goal = len(self.acks) + count
        async with asyncio.timeout(timeout):
            while len(self.acks) < goal:
                self._progress.clear()
                await self._progress.wait()

    def first_ack_after(self, moment: float) -> float:
        return next(ack for ack in self.acks if ack > moment)

    async def halt(self) -> None:
        self.stop.set()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def finish(self, read_at: Callable[[int], bytes], more: int = 100) -> None:
        """More writes, then stop: no error, and every acknowledged block is where it was
        written (``read_at(byte offset)`` reads one block from the target's storage)."""
        await self.wait_acks(more)
        self.stop.set()
        await asyncio.wait_for(asyncio.gather(*self.tasks), TIMEOUT)
        assert self.errors == []
        for lba, data in self.acked.items():
            assert read_at(lba * 512) == data, f"LBA {lba} lost an acknowledged write"


def file_reader(path: object) -> Callable[[int], bytes]:
    """``read_at`` for a target's backing file."""

    def read_at(offset: int) -> bytes:
        with open(str(path), "rb") as f:
            f.seek(offset)
            return f.read(BLOCK)

    return read_at
