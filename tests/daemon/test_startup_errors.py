"""The real daemon refusing to start on a path it cannot use: one line on stderr that names
the option, the path and what is wrong, exit status 1, and no socket of ours left behind.
Sockets other processes own (another daemon's NBD socket) and files that are not sockets
are never taken over."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon_process import START_TIMEOUT, Daemon

LONG = "x" * 110  # one path component: with it, no Unix socket path fits in 107 bytes


@pytest.fixture
def daemon(tmp_path: Path) -> Daemon:
    return Daemon(tmp_path / "d")


def start(daemon: Daemon, **replace: str) -> subprocess.CompletedProcess[str]:
    """Run the daemon with some of its options replaced; it must exit by itself."""
    argv = daemon.argv()
    for option, value in replace.items():
        argv[argv.index("--" + option.replace("_", "-")) + 1] = value
    daemon.config.write_text("")
    done = subprocess.run(
        argv, capture_output=True, text=True, env=daemon.environ(), timeout=START_TIMEOUT
    )
    assert done.returncode == 1, done.stdout + done.stderr
    return done


def last_line(done: subprocess.CompletedProcess[str]) -> str:
    return done.stderr.strip().splitlines()[-1]


def test_a_state_dir_that_is_a_file_says_so(daemon: Daemon, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.write_text("")
    done = start(daemon, state_dir=str(state))
    assert last_line(done) == f"pyiscsid: the state directory {state} exists and is not a directory"
    assert state.read_text() == ""


def test_a_socket_folder_that_is_a_file_is_named(daemon: Daemon, tmp_path: Path) -> None:
    (tmp_path / "run").write_text("")
    path = tmp_path / "run" / "control.sock"
    done = start(daemon, socket=str(path))
    assert last_line(done) == (
        f"pyiscsid: --socket {path}: {tmp_path / 'run'} exists and is not a directory"
    )


@pytest.mark.parametrize("option", ["socket", "nbd_socket"])
def test_a_socket_path_too_long_is_named(daemon: Daemon, tmp_path: Path, option: str) -> None:
    path = tmp_path / LONG / "s.sock"
    done = start(daemon, **{option: str(path)})
    flag = "--" + option.replace("_", "-")
    assert last_line(done).startswith(f"pyiscsid: {flag} {path}: too long for a Unix socket (")
    assert not (tmp_path / LONG).exists()
    assert not daemon.socket.exists()  # the control socket made before the NBD one is gone


def test_a_failing_nbd_socket_leaves_no_control_socket(daemon: Daemon, tmp_path: Path) -> None:
    """A control socket nobody answers would tell pyiscsiadm that the daemon crashed."""
    (tmp_path / "file").write_text("")
    path = tmp_path / "file" / "nbd.sock"
    done = start(daemon, nbd_socket=str(path))
    assert last_line(done) == (
        f"pyiscsid: --nbd-socket {path}: {tmp_path / 'file'} exists and is not a directory"
    )
    assert daemon.socket.parent.is_dir()  # it was created: the control socket came first
    assert list(daemon.socket.parent.iterdir()) == []


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Path]:
    """Another process's NBD socket: bound and listening (a pyiscsid with another --socket)."""
    path = tmp_path / "other" / "nbd.sock"
    path.parent.mkdir()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))
        sock.listen()
        yield path


def test_an_nbd_socket_another_process_answers_on_is_left_alone(
    daemon: Daemon, listener: Path
) -> None:
    inode = listener.stat().st_ino
    done = start(daemon, nbd_socket=str(listener))
    assert last_line(done) == (
        f"pyiscsid: --nbd-socket {listener}: another process is answering on it "
        "(a running pyiscsid?); stop it or choose another --nbd-socket"
    )
    assert listener.stat().st_ino == inode  # still theirs
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.connect(str(listener))
    assert not daemon.socket.exists()


def test_a_control_socket_another_process_answers_on_is_left_alone(
    daemon: Daemon, listener: Path
) -> None:
    inode = listener.stat().st_ino
    done = start(daemon, socket=str(listener))
    assert last_line(done) == (
        f"pyiscsid: --socket {listener}: another process is answering on it "
        "(a running pyiscsid?); stop it or choose another --socket"
    )
    assert listener.stat().st_ino == inode
    assert not os.path.lexists(daemon.nbd_socket)  # it stopped before the NBD socket


def test_a_file_at_the_nbd_socket_path_is_not_unlinked(daemon: Daemon, tmp_path: Path) -> None:
    path = tmp_path / "nbd.sock"
    path.write_text("precious\n")
    done = start(daemon, nbd_socket=str(path))
    assert last_line(done) == (
        f"pyiscsid: --nbd-socket {path}: it exists and is not a socket; "
        "remove it or choose another path"
    )
    assert path.read_text() == "precious\n"
    assert not daemon.socket.exists()


def test_a_stale_nbd_socket_is_replaced(daemon: Daemon) -> None:
    """Left over from a daemon that died: nobody answers, so it is ours to take."""
    daemon.nbd_socket.parent.mkdir(parents=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(daemon.nbd_socket))
    daemon.start()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(daemon.nbd_socket))
            assert client.recv(8) == b"NBDMAGIC"
    finally:
        assert daemon.stop() == 0
    assert not os.path.lexists(daemon.nbd_socket)
