"""The NBD server against real clients (nbdinfo, nbdcopy, qemu-img, qemu-io) over a real
session to tgtd: what a client writes must land in the target's backing file, and a client
that dies mid-transfer must not disturb the session or the next client. Then the real
daemon's ``--nbd-listen``: the same exports over loopback TCP, and a port it cannot have."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pyiscsid.daemon.localtarget import free_tcp_port
from pyiscsid.daemon.nbd import NbdServer
from pyiscsid.daemon.nbd_export import LunExport
from pyiscsid.daemon.session import Session
from pyiscsid.protocol.config import ConnectionConfig
from pyiscsid.protocol.discovery import parse_portal

from tests.conftest import TgtDisk
from tests.daemon_process import Daemon
from tests.nbd_clients import run as run_client

pytestmark = [
    pytest.mark.tgtd,
    pytest.mark.skipif(
        not all(shutil.which(tool) for tool in ("nbdinfo", "nbdcopy", "qemu-img", "qemu-io")),
        reason="needs libnbd-bin and qemu-utils",
    ),
]

INITIATOR = "iqn.2026-11.test.pyiscsid:nbd"
TIMEOUT = 60
MiB = 1024 * 1024


@dataclass
class Served:
    session: Session
    export: LunExport
    server: NbdServer
    socket: Path
    disk: TgtDisk

    def uri(self) -> str:
        # An NBD URI's path after the first '/' is the export name, '/' included.
        return f"nbd+unix:///{self.export.name}?socket={self.socket}"


@pytest.fixture
async def served(tgt: TgtDisk, tmp_path: Path) -> AsyncIterator[Served]:
    config = ConnectionConfig(INITIATOR, tgt.iqn, isid=Session.new_isid())
    session = Session(
        1, tgt.iqn, parse_portal(tgt.portal), config, login_timeout=5, logout_timeout=5
    )
    await session.login()
    (lun,) = [info for info in session.luns if info.lun == tgt.lun]
    export = await LunExport.probe(session, lun)
    server = NbdServer()
    server.add(export)
    socket = tmp_path / "nbd.sock"
    await server.start_unix(socket)
    try:
        yield Served(session, export, server, socket, tgt)
    finally:
        await server.close()
        await session.logout()


async def run(*argv: str, timeout: float = TIMEOUT) -> str:
    """Run a client to completion; its stdout. Its failure fails the test."""
    return (await run_client(*argv, timeout=timeout))[1]


def backing(disk: TgtDisk, offset: int, length: int) -> bytes:
    with open(disk.backing, "rb") as file:
        file.seek(offset)
        return file.read(length)


async def test_list_and_size(served: Served) -> None:
    listing = await run("nbdinfo", "--list", f"nbd+unix:///?socket={served.socket}")
    assert f"{served.disk.iqn}/{served.disk.lun}" in listing
    size = await run("nbdinfo", "--size", served.uri())
    assert int(size) == served.disk.size == 64 * MiB


async def test_nbdcopy_round_trip_lands_in_backing_file(served: Served, tmp_path: Path) -> None:
    length = 64 * MiB
    source = tmp_path / "random.img"
    source.write_bytes(os.urandom(length))
    await run("nbdcopy", "--flush", str(source), served.uri())
    back = tmp_path / "back.img"
    await run("nbdcopy", served.uri(), str(back))
    assert back.read_bytes() == source.read_bytes()
    assert backing(served.disk, 0, length) == source.read_bytes()
    await run(
        "qemu-img", "compare", "-f", "raw", "-F", "raw", served.uri(), str(served.disk.backing)
    )


async def test_flush_write_zeroes_and_errors_via_qemu_io(served: Served) -> None:
    offset = 8 * MiB
    await run(
        "qemu-io", "-f", "raw", served.uri(),
        "-c", f"write -P 0xa5 {offset} 1M",
        "-c", "flush",
        "-c", f"write -z {offset + 64 * 1024} 128k",
        "-c", f"write -P 0x5a -f {offset + 512 * 1024} 4k",  # FUA
        "-c", "flush",
    )  # fmt: skip
    data = backing(served.disk, offset, MiB)
    assert data[: 64 * 1024] == b"\xa5" * (64 * 1024)
    assert data[64 * 1024 : 192 * 1024] == bytes(128 * 1024)
    assert data[192 * 1024 : 512 * 1024] == b"\xa5" * (320 * 1024)
    assert data[512 * 1024 : 516 * 1024] == b"\x5a" * 4096
    assert data[516 * 1024 :] == b"\xa5" * (MiB - 516 * 1024)
    # A read past the end is refused by qemu-io itself, so the server's own bounds check
    # is covered by the raw-protocol test below.


async def test_a_write_the_lun_refuses_fails_at_once_and_is_sent_once(served: Served) -> None:
    """A LUN made read-only after its export was opened: the next write comes back DATA
    PROTECT, which the client gets as EPERM; it is not sent to the target a second time
    (only an outage, a timeout or a unit attention is worth another try)."""
    disk = served.disk
    await run("qemu-io", "-f", "raw", served.uri(), "-c", "write -P 0x11 0 4k")
    disk.target.tgtadm(
        "--op", "update", "--mode", "logicalunit", "--tid", str(disk.tid),
        "--lun", str(disk.lun), "--params", "readonly=1",
    )  # fmt: skip
    sent = served.session.recovery.stats()["txdata_octets"]
    code, out, err = await run_client(
        "qemu-io", "-f", "raw", served.uri(), "-c", "write -P 0x22 0 4k", check=False
    )
    assert "Operation not permitted" in out + err, (code, out, err)
    assert served.session.recovery.stats()["txdata_octets"] - sent == 4096
    assert backing(disk, 0, 4096) == b"\x11" * 4096


async def test_raw_protocol_errors(served: Served) -> None:
    """Requests no well-behaved client sends: beyond the end, unaligned, unknown command,
    and a garbage magic, which ends the connection without hurting the next client."""
    import struct

    from pyiscsid.daemon import nbd_protocol as wire

    reader, writer = await asyncio.open_unix_connection(str(served.socket))
    hello = await reader.readexactly(18)
    assert struct.unpack(">QQH", hello)[:2] == (wire.NBDMAGIC, wire.IHAVEOPT)
    writer.write(struct.pack(">I", 3))
    name = served.export.name.encode()
    unknown = b"nope"
    writer.write(
        wire.OPTION_HEADER.pack(wire.IHAVEOPT, 99, 0)
        + wire.OPTION_HEADER.pack(wire.IHAVEOPT, wire.Option.GO, 4 + len(unknown) + 2)
        + struct.pack(">I", len(unknown)) + unknown + b"\0\0"
        + wire.OPTION_HEADER.pack(wire.IHAVEOPT, wire.Option.GO, 4 + len(name) + 2)
        + struct.pack(">I", len(name)) + name + b"\0\0"
    )  # fmt: skip

    async def option_reply() -> tuple[int, int, bytes]:
        _, option, kind, length = wire.OPTION_REPLY.unpack(
            await reader.readexactly(wire.OPTION_REPLY.size)
        )
        return option, kind, await reader.readexactly(length)

    assert (await option_reply())[:2] == (99, wire.Reply.ERR_UNSUP)
    assert (await option_reply())[:2] == (wire.Option.GO, wire.Reply.ERR_UNKNOWN)
    replies = [await option_reply()]
    while replies[-1][1] != wire.Reply.ACK:
        replies.append(await option_reply())
    size = served.disk.size

    async def request(kind: int, offset: int, length: int, cookie: int, data: bytes = b"") -> int:
        writer.write(wire.REQUEST.pack(wire.REQUEST_MAGIC, 0, kind, cookie, offset, length) + data)
        magic, error, got = wire.SIMPLE_REPLY.unpack(await reader.readexactly(16))
        assert (magic, got) == (wire.SIMPLE_REPLY_MAGIC, cookie)
        return int(error)

    async with asyncio.timeout(TIMEOUT):
        assert await request(wire.Command.READ, size - 512, 1024, 1) == wire.EINVAL
        assert await request(wire.Command.WRITE, size, 512, 2, bytes(512)) == wire.ENOSPC
        assert await request(wire.Command.READ, 1, 512, 3) == wire.EINVAL
        assert await request(wire.Command.BLOCK_STATUS, 0, 512, 4) == wire.EINVAL
        assert await request(wire.Command.READ, 0, 512, 5) == 0
        await reader.readexactly(512)
        writer.write(b"\xff" * wire.REQUEST.size)
        assert await reader.read() == b""  # dropped
    writer.close()
    await run("nbdinfo", "--size", served.uri())  # the server still serves


async def test_killed_client_leaves_server_serving(served: Served, tmp_path: Path) -> None:
    source = tmp_path / "random.img"
    source.write_bytes(os.urandom(64 * MiB))
    killed_mid_transfer = False
    for _ in range(20):  # a copy can outrun the poll; try again until one is caught
        process = await asyncio.create_subprocess_exec(
            "nbdcopy", "--requests=64", str(source), served.uri(),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        try:
            async with asyncio.timeout(TIMEOUT):
                while process.returncode is None and served.server.in_flight < 8:
                    await asyncio.sleep(0.001)
            if process.returncode is None:
                process.kill()
                killed_mid_transfer = True
        finally:
            async with asyncio.timeout(TIMEOUT):
                await process.wait()
        if killed_mid_transfer:
            break
    assert killed_mid_transfer
    async with asyncio.timeout(TIMEOUT):  # the dead client's requests drain and it is gone
        while served.server.in_flight:
            await asyncio.sleep(0.01)
    pattern = os.urandom(MiB)
    (tmp_path / "small.img").write_bytes(pattern)
    await run("nbdcopy", str(tmp_path / "small.img"), served.uri())
    await run("nbdcopy", served.uri(), str(tmp_path / "back.img"))
    assert (tmp_path / "back.img").read_bytes()[:MiB] == pattern
    assert backing(served.disk, 0, MiB) == pattern
    assert served.session.alive


async def test_trim_unmaps_when_the_lun_is_thin(tgt: TgtDisk, tmp_path: Path) -> None:
    """tgtd offers UNMAP only with thin_provisioning=1; then NBD_CMD_TRIM punches a hole."""
    tgt.target.tgtadm(
        "--op", "update", "--mode", "logicalunit", "--tid", str(tgt.tid), "--lun", str(tgt.lun),
        "--params", "thin_provisioning=1",
    )  # fmt: skip
    config = ConnectionConfig(INITIATOR, tgt.iqn, isid=Session.new_isid())
    session = Session(
        1, tgt.iqn, parse_portal(tgt.portal), config, login_timeout=5, logout_timeout=5
    )
    await session.login()
    server = NbdServer()
    try:
        (lun,) = [info for info in session.luns if info.lun == tgt.lun]
        export = await LunExport.probe(session, lun)
        assert export.can_trim
        server.add(export)
        await server.start_unix(tmp_path / "nbd.sock")
        uri = f"nbd+unix:///{export.name}?socket={tmp_path / 'nbd.sock'}"
        await run("qemu-io", "-f", "raw", uri, "-c", "write -P 0x77 0 4M", "-c", "flush")
        assert backing(tgt, 0, 4 * MiB) == b"\x77" * (4 * MiB)
        await run("qemu-io", "-f", "raw", uri, "-c", "discard 1M 2M", "-c", "flush")
        data = backing(tgt, 0, 4 * MiB)
        assert data[:MiB] == b"\x77" * MiB
        assert data[MiB : 3 * MiB] == bytes(2 * MiB)
        assert data[3 * MiB :] == b"\x77" * MiB
    finally:
        await server.close()
        await session.logout()


@dataclass
class ListeningDaemon(Daemon):
    """The daemon with ``--nbd-listen`` (tests/daemon_process.py gives the other options)."""

    listen: str = ""

    def argv(self) -> list[str]:
        return [*super().argv(), "--nbd-listen", self.listen]


@pytest.fixture
def listening(tmp_path: Path) -> Iterator[ListeningDaemon]:
    daemon = ListeningDaemon(tmp_path / "daemon", listen=f"127.0.0.1:{free_tcp_port()}")
    try:
        yield daemon
    finally:
        daemon.stop()


def log_events(daemon: Daemon) -> list[dict[str, object]]:
    return [json.loads(line) for line in daemon.log().splitlines() if line.startswith("{")]


async def test_nbd_listen_serves_the_exports_on_loopback_tcp(
    tgt: TgtDisk, listening: ListeningDaemon
) -> None:
    listening.start()
    assert listening.client("-m", "discovery", "-t", "st", "-p", tgt.portal).returncode == 0
    assert listening.client("-m", "node", "--login").returncode == 0
    base = f"nbd://{listening.listen}"
    listed = json.loads(await run("nbdinfo", "--list", "--json", base))
    assert [e["export-name"] for e in listed["exports"]] == [f"{tgt.iqn}/{tgt.lun}"]
    uri = f"{base}/{tgt.iqn}/{tgt.lun}"
    assert int(await run("nbdinfo", "--size", uri)) == tgt.size
    await run("qemu-io", "-f", "raw", uri, "-c", "write -P 0x6b 1M 64k", "-c", "flush")
    assert backing(tgt, MiB, 64 * 1024) == b"\x6b" * (64 * 1024)
    (listening_event,) = [e for e in log_events(listening) if e["event"] == "nbd listening"]
    assert listening_event["addresses"] == [listening.listen]
    assert "no authentication" not in listening.log()  # loopback: nothing to warn about


def test_nbd_listen_on_a_taken_port_stops_the_daemon_with_a_reason(
    listening: ListeningDaemon,
) -> None:
    host, port = listening.listen.split(":")
    with socket.socket() as taken:
        taken.bind((host, int(port)))
        taken.listen()
        listening.start(wait=False)
        assert listening.process is not None
        assert listening.process.wait(timeout=TIMEOUT) == 1
    assert (
        f"pyiscsid: --nbd-listen {listening.listen}: cannot listen there: Address already in use"
        in listening.log()
    )
    assert not listening.socket.exists()  # it cleaned up behind itself
    assert not listening.nbd_socket.exists()
