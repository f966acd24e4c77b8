"""The NBD server (daemon/nbd.py) over a real Unix socket, serving an in-memory disk: the
option haggling and replies byte for byte through a raw client (structured replies,
metadata contexts, block status, error chunks, simple replies unchanged), the same through
real clients (nbdinfo, qemu-io, qemu-img), and who is connected (SO_PEERCRED pid and uid,
the export opened) with real client processes, root and not."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import shutil
import struct
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import structlog
from pyiscsid.daemon import nbd
from pyiscsid.daemon import nbd_protocol as wire
from pyiscsid.daemon.busypoll import BusyPoll
from pyiscsid.daemon.nbd import NbdClientInfo, NbdServer
from pyiscsid.daemon.nbd_export import Answered, NbdIOError, NbdRequestError, Started
from pyiscsid.daemon.nbd_protocol import Command, Option, Reply, ReplyFlag, ReplyType
from pyiscsid.daemon.nbd_protocol import TransmissionFlag as TF
from pyiscsid.protocol.errors import ISCSIError

from tests.nbd_clients import run

TIMEOUT = 30.0
KiB = 1024
DISK = "iqn.2026-11.test.pyiscsid:memory/1"
OTHER = "iqn.2026-11.test.pyiscsid:memory/2"
TOOLS = ("nbdinfo", "qemu-io", "qemu-img")
needs_tools = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in TOOLS), reason="needs libnbd-bin and qemu-utils"
)


@dataclass
class MemoryExport:
    """A disk in memory that implements the server's Export protocol. Blocks listed in
    ``bad`` fail (an :class:`NbdIOError` with the offset, as LunExport raises); with
    ``flush_fails`` a FLUSH fails with a bare ISCSIError (an export that cannot say where)."""

    name: str
    size: int = 1024 * KiB
    block_size: int = 512
    max_transfer: int = 1024 * KiB
    read_only: bool = False
    can_trim: bool = True
    bad: set[int] = field(default_factory=set)
    flush_fails: bool = False
    flushes: int = 0
    reads: int = 0
    fast: bool = True  # reads and writes are started (Export.start), not awaited
    served_fast: int = 0  # requests served that way
    data: bytearray = field(init=False)

    def __post_init__(self) -> None:
        self.data = bytearray(self.size)

    def _fail_inside(self, what: str, offset: int, length: int) -> None:
        for block in sorted(self.bad):
            if offset <= block < offset + length:
                raise NbdIOError(wire.EIO, f"{what} at offset {block}: medium error", block)

    def start(
        self, offset: int, length: int, payload: memoryview | None, fua: bool
    ) -> Started | None:
        """Served at once, answered through the loop as LunExport's commands are; one that
        touches a bad block does not succeed, and goes the full way to fail there."""
        if not self.fast:
            return None
        answer: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        bad = any(offset <= block < offset + length for block in self.bad)
        buffer = None
        if not bad:
            self.served_fast += 1
            if payload is None:
                self.reads += 1
                buffer = bytearray(self.data[offset : offset + length])
            else:
                self.data[offset : offset + length] = payload
        answer.set_result(not bad)
        return answer, buffer

    def judge(
        self, answer: asyncio.Future[Any], offset: int, writing: bool
    ) -> Answered | NbdRequestError:
        if answer.cancelled() or answer.result() is not True:
            return Answered.RETRY
        return Answered.SERVED

    async def read(self, offset: int, length: int) -> bytes:
        self._fail_inside("READ", offset, length)
        self.reads += 1
        return bytes(self.data[offset : offset + length])

    async def write(self, offset: int, data: memoryview, fua: bool) -> None:
        self._fail_inside("WRITE", offset, len(data))
        self.data[offset : offset + len(data)] = data

    async def flush(self) -> None:
        if self.flush_fails:
            raise ISCSIError("the target is gone")
        self.flushes += 1

    async def trim(self, offset: int, length: int) -> None:
        self.data[offset : offset + length] = bytes(length)

    async def write_zeroes(self, offset: int, length: int, fua: bool) -> None:
        self._fail_inside("WRITE_ZEROES", offset, length)
        self.data[offset : offset + length] = bytes(length)


@dataclass
class Served:
    server: NbdServer
    disk: MemoryExport
    other: MemoryExport
    socket: Path

    def uri(self, name: str = DISK) -> str:
        return f"nbd+unix:///{name}?socket={self.socket}"


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory user nobody can reach (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="pyiscsid-nbd-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def served(public_dir: Path) -> AsyncIterator[Served]:
    disk, other = MemoryExport(DISK), MemoryExport(OTHER, read_only=True)
    server = NbdServer({DISK: disk, OTHER: other})
    socket = public_dir / "nbd.sock"
    await server.start_unix(socket, mode=0o666)
    try:
        yield Served(server, disk, other, socket)
    finally:
        await server.close()


class RawClient:
    """A client that speaks the protocol by hand, to see the server's bytes exactly."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, path: Path) -> RawClient:
        reader, writer = await asyncio.open_unix_connection(str(path))
        magic, opt, flags = struct.unpack(">QQH", await reader.readexactly(18))
        assert (magic, opt) == (wire.NBDMAGIC, wire.IHAVEOPT)
        assert flags == wire.HandshakeFlag.FIXED_NEWSTYLE | wire.HandshakeFlag.NO_ZEROES
        writer.write(struct.pack(">I", wire.ClientFlag.FIXED_NEWSTYLE | wire.ClientFlag.NO_ZEROES))
        return cls(reader, writer)

    @classmethod
    async def reading(cls, path: Path) -> RawClient:
        """A client in transmission that has sent a 4 KiB read at offset 0 (cookie 1)."""
        raw = await cls.connect(path)
        try:
            await raw.go()
        except BaseException:
            raw.writer.transport.abort()
            raise
        raw.request(Command.READ, 0, 4 * KiB, cookie=1)
        return raw

    async def option(self, option: int, data: bytes = b"") -> list[tuple[int, bytes]]:
        """Send one option; every reply to it, through the final ACK or error."""
        self.writer.write(wire.OPTION_HEADER.pack(wire.IHAVEOPT, option, len(data)) + data)
        replies = []
        while True:
            magic, echoed, kind, length = wire.OPTION_REPLY.unpack(
                await self.reader.readexactly(wire.OPTION_REPLY.size)
            )
            assert (magic, echoed) == (wire.OPTION_REPLY_MAGIC, option)
            replies.append((kind, await self.reader.readexactly(length)))
            if kind == Reply.ACK or kind & (1 << 31):
                return replies

    async def go(self, name: str = DISK) -> int:
        """NBD_OPT_GO; returns the export's transmission flags."""
        replies = await self.option(Option.GO, info_request(name))
        assert replies[-1] == (Reply.ACK, b"")
        infos = [data for kind, data in replies if kind == Reply.INFO]
        (export,) = [d for d in infos if struct.unpack_from(">H", d)[0] == wire.Info.EXPORT]
        return int(struct.unpack(">HQH", export)[2])

    def request(
        self, kind: int, offset: int, length: int, cookie: int, data: bytes = b"", flags: int = 0
    ) -> None:
        self.writer.write(
            wire.REQUEST.pack(wire.REQUEST_MAGIC, flags, kind, cookie, offset, length) + data
        )

    async def simple_reply(self, cookie: int, data_length: int = 0) -> tuple[int, bytes]:
        magic, error, got = wire.SIMPLE_REPLY.unpack(await self.reader.readexactly(16))
        assert (magic, got) == (wire.SIMPLE_REPLY_MAGIC, cookie)
        return error, await self.reader.readexactly(data_length if not error else 0)

    async def chunks(self, cookie: int) -> list[tuple[int, int, bytes]]:
        """The structured reply chunks of one request: (flags, type, payload), to DONE."""
        found: list[tuple[int, int, bytes]] = []
        while not found or not found[-1][0] & ReplyFlag.DONE:
            magic, flags, kind, got, length = wire.STRUCTURED_REPLY.unpack(
                await self.reader.readexactly(wire.STRUCTURED_REPLY.size)
            )
            assert (magic, got) == (wire.STRUCTURED_REPLY_MAGIC, cookie)
            found.append((flags, kind, await self.reader.readexactly(length)))
        return found

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def info_request(name: str, *items: int) -> bytes:
    raw = name.encode()
    return struct.pack(">I", len(raw)) + raw + struct.pack(f">H{len(items)}H", len(items), *items)


def meta_request(name: str, *queries: str) -> bytes:
    raw = struct.pack(">I", len(name.encode())) + name.encode() + struct.pack(">I", len(queries))
    for query in queries:
        raw += struct.pack(">I", len(query.encode())) + query.encode()
    return raw


def error_of(payload: bytes) -> tuple[int, str, int | None]:
    """(error, message, offset or None) of an error chunk's payload."""
    error, length = struct.unpack_from(">IH", payload)
    message = payload[6 : 6 + length].decode()
    rest = payload[6 + length :]
    return error, message, struct.unpack(">Q", rest)[0] if rest else None


@pytest.fixture
async def client(served: Served) -> AsyncIterator[RawClient]:
    raw = await RawClient.connect(served.socket)
    try:
        yield raw
    finally:
        await raw.close()


async def structured(client: RawClient, name: str = DISK, *queries: str) -> int:
    """Negotiate structured replies (and, given queries, metadata contexts), then GO."""
    assert await client.option(Option.STRUCTURED_REPLY) == [(Reply.ACK, b"")]
    if queries:
        await client.option(Option.SET_META_CONTEXT, meta_request(name, *queries))
    return await client.go(name)


# ------------------------------------------------------------------ negotiation


async def test_structured_replies_are_acknowledged_once(client: RawClient) -> None:
    assert await client.option(Option.STRUCTURED_REPLY) == [(Reply.ACK, b"")]
    ((kind, message),) = await client.option(Option.STRUCTURED_REPLY)
    assert kind == Reply.ERR_INVALID
    assert b"already negotiated" in message


async def test_structured_reply_option_with_data_is_invalid(client: RawClient) -> None:
    ((kind, message),) = await client.option(Option.STRUCTURED_REPLY, b"junk")
    assert kind == Reply.ERR_INVALID and b"carries no data" in message
    assert await client.option(Option.STRUCTURED_REPLY) == [(Reply.ACK, b"")]  # not spent


@pytest.mark.parametrize("option", [Option.LIST_META_CONTEXT, Option.SET_META_CONTEXT])
async def test_meta_contexts_need_structured_replies_first(
    client: RawClient, option: Option
) -> None:
    ((kind, message),) = await client.option(option, meta_request(DISK, "base:allocation"))
    assert kind == Reply.ERR_INVALID
    assert b"NBD_OPT_STRUCTURED_REPLY first" in message


async def test_list_meta_context(client: RawClient) -> None:
    await client.option(Option.STRUCTURED_REPLY)
    listed = struct.pack(">I", 0) + b"base:allocation"  # listed ids are reserved: 0
    assert await client.option(Option.LIST_META_CONTEXT, meta_request(DISK)) == [
        (Reply.META_CONTEXT, listed),
        (Reply.ACK, b""),
    ]
    assert await client.option(Option.LIST_META_CONTEXT, meta_request(DISK, "base:")) == [
        (Reply.META_CONTEXT, listed),
        (Reply.ACK, b""),
    ]
    assert await client.option(Option.LIST_META_CONTEXT, meta_request(DISK, "x-foo:bar")) == [
        (Reply.ACK, b"")
    ]
    ((kind, message),) = await client.option(Option.LIST_META_CONTEXT, meta_request("nope"))
    assert kind == Reply.ERR_UNKNOWN and b"'nope'" in message
    ((kind, message),) = await client.option(Option.LIST_META_CONTEXT, b"\0\0")
    assert kind == Reply.ERR_INVALID and b"length is missing" in message
    ((kind, _),) = await client.option(Option.LIST_META_CONTEXT, meta_request(DISK, "nocolon"))
    assert kind == Reply.ERR_INVALID


async def test_set_meta_context_then_block_status_reports_all_allocated(
    client: RawClient, served: Served
) -> None:
    await client.option(Option.STRUCTURED_REPLY)
    replies = await client.option(Option.SET_META_CONTEXT, meta_request(DISK, "base:allocation"))
    assert replies == [(Reply.META_CONTEXT, b"\0\0\0\x01base:allocation"), (Reply.ACK, b"")]
    await client.go(DISK)
    client.request(Command.BLOCK_STATUS, 64 * KiB, 128 * KiB, cookie=1)
    ((flags, kind, payload),) = await client.chunks(1)
    assert (flags, kind) == (ReplyFlag.DONE, ReplyType.BLOCK_STATUS)
    assert struct.unpack(">III", payload) == (1, 128 * KiB, 0)  # id 1: allocated, not zero
    client.request(Command.BLOCK_STATUS, 0, 4 * KiB, cookie=2, flags=wire.CommandFlag.REQ_ONE)
    assert struct.unpack(">III", (await client.chunks(2))[0][2]) == (1, 4 * KiB, 0)
    client.request(Command.BLOCK_STATUS, served.disk.size - 512, 1024, cookie=3)
    ((_, kind, payload),) = await client.chunks(3)
    assert kind == ReplyType.ERROR and error_of(payload)[0] == wire.EINVAL


async def test_block_status_only_for_the_export_the_contexts_were_set_for(
    client: RawClient,
) -> None:
    await client.option(Option.STRUCTURED_REPLY)
    await client.option(Option.SET_META_CONTEXT, meta_request(OTHER, "base:allocation"))
    await client.go(DISK)
    client.request(Command.BLOCK_STATUS, 0, 4096, cookie=9)
    ((flags, kind, payload),) = await client.chunks(9)
    assert (flags, kind) == (ReplyFlag.DONE, ReplyType.ERROR)
    error, message, offset = error_of(payload)
    assert (error, offset) == (wire.EINVAL, None)
    assert "no metadata context" in message


async def test_a_failed_set_meta_context_clears_the_selection(client: RawClient) -> None:
    await client.option(Option.STRUCTURED_REPLY)
    await client.option(Option.SET_META_CONTEXT, meta_request(DISK, "base:allocation"))
    ((kind, _),) = await client.option(Option.SET_META_CONTEXT, b"\xff")
    assert kind == Reply.ERR_INVALID
    await client.go(DISK)
    client.request(Command.BLOCK_STATUS, 0, 4096, cookie=5)
    assert error_of((await client.chunks(5))[0][2])[0] == wire.EINVAL


async def test_send_df_is_advertised_only_with_structured_replies(served: Served) -> None:
    plain = await RawClient.connect(served.socket)
    try:
        flags = await plain.go()
        assert not flags & TF.SEND_DF
        assert flags & TF.SEND_FLUSH and flags & TF.SEND_FUA and flags & TF.SEND_TRIM
    finally:
        await plain.close()
    fancy = await RawClient.connect(served.socket)
    try:
        assert await structured(fancy) & TF.SEND_DF
    finally:
        await fancy.close()


async def test_option_errors_carry_a_message(client: RawClient) -> None:
    ((kind, message),) = await client.option(99)
    assert kind == Reply.ERR_UNSUP and b"99" in message
    ((kind, message),) = await client.option(Option.GO, info_request("missing"))
    assert kind == Reply.ERR_UNKNOWN and b"'missing'" in message
    ((kind, message),) = await client.option(Option.LIST, b"x")
    assert kind == Reply.ERR_INVALID and message


# ----------------------------------------------------------------- transmission


async def test_structured_read_is_one_final_data_chunk(client: RawClient, served: Served) -> None:
    served.disk.data[8192 : 8192 + 4096] = os.urandom(4096)
    await structured(client)
    client.request(Command.READ, 8192, 4096, cookie=7)
    ((flags, kind, payload),) = await client.chunks(7)
    assert (flags, kind) == (ReplyFlag.DONE, ReplyType.OFFSET_DATA)
    assert struct.unpack_from(">Q", payload) == (8192,)
    assert payload[8:] == served.disk.data[8192 : 8192 + 4096]
    client.request(Command.READ, 0, 0, cookie=8)  # nothing to carry: NONE
    assert await client.chunks(8) == [(ReplyFlag.DONE, ReplyType.NONE, b"")]


async def test_structured_replies_to_other_commands_are_none(
    client: RawClient, served: Served
) -> None:
    await structured(client)
    pattern = os.urandom(2048)
    client.request(Command.WRITE, 4096, 2048, cookie=1, data=pattern, flags=wire.CommandFlag.FUA)
    client.request(Command.FLUSH, 0, 0, cookie=2)
    done = [(ReplyFlag.DONE, ReplyType.NONE, b"")]
    assert await client.chunks(1) == done  # the replies may come in any order
    assert await client.chunks(2) == done
    assert served.disk.data[4096:6144] == pattern and served.disk.flushes == 1
    client.request(Command.WRITE_ZEROES, 4096, 1024, cookie=3)
    client.request(Command.TRIM, 5120, 1024, cookie=4)
    assert {c: await client.chunks(c) for c in (3, 4)} == {3: done, 4: done}
    assert served.disk.data[4096:6144] == bytes(2048)


async def test_structured_errors_say_what_was_wrong(client: RawClient, served: Served) -> None:
    served.disk.bad = {64 * KiB + 512}
    size = served.disk.size
    await structured(client)
    cases = [
        (Command.READ, size - 512, 1024, b"", wire.EINVAL, "beyond the end of the disk", None),
        (Command.WRITE, size, 512, bytes(512), wire.ENOSPC, "beyond the end", None),
        (Command.READ, 1, 512, b"", wire.EINVAL, "multiples of the block size 512", None),
        (Command.CACHE, 0, 512, b"", wire.EINVAL, "unsupported command 5", None),
        (Command.READ, 64 * KiB, 4096, b"", wire.EIO, "medium error", 64 * KiB + 512),
        (Command.WRITE, 64 * KiB, 1024, bytes(1024), wire.EIO, "WRITE at", 64 * KiB + 512),
    ]
    for cookie, (kind, offset, length, data, error, words, at) in enumerate(cases):
        client.request(kind, offset, length, cookie, data)
        ((flags, chunk_type, payload),) = await client.chunks(cookie)
        assert flags == ReplyFlag.DONE
        assert chunk_type == (ReplyType.ERROR if at is None else ReplyType.ERROR_OFFSET)
        got_error, message, got_at = error_of(payload)
        assert (got_error, got_at) == (error, at), message
        assert words in message
    served.disk.flush_fails = True
    client.request(Command.FLUSH, 0, 0, cookie=99)
    ((_, chunk_type, payload),) = await client.chunks(99)
    assert chunk_type == ReplyType.ERROR
    assert error_of(payload) == (wire.EIO, "the target is gone", None)
    client.request(Command.READ, 0, 512, cookie=100)  # and the connection goes on
    assert (await client.chunks(100))[0][1] == ReplyType.OFFSET_DATA


async def test_writes_to_a_read_only_export_are_eperm(client: RawClient) -> None:
    await structured(client, OTHER)
    client.request(Command.WRITE, 0, 512, cookie=1, data=bytes(512))
    _, message, _ = error_of((await client.chunks(1))[0][2])
    assert "read-only" in message


async def test_simple_replies_when_structured_replies_were_not_asked(
    client: RawClient, served: Served
) -> None:
    served.disk.data[:512] = b"\x5a" * 512
    served.disk.bad = {4096}
    await client.go()
    client.request(Command.READ, 0, 512, cookie=1)
    assert await client.simple_reply(1, 512) == (0, b"\x5a" * 512)
    client.request(Command.READ, 4096, 512, cookie=2)
    assert await client.simple_reply(2, 512) == (wire.EIO, b"")  # no payload after an error
    client.request(Command.BLOCK_STATUS, 0, 512, cookie=3)
    assert await client.simple_reply(3) == (wire.EINVAL, b"")
    client.request(Command.WRITE, 512, 512, cookie=4, data=b"\x11" * 512)
    assert await client.simple_reply(4) == (0, b"")
    assert served.disk.data[512:1024] == b"\x11" * 512


# ------------------------------------------------- requests started without a task


async def test_requests_start_without_a_task_and_failures_go_the_full_way(
    client: RawClient, served: Served
) -> None:
    """Reads and writes go by Export.start; one whose answer is not a success is served
    again by read()/write(), which says what went wrong and where."""
    served.disk.bad = {8 * KiB}
    await structured(client)
    client.request(Command.WRITE, 4 * KiB, 4 * KiB, cookie=1, data=b"\x3c" * 4 * KiB)
    assert (await client.chunks(1))[0][1] == ReplyType.NONE
    client.request(Command.READ, 4 * KiB, 4 * KiB, cookie=2)
    ((_, chunk_type, payload),) = await client.chunks(2)
    assert chunk_type == ReplyType.OFFSET_DATA and payload == struct.pack(">Q", 4 * KiB) + (
        b"\x3c" * 4 * KiB
    )
    client.request(Command.READ, 8 * KiB, 4 * KiB, cookie=3)
    ((_, chunk_type, payload),) = await client.chunks(3)
    assert chunk_type == ReplyType.ERROR_OFFSET
    assert error_of(payload)[::2] == (wire.EIO, 8 * KiB)
    assert served.disk.served_fast == 2


@dataclass
class StuckExport(MemoryExport):
    """Started requests get ``outcome`` as their answer (None: no answer ever comes), and
    the full way never ends: a request that took it after the server dropped its client
    would hold close() for ever."""

    outcome: bool | None = None
    on_start: Callable[[], None] | None = None
    answers: list[asyncio.Future[bool]] = field(default_factory=list)
    full_way: int = 0

    def start(
        self, offset: int, length: int, payload: memoryview | None, fua: bool
    ) -> Started | None:
        answer: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.answers.append(answer)
        if self.on_start is not None:
            self.on_start()
        if self.outcome is not None:
            answer.set_result(self.outcome)
        return answer, bytearray(length) if payload is None else None

    async def read(self, offset: int, length: int) -> bytes:
        self.full_way += 1
        await asyncio.Event().wait()
        raise AssertionError("never")


async def test_close_cancels_started_requests(public_dir: Path) -> None:
    disk = StuckExport(DISK)
    async with serving(public_dir, disk) as server:
        raw = await RawClient.reading(public_dir / "limits.sock")
        try:
            await until(lambda: server.in_flight == 1)
            async with asyncio.timeout(TIMEOUT):
                await server.close()
            assert disk.answers[0].cancelled() and disk.full_way == 0
        finally:
            raw.writer.transport.abort()


async def test_a_started_request_answered_as_its_client_is_dropped_stays_dropped(
    public_dir: Path,
) -> None:
    """The failed answer is in, its callback not yet run, when close() drops the client:
    the request must not then go the full way (there it would hold close() for ever)."""
    disk = StuckExport(DISK, outcome=False)
    async with serving(public_dir, disk) as server:
        closing: list[asyncio.Future[None]] = []
        disk.on_start = lambda: closing.append(asyncio.ensure_future(server.close()))
        raw = await RawClient.reading(public_dir / "limits.sock")
        try:
            await until(lambda: bool(closing))
            async with asyncio.timeout(TIMEOUT):
                await closing[0]
            assert disk.full_way == 0 and server.in_flight == 0
        finally:
            raw.writer.transport.abort()


# ----------------------------------------------------------------- real clients


@needs_tools
async def test_nbdinfo_sees_structured_replies_and_base_allocation(served: Served) -> None:
    _, out, _ = await run("nbdinfo", "--json", served.uri())
    info = json.loads(out)
    assert info["protocol"] == "newstyle-fixed"
    (export,) = info["exports"]
    assert export["export-size"] == served.disk.size
    assert export["contexts"] == ["base:allocation"]
    assert export["can_df"] is True
    for can in ("structured-reply", "df"):
        await run("nbdinfo", "--can", can, served.uri())
    _, out, _ = await run("nbdinfo", "--map", "--json", served.uri())
    assert json.loads(out) == [
        {"offset": 0, "length": served.disk.size, "type": 0, "description": "data"}
    ]


@needs_tools
async def test_qemu_reads_writes_and_maps_through_structured_replies(served: Served) -> None:
    _, out, _ = await run(
        "qemu-io", "-f", "raw", served.uri(),
        "-c", "write -P 0x3c 128k 64k",
        "-c", "read -P 0x3c 128k 64k",
        "-c", "read -P 0 0 128k",
    )  # fmt: skip
    assert "Pattern verification failed" not in out
    assert served.disk.data[128 * KiB : 192 * KiB] == b"\x3c" * (64 * KiB)
    _, out, _ = await run("qemu-img", "map", "--output=json", "-f", "raw", served.uri())
    assert [(e["start"], e["length"], e["data"]) for e in json.loads(out)] == [
        (0, served.disk.size, True)
    ]


@needs_tools
async def test_qemu_io_gets_eio_for_a_bad_block_and_carries_on(served: Served) -> None:
    served.disk.bad = {256 * KiB}
    status, out, _ = await run(
        "qemu-io", "-f", "raw", served.uri(),
        "-c", "read 256k 4k",
        "-c", "write -P 0x77 512k 4k",
        "-c", "read -P 0x77 512k 4k",
        check=False,
    )  # fmt: skip
    assert status == 1  # qemu-io's exit status when a command failed
    assert "read failed: Input/output error" in out
    assert "wrote 4096/4096 bytes at offset 524288" in out
    assert "Pattern verification failed" not in out and out.count("read 4096/4096") == 1


@needs_tools
async def test_busy_polling_reads_a_lone_client_s_next_request_after_its_reply(
    public_dir: Path,
) -> None:
    """With ``iscsid.busy_poll`` the server polls for a lone client's next request once the
    reply to its last one is out. Polled before that, it waits (and misses) for a request
    the client cannot send until it has its reply."""
    poll = BusyPoll(0.05)  # long enough for a loaded machine to send the next request
    server = NbdServer({DISK: MemoryExport(DISK)}, busy_poll=poll)
    await server.start_unix(public_dir / "poll.sock")
    try:
        reads = [arg for block in range(40) for arg in ("-c", f"read {block * 4}k 4k")]
        uri = f"nbd+unix:///{DISK}?socket={public_dir / 'poll.sock'}"
        _, out, _ = await run("qemu-io", "-f", "raw", uri, *reads)
    finally:
        await server.close()
    assert out.count("read 4096/4096") == 40
    assert poll.hits >= 35 and poll.misses <= 2, (poll.hits, poll.misses)


async def test_a_client_whose_export_left_is_not_polled_after_its_last_reply(
    public_dir: Path,
) -> None:
    """Once its export is removed, a client's socket is no longer read (its reader is at
    its end): busy polling for its next request would read bytes no one takes, or a
    descriptor that already serves another connection."""
    poll = BusyPoll(0.05)
    disk = GatedExport(DISK)
    server = NbdServer({DISK: disk}, busy_poll=poll)
    await server.start_unix(public_dir / "poll.sock")
    raw = await RawClient.reading(public_dir / "poll.sock")
    try:
        async with asyncio.timeout(TIMEOUT):
            await disk.started.wait()
        server.remove(DISK)
        disk.gate.set()
        error, _ = await raw.simple_reply(1, 4 * KiB)  # in-flight requests still reply
        assert error == 0
        await until(lambda: server.in_flight == 0)
        assert (poll.hits, poll.misses) == (0, 0)
    finally:
        await raw.close()
        await server.close()


@dataclass
class MisjudgingExport(MemoryExport):
    """An export whose judgement of a started request fails: a bug, not a disk error."""

    def judge(
        self, answer: asyncio.Future[Any], offset: int, writing: bool
    ) -> Answered | NbdRequestError:
        raise RuntimeError("a bug in judge")


async def test_a_bug_answering_a_started_request_does_not_hold_the_client(
    public_dir: Path,
) -> None:
    """The request still leaves the client's count, so that its connection can end and the
    server can close (it spun for ever waiting for a request already done)."""
    disk = MisjudgingExport(DISK)
    async with serving(public_dir, disk) as server:
        raw = await RawClient.reading(public_dir / "limits.sock")
        try:
            await until(lambda: disk.served_fast == 1 and server.in_flight == 0)
        finally:
            await raw.close()
        async with asyncio.timeout(TIMEOUT):
            await server.close()


# ------------------------------------------------------------ who is connected


async def until(predicate: object, timeout: float = TIMEOUT) -> None:
    """Poll a condition of the server's state (bounded)."""
    async with asyncio.timeout(timeout):
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0.01)


async def test_clients_know_the_peer_and_its_export(served: Served) -> None:
    assert served.server.clients() == []
    raw = await RawClient.connect(served.socket)
    try:
        await until(lambda: served.server.clients())
        me = NbdClientInfo(pid=os.getpid(), uid=os.getuid(), export=None)
        assert served.server.clients() == [me]  # negotiating: no export yet
        await raw.go(OTHER)
        assert served.server.clients() == [NbdClientInfo(os.getpid(), os.getuid(), OTHER)]
    finally:
        await raw.close()
    await until(lambda: not served.server.clients())


@needs_tools
@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv"
)
async def test_clients_lists_a_real_client_process_until_it_quits(served: Served) -> None:
    """qemu-io as user nobody holds the export open: its pid, nobody's uid and the export
    are listed while it runs, and nothing once it has quit."""
    nobody = pwd.getpwnam("nobody").pw_uid
    process = await asyncio.create_subprocess_exec(
        "setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
        "qemu-io", "-f", "raw", served.uri(),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdin is not None
    try:
        # setpriv execs qemu-io: the same pid connects
        await until(lambda: any(c.export == DISK for c in served.server.clients()))
        assert served.server.clients() == [NbdClientInfo(process.pid, nobody, DISK)]
        process.stdin.write(b"quit\n")
        await process.stdin.drain()
        async with asyncio.timeout(TIMEOUT):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    await until(lambda: not served.server.clients())


@needs_tools
async def test_tcp_listener_serves_and_its_clients_have_no_credentials(served: Served) -> None:
    port = await served.server.start_tcp("127.0.0.1", 0)
    _, out, _ = await run("nbdinfo", "--size", f"nbd://127.0.0.1:{port}/{DISK}")
    assert int(out) == served.disk.size
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await reader.readexactly(18)
        await until(lambda: served.server.clients())
        assert served.server.clients() == [NbdClientInfo(None, None, None)]
    finally:
        writer.close()
        await writer.wait_closed()


async def test_tcp_on_loopback_is_quiet_and_beyond_it_warns(served: Served) -> None:
    with structlog.testing.capture_logs() as logs:
        port = await served.server.start_tcp("127.0.0.1", 0)
    assert [e["log_level"] for e in logs] == ["info"]
    assert logs[0]["addresses"] == [f"127.0.0.1:{port}"]
    with structlog.testing.capture_logs() as logs:
        await served.server.start_tcp("0.0.0.0", 0)  # every address: nobody else connects
    (warning,) = logs
    assert warning["log_level"] == "warning"
    assert "no authentication" in warning["event"]
    assert warning["addresses"][0].startswith("0.0.0.0:")


# ------------------------------------------------------------ partial shutdown


async def test_close_keeping_one_export_serves_it_until_its_client_lets_go(
    served: Served,
) -> None:
    """At shutdown the daemon drops every export but those it keeps (the root disk): their
    clients stay served, may reconnect, and the daemon can wait until they let go."""
    keeper, leaver = await RawClient.connect(served.socket), await RawClient.connect(served.socket)
    try:
        await structured(keeper, DISK)
        await structured(leaver, OTHER)
        assert served.server.exports_in_use() == {DISK, OTHER}
        await served.server.close(keep={DISK})
        assert await leaver.reader.read() == b""  # hung up
        assert served.server.exports_in_use() == {DISK}
        keeper.request(Command.READ, 0, 512, cookie=1)
        assert (await keeper.chunks(1))[0][1] == ReplyType.OFFSET_DATA
        again = await RawClient.connect(served.socket)  # still listening, for the kept one
        try:
            ((kind, _),) = await again.option(Option.GO, info_request(OTHER))
            assert kind == Reply.ERR_UNKNOWN
            await again.go(DISK)
        finally:
            await again.close()
        waiter = asyncio.create_task(served.server.wait_unused({DISK}))
        await asyncio.sleep(0)
        assert not waiter.done()
    finally:
        await keeper.close()
        await leaver.close()
    async with asyncio.timeout(TIMEOUT):
        await waiter
    assert served.server.exports_in_use() == set()
    await served.server.close()
    assert not served.socket.exists()


# ------------------------------------------------------------------ clients that misbehave


async def test_close_does_not_wait_for_a_client_that_stopped_reading(public_dir: Path) -> None:
    """Big reads whose replies the client never takes fill the socket; close() must still
    finish (it aborts that client) instead of waiting on a drain that never ends."""
    disk = MemoryExport(DISK, size=16 * 1024 * KiB, max_transfer=16 * 1024 * KiB)
    server = NbdServer({DISK: disk})
    await server.start_unix(public_dir / "big.sock")
    raw = await RawClient.connect(public_dir / "big.sock")
    try:
        await raw.go()
        raw.writer.transport.pause_reading()  # from here on the client reads nothing
        for cookie in range(4):
            raw.request(Command.READ, 0, disk.size, cookie)  # 64 MiB of replies
        await raw.writer.drain()
        async with asyncio.timeout(30):
            while disk.reads < 4 or server.in_flight:
                await asyncio.sleep(0.01)  # until every read was answered
        async with asyncio.timeout(30):
            await server.close()
        assert server.clients() == []
    finally:
        raw.writer.transport.abort()
        await server.close()


async def test_a_removed_export_stops_reading_yet_answers_what_it_took(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    """remove() ends the client's request stream: bytes it keeps sending are not read (they
    made asyncio's StreamReader assert "feed_data after feed_eof" and abort the transport,
    losing replies), a request taken before still replies, and the server hangs up."""
    client = await RawClient.connect(served.socket)
    await client.go()
    client.request(Command.WRITE, 0, 4 * KiB, 1, b"\x5a" * 4 * KiB)
    assert await client.simple_reply(1) == (0, b"")
    served.server.remove(DISK)
    for cookie in range(2, 40):  # keeps talking after the export went
        client.request(Command.READ, 0, 4 * KiB, cookie)
        with contextlib.suppress(ConnectionError):
            await client.writer.drain()
    async with asyncio.timeout(30):
        with contextlib.suppress(ConnectionResetError):
            await client.reader.read()  # to EOF or the reset
        while served.server.clients():
            await asyncio.sleep(0.01)  # the server side is gone too
    assert served.disk.data[: 4 * KiB] == b"\x5a" * 4 * KiB
    assert not [r for r in caplog.records if r.name == "asyncio" and r.levelname == "ERROR"]
    client.writer.close()


# ------------------------------------------------------------------ what a client may cost

MiB = 1024 * KiB


@dataclass
class GatedExport(MemoryExport):
    """Reads wait at ``gate`` once started; ``most`` is how many ran at once, and
    ``started`` is set once ``expected`` of them run together."""

    fast: bool = False  # every read waits at the gate, in read()
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    expected: int = 1
    started: asyncio.Event = field(default_factory=asyncio.Event)
    running: int = 0
    most: int = 0

    async def read(self, offset: int, length: int) -> bytes:
        self.running += 1
        self.most = max(self.most, self.running)
        if self.running >= self.expected:
            self.started.set()
        try:
            await self.gate.wait()
            return await super().read(offset, length)
        finally:
            self.running -= 1


@contextlib.asynccontextmanager
async def serving(public_dir: Path, disk: MemoryExport) -> AsyncIterator[NbdServer]:
    """A server of ``disk`` alone, built after the test set the limits it wants."""
    server = NbdServer({DISK: disk})
    await server.start_unix(public_dir / "limits.sock")
    try:
        yield server
    finally:
        await server.close()


async def any_simple_replies(client: RawClient, lengths: dict[int, int]) -> dict[int, bytes]:
    """Simple replies to the reads ``lengths`` (cookie -> length), in whatever order they
    come: cookie -> data."""
    got = {}
    async with asyncio.timeout(TIMEOUT):
        while len(got) < len(lengths):
            magic, error, cookie = wire.SIMPLE_REPLY.unpack(await client.reader.readexactly(16))
            assert (magic, error) == (wire.SIMPLE_REPLY_MAGIC, 0)
            got[cookie] = await client.reader.readexactly(lengths[cookie])
    return got


async def test_a_client_s_reads_wait_for_its_byte_budget_yet_pipeline(
    public_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight 512 KiB reads at once against a 1 MiB budget per client: two run at a time,
    the others wait for their bytes (not refused), and every one is answered."""
    monkeypatch.setattr(nbd, "CLIENT_BYTES_IN_FLIGHT", 1 * MiB)
    disk = GatedExport(DISK, size=4 * MiB, expected=2)
    disk.data[:] = os.urandom(disk.size)
    async with serving(public_dir, disk) as server:
        client = await RawClient.connect(public_dir / "limits.sock")
        try:
            await client.go()
            for cookie in range(8):
                client.request(Command.READ, cookie * 512 * KiB, 512 * KiB, cookie)
            async with asyncio.timeout(TIMEOUT):
                await disk.started.wait()
            disk.gate.set()
            got = await any_simple_replies(client, dict.fromkeys(range(8), 512 * KiB))
            assert disk.most == 2
            for cookie, data in got.items():
                assert data == disk.data[cookie * 512 * KiB : (cookie + 1) * 512 * KiB]
            await until(lambda: server.bytes_in_flight == 0)
        finally:
            await client.close()


async def test_a_read_larger_than_the_budget_is_served_alone(
    public_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(nbd, "CLIENT_BYTES_IN_FLIGHT", 1 * MiB)
    disk = GatedExport(DISK, size=4 * MiB, expected=1)
    disk.data[:] = os.urandom(disk.size)
    async with serving(public_dir, disk):
        client = await RawClient.connect(public_dir / "limits.sock")
        try:
            await client.go()
            lengths = {1: 512 * KiB, 2: 2 * MiB, 3: 512 * KiB}
            for cookie, length in lengths.items():
                client.request(Command.READ, 0, length, cookie)
            async with asyncio.timeout(TIMEOUT):
                await disk.started.wait()
            disk.gate.set()
            got = await any_simple_replies(client, lengths)
            assert disk.most == 1
            assert got == {cookie: disk.data[:length] for cookie, length in lengths.items()}
        finally:
            await client.close()


async def test_a_client_that_does_not_read_its_replies_holds_only_its_budget(
    public_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hostile client: many big reads, replies never taken. Its bytes stay counted
    until its replies leave, so it gets no further reads done (each cost the daemon a
    buffer: 64 x 32 MiB made 2 GiB); once it reads again, everything is answered."""
    monkeypatch.setattr(nbd, "CLIENT_BYTES_IN_FLIGHT", 1 * MiB)
    disk = MemoryExport(DISK, size=1 * MiB)
    disk.data[:] = os.urandom(disk.size)
    async with serving(public_dir, disk) as server:
        client = await RawClient.connect(public_dir / "limits.sock")
        try:
            await client.go()
            client.writer.transport.pause_reading()  # from here on the client reads nothing
            for cookie in range(16):
                client.request(Command.READ, 0, 512 * KiB, cookie)
            await until(lambda: disk.reads >= 2 and not server.in_flight)
            assert disk.reads == 2
            assert server.bytes_in_flight == 1 * MiB  # its replies wait in the socket
            client.writer.transport.resume_reading()
            got = await any_simple_replies(client, dict.fromkeys(range(16), 512 * KiB))
            assert set(got.values()) == {bytes(disk.data[: 512 * KiB])}
            assert disk.reads == 16
            await until(lambda: server.bytes_in_flight == 0)
        finally:
            await client.close()


async def test_requests_waiting_for_budget_when_their_client_leaves_are_not_served(
    public_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nobody would take their replies: reading 32 MiB each for a gone client kept the
    daemon busy and its memory high long after the hostile client closed."""
    monkeypatch.setattr(nbd, "CLIENT_BYTES_IN_FLIGHT", 1 * MiB)
    disk = MemoryExport(DISK, size=1 * MiB)
    async with serving(public_dir, disk) as server:
        client = await RawClient.connect(public_dir / "limits.sock")
        await client.go()
        client.writer.transport.pause_reading()
        for cookie in range(16):
            client.request(Command.READ, 0, 512 * KiB, cookie)
        await until(lambda: disk.reads >= 2 and not server.in_flight)
        client.writer.transport.abort()
        await until(lambda: not server.clients())
        assert disk.reads == 2
        assert server.bytes_in_flight == 0


async def test_all_clients_together_wait_for_the_server_s_byte_budget(
    public_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(nbd, "SERVER_BYTES_IN_FLIGHT", 1 * MiB)
    disk = GatedExport(DISK, size=4 * MiB, expected=2)
    async with serving(public_dir, disk):
        clients = [await RawClient.connect(public_dir / "limits.sock") for _ in range(2)]
        try:
            for client in clients:
                await client.go()
                for cookie in range(4):
                    client.request(Command.READ, cookie * 512 * KiB, 512 * KiB, cookie)
            async with asyncio.timeout(TIMEOUT):
                await disk.started.wait()
            disk.gate.set()
            for client in clients:
                await any_simple_replies(client, dict.fromkeys(range(4), 512 * KiB))
            assert disk.most == 2
        finally:
            for client in clients:
                await client.close()


async def test_a_client_leaving_its_replies_unread_is_dropped_when_others_wait(
    public_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its unread replies hold the whole server budget: after STALL_TIMEOUT it is dropped
    with a warning, and the client waiting behind it is served."""
    monkeypatch.setattr(nbd, "CLIENT_BYTES_IN_FLIGHT", 1 * MiB)
    monkeypatch.setattr(nbd, "SERVER_BYTES_IN_FLIGHT", 1 * MiB)
    monkeypatch.setattr(nbd, "STALL_TIMEOUT", 0.3)
    disk = MemoryExport(DISK, size=1 * MiB)
    disk.data[:] = os.urandom(disk.size)
    with structlog.testing.capture_logs() as logs:
        async with serving(public_dir, disk) as server:
            stalled = await RawClient.connect(public_dir / "limits.sock")
            waiting = await RawClient.connect(public_dir / "limits.sock")
            try:
                await stalled.go()
                await waiting.go()
                stalled.writer.transport.pause_reading()
                for cookie in range(16):
                    stalled.request(Command.READ, 0, 512 * KiB, cookie)
                await until(lambda: server.bytes_in_flight == 1 * MiB and not server.in_flight)
                waiting.request(Command.READ, 0, 512 * KiB, cookie=1)
                await until(lambda: server.budget.waiting)
                got = await any_simple_replies(waiting, {1: 512 * KiB})
                assert got[1] == disk.data[: 512 * KiB]
                await until(lambda: len(server.clients()) == 1)
            finally:
                await stalled.close()
                await waiting.close()
    dropped = [e for e in logs if e["event"] == "nbd client dropped"]
    assert len(dropped) == 1
    assert "unread for 0.3 seconds" in dropped[0]["reason"]


async def test_a_client_leaving_its_replies_unread_is_warned_about_and_kept_if_none_wait(
    public_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It harms nobody else (it only stalls itself): a warning, and once it reads again it
    gets every reply."""
    monkeypatch.setattr(nbd, "CLIENT_BYTES_IN_FLIGHT", 1 * MiB)
    monkeypatch.setattr(nbd, "STALL_TIMEOUT", 0.1)
    disk = MemoryExport(DISK, size=1 * MiB)
    disk.data[:] = os.urandom(disk.size)
    with structlog.testing.capture_logs() as logs:
        async with serving(public_dir, disk):
            client = await RawClient.connect(public_dir / "limits.sock")
            try:
                await client.go()
                client.writer.transport.pause_reading()
                for cookie in range(16):
                    client.request(Command.READ, 0, 512 * KiB, cookie)
                await until(
                    lambda: any(e["event"] == "nbd client is not reading its replies" for e in logs)
                )
                client.writer.transport.resume_reading()
                got = await any_simple_replies(client, dict.fromkeys(range(16), 512 * KiB))
                assert set(got.values()) == {bytes(disk.data[: 512 * KiB])}
            finally:
                await client.close()
    assert not [e for e in logs if e["event"] == "nbd client dropped"]
    (warning,) = [e for e in logs if e["event"] == "nbd client is not reading its replies"]
    assert warning["held"] > 0


async def test_a_client_stalling_in_the_handshake_is_dropped(
    public_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that chooses no export within HANDSHAKE_TIMEOUT is hung up on with a
    warning; one that did is not, however long it then stays."""
    monkeypatch.setattr(nbd, "HANDSHAKE_TIMEOUT", 0.5)
    disk = MemoryExport(DISK)
    with structlog.testing.capture_logs() as logs:
        async with serving(public_dir, disk) as server:
            working = await RawClient.connect(public_dir / "limits.sock")
            stalling = await RawClient.connect(public_dir / "limits.sock")
            try:
                await working.go()
                await stalling.option(Option.LIST)  # then nothing
                async with asyncio.timeout(TIMEOUT):
                    assert await stalling.reader.read() == b""
                await until(lambda: len(server.clients()) == 1)
                working.request(Command.READ, 0, 512, cookie=1)  # older than the timeout
                assert await working.simple_reply(1, 512) == (0, bytes(512))
            finally:
                await working.close()
                await stalling.close()
    (warning,) = [e for e in logs if e["log_level"] == "warning"]
    assert warning["event"] == "nbd client dropped"
    assert "no export chosen within 0.5 seconds" in warning["reason"]


async def test_connections_beyond_max_clients_are_closed(
    public_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(nbd, "MAX_CLIENTS", 2)
    path = public_dir / "limits.sock"

    async def refused() -> bool:
        reader, writer = await asyncio.open_unix_connection(str(path))
        try:
            async with asyncio.timeout(TIMEOUT):
                return await reader.read(18) == b""  # no greeting: hung up on
        finally:
            writer.close()

    with structlog.testing.capture_logs() as logs:
        async with serving(public_dir, MemoryExport(DISK)) as server:
            first = await RawClient.connect(path)
            second = await RawClient.connect(path)
            try:
                await first.go()
                assert await refused() and await refused()
                await first.close()
                await until(lambda: len(server.clients()) == 1)
                third = await RawClient.connect(path)  # room again
                await third.go()
                await third.close()
            finally:
                await first.close()
                await second.close()
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert [(e["event"], e["limit"]) for e in warnings] == [
        ("nbd connections refused: too many clients", 2)  # once, not per connection
    ]
