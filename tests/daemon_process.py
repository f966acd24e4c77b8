"""Run the real pyiscsid daemon and the real pyiscsiadm client as processes, for tests.

Every path the daemon touches lives in a test directory, so tests never read or write /etc,
/var/lib or /run, and several daemons can run side by side.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
START_TIMEOUT = 20.0
STOP_TIMEOUT = 40.0
CLIENT_TIMEOUT = 120.0
SYSTEMD_VARIABLES = frozenset(
    {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"}
)


@dataclass
class ClientResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[str]:
        return self.stdout.splitlines()

    def json(self) -> Any:
        return json.loads(self.stdout)


@dataclass
class Daemon:
    """One pyiscsid process with its own config, initiator name, state dir and socket."""

    root: Path
    config_text: str = ""
    socket_dir: Path | None = None  # default: root/run
    env: dict[str, str] = field(default_factory=dict)  # on top of ours, e.g. NOTIFY_SOCKET
    launcher: list[str] = field(default_factory=list)  # runs the daemon, e.g. socket activation
    process: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.log_path = self.root / "pyiscsid.log"

    @property
    def config(self) -> Path:
        return self.root / "pyiscsid.conf"

    @property
    def initiator_name_file(self) -> Path:
        return self.root / "initiatorname.iscsi"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def socket(self) -> Path:
        return (self.socket_dir or self.root / "run") / "control.sock"

    @property
    def nbd_socket(self) -> Path:
        return self.socket.parent / "nbd.sock"

    def nbd_uri(self, export: str = "") -> str:
        """libnbd's URI of an export (``<target-iqn>/<lun>``) on this daemon's NBD socket."""
        return f"nbd+unix:///{export}?socket={self.nbd_socket}"

    def argv(self) -> list[str]:
        return [
            str(BIN / "pyiscsid"),
            "--config", str(self.config),
            "--initiator-name-file", str(self.initiator_name_file),
            "--state-dir", str(self.state_dir),
            "--socket", str(self.socket),
            "--nbd-socket", str(self.nbd_socket),
            "--log", "json",
        ]  # fmt: skip

    def environ(self) -> dict[str, str]:
        """Our environment without anything systemd may have given the test run itself
        (a daemon under test must never notify the host's systemd or take its sockets),
        plus :attr:`env`."""
        inherited = {k: v for k, v in os.environ.items() if k not in SYSTEMD_VARIABLES}
        return {**inherited, **self.env}

    def start(self, *, wait: bool = True) -> Daemon:
        self.config.write_text(self.config_text)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [*self.launcher, *self.argv()],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=self.environ(),
        )
        log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Until the control socket answers `status` (bounded), or the process exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"pyiscsid exited with {self.process.returncode}:\n{self.log()}")
            try:
                self.request("status", timeout=2)
                return
            except OSError:
                time.sleep(0.05)  # polling a socket that is not there yet
        raise TimeoutError(f"pyiscsid did not answer within {timeout} s:\n{self.log()}")

    def request(self, op: str, args: dict[str, Any] | None = None, timeout: float = 30) -> Any:
        """One raw control request; returns the whole reply object."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.socket))
            sock.sendall(
                json.dumps({"v": 1, "id": 1, "op": op, "args": args or {}}).encode() + b"\n"
            )
            return json.loads(read_line(sock))

    def wait_sessions(self, count: int, timeout: float = 30) -> list[dict[str, Any]]:
        """Poll session.list (bounded) until ``count`` sessions are LOGGED IN: automatic
        logins run after the daemon starts answering."""
        deadline = time.monotonic() + timeout
        while True:
            sessions = [
                s
                for s in self.request("session.list")["result"]["sessions"]
                if s["state"] == "LOGGED IN"
            ]
            if len(sessions) >= count or time.monotonic() > deadline:
                return sessions
            time.sleep(0.1)

    def wait_state(self, states: tuple[str, ...], timeout: float = 20) -> str:
        """Poll session.list (bounded) until the first session's state is one of ``states``."""
        deadline = time.monotonic() + timeout
        while True:
            sessions = self.request("session.list")["result"]["sessions"]
            if sessions and sessions[0]["state"] in states:
                return str(sessions[0]["state"])
            if time.monotonic() > deadline:
                raise TimeoutError(f"session state never became {states}: {sessions}")
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        process = self.process
        if process is None or process.poll() is not None:
            return process.returncode if process is not None else 0
        process.send_signal(sig)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
            raise

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def events(self, name: str) -> list[dict[str, Any]]:
        """The ``--log json`` events called ``name``, in order."""
        lines = [json.loads(line) for line in self.log().splitlines() if line.startswith("{")]
        return [event for event in lines if event.get("event") == name]

    async def login_all(self, portal: str) -> None:
        """Discover ``portal`` and log in to every node found (each LUN is then exported)."""
        for argv in (("-m", "discovery", "-t", "st", "-p", portal), ("-m", "node", "--login")):
            done = await asyncio.to_thread(self.client, *argv)
            assert done.returncode == 0, done.stdout + done.stderr

    def client(
        self, *args: str, user: str | None = None, timeout: float = CLIENT_TIMEOUT
    ) -> ClientResult:
        """Run the real pyiscsiadm binary against this daemon."""
        argv = [str(BIN / "pyiscsiadm"), *args]
        if user is not None:
            argv = ["setpriv", f"--reuid={user}", "--regid=nogroup", "--clear-groups", *argv]
        env = {**os.environ, "PYISCSID_SOCKET": str(self.socket)}
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)
        return ClientResult(done.returncode, done.stdout, done.stderr)


def read_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data
