"""A real pyiscsid daemon process for the bench: every path it touches under one folder
(nothing in /etc, /var/lib or /run), driven through its control socket like pyiscsiadm."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from .processes import spawn, stop

BIN = Path(sys.executable).parent
START_TIMEOUT = 30.0
STOP_TIMEOUT = 60.0  # it logs out of every session first (200 in the idle bench)
SYSTEMD_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID")


class ControlError(RuntimeError):
    """The daemon answered a control request with an error."""


class BenchDaemon:
    """``pyiscsid`` with its own config (``config_text``, iscsid.conf syntax), initiator name,
    node database, control socket and NBD socket, all in ``root``. A context manager: on exit
    it is stopped with SIGTERM (it logs out of its sessions), SIGKILL if that takes too long."""

    def __init__(self, root: Path, config_text: str = "") -> None:
        self.root = root
        self.config_text = config_text
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        return self.root / "control.sock"

    @property
    def nbd_socket(self) -> Path:
        return self.root / "nbd.sock"

    @property
    def log_path(self) -> Path:
        return self.root / "pyiscsid.log"

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("the daemon is not running")
        return self.process.pid

    def argv(self) -> list[str]:
        return [
            str(BIN / "pyiscsid"),
            "--config", str(self.root / "pyiscsid.conf"),
            "--initiator-name-file", str(self.root / "initiatorname.iscsi"),
            "--state-dir", str(self.root / "state"),
            "--socket", str(self.socket),
            "--nbd-socket", str(self.nbd_socket),
            "--log", "json",
        ]  # fmt: skip

    def __enter__(self) -> Self:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "pyiscsid.conf").write_text(self.config_text)
        env = {k: v for k, v in os.environ.items() if k not in SYSTEMD_VARIABLES}
        # SIGTERM if the bench dies: the daemon logs out (its target dies too) and exits.
        self.process = spawn(self.argv(), self.log_path, death_signal=signal.SIGTERM, env=env)
        try:
            self._wait_ready()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self.process is not None:
            stop(self.process, signal.SIGTERM, STOP_TIMEOUT)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"pyiscsid exited with {self.process.returncode}:{self.tail()}")
            try:
                self.request("status", timeout=2)
                return
            except OSError:
                time.sleep(0.05)  # the socket is not there yet
        raise TimeoutError(f"pyiscsid did not answer within {START_TIMEOUT} s:{self.tail()}")

    def tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n--- " + str(self.log_path) + " ---\n" + "\n".join(text.splitlines()[-lines:])

    def request(self, op: str, args: dict[str, Any] | None = None, timeout: float = 120) -> Any:
        """One control request; its ``result``, or ControlError with the daemon's message."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.socket))
            line = {"v": 1, "id": 1, "op": op, "args": args or {}}
            sock.sendall(json.dumps(line).encode() + b"\n")
            data = bytearray()
            while not data.endswith(b"\n"):
                chunk = sock.recv(1 << 20)
                if not chunk:
                    raise ConnectionError(f"pyiscsid closed the control socket during {op}")
                data += chunk
        reply = json.loads(data)
        if not reply.get("ok"):
            raise ControlError(f"{op} {args or ''}: {reply.get('error')}")
        return reply["result"]

    def login(self, portal: str, target: str) -> None:
        """Discover ``portal`` and log in to ``target`` (its LUNs become NBD exports)."""
        self.request("discovery.sendtargets", {"portal": portal})
        (entry,) = self.request("node.login", {"target": target})["logins"]
        if not entry["ok"]:
            raise ControlError(f"login to {target} failed: {entry['error']}{self.tail()}")

    def logout(self, target: str) -> None:
        self.request("node.logout", {"target": target})

    def nbd_uri(self, export: str) -> str:
        """An NBD URI's path after the first '/' is the export name, '/' included."""
        return f"nbd+unix:///{export}?socket={self.nbd_socket}"
