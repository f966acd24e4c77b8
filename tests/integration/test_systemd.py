"""The real daemon under the systemd protocols, without systemd: a NOTIFY_SOCKET datagram
socket the test binds (READY only after the automatic logins, WATCHDOG at half
WATCHDOG_USEC, STATUS, RELOADING/READY on SIGHUP, STOPPING on SIGTERM) and socket
activation through systemd-socket-activate's real LISTEN_FDS hand-over."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import TgtDisk
from tests.daemon_process import Daemon

WATCHDOG_USEC = 400_000  # pings every 0.2 s
SOCKET_ACTIVATE = shutil.which("systemd-socket-activate") or "/usr/bin/systemd-socket-activate"


@dataclass
class Message:
    at: float  # time.monotonic() when received
    lines: list[str]

    @property
    def fields(self) -> dict[str, str]:
        return dict(line.partition("=")[::2] for line in self.lines)


@dataclass
class NotifyListener:
    """systemd's side of sd_notify: a datagram socket, read by a thread at once (as systemd
    reads it) so that the daemon never finds the queue full, and every message kept."""

    path: str
    sock: socket.socket
    messages: list[Message] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def run(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:  # closed at teardown
                return
            with self.changed:
                self.messages.append(Message(time.monotonic(), data.decode().split("\n")))
                self.changed.notify_all()

    def wait_for(
        self, predicate: Callable[[Message], bool], *, after: int = 0, timeout: float = 30
    ) -> int:
        """The index of the first message from ``after`` on that satisfies ``predicate``."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                for index in range(after, len(self.messages)):
                    if predicate(self.messages[index]):
                        return index
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no such message in {timeout} s: {self.summary(after)}")
                self.changed.wait(left)

    def wait_line(self, line: str, *, after: int = 0, timeout: float = 30) -> int:
        return self.wait_for(lambda m: line in m.lines, after=after, timeout=timeout)

    def wait_count(self, line: str, count: int, *, after: int = 0, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        with self.changed:
            while len(self.times(line, after=after)) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"fewer than {count} {line}: {self.summary(after)}")
                self.changed.wait(left)

    def times(self, line: str, *, after: int = 0) -> list[float]:
        return [m.at for m in self.messages[after:] if line in m.lines]

    def without_watchdog(self, after: int = 0) -> list[list[str]]:
        return [m.lines for m in self.messages[after:] if m.lines != ["WATCHDOG=1"]]

    def summary(self, after: int = 0) -> str:
        return (
            f"{self.without_watchdog(after)} and {len(self.times('WATCHDOG=1', after=after))} pings"
        )

    def __len__(self) -> int:
        with self.changed:
            return len(self.messages)


@pytest.fixture
def notify() -> Iterator[NotifyListener]:
    # sun_path holds 108 bytes: pytest's tmp_path can be longer than that.
    with tempfile.TemporaryDirectory(prefix="pyiscsid-notify-") as directory:
        path = os.path.join(directory, "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        listener = NotifyListener(path, sock)
        reader = threading.Thread(target=listener.run, daemon=True)
        reader.start()
        try:
            yield listener
        finally:
            sock.shutdown(socket.SHUT_RDWR)
            sock.close()
            reader.join(5)


def program(pid: int) -> str:
    """The name of the program a process runs (argv[0]'s base name)."""
    return os.path.basename(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode())


def notify_env(listener: NotifyListener) -> dict[str, str]:
    return {"NOTIFY_SOCKET": listener.path, "WATCHDOG_USEC": str(WATCHDOG_USEC)}


def automatic_node(tgt: TgtDisk, daemon: Daemon) -> None:
    """Record tgt's disk as an automatic node, with a daemon run that is then stopped."""
    portal = f"{tgt.address}:{tgt.port}"
    daemon.start()
    try:
        assert daemon.client("-m", "discovery", "-t", "st", "-p", portal).returncode == 0
        update = ["-o", "update", "-n", "node.startup", "-v", "automatic"]
        assert daemon.client("-m", "node", "-T", tgt.iqn, "-p", portal, *update).returncode == 0
    finally:
        code = daemon.stop()
    assert code == 0


@pytest.mark.tgtd
def test_ready_after_the_automatic_logins_then_watchdog_reload_and_stop(
    tgt: TgtDisk, notify: NotifyListener, tmp_path: Path
) -> None:
    daemon = Daemon(tmp_path / "daemon")
    automatic_node(tgt, daemon)
    daemon.env = notify_env(notify)

    # The target does not answer: the automatic login hangs, and READY must wait for it
    # while the watchdog goes on pinging from the loop.
    tgt.target.freeze()
    try:
        daemon.start(wait=False)
        notify.wait_line("STATUS=logging in to 1 node")
        notify.wait_count("WATCHDOG=1", 5)
        assert not notify.times("READY=1"), notify.summary()
    finally:
        tgt.target.thaw()
    try:
        ready = notify.wait_line("READY=1")
        assert notify.messages[ready].fields["STATUS"] == "1 session"  # the line READY came with
        sessions = daemon.request("session.list")["result"]["sessions"]
        assert [(s["target"], s["state"]) for s in sessions] == [(tgt.iqn, "LOGGED IN")]
        sid = sessions[0]["sid"]
        assert len(tgt.sessions()) == 1

        # WATCHDOG=1 at WATCHDOG_USEC/2, counted over a bounded stretch.
        start = len(notify)
        notify.wait_count("WATCHDOG=1", 8, after=start, timeout=10)
        pings = notify.times("WATCHDOG=1", after=start)
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        assert 0.1 < statistics.median(gaps) < 0.35, gaps
        # Never near what would get us restarted; generous, as a busy CI machine can pause us.
        assert max(gaps) < 2.5 * WATCHDOG_USEC / 1e6, gaps

        # SIGHUP: RELOADING=1 (with MONOTONIC_USEC), then READY=1; the session stays.
        before = len(notify)
        assert daemon.process is not None
        daemon.process.send_signal(signal.SIGHUP)
        reloading = notify.wait_line("RELOADING=1", after=before)
        assert int(notify.messages[reloading].fields["MONOTONIC_USEC"]) > 0
        again = notify.wait_line("READY=1", after=reloading)
        assert notify.messages[again].fields["STATUS"] == "1 session"
        sessions = daemon.request("session.list")["result"]["sessions"]
        assert [(s["sid"], s["state"]) for s in sessions] == [(sid, "LOGGED IN")]
        assert len(tgt.sessions()) == 1
        assert '"reloaded"' in daemon.log()

        # STATUS= follows the sessions (refreshed every few seconds).
        node = ["-m", "node", "-T", tgt.iqn, "-p", f"{tgt.address}:{tgt.port}"]
        before = len(notify)
        assert daemon.client(*node, "--logout").returncode == 0
        notify.wait_line("STATUS=0 sessions", after=before, timeout=10)
        before = len(notify)
        assert daemon.client(*node, "--login").returncode == 0
        notify.wait_line("STATUS=1 session", after=before, timeout=10)
    finally:
        before = len(notify)
        code = daemon.stop()
    assert code == 0

    # SIGTERM: STOPPING=1, then the session is logged out (not dropped) and the daemon exits.
    stopping = notify.wait_line("STOPPING=1", after=before, timeout=5)
    assert notify.messages[stopping].fields["STATUS"] == "logging out of 1 session"
    assert tgt.sessions() == []
    assert '"logged out"' in daemon.log()


def test_a_bad_config_on_reload_keeps_the_old_one_and_says_ready(
    notify: NotifyListener, tmp_path: Path
) -> None:
    daemon = Daemon(tmp_path / "daemon", env=notify_env(notify)).start()
    try:
        ready = notify.wait_line("READY=1")  # no automatic nodes: ready at once
        assert notify.messages[ready].fields["STATUS"] == "0 sessions"
        assert any(m.lines == ["STATUS=logging in to 0 nodes"] for m in notify.messages[:ready])
        assert daemon.process is not None

        daemon.config.write_text("node.conn[0].timeo.noop_out_interval = soon\n")
        before = len(notify)
        daemon.process.send_signal(signal.SIGHUP)
        reloading = notify.wait_line("RELOADING=1", after=before)
        notify.wait_line("READY=1", after=reloading)
        assert "reload failed, old configuration kept" in daemon.log()
        assert f"{daemon.config}:1" in daemon.log()  # which file, which line
        assert daemon.request("status")["ok"] is True

        daemon.config.write_text("node.conn[0].timeo.noop_out_interval = 7\n")
        before = len(notify)
        daemon.process.send_signal(signal.SIGHUP)
        notify.wait_line("READY=1", after=notify.wait_line("RELOADING=1", after=before))
        assert '"reloaded"' in daemon.log()
    finally:
        code = daemon.stop()
    assert code == 0


@pytest.mark.skipif(not os.access(SOCKET_ACTIVATE, os.X_OK), reason="no systemd-socket-activate")
def test_socket_activation_the_first_connection_starts_the_daemon(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path / "daemon")
    daemon.socket.parent.mkdir(parents=True)
    daemon.launcher = [SOCKET_ACTIVATE, "--listen", str(daemon.socket)]
    daemon.start(wait=False)
    try:
        assert daemon.process is not None
        pid = daemon.process.pid
        deadline = time.monotonic() + 10
        while not daemon.socket.exists():  # bound by systemd-socket-activate, not by us
            assert daemon.process.poll() is None, daemon.log()
            assert time.monotonic() < deadline, daemon.log()
            time.sleep(0.02)
        assert program(pid) == "systemd-socket-activate"  # nobody connected: not started yet

        daemon.wait_ready()  # the connection starts the daemon, which answers on that socket
        assert daemon.request("status")["ok"] is True
        assert program(pid) != "systemd-socket-activate"  # it exec'd the daemon in place
        log = daemon.log()
        assert '"activated": true' in log
        assert "Execing" in log
    finally:
        code = daemon.stop()
    assert code == 0
    assert daemon.socket.exists()  # the socket belongs to whoever bound it


def test_log_level_applies_at_start_and_on_each_reload(
    notify: NotifyListener, tmp_path: Path
) -> None:
    """log.level = warning hides info ("started") and debug (each control request); a
    reload to debug shows both, one back to error hides them again."""
    daemon = Daemon(
        tmp_path / "daemon", config_text="log.level = warning\n", env=notify_env(notify)
    ).start()

    def reload(level: str) -> None:
        assert daemon.process is not None
        daemon.config.write_text(f"log.level = {level}\n")
        before = len(notify)
        daemon.process.send_signal(signal.SIGHUP)
        notify.wait_line("READY=1", after=notify.wait_line("RELOADING=1", after=before))

    def levels() -> list[str]:
        lines = daemon.log().splitlines()
        return [json.loads(line)["level"] for line in lines if line.startswith("{")]

    try:
        notify.wait_line("READY=1")
        assert daemon.request("status")["ok"] is True
        assert set(levels()) <= {"warning", "error"}, daemon.log()
        assert not daemon.events("started") and not daemon.events("control.request")

        reload("debug")
        assert daemon.events("reloaded")  # info, logged once debug is in force
        assert daemon.request("status")["ok"] is True
        requests = len(daemon.events("control.request"))
        assert requests >= 1, daemon.log()

        reload("error")
        shown = len(levels())
        assert daemon.request("status")["ok"] is True
        assert len(daemon.events("control.request")) == requests
        assert len(levels()) == shown, daemon.log()
    finally:
        code = daemon.stop()
    assert code == 0
