"""A Unix socket file that the daemon binds, and removes only while it is still its own.

The control server and the NBD server both listen on a path in the file system. Whatever
is at that path belongs to somebody: a socket another process answers on (a second
pyiscsid), a file that is not a socket at all, or a socket left over from a daemon that
died. Only the last one is ours to replace. :func:`bind` binds first and looks only when
the path is taken (``EADDRINUSE``): a stale socket, one that refuses connections, is
unlinked and the bind tried once more; anything else is refused with a message that names
the path and the problem. :class:`SocketFile` remembers the file it bound by ``st_dev``
and ``st_ino``, so that closing never unlinks a socket that a later daemon has put there.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

from pyiscsid.protocol.errors import ISCSIError

from .paths import not_a_directory

__all__ = ["SUN_PATH_MAX", "SocketFile", "SocketInUse", "SocketPathError", "bind"]

SUN_PATH_MAX = 107
"""Bytes of a Unix socket path: ``sockaddr_un.sun_path[108]`` and its terminating NUL."""


class SocketPathError(ISCSIError):
    """No socket can be bound at ``path``. The message names the path and the problem;
    a caller that knows which option gave the path sets :attr:`option` to have it named
    too (``--nbd-socket /run/x.sock: ...``) and the remedy point at it."""

    def __init__(self, path: str, problem: str, remedy: str = "") -> None:
        super().__init__(path, problem, remedy)
        self.path = path
        self.problem = problem
        self.remedy = remedy  # "{other}" reads "another path", or the option's name
        self.option: str | None = None

    def __str__(self) -> str:
        where = f"{self.option} {self.path}" if self.option else self.path
        remedy = self.remedy.format(other=self.option or "path")
        return f"{where}: {self.problem}; {remedy}" if remedy else f"{where}: {self.problem}"


class SocketInUse(SocketPathError):
    """Another process answers on the socket: most likely a running pyiscsid."""


@dataclass
class SocketFile:
    """The socket file :func:`bind` created: ``identity`` is its ``(st_dev, st_ino)``."""

    path: str
    identity: tuple[int, int] | None

    def remove(self) -> None:
        """Unlink the file if it is still the one we bound; idempotent. A file with another
        identity was put there by someone else (a daemon started after us) and stays."""
        if self.identity is None:
            return
        try:
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self.identity:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        self.identity = None


def bind(
    path: str | os.PathLike[str], *, mode: int = 0o660, gid: int | None = None
) -> tuple[socket.socket, SocketFile]:
    """A stream socket bound at ``path`` (not yet listening), with ``mode`` and group
    ``gid`` set before anyone can connect, and the file it made.

    The missing folders are created (the last one 0755: clients must reach the socket). A
    stale socket at ``path`` is replaced; a live one raises :class:`SocketInUse`, and
    anything else in the way (a file, a link, a folder) :class:`SocketPathError`, untouched.
    """
    name = os.fspath(path)
    size = len(os.fsencode(name))
    if size > SUN_PATH_MAX:
        raise SocketPathError(
            name,
            f"too long for a Unix socket ({size} bytes, at most {SUN_PATH_MAX})",
            "choose a shorter path",
        )
    _make_folder(name)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    made = SocketFile(name, None)
    try:
        try:
            sock.bind(name)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise _cannot_bind(name, exc) from None
            _remove_stale(name)
            try:
                sock.bind(name)
            except OSError as again:  # someone bound it in between: theirs now
                raise _cannot_bind(name, again) from None
        st = os.lstat(name)
        made.identity = (st.st_dev, st.st_ino)
        # Before listen() nobody can connect, so the umask's mode is never usable.
        os.chmod(name, mode)
        if gid is not None:
            os.chown(name, -1, gid)
    except BaseException:
        sock.close()
        made.remove()
        raise
    return sock, made


def _make_folder(name: str) -> None:
    folder = os.path.dirname(name) or "."
    if os.path.isdir(folder):
        return
    try:
        os.makedirs(folder, mode=0o755, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        blocker = not_a_directory(Path(folder))
        if blocker is None:  # it changed under us: say what the system said
            raise SocketPathError(name, f"cannot create {folder}: {exc.strerror}") from None
        raise SocketPathError(name, f"{blocker} exists and is not a directory") from None
    except OSError as exc:
        raise SocketPathError(name, f"cannot create {folder}: {exc.strerror or exc}") from None
    os.chmod(folder, 0o755)  # not the umask's idea: clients must reach the socket


def _remove_stale(name: str) -> None:
    """Unlink the socket at ``name`` if nobody listens on it; raise if it is not a socket,
    if something answers, or if it cannot be told which."""
    try:
        before = os.lstat(name)
    except FileNotFoundError:
        return  # gone since the bind: try again
    if not stat.S_ISSOCK(before.st_mode):
        raise SocketPathError(
            name, "it exists and is not a socket", "remove it or choose another path"
        )
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.setblocking(False)
        try:
            probe.connect(name)
        except ConnectionRefusedError:
            pass  # left over from a daemon that is gone
        except FileNotFoundError:
            return
        except BlockingIOError:  # a listener whose backlog is full: alive
            raise _in_use(name) from None
        except OSError as exc:  # another kind of socket, or one we may not probe
            raise SocketPathError(
                name,
                f"a socket is there that cannot be checked ({exc.strerror or exc})",
                "remove it if it is stale, or choose another {other}",
            ) from None
        else:
            raise _in_use(name)
    try:
        after = os.lstat(name)
    except FileNotFoundError:
        return
    if (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino):
        os.unlink(name)
    # else: replaced while we probed; the second bind finds out whose it is


def _in_use(name: str) -> SocketInUse:
    return SocketInUse(
        name,
        "another process is answering on it (a running pyiscsid?)",
        "stop it or choose another {other}",
    )


def _cannot_bind(name: str, exc: OSError) -> SocketPathError:
    if exc.errno == errno.EADDRINUSE:
        return SocketPathError(
            name, "another process took it while a stale socket was being replaced"
        )
    return SocketPathError(name, f"cannot bind a socket there: {exc.strerror or exc}")
