"""An NBD server that carries each logged-in LUN to the host.

open-iscsi hands a LUN to the kernel, which makes it /dev/sdX. pyiscsid carries the data
itself, so it speaks NBD (fixed newstyle; simple replies, or structured replies and the
``base:allocation`` metadata context when the client asks for them) on a Unix socket, and
on TCP when the admin asks: ``nbd-client``, qemu, ``nbdcopy`` and ``qemu-img`` then reach
the LUN, and every NBD request becomes SCSI commands through :meth:`Session.execute`, which
holds them across session recovery.

Each Unix-socket client is known by its ``SO_PEERCRED`` pid and uid and by the export it
opened (:meth:`NbdServer.clients`), so the daemon can tell which process uses which disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import socket
import struct
from collections.abc import Collection, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog
from pyiscsid.protocol import scsi
from pyiscsid.protocol.errors import ISCSIError
from pyiscsid.protocol.scsi import ScsiCommandError
from pyiscsid.protocol.sense import SenseKey

from . import nbd_protocol as wire
from .nbd_protocol import Command, CommandFlag, NbdProtocolError, Option, Reply
from .nbd_protocol import TransmissionFlag as TF

log = structlog.get_logger("pyiscsid.nbd")

DEFAULT_MAX_TRANSFER = 1024 * 1024  # per SCSI command when the target reports no limit
MAX_IN_FLIGHT = 64  # requests per client; the reader stops reading beyond this
READ_CHUNK = 256 * 1024  # bytes read from a client at once
LBA_OUT_OF_RANGE = 0x21  # ASC of ILLEGAL REQUEST, "logical block address out of range"
BASE_ALLOCATION_ID = 1  # our id for base:allocation in NBD_REP_META_CONTEXT and block status
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_WRITING = frozenset({Command.WRITE, Command.WRITE_ZEROES, Command.TRIM})
_FUA = int(CommandFlag.FUA)  # an int: ``int & IntFlag`` runs Flag.__and__ in Python


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


@dataclass(frozen=True)
class NbdClientInfo:
    """Who is connected: the peer's pid and uid from ``SO_PEERCRED`` (taken by the kernel at
    ``connect()``; None over TCP, and the pid None for a peer in another pid namespace) and
    the export it opened with NBD_OPT_GO or NBD_OPT_EXPORT_NAME (None while negotiating)."""

    pid: int | None
    uid: int | None
    export: str | None


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

    async def read(self, offset: int, length: int) -> bytes | bytearray | memoryview: ...

    async def write(self, offset: int, data: memoryview, fua: bool) -> None: ...

    async def flush(self) -> None: ...

    async def trim(self, offset: int, length: int) -> None: ...

    async def write_zeroes(self, offset: int, length: int, fua: bool) -> None: ...


def export_name(target: str, lun: int) -> str:
    """``<target-iqn>/<lun>``: unique per LUN and stable across relogins."""
    return f"{target}/{lun}"


def _errno_for(exc: BaseException, writing: bool) -> int:
    """The NBD error for a failed SCSI command: the sense decides EPERM and ENOSPC, the
    rest is EIO (the client cannot act on finer distinctions)."""
    if isinstance(exc, ScsiCommandError) and exc.sense is not None:
        if exc.sense.key == SenseKey.DATA_PROTECT:
            return wire.EPERM
        if exc.sense.key == SenseKey.ILLEGAL_REQUEST and exc.sense.asc == LBA_OUT_OF_RANGE:
            return wire.ENOSPC if writing else wire.EINVAL
    return wire.EIO


def _peer_credentials(writer: asyncio.StreamWriter) -> tuple[int | None, int | None]:
    """``(pid, uid)`` of a Unix-socket peer, as the kernel recorded them at ``connect()``;
    ``(None, None)`` over TCP, where SO_PEERCRED says nothing (pid 0, uid -1)."""
    sock = writer.get_extra_info("socket")
    if sock is None or sock.family != socket.AF_UNIX:
        return None, None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    except OSError:
        return None, None
    pid, uid, _ = _UCRED.unpack(raw)
    return (pid if pid > 0 else None), uid


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
    _zeros: memoryview = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._zeros = memoryview(bytes(self.max_transfer))

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
        _whole(await self.session.execute(cdb, lun=self.lun, **command), whole)

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

    async def read(self, offset: int, length: int) -> bytearray:
        buffer = bytearray(length)
        view = memoryview(buffer)
        size = self.block_size
        if length <= self.max_transfer:  # the common case: one command, no lists
            try:
                _whole(
                    await self.session.execute(
                        scsi.read16(offset // size, length // size), lun=self.lun,
                        read_buffer=view,
                    )
                )  # fmt: skip
            except ISCSIError as exc:
                raise _failed("READ", offset, exc, False) from exc
            return buffer
        pieces = [
            (at, self._run(scsi.read16(lba, blocks), read_buffer=view[at : at + blocks * size]))
            for lba, blocks, at in self._chunks(offset, length, self.max_transfer)
        ]
        await self._all("READ", offset, pieces)
        return buffer

    async def write(self, offset: int, data: memoryview, fua: bool) -> None:
        size = self.block_size
        if len(data) <= self.max_transfer:
            try:
                _whole(
                    await self.session.execute(
                        scsi.write16(offset // size, len(data) // size, fua=fua), lun=self.lun,
                        data_out=data,
                    )
                )  # fmt: skip
            except ISCSIError as exc:
                raise _failed("WRITE", offset, exc, True) from exc
            return
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
            raise NbdIOError(_errno_for(exc, True), f"FLUSH: {exc}") from exc

    async def write_zeroes(self, offset: int, length: int, fua: bool) -> None:
        size = self.block_size
        pieces = [
            (
                at,
                self._run(
                    scsi.write16(lba, blocks, fua=fua), data_out=self._zeros[: blocks * size]
                ),
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


def _whole(result: Any, whole: bool = True) -> None:
    """A command's result as NBD needs it: GOOD status and, with ``whole``, every byte
    moved (NBD has no short reads or writes)."""
    result.check()
    if whole and result.residual_count:
        raise ISCSIError(f"short transfer: {result.residual_count} bytes not moved")


def _failed(what: str, offset: int, exc: ISCSIError, writing: bool) -> NbdIOError:
    return NbdIOError(_errno_for(exc, writing), f"{what} at offset {offset}: {exc}", offset)


def _flags(export: Export, structured: bool) -> int:
    flags = TF.HAS_FLAGS | TF.SEND_FLUSH | TF.SEND_FUA | TF.SEND_WRITE_ZEROES | TF.CAN_MULTI_CONN
    if structured:  # a read is always answered in one data chunk: "don't fragment" is free
        flags |= TF.SEND_DF
    if export.read_only:
        flags |= TF.READ_ONLY
    if export.can_trim:
        flags |= TF.SEND_TRIM
    return int(flags)


class _Client:
    """One NBD connection: option haggling, then requests handled as concurrent tasks whose
    replies are written whole (one ``writelines``) in whatever order they finish."""

    def __init__(
        self,
        server: NbdServer,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.pid, self.uid = _peer_credentials(writer)
        self.export: Export | None = None
        self.export_name: str | None = None  # what the client opened, for clients()
        self.no_zeroes = False
        self.structured = False  # NBD_OPT_STRUCTURED_REPLY was acknowledged
        # The contexts of the last NBD_OPT_SET_META_CONTEXT and the export it named; they
        # count only if the client then opens that same export.
        self.meta_export: str | None = None
        self.meta_contexts: tuple[str, ...] = ()
        self.block_status = False  # transmission: base:allocation was selected for it
        self.requests: set[asyncio.Task[None]] = set()
        self._room = asyncio.Event()  # set when fewer than MAX_IN_FLIGHT requests run
        self._loop = asyncio.get_running_loop()
        self._replies: list[bytes | bytearray | memoryview] = []  # to write this iteration
        self._flush_scheduled = False
        self.log = log.bind(peer_pid=self.pid, peer_uid=self.uid) if self.uid is not None else log

    def info(self) -> NbdClientInfo:
        return NbdClientInfo(self.pid, self.uid, self.export_name)

    async def run(self) -> None:
        try:
            self.writer.write(wire.server_greeting())
            (client_flags,) = struct.unpack(">I", await self.reader.readexactly(4))
            if client_flags & ~int(wire.ClientFlag.FIXED_NEWSTYLE | wire.ClientFlag.NO_ZEROES):
                raise NbdProtocolError(f"unknown client flags 0x{client_flags:x}")
            self.no_zeroes = bool(client_flags & wire.ClientFlag.NO_ZEROES)
            if await self._haggle():
                await self._transmit()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client went away; its requests finish on their own
        except NbdProtocolError as exc:
            self.log.warning("nbd client dropped", reason=str(exc))
        finally:
            self.writer.close()

    def _send(self, *parts: bytes | bytearray | memoryview) -> None:
        if not self.writer.is_closing():
            self.writer.writelines(parts)

    def _reply(self, *parts: bytes | bytearray | memoryview) -> None:
        """Queue a reply to a request: the replies of the requests that finish in one loop
        iteration leave in one ``writelines`` (one system call); a lone request's reply
        leaves at once, since there is no batch to wait for."""
        if self.writer.is_closing():
            return
        self._replies.extend(parts)
        if len(self.requests) <= 1 and not self._flush_scheduled:
            self._flush_replies()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush_replies)

    def _flush_replies(self) -> None:
        self._flush_scheduled = False
        replies, self._replies = self._replies, []
        if replies and not self.writer.is_closing():
            self.writer.writelines(replies)

    def _refuse(self, option: int, reply: Reply, message: str) -> None:
        self._send(wire.option_error(option, reply, message))

    async def _haggle(self) -> bool:
        """Options until one moves to transmission (True) or the client gives up (False)."""
        while True:
            magic, option, length = wire.OPTION_HEADER.unpack(
                await self.reader.readexactly(wire.OPTION_HEADER.size)
            )
            if magic != wire.IHAVEOPT:
                raise NbdProtocolError(f"bad option magic 0x{magic:x}")
            if length > wire.MAX_OPTION_DATA:
                raise NbdProtocolError(f"option {option} carries {length} bytes")
            data = await self.reader.readexactly(length)
            match option:
                case Option.EXPORT_NAME:
                    name = data.decode(errors="replace")
                    export = self.server.exports.get(name)
                    if export is None:
                        raise NbdProtocolError("NBD_OPT_EXPORT_NAME for an unknown export")
                    self._open(export, name)
                    reply = wire.export_name_reply(
                        export.size, _flags(export, self.structured), self.no_zeroes
                    )
                    self._send(reply)
                    return True
                case Option.ABORT:
                    self._send(wire.option_reply(option, Reply.ACK))
                    await self.writer.drain()
                    return False
                case Option.LIST:
                    if data:
                        self._refuse(option, Reply.ERR_INVALID, "NBD_OPT_LIST carries no data")
                        continue
                    for name in list(self.server.exports):
                        raw = name.encode()
                        self._send(
                            wire.option_reply(
                                option, Reply.SERVER, struct.pack(">I", len(raw)) + raw
                            )
                        )
                    self._send(wire.option_reply(option, Reply.ACK))
                case Option.INFO | Option.GO:
                    if self._info(option, data) and option == Option.GO:
                        return True
                case Option.STRUCTURED_REPLY:
                    self._structured_reply(data)
                case Option.LIST_META_CONTEXT | Option.SET_META_CONTEXT:
                    self._meta_context(option, data)
                case _:
                    self._refuse(option, Reply.ERR_UNSUP, f"option {option} is not supported")
            await self.writer.drain()

    def _open(self, export: Export, name: str) -> None:
        """The client moves to transmission with ``export``: what it negotiated for that
        export (and only that one) applies from now on."""
        self.export = export
        self.export_name = name
        self.block_status = self.meta_export == name and wire.BASE_ALLOCATION in self.meta_contexts

    def _structured_reply(self, data: bytes) -> None:
        """NBD_OPT_STRUCTURED_REPLY: acknowledged once; again, or with data, is invalid (the
        spec lets a server refuse a repeated state-changing option)."""
        option = Option.STRUCTURED_REPLY
        if data:
            self._refuse(option, Reply.ERR_INVALID, "NBD_OPT_STRUCTURED_REPLY carries no data")
        elif self.structured:
            self._refuse(option, Reply.ERR_INVALID, "structured replies are already negotiated")
        else:
            self.structured = True
            self._send(wire.option_reply(option, Reply.ACK))

    def _meta_context(self, option: int, data: bytes) -> None:
        """NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT, after structured replies
        only. SET replaces the selection even when it fails, as the spec says."""
        setting = option == Option.SET_META_CONTEXT
        if setting:
            self.meta_export, self.meta_contexts = None, ()
        if not self.structured:
            name = "NBD_OPT_SET_META_CONTEXT" if setting else "NBD_OPT_LIST_META_CONTEXT"
            self._refuse(option, Reply.ERR_INVALID, f"{name} needs NBD_OPT_STRUCTURED_REPLY first")
            return
        try:
            request = wire.parse_meta_context_request(data)
            contexts = wire.select_meta_contexts(request.queries, listing=not setting)
        except ValueError as exc:  # UnicodeDecodeError is one
            self._refuse(option, Reply.ERR_INVALID, str(exc))
            return
        if request.name not in self.server.exports:
            self._refuse(option, Reply.ERR_UNKNOWN, f"no export named {request.name!r}")
            return
        for context in contexts:  # listed ids are reserved: 0
            context_id = BASE_ALLOCATION_ID if setting else 0
            self._send(
                wire.option_reply(
                    option, Reply.META_CONTEXT, wire.meta_context(context_id, context)
                )
            )
        if setting:
            self.meta_export, self.meta_contexts = request.name, contexts
        self._send(wire.option_reply(option, Reply.ACK))

    def _info(self, option: int, data: bytes) -> bool:
        """Answer NBD_OPT_INFO/GO; True when the export exists (and GO moves on)."""
        try:
            request = wire.parse_info_request(data)
        except ValueError as exc:  # UnicodeDecodeError is one
            self._refuse(option, Reply.ERR_INVALID, str(exc))
            return False
        export = self.server.exports.get(request.name)
        if export is None:
            self._refuse(option, Reply.ERR_UNKNOWN, f"no export named {request.name!r}")
            return False
        flags = _flags(export, self.structured)
        self._send(wire.option_reply(option, Reply.INFO, wire.info_export(export.size, flags)))
        maximum = min(wire.MAX_PAYLOAD, export.size) if export.size else wire.MAX_PAYLOAD
        self._send(
            wire.option_reply(
                option,
                Reply.INFO,
                wire.info_block_size(export.block_size, max(export.block_size, 4096), maximum),
            )
        )
        if wire.Info.NAME in request.items:
            self._send(wire.option_reply(option, Reply.INFO, wire.info_name(export.name)))
        self._send(wire.option_reply(option, Reply.ACK))
        if option == Option.GO:
            self._open(export, request.name)
        return True

    async def _transmit(self) -> None:
        """Read requests and start each as a task; at most MAX_IN_FLIGHT run at once.

        Requests are cut from whatever the socket delivered (one ``read`` brings many when
        the client keeps many in flight), not read one ``readexactly`` at a time.
        """
        assert self.export is not None
        export = self.export
        header = wire.REQUEST
        pending = bytearray()
        try:
            while True:
                used = 0
                while len(pending) - used >= header.size and len(self.requests) < MAX_IN_FLIGHT:
                    magic, flags, kind, cookie, offset, length = header.unpack_from(pending, used)
                    if magic != wire.REQUEST_MAGIC:
                        raise NbdProtocolError(f"bad request magic 0x{magic:x}")
                    payload = None
                    if kind == Command.WRITE:
                        if length > wire.MAX_PAYLOAD:
                            raise NbdProtocolError(f"write of {length} bytes is beyond 32 MiB")
                        start = used + header.size
                        if len(pending) - start < length:
                            break  # the rest of the payload is still on its way
                        payload = memoryview(bytes(pending[start : start + length]))
                        used = start + length
                    else:
                        used += header.size
                    if kind == Command.DISC:
                        return
                    # loop.create_task: asyncio.create_task asks for the running loop, a
                    # getpid() system call per request on Python 3.11.
                    task = self._loop.create_task(
                        self._handle(export, flags, kind, cookie, offset, length, payload)
                    )
                    self.requests.add(task)
                    task.add_done_callback(self._finished)
                del pending[:used]
                if len(self.requests) >= MAX_IN_FLIGHT:
                    self._room.clear()
                    await self._room.wait()
                    continue
                # Back-pressure once per read, not per reply: a client that does not read
                # its replies is not read from either.
                await self.writer.drain()
                chunk = await self.reader.read(READ_CHUNK)
                if not chunk:
                    raise asyncio.IncompleteReadError(bytes(pending), None)
                pending += chunk
        finally:
            # The spec asks that requests sent before NBD_CMD_DISC complete; for a client
            # that vanished they complete into a closed socket, which is harmless.
            if self.requests:
                await asyncio.gather(*self.requests, return_exceptions=True)
            self._flush_replies()
            with contextlib.suppress(ConnectionError):
                await self.writer.drain()

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.requests.discard(task)
        if len(self.requests) < MAX_IN_FLIGHT:
            self._room.set()

    def _check(self, export: Export, kind: int, offset: int, length: int) -> None:
        if kind in _WRITING and export.read_only:
            raise NbdRequestError(wire.EPERM, "the export is read-only")
        if kind == Command.READ and length > wire.MAX_PAYLOAD:
            raise NbdRequestError(wire.EINVAL, f"a read of {length} bytes is beyond 32 MiB")
        if offset + length > export.size:
            writing = kind in (Command.WRITE, Command.WRITE_ZEROES)
            raise NbdRequestError(
                wire.ENOSPC if writing else wire.EINVAL,
                f"{length} bytes at offset {offset} go beyond the end of the disk "
                f"({export.size} bytes)",
            )
        if offset % export.block_size or length % export.block_size:
            raise NbdRequestError(
                wire.EINVAL,
                f"offset {offset} and length {length} must be multiples of the block size "
                f"{export.block_size}",
            )

    async def _handle(
        self,
        export: Export,
        flags: int,
        kind: int,
        cookie: int,
        offset: int,
        length: int,
        payload: memoryview | None,
    ) -> None:
        data: bytes | bytearray | memoryview = b""
        failure: NbdRequestError | None = None
        fua = bool(flags & _FUA)
        try:
            match kind:
                case Command.READ:
                    self._check(export, kind, offset, length)
                    data = await export.read(offset, length) if length else b""
                case Command.WRITE:
                    assert payload is not None
                    self._check(export, kind, offset, length)
                    if length:
                        await export.write(offset, payload, fua)
                case Command.FLUSH:
                    await export.flush()
                case Command.WRITE_ZEROES:
                    self._check(export, kind, offset, length)
                    if length:
                        await export.write_zeroes(offset, length, fua)
                case Command.TRIM:
                    self._check(export, kind, offset, length)
                    if length:
                        await export.trim(offset, length)
                        if fua:
                            await export.flush()
                case Command.BLOCK_STATUS if self.block_status:
                    self._check(export, kind, offset, length)
                    if not length:
                        raise NbdRequestError(wire.EINVAL, "block status of 0 bytes")
                case Command.BLOCK_STATUS:
                    raise NbdRequestError(
                        wire.EINVAL, "no metadata context was selected for this export"
                    )
                case _:
                    raise NbdRequestError(wire.EINVAL, f"unsupported command {kind}")
        except NbdRequestError as exc:
            failure = exc
        except (ISCSIError, OSError) as exc:  # from an Export that does not say where
            failure = NbdIOError(_errno_for(exc, kind in _WRITING), str(exc))
        if failure is not None:
            if isinstance(failure, NbdIOError):
                self.log.warning(
                    "nbd request failed", export=export.name, command=kind, offset=offset,
                    length=length, error=str(failure),
                )  # fmt: skip
            self._send_error(cookie, failure)
        elif not self.structured:
            self._reply(wire.simple_reply(cookie), data)
        elif kind == Command.READ and length:
            self._reply(wire.offset_data_header(cookie, offset, len(data)), data)
        elif kind == Command.BLOCK_STATUS:  # every block is allocated, contents unknown
            self._reply(wire.block_status(cookie, BASE_ALLOCATION_ID, [(length, 0)]))
        else:
            self._reply(wire.structured_none(cookie))

    def _send_error(self, cookie: int, failure: NbdRequestError) -> None:
        if not self.structured:
            self._reply(wire.simple_reply(cookie, failure.error))
            return
        self._reply(wire.structured_error(cookie, failure.error, str(failure), failure.offset))


class NbdServer:
    """Serves the exports in ``exports`` (name -> :class:`Export`) on Unix and TCP sockets.

    The daemon :meth:`add`\\ s an export per LUN at login and :meth:`remove`\\ s them at logout;
    removing one hangs up the clients using it once their requests are answered.
    """

    def __init__(self, exports: dict[str, Export] | None = None) -> None:
        self.exports: dict[str, Export] = exports if exports is not None else {}
        self._servers: list[asyncio.AbstractServer] = []
        self._clients: dict[asyncio.Task[None], _Client] = {}
        self._paths: list[str] = []
        self._left = asyncio.Event()  # set whenever a client has gone

    @property
    def in_flight(self) -> int:
        """Requests being served now, over all clients (for status, and tests that must
        catch a transfer in the middle)."""
        return sum(len(client.requests) for client in self._clients.values())

    def clients(self) -> list[NbdClientInfo]:
        """Every connected client, in the order they connected: the peer's pid and uid
        (Unix socket only) and the export it opened. A client is listed from its
        ``connect()`` until its connection is closed and its last request answered."""
        return [client.info() for client in self._clients.values()]

    def add(self, export: Export) -> None:
        self.exports[export.name] = export

    def remove(self, name: str) -> None:
        export = self.exports.pop(name, None)
        for client in self._clients.values():
            if export is not None and client.export is export:
                client.reader.feed_eof()  # the reader stops; in-flight requests still reply

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = _Client(self, reader, writer)
        task = asyncio.current_task()
        assert task is not None
        self._clients[task] = client
        try:
            await client.run()
        finally:
            del self._clients[task]
            self._left.set()

    async def start_unix(self, path: str | os.PathLike[str], mode: int = 0o660) -> None:
        """Listen on a Unix socket, replacing a stale one left by an earlier daemon (the
        daemon starts this after its control socket proved that no other one is running)."""
        path = os.fspath(path)
        os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        server = await asyncio.start_unix_server(self._accept, path, limit=1 << 20)
        os.chmod(path, mode)
        self._servers.append(server)
        self._paths.append(path)

    async def start_tcp(self, host: str = "127.0.0.1", port: int = 10809) -> int:
        """Listen on TCP; returns the port (useful with port 0). NBD has no authentication:
        anyone who reaches the port can read and write every disk, so any address that is
        not loopback (``""`` and ``0.0.0.0`` are every address) is logged as a warning."""
        server = await asyncio.start_server(self._accept, host or None, port, limit=1 << 20)
        self._servers.append(server)
        bound = [sock.getsockname() for sock in server.sockets]
        exposed = [address for address in bound if not _is_loopback(address[0])]
        addresses = [_host_port(address) for address in bound]
        if exposed:
            log.warning(
                "nbd listening beyond loopback: NBD has no authentication, so anyone who "
                "can reach these addresses can read and write every exported disk",
                addresses=addresses,
            )
        else:
            log.info("nbd listening", addresses=addresses)
        return int(bound[0][1])

    def exports_in_use(self) -> set[str]:
        """The exports that at least one connected client has opened."""
        return {c.export_name for c in self._clients.values() if c.export_name is not None}

    async def wait_unused(self, names: Collection[str]) -> None:
        """Until no connected client uses any of ``names`` (the caller bounds the wait)."""
        while self.exports_in_use() & set(names):
            self._left.clear()
            await self._left.wait()

    async def close(self, keep: Collection[str] = ()) -> None:
        """Stop listening and drop every client (their SCSI commands are cancelled).

        With ``keep`` (export names), only the other exports go, with their clients: the
        kept exports stay served and the sockets stay open, so that a client of a kept
        export can also reconnect, until a final ``close()``.
        """
        kept = set(keep)
        if kept:
            for name in [name for name in self.exports if name not in kept]:
                del self.exports[name]
            # A client still negotiating can only open a kept export now: it stays.
            leaving = {
                task: client
                for task, client in self._clients.items()
                if client.export_name is not None and client.export_name not in kept
            }
        else:
            leaving = dict(self._clients)
            for server in self._servers:
                server.close()
        for task, client in leaving.items():
            for request in list(client.requests):
                request.cancel()
            task.cancel()
        await asyncio.gather(*leaving, return_exceptions=True)
        if kept:
            return
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        for path in self._paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self._paths.clear()


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_port(address: tuple[Any, ...]) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
