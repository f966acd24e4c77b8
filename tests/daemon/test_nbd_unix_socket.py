"""The NBD server's Unix socket (NbdServer.start_unix and close): it takes the place of a
stale socket only, never of one another process answers on or of a file that is not a
socket, and at close it removes its own socket but not one a later daemon put there."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pyiscsid.daemon.nbd import NbdServer
from pyiscsid.daemon.unixsocket import SocketInUse, SocketPathError

T = 5.0  # bound on every wait


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "run" / "nbd.sock"


@pytest.fixture
async def server() -> AsyncIterator[NbdServer]:
    nbd = NbdServer({})
    try:
        yield nbd
    finally:
        async with asyncio.timeout(T):
            await nbd.close()


async def greeting(path: Path) -> bytes:
    """The first bytes a client reads from the socket at ``path``."""
    async with asyncio.timeout(T):
        reader, writer = await asyncio.open_unix_connection(str(path))
        try:
            return await reader.readexactly(8)
        finally:
            writer.close()
            await writer.wait_closed()


async def test_listens_with_its_mode_and_removes_its_socket(server: NbdServer, path: Path) -> None:
    await server.start_unix(path)
    assert server.unix_path == str(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o660
    assert await greeting(path) == b"NBDMAGIC"
    await server.close()
    assert not os.path.lexists(path)
    assert server.unix_path is None


async def test_a_stale_socket_is_replaced(server: NbdServer, path: Path) -> None:
    path.parent.mkdir()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(path))  # closed without unlinking: a daemon that died
    await server.start_unix(path)
    assert await greeting(path) == b"NBDMAGIC"


async def test_a_socket_another_process_answers_on_is_left_alone(
    server: NbdServer, path: Path, listener: socket.socket
) -> None:
    inode = path.lstat().st_ino
    with pytest.raises(SocketInUse, match="another process is answering on it"):
        await server.start_unix(path)
    assert server.unix_path is None
    assert path.lstat().st_ino == inode
    await server.close()  # must not remove theirs either
    assert path.lstat().st_ino == inode
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.connect(str(path))  # still theirs, still answering


async def test_a_file_at_the_path_is_left_alone(server: NbdServer, path: Path) -> None:
    path.parent.mkdir()
    path.write_text("precious\n")
    with pytest.raises(SocketPathError, match="it exists and is not a socket"):
        await server.start_unix(path)
    await server.close()
    assert path.read_text() == "precious\n"


async def test_close_leaves_a_later_daemons_socket(server: NbdServer, path: Path) -> None:
    await server.start_unix(path)
    path.unlink()  # ours went (removed by hand, or replaced as stale by a new daemon)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as successor:
        successor.bind(str(path))
        successor.listen()
        await server.close()
        assert stat.S_ISSOCK(path.lstat().st_mode)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(path))  # still the successor's, still answering


async def test_a_folder_that_is_a_file_is_named(server: NbdServer, tmp_path: Path) -> None:
    (tmp_path / "run").write_text("")
    path = tmp_path / "run" / "nbd.sock"
    with pytest.raises(SocketPathError) as refused:
        await server.start_unix(path)
    assert str(refused.value) == f"{path}: {tmp_path / 'run'} exists and is not a directory"
