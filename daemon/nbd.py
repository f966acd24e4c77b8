"""An NBD server that carries each logged-in LUN to the host.

open-iscsi hands a LUN to the kernel, which makes it /dev/sdX. pyiscsid carries the data
itself, so it speaks NBD (fixed newstyle, simple replies) on a Unix socket: ``nbd-client``,
qemu, ``nbdcopy`` and ``qemu-img`` then reach the LUN, and every NBD request becomes SCSI
commands through :meth:`Session.execute`, which holds them across session recovery.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
from collections.abc import Awaitable
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
LBA_OUT_OF_RANGE = 0x21  # ASC of ILLEGAL REQUEST, "logical block address out of range"


class NbdRequestError(Exception):
    """A request fails with this NBD error number; the connection lives on."""

    def __init__(self, error: int, reason: str) -> None:
        super().__init__(reason)
        self.error = error


class Export(Protocol):
    """What the server serves. Offsets and lengths reaching these methods are already
    checked: inside the disk and multiples of ``block_size``."""

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
        result = await self.session.execute(cdb, lun=self.lun, **command)
        result.check()
        if whole and result.residual_count:
            raise ISCSIError(f"short transfer: {result.residual_count} bytes not moved")

    async def _all(self, commands: list[Awaitable[None]]) -> None:
        """Pieces of one request go out together; the session's command window paces them."""
        if len(commands) == 1:
            await commands[0]
            return
        async with asyncio.TaskGroup() as group:
            for command in commands:
                group.create_task(command)  # type: ignore[arg-type]

    async def read(self, offset: int, length: int) -> bytearray:
        buffer = bytearray(length)
        view = memoryview(buffer)
        await self._all(
            [
                self._run(
                    scsi.read16(lba, blocks), read_buffer=view[at : at + blocks * self.block_size]
                )
                for lba, blocks, at in self._chunks(offset, length, self.max_transfer)
            ]
        )
        return buffer

    async def write(self, offset: int, data: memoryview, fua: bool) -> None:
        await self._all(
            [
                self._run(
                    scsi.write16(lba, blocks, fua=fua),
                    data_out=data[at : at + blocks * self.block_size],
                )
                for lba, blocks, at in self._chunks(offset, len(data), self.max_transfer)
            ]
        )

    async def flush(self) -> None:
        await self._run(scsi.synchronize_cache16())

    async def write_zeroes(self, offset: int, length: int, fua: bool) -> None:
        await self._all(
            [
                self._run(
                    scsi.write16(lba, blocks, fua=fua),
                    data_out=self._zeros[: blocks * self.block_size],
                )
                for lba, blocks, _ in self._chunks(offset, length, self.max_transfer)
            ]
        )

    async def trim(self, offset: int, length: int) -> None:
        if not self.can_trim:
            raise NbdRequestError(wire.EINVAL, "UNMAP is not supported by this LUN")
        limit = self.max_unmap_blocks * self.block_size
        for lba, blocks, _ in self._chunks(offset, length, limit):
            parameters = scsi.unmap_parameter_list([(lba, blocks)])
            await self._run(scsi.unmap(len(parameters)), whole=False, data_out=parameters)


def _flags(export: Export) -> int:
    flags = TF.HAS_FLAGS | TF.SEND_FLUSH | TF.SEND_FUA | TF.SEND_WRITE_ZEROES | TF.CAN_MULTI_CONN
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
        self.export: Export | None = None
        self.no_zeroes = False
        self.requests: set[asyncio.Task[None]] = set()
        self.slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self.log = log

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
                    export = self.server.exports.get(data.decode(errors="replace"))
                    if export is None:
                        raise NbdProtocolError("NBD_OPT_EXPORT_NAME for an unknown export")
                    self.export = export
                    self._send(wire.export_name_reply(export.size, _flags(export), self.no_zeroes))
                    return True
                case Option.ABORT:
                    self._send(wire.option_reply(option, Reply.ACK))
                    await self.writer.drain()
                    return False
                case Option.LIST:
                    if data:
                        self._send(wire.option_reply(option, Reply.ERR_INVALID))
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
                case _:
                    self._send(wire.option_reply(option, Reply.ERR_UNSUP))
            await self.writer.drain()

    def _info(self, option: int, data: bytes) -> bool:
        """Answer NBD_OPT_INFO/GO; True when the export exists (and GO moves on)."""
        try:
            request = wire.parse_info_request(data)
        except (ValueError, UnicodeDecodeError):
            self._send(wire.option_reply(option, Reply.ERR_INVALID))
            return False
        export = self.server.exports.get(request.name)
        if export is None:
            self._send(wire.option_reply(option, Reply.ERR_UNKNOWN))
            return False
        self._send(
            wire.option_reply(option, Reply.INFO, wire.info_export(export.size, _flags(export)))
        )
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
            self.export = export
        return True

    async def _transmit(self) -> None:
        assert self.export is not None
        export = self.export
        try:
            while True:
                await self.slots.acquire()
                header = await self.reader.readexactly(wire.REQUEST.size)
                magic, flags, kind, cookie, offset, length = wire.REQUEST.unpack(header)
                if magic != wire.REQUEST_MAGIC:
                    raise NbdProtocolError(f"bad request magic 0x{magic:x}")
                payload = None
                if kind == Command.WRITE:
                    if length > wire.MAX_PAYLOAD:
                        raise NbdProtocolError(f"write of {length} bytes is beyond 32 MiB")
                    payload = memoryview(await self.reader.readexactly(length))
                if kind == Command.DISC:
                    self.slots.release()
                    break
                task = asyncio.create_task(
                    self._handle(export, flags, kind, cookie, offset, length, payload)
                )
                self.requests.add(task)
                task.add_done_callback(self.requests.discard)
        finally:
            # The spec asks that requests sent before NBD_CMD_DISC complete; for a client
            # that vanished they complete into a closed socket, which is harmless.
            if self.requests:
                await asyncio.gather(*self.requests, return_exceptions=True)
            with contextlib.suppress(ConnectionError):
                await self.writer.drain()

    def _check(self, export: Export, kind: int, offset: int, length: int) -> None:
        if kind in (Command.WRITE, Command.TRIM, Command.WRITE_ZEROES) and export.read_only:
            raise NbdRequestError(wire.EPERM, "export is read-only")
        if kind == Command.READ and length > wire.MAX_PAYLOAD:
            raise NbdRequestError(wire.EINVAL, "read beyond 32 MiB")
        if offset + length > export.size:
            writing = kind in (Command.WRITE, Command.WRITE_ZEROES)
            raise NbdRequestError(wire.ENOSPC if writing else wire.EINVAL, "beyond the disk")
        if offset % export.block_size or length % export.block_size:
            raise NbdRequestError(wire.EINVAL, "not aligned to the block size")

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
        error = 0
        fua = bool(flags & CommandFlag.FUA)
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
                case _:
                    raise NbdRequestError(wire.EINVAL, f"unsupported command {kind}")
        except NbdRequestError as exc:
            error = exc.error
        except (ISCSIError, OSError) as exc:
            writing = kind in (Command.WRITE, Command.WRITE_ZEROES)
            error = _errno_for(exc, writing)
            self.log.warning(
                "nbd request failed",
                export=export.name,
                command=kind,
                offset=offset,
                error=str(exc),
            )
        finally:
            self.slots.release()
        if error:
            self._send(wire.simple_reply(cookie, error))
        else:
            self._send(wire.simple_reply(cookie), data)
        with contextlib.suppress(ConnectionError):
            await self.writer.drain()


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

    @property
    def in_flight(self) -> int:
        """Requests being served now, over all clients (for status, and tests that must
        catch a transfer in the middle)."""
        return sum(len(client.requests) for client in self._clients.values())

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
        """Listen on TCP (loopback by default: NBD has no authentication); returns the port."""
        server = await asyncio.start_server(self._accept, host, port, limit=1 << 20)
        self._servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        """Stop listening and drop every client (their SCSI commands are cancelled)."""
        for server in self._servers:
            server.close()
        for task, client in list(self._clients.items()):
            for request in list(client.requests):
                request.cancel()
            task.cancel()
        await asyncio.gather(*self._clients, return_exceptions=True)
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        for path in self._paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self._paths.clear()
