"""A throwaway tgtd target on loopback, for `make run`, the tests and the benchmarks.

Each :class:`TgtTarget` is one private ``tgtd -f -C N`` listening only on
``127.0.0.1:PORT`` (or another ``address``, possibly inside a network namespace,
for link faults), with its own control number ``N`` and its own log file. It
is configured with ``tgtadm`` (every call under a subprocess timeout, so a
frozen tgtd cannot hang the suite) and remembers every configuration command,
so that :meth:`TgtTarget.restart` can bring back the same targets, LUNs,
accounts and parameters on the same portal after :meth:`TgtTarget.kill`.

Facts about tgt 1.0.85 (Debian 12) that this module relies on, all measured:

* SIGTERM does nothing. ``tgtadm --op delete --mode system`` is refused
  ("invalid request", exit 22; ``--force`` does not help) while any target
  exists. ``--op delete --mode target --force`` itself fails with "this
  logical unit is still active" while a command is in flight, and libiscsi
  logs straight back in. What works: set the target ``state`` to ``offline``,
  drop its connections, delete it (retry briefly), then delete the system;
  tgtd exits about 100 ms later.
* tgtd leaves ``/var/run/tgtd/socket.N`` and ``socket.N.lock`` behind when it
  exits, even on a clean exit. Stale files do not stop a new tgtd with the same
  N (the lock is an flock); a live tgtd with the same N makes the new one exit
  with status 1 and "another tgtd is using /var/run/tgtd/socket.N.lock".
* If the portal's port is taken, tgtd does NOT exit: it logs "unable to bind
  server socket, Address already in use" and falls back to listening on
  ``0.0.0.0:3260`` and ``[::]:3260``. So after start we check the portal list.
* In a network namespace (``ip netns exec NS tgtd ...``, which execs tgtd in
  place: same pid), tgtadm from the host still reaches tgtd: the control socket
  is a filesystem path, and ``ip netns exec`` shares /var/run.
* While tgtd is stopped (SIGSTOP), tgtadm hangs (the kernel accepts on the
  Unix socket); TCP connects to the portal succeed too and the iSCSI login
  waits until SIGCONT, then completes.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import fcntl
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

TGTD_SOCKET_DIR = Path("/var/run/tgtd")
LOOPBACK = "127.0.0.1"
MAX_CONTROL_NUMBER = 32767

#: Seconds for one tgtadm call. tgtadm answers in a few ms when tgtd is alive.
TGTADM_TIMEOUT = 5.0
#: Seconds to wait for a fresh tgtd to answer ``--op show --mode system``.
READY_TIMEOUT = 10.0
#: Seconds to wait for tgtd to exit after ``--op delete --mode system``.
EXIT_TIMEOUT = 5.0
#: Attempts at finding a free control number and TCP port.
START_ATTEMPTS = 8

_INSTALL_HINT = (
    "`make run` and `make test` install it (Debian packages tgt and libiscsi-bin); "
    "or run as root: apt-get install tgt libiscsi-bin"
)


class TgtError(RuntimeError):
    """tgtd could not be started, or a tgtadm command failed."""


class TgtUnavailable(TgtError):
    """tgtd/tgtadm are missing, or we are not root."""


# --------------------------------------------------------------------------- tools


def missing_tools(*names: str) -> list[str]:
    """Return the names among ``names`` that are not on PATH (``/usr/sbin`` included)."""
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin" + os.pathsep + "/sbin"
    return [name for name in names if shutil.which(name, path=path) is None]


def tool_path(name: str) -> str:
    """Absolute path of a tool, looking in ``/usr/sbin`` too; raise if it is missing."""
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin" + os.pathsep + "/sbin"
    found = shutil.which(name, path=path)
    if found is None:
        raise TgtUnavailable(f"{name} is not installed: {_INSTALL_HINT}")
    return found


def require_tgt() -> None:
    """Fail loudly (never skip) when tgtd/tgtadm are missing or we are not root."""
    missing = missing_tools("tgtd", "tgtadm")
    if missing:
        raise TgtUnavailable(f"{', '.join(missing)} not installed: {_INSTALL_HINT}")
    if os.geteuid() != 0:
        raise TgtUnavailable("tgtd tests must run as root (tgtadm only talks to uid 0)")


# ------------------------------------------------------------------------- helpers


def make_sparse_file(path: Path | str, size: int) -> Path:
    """Create (or truncate) ``path`` as a sparse file of ``size`` bytes and return it."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("wb") as f:
        f.truncate(size)
    return p


def free_tcp_port(address: str = LOOPBACK) -> int:
    """A TCP port that was free on ``address`` a moment ago (bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((address, 0))
        port: int = s.getsockname()[1]
        return port


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    interval: float = 0.02,
    message: str = "condition",
) -> None:
    """Poll ``predicate`` until it is true; raise TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {message}")
        time.sleep(interval)


def _socket_files(control: int) -> tuple[Path, Path]:
    sock = TGTD_SOCKET_DIR / f"socket.{control}"
    return sock, sock.with_name(f"socket.{control}.lock")


def _control_in_use(control: int) -> bool:
    return any(p.exists() for p in _socket_files(control))


def lock_holder(control: int) -> int | None:
    """PID of the process holding tgtd's lockf() lock on socket.N.lock (from /proc/locks)."""
    try:
        st = os.stat(_socket_files(control)[1])
        locks = Path("/proc/locks").read_text()
    except OSError:
        return None
    want = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    for line in locks.splitlines():
        # "1: POSIX  ADVISORY  WRITE 8339 fe:00:1458195 0 0" (blocked waiters have a "->")
        fields = line.split()
        if len(fields) < 8 or fields[1] == "->":
            continue
        try:
            major, minor, inode = fields[5].split(":")
            key = (int(major, 16), int(minor, 16), int(inode))
            pid = int(fields[4])
        except ValueError:
            continue
        if key == want:
            return pid
    return None


def process_state(pid: int) -> str | None:
    """The one-letter state of ``pid`` from /proc (R, S, T, Z, ...), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2]


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


# ---------------------------------------------------------------- parsed tgtadm show


@dataclass(frozen=True)
class TgtConnection:
    """One line group of ``tgtadm --op show --mode conn --tid T``."""

    sid: int
    cid: int
    initiator: str
    address: str


@dataclass(frozen=True)
class TgtSession:
    """One I_T nexus of ``tgtadm --op show --mode target`` (sid = tgt's session id, the TSIH)."""

    sid: int
    initiator: str
    alias: str | None
    connections: tuple[TgtConnection, ...] = ()


def parse_conn_show(text: str) -> list[TgtConnection]:
    """Parse ``tgtadm --op show --mode conn --tid T``::

    Session: 5
        Connection: 0
            Initiator: iqn.2010-11.libiscsi:iscsi-perf
            IP Address: 127.0.0.1
    """
    out: list[TgtConnection] = []
    sid: int | None = None
    cur: dict[str, str] = {}

    def flush() -> None:
        if sid is not None and "cid" in cur:
            out.append(
                TgtConnection(
                    sid=sid,
                    cid=int(cur["cid"]),
                    initiator=cur.get("initiator", ""),
                    address=cur.get("address", ""),
                )
            )

    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("Session:"):
            flush()
            cur = {}
            sid = int(line.split(":", 1)[1])
        elif line.startswith("Connection:"):
            flush()
            cur = {"cid": line.split(":", 1)[1].strip()}
        elif line.startswith("Initiator:"):
            cur["initiator"] = line.split(":", 1)[1].strip()
        elif line.startswith("IP Address:"):
            cur["address"] = line.split(":", 1)[1].strip()
    flush()
    return out


_TARGET_HEADER = re.compile(r"^Target (\d+): (\S+)\s*$")
_INITIATOR_LINE = re.compile(r"^Initiator: (\S+)(?: alias: (.*))?$")


def parse_target_show(text: str) -> dict[int, tuple[str, list[TgtSession]]]:
    """Parse ``tgtadm --op show --mode target`` into {tid: (iqn, I_T nexus list)}::

    Target 1: iqn.2026-11.test.pyiscsid:disk1
        System information:
            ...
        I_T nexus information:
            I_T nexus: 4
                Initiator: iqn.2010-11.libiscsi:iscsi-perf alias: none
                Connection: 0
                    IP Address: 127.0.0.1
        LUN information:
            ...
    """
    result: dict[int, tuple[str, list[TgtSession]]] = {}
    tid: int | None = None
    in_nexus = False
    sessions: list[TgtSession] = []
    sid: int | None = None
    initiator = ""
    alias: str | None = None
    conns: list[TgtConnection] = []
    cid: int | None = None

    def flush_conn() -> None:
        nonlocal cid
        cid = None

    def flush_session() -> None:
        nonlocal sid, conns
        if sid is not None:
            sessions.append(TgtSession(sid, initiator, alias, tuple(conns)))
        sid = None
        conns = []

    for raw in text.splitlines():
        line = raw.strip()
        if m := _TARGET_HEADER.match(raw):
            flush_session()
            tid = int(m.group(1))
            sessions = []
            result[tid] = (m.group(2), sessions)
            in_nexus = False
            continue
        if tid is None:
            continue
        if raw.startswith("    ") and not raw.startswith("     "):  # a section heading
            flush_session()
            in_nexus = line == "I_T nexus information:"
            continue
        if not in_nexus:
            continue
        if line.startswith("I_T nexus:"):
            flush_session()
            sid = int(line.split(":", 1)[1])
            initiator, alias = "", None
        elif m := _INITIATOR_LINE.match(line):
            initiator = m.group(1)
            alias = m.group(2) if m.group(2) not in (None, "none") else None
        elif line.startswith("Connection:"):
            cid = int(line.split(":", 1)[1])
        elif line.startswith("IP Address:") and sid is not None and cid is not None:
            conns.append(TgtConnection(sid, cid, initiator, line.split(":", 1)[1].strip()))
            flush_conn()
    flush_session()
    return result


def parse_key_values(text: str) -> dict[str, str]:
    """Parse ``tgtadm --op show --mode target --tid T`` (``Name=Value`` per line)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep:
            out[key] = value
    return out


# ---------------------------------------------------------------------- the target

_LIVE: weakref.WeakSet[TgtTarget] = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:
    """Last resort: never leave a tgtd behind, even if a test runner dies oddly."""
    for target in list(_LIVE):
        with contextlib.suppress(Exception):
            target.stop(graceful=False)


@dataclass
class _Record:
    """What restart() replays: the tgtadm argument lists that configured tgtd."""

    commands: list[list[str]] = field(default_factory=list)


class TgtTarget:
    """One private tgtd on ``127.0.0.1:<free port>`` with its own control number.

    ``address`` makes it listen elsewhere; ``netns`` runs it in that network namespace
    (``ip netns add NAME``, with ``address`` configured there), for link-down faults.

    Use as a context manager, or call :meth:`start` and :meth:`stop`::

        with TgtTarget(workdir=tmp_path) as t:
            t.add_target(1, "iqn.2026-11.test.pyiscsid:disk1")
            t.add_lun(1, 1, make_sparse_file(tmp_path / "disk.img", 64 << 20))
            t.bind_all(1)
            ... iscsi://{t.portal}/iqn.../1 ...
    """

    def __init__(
        self,
        workdir: Path | str | None = None,
        *,
        nop_interval: int | None = None,
        nop_count: int | None = None,
        port: int | None = None,
        control: int | None = None,
        debug: bool = False,
        address: str = LOOPBACK,
        netns: str | None = None,
    ) -> None:
        require_tgt()
        self._address = address
        self.netns = netns
        self._ip = tool_path("ip") if netns is not None else None
        self._tgtd = tool_path("tgtd")
        self._tgtadm = tool_path("tgtadm")
        self.workdir = (
            Path(workdir)
            if workdir is not None
            else Path(tempfile.mkdtemp(prefix="pyiscsid-tgtd-"))
        )
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.nop_interval = nop_interval
        self.nop_count = nop_count
        self.debug = debug
        self._fixed_port = port
        self._fixed_control = control
        self._port: int | None = None
        self._control: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._frozen = False
        self._record = _Record()
        self.log_path = self.workdir / "tgtd.log"

    # ----------------------------------------------------------------- properties

    @property
    def address(self) -> str:
        return self._address

    @property
    def port(self) -> int:
        if self._port is None:
            raise TgtError("tgtd has not been started")
        return self._port

    @property
    def portal(self) -> str:
        """``ADDRESS:PORT`` (``127.0.0.1:PORT`` by default)."""
        return f"{self.address}:{self.port}"

    @property
    def control(self) -> int:
        """The ``-C`` control number of this tgtd."""
        if self._control is None:
            raise TgtError("tgtd has not been started")
        return self._control

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        """tgtd's exit status once it has exited: 0 after a graceful stop, -9 after SIGKILL."""
        return self._proc.poll() if self._proc is not None else None

    @property
    def running(self) -> bool:
        """True while the tgtd process exists (also when frozen)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def frozen(self) -> bool:
        return self._frozen

    def url(self, iqn: str | None = None, lun: int | None = None) -> str:
        """libiscsi URL: ``iscsi://127.0.0.1:PORT[/IQN/LUN]``."""
        base = f"iscsi://{self.portal}"
        if iqn is None:
            return base
        return f"{base}/{iqn}/{lun if lun is not None else 1}"

    def log_text(self) -> str:
        """Everything tgtd wrote to stdout/stderr so far (all runs, restarts included)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    # ------------------------------------------------------------ context manager

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Self:
        """Start tgtd on a free port and control number; return once tgtadm answers."""
        if self.running:
            raise TgtError(f"tgtd -C {self._control} is already running")
        errors: list[str] = []
        # A clash on a number we chose at random is worth another try; on a fixed one, not.
        fixed = self._fixed_control is not None or self._fixed_port is not None
        for _ in range(1 if fixed else START_ATTEMPTS):
            control = self._fixed_control or self._pick_control()
            port = self._fixed_port or self._pick_port()
            outcome = self._launch(control, port)
            if outcome is None:
                return self
            errors.append(outcome)
        raise TgtError("could not start tgtd:\n  " + "\n  ".join(errors) + self._log_excerpt())

    def _pick_control(self) -> int:
        for _ in range(1000):
            n = random.randint(1, MAX_CONTROL_NUMBER)
            if not _control_in_use(n):
                return n
        raise TgtError(f"no free tgtd control number: {TGTD_SOCKET_DIR} is full of sockets")

    def _pick_port(self) -> int:
        if self.netns is None:
            return free_tcp_port(self.address)
        # Our address lives in the namespace, not here; nothing else listens in a fresh one,
        # and a clash would show in _check_portal.
        return free_tcp_port(LOOPBACK)

    def _argv(self, port: int, control: int) -> list[str]:
        iscsi = f"portal={self.address}:{port}"
        if self.nop_interval is not None:
            iscsi += f",nop_interval={self.nop_interval}"
        if self.nop_count is not None:
            iscsi += f",nop_count={self.nop_count}"
        argv = [self._tgtd, "-f", "-C", str(control), "--iscsi", iscsi]
        if self.debug:
            argv += ["-d", "1"]
        if self._ip is not None and self.netns is not None:
            argv = [self._ip, "netns", "exec", self.netns, *argv]  # exec: same pid as tgtd
        return argv

    def _launch(self, control: int, port: int) -> str | None:
        """Start one tgtd; None when it is ready, else why it failed (it is gone then)."""
        argv = self._argv(port, control)
        self._control, self._port = control, port
        main_thread = threading.current_thread() is threading.main_thread()
        with self.log_path.open("ab") as log:  # the child keeps its own copy of the fd
            log.write(f"==== {' '.join(argv)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Die with pytest even if it is SIGKILLed. PDEATHSIG follows the forking
                # *thread*, so arm it only from the main thread (a worker may exit any time).
                preexec_fn=_die_with_parent if main_thread else None,
                start_new_session=True,  # a Ctrl-C in the terminal is for pytest, not tgtd
            )
        self._frozen = False
        _LIVE.add(self)
        why = self._wait_ready()
        if why is None:
            why = self._check_portal()
        if why is None:
            return None
        self._terminate(graceful=False)
        return f"-C {control} portal {self.address}:{port}: {why}"

    def _wait_ready(self) -> str | None:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            assert self._proc is not None
            rc = self._proc.poll()
            if rc is not None:
                return f"tgtd exited with status {rc} before it was ready"
            # The control socket may still belong to another tgtd with the same N until ours
            # gives up: only talk to it once our process holds socket.N.lock.
            if lock_holder(self.control) != self._proc.pid:
                if time.monotonic() >= deadline:
                    return f"tgtd did not take {_socket_files(self.control)[1]}"
                time.sleep(0.005)
                continue
            try:
                r = self._run_tgtadm(["--op", "show", "--mode", "system"], timeout=2.0)
            except subprocess.TimeoutExpired:
                r = None
            if r is not None and r.returncode == 0 and "State: ready" in r.stdout:
                return None
            if time.monotonic() >= deadline:
                return f"tgtd did not answer tgtadm within {READY_TIMEOUT:.0f}s"
            time.sleep(0.005)

    def _check_portal(self) -> str | None:
        # tgtd falls back to 0.0.0.0:3260 when it cannot bind our port: insist on ours.
        r = self._run_tgtadm(["--op", "show", "--mode", "portal"], timeout=TGTADM_TIMEOUT)
        portals = re.findall(r"^Portal: (\S+),\d+$", r.stdout, flags=re.M)
        if portals == [f"{self.address}:{self._port}"]:
            return None
        return f"tgtd listens on {portals}, not on {self.address}:{self._port} (port taken?)"

    def stop(self, graceful: bool = True) -> None:
        """Stop tgtd (idempotent) and remove its socket files.

        Graceful: delete every target with --force, then ``--op delete --mode system``, wait
        for the exit; SIGKILL if that fails or takes longer than EXIT_TIMEOUT.
        """
        self._terminate(graceful=graceful)

    def _terminate(self, graceful: bool) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            if self._frozen:
                self.thaw()
            if graceful:
                with contextlib.suppress(Exception):
                    self._shutdown_via_tgtadm()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=EXIT_TIMEOUT)
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(timeout=EXIT_TIMEOUT)
        elif proc is not None:
            proc.wait()
        self._frozen = False
        self._remove_socket_files()
        _LIVE.discard(self)

    def _shutdown_via_tgtadm(self) -> None:
        """tgtd exits on ``--op delete --mode system`` only once it has no target, and
        ``--op delete --mode target --force`` fails ("this logical unit is still active") while
        a command is in flight. So: offline each target (no new logins), drop its connections,
        delete it (retrying briefly), then delete the system."""

        def adm(*args: str) -> subprocess.CompletedProcess[str]:
            return self._run_tgtadm(args, timeout=TGTADM_TIMEOUT)

        tids = list(parse_target_show(adm("--op", "show", "--mode", "target").stdout))
        for tid in tids:
            t = str(tid)
            adm("--op", "update", "--mode", "target", "--tid", t, "-n", "state", "-v", "offline")
            for c in parse_conn_show(adm("--op", "show", "--mode", "conn", "--tid", t).stdout):
                adm("--op", "delete", "--mode", "conn", "--tid", t, "--sid", str(c.sid),
                    "--cid", str(c.cid))  # fmt: skip
        for tid in tids:
            delete = ["--op", "delete", "--mode", "target", "--tid", str(tid), "--force"]

            def deleted(delete: list[str] = delete) -> bool:
                return adm(*delete).returncode == 0

            wait_until(deleted, 2.0, 0.02, f"tgtadm to delete target {tid}")
        adm("--op", "delete", "--mode", "system")

    def _remove_socket_files(self) -> None:
        """Remove socket.N and socket.N.lock, unless a live tgtd holds the lock (a race with
        another test process that picked the same N: its files are not ours to remove)."""
        if self._control is None:
            return
        sock, lock = _socket_files(self._control)
        try:
            fd = os.open(lock, os.O_WRONLY)
        except FileNotFoundError:
            fd = None
        if fd is not None:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1)  # tgtd takes lockf(F_TLOCK)
            except OSError:
                return  # held by a live tgtd
            finally:
                os.close(fd)
        for p in (sock, lock):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()

    def kill(self) -> None:
        """SIGKILL tgtd, like a crash: sessions drop, socket files stay until restart/stop."""
        proc = self._require_proc()
        proc.kill()
        proc.wait(timeout=EXIT_TIMEOUT)
        self._frozen = False

    def restart(self) -> Self:
        """Start tgtd again on the same port and control number and replay the configuration.

        A running tgtd is killed first (SIGKILL), so this also works as "crash and come back".
        """
        if self._control is None or self._port is None:
            raise TgtError("restart() before start()")
        if self.running:
            self.kill()
        self._remove_socket_files()
        why = self._launch(self._control, self._port)
        if why is not None:
            raise TgtError(f"restart failed: {why}{self._log_excerpt()}")
        for argv in self._record.commands:
            self.tgtadm(*argv, record=False)
        return self

    def freeze(self) -> None:
        """SIGSTOP tgtd: TCP stays up, nothing is answered (tgtadm would hang too)."""
        proc = self._require_proc()
        os.kill(proc.pid, signal.SIGSTOP)
        self._frozen = True
        wait_until(lambda: process_state(proc.pid) in ("T", "t", None), 5.0, 0.002, "tgtd to stop")

    def thaw(self) -> None:
        """SIGCONT tgtd after :meth:`freeze`."""
        proc = self._require_proc()
        os.kill(proc.pid, signal.SIGCONT)
        self._frozen = False
        wait_until(
            lambda: process_state(proc.pid) not in ("T", "t"), 5.0, 0.002, "tgtd to continue"
        )

    def _require_proc(self) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            raise TgtError("tgtd is not running")
        return self._proc

    # -------------------------------------------------------------------- tgtadm

    def _run_tgtadm(self, args: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
        argv = [self._tgtadm, "-C", str(self.control), "--lld", "iscsi", *args]
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )

    def tgtadm(
        self, *args: str, check: bool = True, record: bool = False, timeout: float = TGTADM_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        """Run ``tgtadm -C N --lld iscsi ARGS`` with a timeout.

        ``check``: raise TgtError (with tgtd's log) on a non-zero exit or a timeout.
        ``record``: remember the command so that :meth:`restart` replays it.
        """
        if self._frozen:
            raise TgtError("tgtd is frozen: tgtadm would hang (thaw() first)")
        try:
            r = self._run_tgtadm(args, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise TgtError(
                f"tgtadm {' '.join(args)} timed out after {timeout}s{self._log_excerpt()}"
            ) from e
        if check and r.returncode != 0:
            raise TgtError(
                f"tgtadm {' '.join(args)} failed with status {r.returncode}: "
                f"{(r.stderr or r.stdout).strip()}{self._log_excerpt()}"
            )
        if record and r.returncode == 0:
            self._record.commands.append(list(args))
        return r

    def _log_excerpt(self, lines: int = 40) -> str:
        tail = self.log_text().splitlines()[-lines:]
        return "\n--- tgtd log (" + str(self.log_path) + ") ---\n" + "\n".join(tail)

    # -------------------------------------------------------------- configuration

    def add_target(self, tid: int, iqn: str) -> None:
        self.tgtadm("--op", "new", "--mode", "target", "--tid", str(tid), "-T", iqn, record=True)

    def add_lun(self, tid: int, lun: int, path: Path | str, *, bsoflags: str | None = None) -> None:
        """Add a LUN backed by a file or block device (LUN 0 is tgt's controller: use >= 1)."""
        if lun < 1:
            raise ValueError("tgt's LUN 0 is its controller; use lun >= 1")
        args = ["--op", "new", "--mode", "logicalunit", "--tid", str(tid), "--lun", str(lun)]
        args += ["-b", str(Path(path).resolve())]
        if bsoflags is not None:
            args += ["--bsoflags", bsoflags]
        self.tgtadm(*args, record=True)

    def bind_all(self, tid: int) -> None:
        """Accept every initiator address (``-I ALL``)."""
        self.tgtadm("--op", "bind", "--mode", "target", "--tid", str(tid), "-I", "ALL", record=True)

    def bind_initiator_name(self, tid: int, name: str) -> None:
        self.tgtadm("--op", "bind", "--mode", "target", "--tid", str(tid), "-Q", name, record=True)

    def set_target_param(self, tid: int, name: str, value: str | int) -> None:
        """``--op update --mode target -n NAME -v VALUE`` (HeaderDigest, MaxRecvDataSegmentLength,
        nop_interval, ...). Affects new sessions only."""
        self.tgtadm(
            "--op", "update", "--mode", "target", "--tid", str(tid),
            "-n", name, "-v", str(value), record=True,
        )  # fmt: skip

    def target_params(self, tid: int) -> dict[str, str]:
        """The target's parameters as tgtd shows them (``Name=Value``)."""
        r = self.tgtadm("--op", "show", "--mode", "target", "--tid", str(tid))
        return parse_key_values(r.stdout)

    def add_account(self, user: str, password: str) -> None:
        self.tgtadm(
            "--op", "new", "--mode", "account", "--user", user, "--password", password,
            record=True,
        )  # fmt: skip

    def bind_account(self, tid: int, user: str, outgoing: bool = False) -> None:
        """Bind a CHAP account: incoming (initiator proves itself) or ``outgoing`` (mutual)."""
        args = ["--op", "bind", "--mode", "account", "--tid", str(tid), "--user", user]
        if outgoing:
            args.append("--outgoing")
        self.tgtadm(*args, record=True)

    def unbind_account(self, tid: int, user: str, outgoing: bool = False) -> None:
        args = ["--op", "unbind", "--mode", "account", "--tid", str(tid), "--user", user]
        if outgoing:
            args.append("--outgoing")
        self.tgtadm(*args, record=True)

    def add_disk(self, tid: int, iqn: str, path: Path | str, size: int, lun: int = 1) -> Path:
        """Target + sparse file-backed LUN + ``-I ALL``, in one call. Returns the file."""
        backing = make_sparse_file(path, size)
        self.add_target(tid, iqn)
        self.add_lun(tid, lun, backing)
        self.bind_all(tid)
        return backing

    # ------------------------------------------------------------------- queries

    def connections(self, tid: int) -> list[TgtConnection]:
        """The target's connections from ``--op show --mode conn --tid T``."""
        r = self.tgtadm("--op", "show", "--mode", "conn", "--tid", str(tid))
        return parse_conn_show(r.stdout)

    def sessions(self, tid: int) -> list[TgtSession]:
        """The target's I_T nexuses (sessions) from ``--op show --mode target``."""
        r = self.tgtadm("--op", "show", "--mode", "target")
        targets = parse_target_show(r.stdout)
        if tid not in targets:
            raise TgtError(f"tgtd has no target {tid}: {sorted(targets)}")
        return targets[tid][1]

    def targets(self) -> dict[int, str]:
        """{tid: iqn} of every target tgtd has."""
        r = self.tgtadm("--op", "show", "--mode", "target")
        return {tid: iqn for tid, (iqn, _) in parse_target_show(r.stdout).items()}

    def wait_for_sessions(
        self,
        tid: int,
        predicate: Callable[[list[TgtSession]], bool],
        timeout: float = 10.0,
        message: str = "sessions",
    ) -> list[TgtSession]:
        """Poll :meth:`sessions` until ``predicate(sessions)``; return them."""
        seen: list[TgtSession] = []

        def check() -> bool:
            nonlocal seen
            seen = self.sessions(tid)
            return predicate(seen)

        try:
            wait_until(check, timeout, 0.02, message)
        except TimeoutError as e:
            raise TimeoutError(f"{e}; last seen: {seen}") from None
        return seen

    # ----------------------------------------------------------------- faults

    def drop_connection(self, tid: int, sid: int, cid: int = 0) -> None:
        """Close one connection from the target side (tgt ends the session with it: ERL 0)."""
        self.tgtadm(
            "--op", "delete", "--mode", "conn", "--tid", str(tid), "--sid", str(sid),
            "--cid", str(cid),
        )  # fmt: skip

    def drop_all_connections(self, tid: int) -> int:
        """Drop every connection of ``tid``; return how many were dropped."""
        conns = self.connections(tid)
        for c in conns:
            self.drop_connection(tid, c.sid, c.cid)
        return len(conns)
