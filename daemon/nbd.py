"""An NBD server that carries each logged-in LUN to the host.

open-iscsi hands a LUN to the kernel, which makes it /dev/sdX. pyiscsid carries the data
itself, so it speaks NBD (fixed newstyle; simple replies, or structured replies and the
``base:allocation`` metadata context when the client asks for them) on a Unix socket, and
on TCP when the admin asks: ``nbd-client``, qemu, ``nbdcopy`` and ``qemu-img`` then reach
the LUN, and every NBD request goes to its :class:`~.nbd_export.Export` (for a LUN, SCSI
commands held across session recovery).

Each Unix-socket client is known by its ``SO_PEERCRED`` pid and uid and by the export it
opened (:meth:`NbdServer.clients`), so the daemon can tell which process uses which disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import os
import socket
import struct
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, cast

import structlog
from pyiscsid.protocol.errors import ISCSIError

from . import nbd_protocol as wire
from . import unixsocket
from .batching import IterationBatch
from .busypoll import BusyPoll
from .byte_budget import ByteBudget
from .nbd_export import Answered, Export, NbdIOError, NbdRequestError, errno_for
from .nbd_protocol import Command, CommandFlag, NbdProtocolError, Option, Reply
from .nbd_protocol import TransmissionFlag as TF

log = structlog.get_logger("pyiscsid.nbd")

MAX_IN_FLIGHT = 64  # requests per client; the reader stops reading beyond this
READ_CHUNK = 256 * 1024  # bytes read from a client at once
DRAIN_TIMEOUT = 10.0  # seconds a leaving client gets to take its last replies
# Payload bytes (read data, write data) held for requests, from the moment their header is
# read until their reply has left for the socket. Without a limit, MAX_IN_FLIGHT reads of
# 32 MiB made one client that never reads its replies cost the daemon 2 GiB, and every
# further connection as much again. A request that would go beyond a limit waits (the
# client is not read from meanwhile: back-pressure, not an error); one larger than a limit
# on its own is served once nothing else is held.
CLIENT_BYTES_IN_FLIGHT = 64 << 20  # per client: two 32 MiB requests, or many small ones
SERVER_BYTES_IN_FLIGHT = 256 << 20  # over all clients: what the daemon may hold for NBD
# Seconds a client may leave its replies unread (the bytes they hold stay taken) before it
# is warned about; if other clients then wait for the server's budget, it is dropped: four
# clients that never read would otherwise hold the whole budget and stall every other one.
STALL_TIMEOUT = 30.0
# Seconds from connect() until a client has chosen its export (NBD_OPT_GO or
# NBD_OPT_EXPORT_NAME): real clients take milliseconds; one that stalls in the option
# haggling would otherwise hold its connection (and a place under MAX_CLIENTS) forever.
HANDSHAKE_TIMEOUT = 30.0
# Connections served at once (negotiating or transmitting); beyond this, a new one is
# closed at once. Every connection costs buffers and tasks; a real host has a few per disk.
MAX_CLIENTS = 256
BASE_ALLOCATION_ID = 1  # our id for base:allocation in NBD_REP_META_CONTEXT and block status
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_WRITING = frozenset({Command.WRITE, Command.WRITE_ZEROES, Command.TRIM})
_PAYLOAD = frozenset({Command.READ, Command.WRITE})  # the commands that carry data
_FUA = int(CommandFlag.FUA)  # an int: ``int & IntFlag`` runs Flag.__and__ in Python
# A request as read: export, flags, kind, cookie, offset, length, the payload of a write, and
# its bytes taken from the budgets. A plain tuple: one is made per request.
_Request = tuple[Export, int, int, int, int, int, memoryview | None, int]


@dataclass(frozen=True)
class NbdClientInfo:
    """Who is connected: the peer's pid and uid from ``SO_PEERCRED`` (taken by the kernel at
    ``connect()``; None over TCP, and the pid None for a peer in another pid namespace) and
    the export it opened with NBD_OPT_GO or NBD_OPT_EXPORT_NAME (None while negotiating)."""

    pid: int | None
    uid: int | None
    export: str | None


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
        sock = writer.get_extra_info("socket")
        self._fd = sock.fileno() if sock is not None else -1  # for busy polling
        self.export: Export | None = None
        self.export_name: str | None = None  # what the client opened, for clients()
        self.no_zeroes = False
        self.structured = False  # NBD_OPT_STRUCTURED_REPLY was acknowledged
        # The contexts of the last NBD_OPT_SET_META_CONTEXT and the export it named; they
        # count only if the client then opens that same export.
        self.meta_export: str | None = None
        self.meta_contexts: tuple[str, ...] = ()
        self.block_status = False  # transmission: base:allocation was selected for it
        # In flight: the tasks of requests served the full way, and the disk's answers to
        # those started without a task (see _start).
        self.requests: set[asyncio.Future[Any]] = set()
        self._dropped = False  # the server dropped us: no request goes on
        self._room = asyncio.Event()  # set when fewer than MAX_IN_FLIGHT requests run
        self._loop = asyncio.get_running_loop()
        self._replies: list[bytes | bytearray | memoryview] = []  # to write this iteration
        self._batch = IterationBatch(self._loop, self._flush_replies)
        # Payload bytes held for this client's requests (CLIENT_BYTES_IN_FLIGHT), taken from
        # the server's budget too. A request's bytes are given back once its reply has left
        # for the socket: those of the replies in _replies, then of replies written but
        # still in the transport's buffer (given back by _release_when_sent).
        self._budget = ByteBudget(CLIENT_BYTES_IN_FLIGHT)
        self._queued_bytes = 0
        self._unsent_bytes = 0
        self._releaser: asyncio.Task[None] | None = None
        self.log = log.bind(peer_pid=self.pid, peer_uid=self.uid) if self.uid is not None else log

    def info(self) -> NbdClientInfo:
        return NbdClientInfo(self.pid, self.uid, self.export_name)

    async def run(self) -> None:
        try:
            try:
                async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                    chosen = await self._handshake()
            except TimeoutError:
                self.log.warning(
                    "nbd client dropped",
                    reason=f"no export chosen within {HANDSHAKE_TIMEOUT:g} seconds",
                )
                return
            if chosen:
                await self._transmit()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client went away; its requests finish on their own
        except NbdProtocolError as exc:
            self.log.warning("nbd client dropped", reason=str(exc))
        finally:
            self.writer.close()

    async def _handshake(self) -> bool:
        """The greeting, then options until one moves to transmission (True) or the client
        gives up (False)."""
        self.writer.write(wire.server_greeting())
        (client_flags,) = struct.unpack(">I", await self.reader.readexactly(4))
        if client_flags & ~int(wire.ClientFlag.FIXED_NEWSTYLE | wire.ClientFlag.NO_ZEROES):
            raise NbdProtocolError(f"unknown client flags 0x{client_flags:x}")
        self.no_zeroes = bool(client_flags & wire.ClientFlag.NO_ZEROES)
        return await self._haggle()

    def _send(self, *parts: bytes | bytearray | memoryview) -> None:
        if not self.writer.is_closing():
            self.writer.writelines(parts)

    def _reply(self, *parts: bytes | bytearray | memoryview, charge: int = 0) -> None:
        """Queue a reply to a request, written with the others of this loop iteration
        (:mod:`batching`); a lone request's at once. ``charge``: the request's payload
        bytes, given back once the reply has left."""
        if self.writer.is_closing():
            self._give(charge)
            return
        self._replies.extend(parts)
        self._queued_bytes += charge
        self._batch.request(alone=len(self.requests) <= 1)

    def _flush_replies(self) -> None:
        replies, self._replies = self._replies, []
        charge, self._queued_bytes = self._queued_bytes, 0
        if self.writer.is_closing():
            self._give(charge)
            return
        if replies:
            self.writer.writelines(replies)
        if charge:
            self._unsent_bytes += charge
            if self._sent():
                self._give(self._unsent_bytes)
                self._unsent_bytes = 0
            elif self._releaser is None:
                self._releaser = self._loop.create_task(self._release_when_sent())

    def _sent(self) -> bool:
        """The replies written have left, bar what the transport holds below its
        high-water mark (where it stops asking writers to wait)."""
        transport = self.writer.transport
        return transport.get_write_buffer_size() <= transport.get_write_buffer_limits()[1]

    async def _release_when_sent(self) -> None:
        """Give back the bytes of replies in the transport's buffer as the client takes them
        (a client that does not read its replies keeps them, and is not read from; after
        STALL_TIMEOUT it is dropped if other clients wait for those bytes)."""
        warned = False
        try:
            while self._unsent_bytes:
                try:
                    async with asyncio.timeout(STALL_TIMEOUT):
                        await self.writer.drain()
                except TimeoutError:
                    if self.server.budget.waiting:
                        self.log.warning(
                            "nbd client dropped", export=self.export_name,
                            reason=f"its replies were left unread for {STALL_TIMEOUT:g} "
                            f"seconds, holding {self._unsent_bytes} bytes other clients "
                            "wait for",
                        )  # fmt: skip
                        self.writer.transport.abort()
                        return
                    if not warned:
                        warned = True
                        self.log.warning(
                            "nbd client is not reading its replies", export=self.export_name,
                            held=self._unsent_bytes, seconds=STALL_TIMEOUT,
                        )  # fmt: skip
                    continue
                if self._sent():
                    self._give(self._unsent_bytes)
                    self._unsent_bytes = 0
        except OSError:
            pass  # the connection is gone, and its buffer with it
        finally:
            self._give(self._unsent_bytes)
            self._unsent_bytes = 0
            self._releaser = None

    def _try_take(self, charge: int) -> bool:
        """Take ``charge`` bytes from the client's budget and the server's, if both have it
        now (the common case, without a wait)."""
        if not self._budget.try_take(charge):
            return False
        if self.server.budget.try_take(charge):
            return True
        self._budget.give(charge)
        return False

    async def _take(self, charge: int) -> None:
        await self._budget.take(charge)
        try:
            await self.server.budget.take(charge)
        except BaseException:
            self._budget.give(charge)
            raise

    def _give(self, charge: int) -> None:
        if charge:
            self._budget.give(charge)
            self.server.budget.give(charge)

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
        """Read requests and start each as a task; at most MAX_IN_FLIGHT run at once, and
        the payload bytes of a read or write are taken from the budgets (CLIENT_ and
        SERVER_BYTES_IN_FLIGHT) before its data is allocated or its payload read.

        Requests are cut from whatever the socket delivered (one ``read`` brings many when
        the client keeps many in flight), not read one ``readexactly`` at a time.
        """
        assert self.export is not None
        export = self.export
        header = wire.REQUEST
        pending = bytearray()
        taken = 0  # bytes taken for the write at the head of ``pending``, its payload awaited
        try:
            while True:
                used = 0
                while len(pending) - used >= header.size and len(self.requests) < MAX_IN_FLIGHT:
                    magic, flags, kind, cookie, offset, length = header.unpack_from(pending, used)
                    if magic != wire.REQUEST_MAGIC:
                        raise NbdProtocolError(f"bad request magic 0x{magic:x}")
                    if kind == Command.WRITE and length > wire.MAX_PAYLOAD:
                        raise NbdProtocolError(f"write of {length} bytes is beyond 32 MiB")
                    # (a read beyond 32 MiB fails without allocating: nothing to take)
                    big = kind == Command.READ and length > wire.MAX_PAYLOAD
                    if not taken and kind in _PAYLOAD and not big:
                        if length and not self._try_take(length):
                            await self._take(length)
                            if self.writer.is_closing():  # it left while we waited: its
                                self._give(length)  # later requests go unserved
                                return
                        taken = length
                    payload = None
                    if kind == Command.WRITE:
                        start = used + header.size
                        if len(pending) - start < length:
                            break  # the rest of the payload is still on its way
                        with memoryview(pending) as view:  # one copy, out of the buffer
                            payload = memoryview(bytes(view[start : start + length]))
                        used = start + length
                    else:
                        used += header.size
                    if kind == Command.DISC:
                        return
                    request = (export, flags, kind, cookie, offset, length, payload, taken)
                    taken = 0
                    if not (kind in _PAYLOAD and length and self._start(request)):
                        self._spawn(request)
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
            self._give(taken)
            # The spec asks that requests sent before NBD_CMD_DISC complete; for a client
            # that vanished they complete into a closed socket, which is harmless.
            while self.requests:  # a started request may go the full way meanwhile
                await asyncio.gather(*self.requests, return_exceptions=True)
            self._flush_replies()
            with contextlib.suppress(ConnectionError):
                try:
                    async with asyncio.timeout(DRAIN_TIMEOUT):
                        await self.writer.drain()
                except TimeoutError:  # a client that stopped reading: its replies go
                    self.writer.transport.abort()

    def _spawn(self, request: _Request) -> None:
        """Serve a request by a task of its own (:meth:`_handle`): the full way, which holds
        it through session recovery and answers errors."""
        # loop.create_task: asyncio.create_task asks for the running loop, a getpid()
        # system call per request on Python 3.11.
        task = self._loop.create_task(self._handle(*request))
        self.requests.add(task)
        task.add_done_callback(self._finished)

    def _start(self, request: _Request) -> bool:
        """Start a valid READ or WRITE without a task, if the export can start it now (most
        requests: see :meth:`Export.start`); False leaves it to :meth:`_spawn`."""
        export, flags, kind, _, offset, length, payload, _ = request
        try:
            self._check(export, kind, offset, length)
        except NbdRequestError:
            return False  # _handle answers it
        started = export.start(offset, length, payload, bool(flags & _FUA))
        if started is None:
            return False
        answer, data = started
        self.requests.add(answer)
        answer.add_done_callback(functools.partial(self._answered, request, data))
        return True

    def _answered(
        self, request: _Request, data: bytearray | None, answer: asyncio.Future[Any]
    ) -> None:
        """The disk answered a request :meth:`_start`\\ ed: reply, fail it, or send it the
        full way once more (an outage, a timeout: see :meth:`Export.judge`), which holds
        it through recovery, as the SCSI layer retries such a command."""
        export, _, kind, cookie, offset, length, _, charge = request
        try:
            if answer.cancelled() or self._dropped:
                self._give(charge)
                return
            verdict = export.judge(answer, offset, kind == Command.WRITE)
            if verdict is Answered.SERVED:
                self._served(kind, cookie, offset, data if data is not None else b"", charge)
            elif verdict is Answered.RETRY:
                self._spawn(request)
            else:
                self._fail(export, kind, offset, length, cookie, verdict, charge)
        finally:
            self._finished(answer)  # after the reply: busy polling waits for the next request

    def drop(self) -> None:
        """The server drops this client: its requests are cancelled (and a request started
        without a task is not sent the full way afterwards), its connection aborted."""
        self._dropped = True
        for request in list(self.requests):
            request.cancel()
        # abort, not close: a client that does not read its replies must not hold the
        # daemon's shutdown on a drain that never ends.
        self.writer.transport.abort()

    def _finished(self, task: asyncio.Future[Any]) -> None:
        self.requests.discard(task)
        if len(self.requests) < MAX_IN_FLIGHT:
            self._room.set()
        poll = self.server.busy_poll
        if poll is not None and not self.requests and self._fd >= 0 and self._reading():
            poll.wait_for_request(self._fd, self.reader.feed_data)  # read by _transmit

    def _reading(self) -> bool:
        """Whether the client's socket is still ours to read: not dropped, closed or at its
        end (its descriptor may already serve another connection)."""
        return not (self._dropped or self.writer.is_closing() or self.reader.at_eof())

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
        charge: int = 0,
    ) -> None:
        """Serve one request; ``charge``: its bytes taken from the budgets, given back
        once its reply has left."""
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
            failure = NbdIOError(errno_for(exc, kind in _WRITING), str(exc))
        except BaseException:  # cancelled (close()), or a bug: there is no reply
            self._give(charge)
            raise
        if failure is not None:
            self._fail(export, kind, offset, length, cookie, failure, charge)
        elif kind == Command.BLOCK_STATUS and self.structured:
            # every block is allocated, contents unknown
            self._reply(wire.block_status(cookie, BASE_ALLOCATION_ID, [(length, 0)]))
        else:
            self._served(kind, cookie, offset, data, charge)

    def _served(
        self, kind: int, cookie: int, offset: int, data: bytes | bytearray | memoryview, charge: int
    ) -> None:
        """The reply to a request served: its data, if a read."""
        if not self.structured:
            self._reply(wire.simple_reply(cookie), data, charge=charge)
        elif kind == Command.READ and data:
            self._reply(wire.offset_data_header(cookie, offset, len(data)), data, charge=charge)
        else:
            self._reply(wire.structured_none(cookie), charge=charge)

    def _fail(
        self,
        export: Export,
        kind: int,
        offset: int,
        length: int,
        cookie: int,
        failure: NbdRequestError,
        charge: int,
    ) -> None:
        """Answer a failed request; the disk's failures (not a client's mistakes) are
        logged."""
        if isinstance(failure, NbdIOError):
            self.log.warning(
                "nbd request failed", export=export.name, command=kind, offset=offset,
                length=length, error=str(failure),
            )  # fmt: skip
        self._send_error(cookie, failure, charge)

    def _send_error(self, cookie: int, failure: NbdRequestError, charge: int) -> None:
        if not self.structured:
            self._reply(wire.simple_reply(cookie, failure.error), charge=charge)
            return
        error = wire.structured_error(cookie, failure.error, str(failure), failure.offset)
        self._reply(error, charge=charge)


class NbdServer:
    """Serves the exports in ``exports`` (name -> :class:`Export`) on Unix and TCP sockets.

    The daemon :meth:`add`\\ s an export per LUN at login and :meth:`remove`\\ s them at logout;
    removing one hangs up the clients using it once their requests are answered.
    """

    def __init__(
        self, exports: dict[str, Export] | None = None, *, busy_poll: BusyPoll | None = None
    ) -> None:
        self.exports: dict[str, Export] = exports if exports is not None else {}
        self.busy_poll = busy_poll  # iscsid.busy_poll: also waits for a lone client's next request
        self._servers: list[asyncio.AbstractServer] = []
        self._clients: dict[asyncio.Task[None], _Client] = {}
        self._files: list[unixsocket.SocketFile] = []  # the Unix sockets we bound
        self._left = asyncio.Event()  # set whenever a client has gone
        self.budget = ByteBudget(SERVER_BYTES_IN_FLIGHT)  # payload bytes, over all clients
        self._refused = 0  # connections refused since MAX_CLIENTS was reached

    @property
    def in_flight(self) -> int:
        """Requests being served now, over all clients (for status, and tests that must
        catch a transfer in the middle)."""
        return sum(len(client.requests) for client in self._clients.values())

    @property
    def bytes_in_flight(self) -> int:
        """Payload bytes held for requests now, over all clients: from a request's header
        until its reply has left for the socket (at most SERVER_BYTES_IN_FLIGHT, or one
        larger request alone)."""
        return self.budget.held

    @property
    def unix_path(self) -> str | None:
        """The Unix socket clients reach us on (``--nbd-socket``), once listening."""
        return self._files[0].path if self._files else None

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
                # The reader stops; in-flight requests still reply. Reading is paused first:
                # bytes arriving after feed_eof() would make the StreamReader assert.
                cast(asyncio.Transport, client.writer.transport).pause_reading()
                client.reader.feed_eof()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._clients) >= MAX_CLIENTS:
            if not self._refused:  # once until there is room again, not per connection
                log.warning("nbd connections refused: too many clients", limit=MAX_CLIENTS)
            self._refused += 1
            writer.transport.abort()
            return
        client = _Client(self, reader, writer)
        task = asyncio.current_task()
        assert task is not None
        self._clients[task] = client
        try:
            await client.run()
        except asyncio.CancelledError:
            pass  # close() dropped the client; asyncio 3.11 would log the cancellation
        finally:
            del self._clients[task]
            self._left.set()
            if self._refused:
                log.info("nbd connections accepted again", refused=self._refused)
                self._refused = 0

    async def start_unix(self, path: str | os.PathLike[str], mode: int = 0o660) -> None:
        """Listen on a Unix socket. A stale one left by a daemon that died is replaced; one
        another process answers on (:class:`~.unixsocket.SocketInUse`) and anything that is
        not a socket (:class:`~.unixsocket.SocketPathError`) are left alone."""
        sock, made = unixsocket.bind(path, mode=mode)
        try:
            sock.setblocking(False)
            server = await asyncio.start_unix_server(self._accept, sock=sock, limit=1 << 20)
        except BaseException:
            sock.close()
            made.remove()
            raise
        self._servers.append(server)
        self._files.append(made)

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
            client.drop()
            task.cancel()
        await asyncio.gather(*leaving, return_exceptions=True)
        if kept:
            return
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        for made in self._files:
            made.remove()  # unless a daemon started after us has put its own there
        self._files.clear()


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_port(address: tuple[Any, ...]) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
