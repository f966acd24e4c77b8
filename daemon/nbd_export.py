"""What the NBD server serves: an :class:`Export` is a disk with offsets, and a
:class:`LunExport` is one LUN of a session behind it, every request turned into SCSI
commands: started at once (:meth:`Session.start`) when one command carries it, else through
:meth:`Session.execute` (held across session recovery, split at the target's maximum
transfer); every failure becomes the NBD error a client can act on.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from pyiscsid.protocol import scsi
from pyiscsid.protocol.errors import ISCSIError
from pyiscsid.protocol.scsi import ScsiCommandError
from pyiscsid.protocol.sense import SenseKey

from . import nbd_protocol as wire
from .driver import CommandResult, command_result

# What Export.start returns: the future of the disk's answer, and the buffer of a read.
Started = tuple["asyncio.Future[Any]", bytearray | None]

DEFAULT_MAX_TRANSFER = 1024 * 1024  # per SCSI command when the target reports no limit
_GOOD = int(scsi.ScsiStatus.GOOD)  # an int: looked up per request
LBA_OUT_OF_RANGE = 0x21  # ASC of ILLEGAL REQUEST, "logical block address out of range"


class NbdRequestError(Exception):
    """A request fails with this NBD error number; the connection lives on. The message
    reaches structured-reply clients in the error chunk, so it says what was wrong;
    ``offset``, when known, is the place inside the request where it went wrong."""

    def __init__(self, error: int, reason: str, offset: int | None = None) -> None:
        super().__init__(reason)
        self.error = error
        self.offset = offset


class NbdIOError(NbdRequestError):
    """The request was fine but the disk failed it (the target refused it, or the session
    gave up after ``replacement_timeout``): unlike a client's mistake, worth a warning."""


class Answered(enum.Enum):
    """What a request :meth:`Export.start`\\ ed comes to, short of a final error."""

    SERVED = "served"  # GOOD status, every byte moved: reply
    RETRY = "retry"  # an outage, a timeout, a unit attention: serve it again the full way


class Export(Protocol):
    """What the server serves. Offsets and lengths reaching these methods are already
    checked: inside the disk and multiples of ``block_size``. A failure is an
    :class:`NbdRequestError` (best: :class:`NbdIOError` with the offset), an
    :class:`ISCSIError` or an :class:`OSError`."""

    name: str
    size: int
    block_size: int
    max_transfer: int
    read_only: bool
    can_trim: bool

    def start(
        self, offset: int, length: int, payload: memoryview | None, fua: bool
    ) -> Started | None:
        """Start a READ (``payload`` None) or a WRITE now, without a task of its own: the
        hot path, for most requests. Returns the future of the disk's answer, which
        :meth:`judge` judges, and the buffer a read lands in; a request it sends back is
        served again the full way (:meth:`read`, :meth:`write`), and so is one for which
        this returns None (it cannot start now)."""
        ...

    def judge(
        self, answer: asyncio.Future[Any], offset: int, writing: bool
    ) -> Answered | NbdRequestError:
        """What the request at ``offset`` behind ``answer`` (from :meth:`start`) comes to:
        served, to be served again the full way, or failed for good with this error."""
        ...

    async def read(self, offset: int, length: int) -> bytes | bytearray | memoryview: ...

    async def write(self, offset: int, data: memoryview, fua: bool) -> None: ...

    async def flush(self) -> None: ...

    async def trim(self, offset: int, length: int) -> None: ...

    async def write_zeroes(self, offset: int, length: int, fua: bool) -> None: ...


def export_name(target: str, lun: int) -> str:
    """``<target-iqn>/<lun>``: unique per LUN and stable across relogins."""
    return f"{target}/{lun}"


def errno_for(exc: BaseException, writing: bool) -> int:
    """The NBD error for a failed SCSI command: the sense decides EPERM and ENOSPC, the
    rest is EIO (the client cannot act on finer distinctions)."""
    if isinstance(exc, ScsiCommandError) and exc.sense is not None:
        if exc.sense.key == SenseKey.DATA_PROTECT:
            return wire.EPERM
        if exc.sense.key == SenseKey.ILLEGAL_REQUEST and exc.sense.asc == LBA_OUT_OF_RANGE:
            return wire.ENOSPC if writing else wire.EINVAL
    return wire.EIO


@dataclass
class LunExport:
    """One LUN of a session, served over NBD by SCSI READ/WRITE(16), SYNCHRONIZE CACHE(16),
    UNMAP. Build it with :meth:`probe` so the limits come from the target."""

    session: Any  # a daemon.session.Session; Any keeps this module free of its imports
    lun: int
    name: str
    size: int
    block_size: int
    max_transfer: int = DEFAULT_MAX_TRANSFER
    read_only: bool = False
    can_trim: bool = False
    max_unmap_blocks: int = 0

    @classmethod
    async def probe(cls, session: Any, lun_info: Any) -> LunExport:
        """Ask the LUN for its limits: Block Limits VPD (maximum transfer, UNMAP counts),
        Logical Block Provisioning VPD (does UNMAP work) and MODE SENSE's write-protect bit.
        A target that answers none of them still gets a working, conservative export."""
        lun, block = lun_info.lun, lun_info.block_size
        max_transfer, unmap_blocks, lbpu, read_only = DEFAULT_MAX_TRANSFER, 0, False, False
        with contextlib.suppress(ISCSIError, ValueError):
            result = await session.execute(
                scsi.inquiry(evpd=True, page_code=scsi.VpdPage.BLOCK_LIMITS),
                lun=lun,
                read_length=255,
            )
            if result.status == 0:
                limits = scsi.parse_block_limits(result.data)
                if limits.max_transfer_length:
                    max_transfer = min(max_transfer, limits.max_transfer_length * block)
                if limits.max_unmap_block_descriptor_count:
                    unmap_blocks = limits.max_unmap_lba_count
        with contextlib.suppress(ISCSIError, ValueError):
            result = await session.execute(
                scsi.inquiry(evpd=True, page_code=scsi.VpdPage.LOGICAL_BLOCK_PROVISIONING),
                lun=lun,
                read_length=255,
            )
            if result.status == 0:
                lbpu = scsi.parse_logical_block_provisioning(result.data).lbpu
        with contextlib.suppress(ISCSIError, ValueError):
            result = await session.execute(scsi.mode_sense6(), lun=lun, read_length=255)
            if result.status == 0:
                read_only = scsi.is_write_protected(result.data)
        max_transfer = max(block, max_transfer - max_transfer % block)
        return cls(
            session,
            lun,
            export_name(session.target, lun),
            lun_info.size,
            block,
            max_transfer=max_transfer,
            read_only=read_only,
            can_trim=lbpu and unmap_blocks > 0,
            max_unmap_blocks=unmap_blocks,
        )

    def _chunks(self, offset: int, length: int, limit: int) -> list[tuple[int, int, int]]:
        """(lba, blocks, byte offset into the request) pieces of at most ``limit`` bytes."""
        pieces = []
        for start in range(0, length, limit):
            size = min(limit, length - start)
            pieces.append(((offset + start) // self.block_size, size // self.block_size, start))
        return pieces

    async def _run(self, cdb: bytes, *, whole: bool = True, **command: Any) -> None:
        """One SCSI command; with ``whole``, a residual (the target moved less than asked)
        is an error, since NBD has no short reads or writes. UNMAP passes False: tgtd reports
        a residual for the parameter list's unused tail, with GOOD status."""
        _check(await self.session.execute(cdb, lun=self.lun, **command), whole)

    async def _all(
        self, what: str, offset: int, pieces: list[tuple[int, Coroutine[Any, Any, None]]]
    ) -> None:
        """The pieces (byte offset into the request, command) of one request go out
        together, paced by the session's command window, and all of them finish before the
        request does: a write is never reported failed while a piece of it may still land.
        A failure is reported at the first piece that failed, as an offset into the disk."""
        writing = what != "READ"
        if len(pieces) == 1:  # the common case: no task, no gather
            at, command = pieces[0]
            try:
                await command
            except ISCSIError as exc:
                raise _failed(what, offset + at, exc, writing) from exc
            return
        results = await asyncio.gather(*(command for _, command in pieces), return_exceptions=True)
        failed = [(at, r) for (at, _), r in zip(pieces, results, strict=True) if r is not None]
        if not failed:
            return
        at, first = min(failed, key=lambda item: item[0])
        if not isinstance(first, ISCSIError):
            raise first
        raise _failed(what, offset + at, first, writing) from first

    def start(
        self, offset: int, length: int, payload: memoryview | None, fua: bool
    ) -> Started | None:
        """One READ(16) or WRITE(16) sent now, if the session is logged in; a request that
        must be split goes the full way (it is large: a task is nothing beside it)."""
        if length > self.max_transfer:
            return None
        lba, blocks = offset // self.block_size, length // self.block_size
        if payload is not None:
            cdb = scsi.write16(lba, blocks, fua=fua)
            answer = self.session.start(cdb, lun=self.lun, data_out=payload)
            return None if answer is None else (answer, None)
        buffer = bytearray(length)
        cdb = scsi.read16(lba, blocks)
        answer = self.session.start(cdb, lun=self.lun, read_buffer=memoryview(buffer))
        return None if answer is None else (answer, buffer)

    def judge(
        self, answer: asyncio.Future[Any], offset: int, writing: bool
    ) -> Answered | NbdRequestError:
        """GOOD with every byte moved is served. An outage or a timeout (an exception) goes
        the full way, which holds the request through recovery, and so does a unit
        attention: the command was not executed (SAM-5 5.14), and Linux issues it again
        (told to the session, as :meth:`IscsiConnection.execute` tells it). Any other
        status is final, the error the full way would give: a medium error is not written
        twice."""
        if answer.cancelled() or answer.exception() is not None:
            return Answered.RETRY
        completed = answer.result()
        if completed.status == _GOOD and not completed.residual_count:
            return Answered.SERVED
        result = command_result(completed)
        sense = result.sense
        if sense is not None and sense.is_unit_attention:
            if not sense.is_power_on_reset:
                self.session.unit_attention(self.lun, sense)
            return Answered.RETRY
        try:
            _check(result, whole=True)
        except ISCSIError as exc:
            return _failed("WRITE" if writing else "READ", offset, exc, writing)
        raise AssertionError("a GOOD answer without residual was served above")

    async def read(self, offset: int, length: int) -> bytearray:
        buffer = bytearray(length)
        view = memoryview(buffer)
        size = self.block_size
        pieces = [
            (at, self._run(scsi.read16(lba, blocks), read_buffer=view[at : at + blocks * size]))
            for lba, blocks, at in self._chunks(offset, length, self.max_transfer)
        ]
        await self._all("READ", offset, pieces)
        return buffer

    async def write(self, offset: int, data: memoryview, fua: bool) -> None:
        size = self.block_size
        pieces = [
            (
                at,
                self._run(
                    scsi.write16(lba, blocks, fua=fua), data_out=data[at : at + blocks * size]
                ),
            )
            for lba, blocks, at in self._chunks(offset, len(data), self.max_transfer)
        ]
        await self._all("WRITE", offset, pieces)

    async def flush(self) -> None:
        try:
            await self._run(scsi.synchronize_cache16())
        except ISCSIError as exc:
            raise NbdIOError(errno_for(exc, True), f"FLUSH: {exc}") from exc

    async def write_zeroes(self, offset: int, length: int, fua: bool) -> None:
        size = self.block_size
        pieces = [
            (
                at,
                self._run(scsi.write16(lba, blocks, fua=fua), data_out=_zeros(blocks * size)),
            )
            for lba, blocks, at in self._chunks(offset, length, self.max_transfer)
        ]
        await self._all("WRITE_ZEROES", offset, pieces)

    async def trim(self, offset: int, length: int) -> None:
        if not self.can_trim:
            raise NbdRequestError(wire.EINVAL, "UNMAP is not supported by this LUN")
        limit = self.max_unmap_blocks * self.block_size
        for lba, blocks, at in self._chunks(offset, length, limit):
            parameters = scsi.unmap_parameter_list([(lba, blocks)])
            try:
                await self._run(scsi.unmap(len(parameters)), whole=False, data_out=parameters)
            except ISCSIError as exc:
                raise _failed("TRIM", offset + at, exc, writing=True) from exc


def _check(result: CommandResult, whole: bool) -> None:
    """Raise for a status other than GOOD; with ``whole``, for a residual too (the target
    moved less than asked), since NBD has no short reads or writes."""
    result.check()
    if whole and result.residual_count:
        raise ISCSIError(f"short transfer: {result.residual_count} bytes not moved")


_ZEROS = [memoryview(b"")]


def _zeros(length: int) -> memoryview:
    """``length`` zero bytes for WRITE_ZEROES, from one buffer for every export (one each
    took 1 MiB per LUN, 130 KiB of it resident: 26 MiB for 200 sessions), made at the
    first use."""
    if len(_ZEROS[0]) < length:
        _ZEROS[0] = memoryview(bytes(max(length, DEFAULT_MAX_TRANSFER)))
    return _ZEROS[0][:length]


def _failed(what: str, offset: int, exc: ISCSIError, writing: bool) -> NbdIOError:
    return NbdIOError(errno_for(exc, writing), f"{what} at offset {offset}: {exc}", offset)
