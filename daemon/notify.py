"""sd_notify: tell systemd what the daemon is doing (READY, RELOADING, STOPPING, STATUS,
WATCHDOG), see sd_notify(3).

The protocol is one datagram of ``KEY=VALUE`` lines to the AF_UNIX socket named in
``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace). It is spoken here
directly rather than through libsystemd so that a send never blocks the event loop (the
socket is non-blocking; a full queue drops one message instead of stalling every session),
and so that it behaves the same against systemd and against a test's own datagram socket.
Without ``$NOTIFY_SOCKET`` (not started by systemd) every call is a no-op.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Mapping
from typing import Any

import structlog


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds: what systemd 253+ wants next to RELOADING=1
    (``MONOTONIC_USEC``) to tell this reload from an earlier one."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def socket_address(value: str | None) -> str | bytes | None:
    """``$NOTIFY_SOCKET`` as an address for ``sendto``: ``@name`` is the abstract name
    ``\\0name``; an absolute path is used as it is; anything else (unset, empty, a relative
    path, or the ``vsock:`` form, which has no meaning on a host without VMs) is None."""
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None


def watchdog_interval(env: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings, or None when systemd does not watch us.

    systemd sets ``WATCHDOG_USEC`` (WatchdogSec=) and, since the variables are inherited,
    ``WATCHDOG_PID`` to say which process it means; sd_watchdog_enabled(3) advises pinging
    at half the timeout so that one late ping is not fatal.
    """
    env = os.environ if env is None else env
    pid = os.getpid() if pid is None else pid
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    watched = env.get("WATCHDOG_PID")
    if watched:
        try:
            if int(watched) != pid:
                return None
        except ValueError:
            return None
    return usec / 2 / 1_000_000


class Notifier:
    """One datagram socket to systemd's notify socket (or nothing, outside systemd)."""

    def __init__(self, address: str | bytes | None, *, logger: Any = None) -> None:
        self.address = address
        self._log = logger or structlog.get_logger("pyiscsid.notify")
        self._sock: socket.socket | None = None
        self._failed_logged = False

    @classmethod
    def from_environ(cls, env: Mapping[str, str] | None = None, *, logger: Any = None) -> Notifier:
        env = os.environ if env is None else env
        return cls(socket_address(env.get("NOTIFY_SOCKET")), logger=logger)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *lines: str) -> bool:
        """Send ``KEY=VALUE`` lines as one datagram (systemd applies them together).
        Returns whether it was sent; a failure is logged once and never raised: the
        daemon's sessions matter more than systemd's view of them."""
        if self.address is None:
            return False
        message = "\n".join(line.replace("\n", " ") for line in lines).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(message, self.address)
        except OSError as exc:
            if not self._failed_logged:
                self._failed_logged = True
                self._log.warning("sd_notify failed", reason=str(exc), first=lines[0])
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1", *self._status(status))

    def reloading(self, status: str | None = None) -> bool:
        return self.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}", *self._status(status))

    def stopping(self, status: str | None = None) -> bool:
        return self.send("STOPPING=1", *self._status(status))

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    @staticmethod
    def _status(status: str | None) -> tuple[str, ...]:
        return () if status is None else (f"STATUS={status}",)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class Watchdog:
    """Pings WATCHDOG=1 every ``interval`` seconds from the event loop's own timer
    (``call_later``), not from a thread: if the loop is stuck (a blocking call, a busy
    loop), the pings stop and systemd restarts the daemon, which is the point."""

    def __init__(self, notifier: Notifier, interval: float | None) -> None:
        self.notifier = notifier
        self.interval = interval
        self._handle: asyncio.TimerHandle | None = None

    @property
    def running(self) -> bool:
        return self._handle is not None

    def start(self) -> None:
        """Ping now, then every interval; a no-op when systemd watches nothing."""
        if self.interval is None or not self.notifier.enabled or self._handle is not None:
            return
        self._tick()

    def _tick(self) -> None:
        self.notifier.watchdog()
        assert self.interval is not None
        self._handle = asyncio.get_running_loop().call_later(self.interval, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
