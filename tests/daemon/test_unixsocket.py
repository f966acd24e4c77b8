"""The socket file both servers bind (daemon/unixsocket.py): what stands at the path decides
what happens. A stale socket is replaced; a socket that answers, a file, a link or a socket
of another kind is refused and left as it was; the folder is made, or what is in its way is
named; and the file is removed at the end only while it is still the one we bound."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyiscsid.daemon.unixsocket import (
    SUN_PATH_MAX,
    SocketFile,
    SocketInUse,
    SocketPathError,
    bind,
)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "run" / "s.sock"


@pytest.fixture
def bound(path: Path) -> Iterator[tuple[socket.socket, SocketFile]]:
    sock, made = bind(path)
    try:
        yield sock, made
    finally:
        sock.close()
        made.remove()


def answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except ConnectionRefusedError:
            return False
    return True


def test_bind_makes_the_folder_and_a_socket_with_its_mode(
    path: Path, bound: tuple[socket.socket, SocketFile]
) -> None:
    sock, made = bound
    st = path.lstat()
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660  # before listen(): never the umask's mode
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o755
    assert made.path == str(path)
    assert made.identity == (st.st_dev, st.st_ino)
    assert sock.getsockname() == str(path)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another group needs root")
def test_bind_sets_the_group(path: Path) -> None:
    sock, made = bind(path, mode=0o600, gid=os.getgid() + 1)
    try:
        st = path.stat()
        assert (st.st_gid, stat.S_IMODE(st.st_mode)) == (os.getgid() + 1, 0o600)
    finally:
        sock.close()
        made.remove()


def test_remove_takes_our_socket_once(path: Path, bound: tuple[socket.socket, SocketFile]) -> None:
    _, made = bound
    made.remove()
    assert not os.path.lexists(path)
    made.remove()  # idempotent


def test_remove_leaves_a_successors_socket(
    path: Path, bound: tuple[socket.socket, SocketFile]
) -> None:
    """A daemon started after us took the path (after ours was unlinked, by hand or as
    stale): its socket is not ours to remove."""
    _, made = bound
    path.unlink()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as successor:
        successor.bind(str(path))
        successor.listen()
        made.remove()
        assert answers(path)


def test_a_stale_socket_is_replaced(path: Path) -> None:
    path.parent.mkdir()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(path))
    assert not answers(path)
    sock, made = bind(path)
    try:
        sock.listen()
        assert made.identity == (path.lstat().st_dev, path.lstat().st_ino)
        assert answers(path)
    finally:
        sock.close()
        made.remove()
    assert not os.path.lexists(path)


def test_a_live_socket_is_refused_and_left_alone(path: Path, listener: socket.socket) -> None:
    inode = path.lstat().st_ino
    with pytest.raises(SocketInUse) as refused:
        bind(path)
    assert str(refused.value) == (
        f"{path}: another process is answering on it (a running pyiscsid?); "
        "stop it or choose another path"
    )
    assert path.lstat().st_ino == inode
    assert answers(path)


def test_a_listener_with_a_full_backlog_is_alive(path: Path) -> None:
    """Its connect() would block rather than be refused: still somebody's socket."""
    path.parent.mkdir()
    clients: list[socket.socket] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as busy:
        busy.bind(str(path))
        busy.listen(0)
        try:
            while True:  # fill the backlog: a few connections that nobody accepts
                client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                clients.append(client)
                client.setblocking(False)
                try:
                    client.connect(str(path))
                except BlockingIOError:
                    break
            with pytest.raises(SocketInUse):
                bind(path)
            assert os.path.lexists(path)
        finally:
            for client in clients:
                client.close()


def test_a_file_in_the_way_is_refused_and_kept(path: Path) -> None:
    path.parent.mkdir()
    path.write_text("precious\n")
    with pytest.raises(SocketPathError) as refused:
        bind(path)
    assert not isinstance(refused.value, SocketInUse)
    assert str(refused.value) == (
        f"{path}: it exists and is not a socket; remove it or choose another path"
    )
    assert path.read_text() == "precious\n"


def test_a_link_in_the_way_is_refused_not_followed(tmp_path: Path, path: Path) -> None:
    """Even a link to a stale socket: the link is somebody's, and so is its target."""
    target = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(target))
    path.parent.mkdir()
    path.symlink_to(target)
    with pytest.raises(SocketPathError, match="it exists and is not a socket"):
        bind(path)
    assert path.is_symlink()
    assert stat.S_ISSOCK(target.lstat().st_mode)


def test_a_socket_of_another_kind_is_refused_and_kept(path: Path) -> None:
    path.parent.mkdir()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as other:
        other.bind(str(path))
        with pytest.raises(SocketPathError, match="a socket is there that cannot be checked"):
            bind(path)
        assert os.path.lexists(path)


def test_a_folder_that_is_a_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "run").write_text("")
    path = tmp_path / "run" / "deeper" / "s.sock"
    with pytest.raises(SocketPathError) as refused:
        bind(path)
    assert str(refused.value) == f"{path}: {tmp_path / 'run'} exists and is not a directory"
    assert (tmp_path / "run").read_text() == ""


def test_a_path_too_long_is_refused_before_anything_is_made(tmp_path: Path) -> None:
    path = tmp_path / ("x" * 110) / "s.sock"
    size = len(os.fsencode(str(path)))
    with pytest.raises(SocketPathError) as refused:
        bind(path)
    assert str(refused.value) == (
        f"{path}: too long for a Unix socket ({size} bytes, at most {SUN_PATH_MAX}); "
        "choose a shorter path"
    )
    assert list(tmp_path.iterdir()) == []


def test_the_longest_path_that_fits_binds(tmp_path: Path) -> None:
    room = SUN_PATH_MAX - len(os.fsencode(str(tmp_path))) - 1
    path = tmp_path / ("s" * room)
    sock, made = bind(path)
    sock.close()
    made.remove()
    with pytest.raises(SocketPathError, match="too long"):
        bind(tmp_path / ("s" * (room + 1)))


def test_the_option_names_the_path_and_the_remedy(path: Path, listener: socket.socket) -> None:
    with pytest.raises(SocketInUse) as refused:
        bind(path)
    refused.value.option = "--nbd-socket"
    assert str(refused.value) == (
        f"--nbd-socket {path}: another process is answering on it (a running pyiscsid?); "
        "stop it or choose another --nbd-socket"
    )
