"""sd_notify client against a real AF_UNIX datagram socket: message format, abstract names,
no-op outside systemd, the watchdog interval and its pings from the event loop."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyiscsid.daemon.notify import (
    Notifier,
    Watchdog,
    monotonic_usec,
    socket_address,
    watchdog_interval,
)


@pytest.fixture
def listener() -> Iterator[tuple[str, socket.socket]]:
    """A notify socket in a short directory (sun_path holds 108 bytes; tmp_path may not fit)."""
    with tempfile.TemporaryDirectory(prefix="notify-") as directory:
        path = os.path.join(directory, "notify.sock")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(path)
            sock.settimeout(5)
            yield path, sock


def received(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_each_message_is_one_datagram_of_key_value_lines(
    listener: tuple[str, socket.socket],
) -> None:
    path, sock = listener
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": path})
    try:
        assert notifier.enabled
        assert notifier.ready("2 sessions")
        assert received(sock) == ["READY=1", "STATUS=2 sessions"]
        assert notifier.status("1 session, 1 recovering")
        assert received(sock) == ["STATUS=1 session, 1 recovering"]
        assert notifier.stopping()
        assert received(sock) == ["STOPPING=1"]
        assert notifier.watchdog()
        assert received(sock) == ["WATCHDOG=1"]
        assert notifier.status("two\nlines")  # a newline would start a new assignment
        assert received(sock) == ["STATUS=two lines"]
    finally:
        notifier.close()


def test_reloading_carries_the_monotonic_clock(listener: tuple[str, socket.socket]) -> None:
    """systemd 253+ matches RELOADING=1 to the reload it asked for by MONOTONIC_USEC."""
    path, sock = listener
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": path})
    try:
        before = monotonic_usec()
        notifier.reloading()
        after = monotonic_usec()
        lines = received(sock)
        assert lines[0] == "RELOADING=1"
        key, _, value = lines[1].partition("=")
        assert key == "MONOTONIC_USEC" and before <= int(value) <= after
        assert abs(int(value) - time.monotonic_ns() // 1000) < 5_000_000
    finally:
        notifier.close()


def test_an_abstract_socket_name_starts_with_at() -> None:
    name = f"pyiscsid-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": "@" + name})
        try:
            assert notifier.ready()
            assert received(sock) == ["READY=1"]
        finally:
            notifier.close()


def test_addresses() -> None:
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("@foo") == b"\0foo"
    for unusable in (None, "", "relative/path", "vsock:2:1234"):
        assert socket_address(unusable) is None


def test_without_notify_socket_everything_is_a_no_op() -> None:
    notifier = Notifier.from_environ({})
    assert not notifier.enabled
    assert not notifier.ready("x")
    assert not notifier.watchdog()
    watchdog = Watchdog(notifier, 0.01)

    async def start() -> bool:
        watchdog.start()
        return watchdog.running

    assert asyncio.run(start()) is False


def test_a_vanished_socket_is_not_an_error(tmp_path: Path) -> None:
    """systemd restarting, or the socket gone: the daemon carries on, sends return False."""
    notifier = Notifier(str(tmp_path / "nobody-listens"))
    try:
        assert notifier.ready() is False
        assert notifier.status("still fine") is False
    finally:
        notifier.close()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "400000"}, 0.2),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
        ({}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": "x"}, None),
    ],
)
def test_watchdog_interval_is_half_the_timeout_for_our_pid(
    env: dict[str, str], expected: float | None
) -> None:
    assert watchdog_interval(env, pid=4242) == expected


def test_watchdog_interval_defaults_to_this_process() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "2000", "WATCHDOG_PID": str(os.getpid())}) == 0.001


def test_watchdog_pings_from_the_loop_and_stops_when_the_loop_is_stuck(
    listener: tuple[str, socket.socket],
) -> None:
    """Pings come from loop timers: a loop blocked in a call sends none until it returns."""
    path, sock = listener
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": path})
    watchdog = Watchdog(notifier, 0.02)
    sock.setblocking(False)

    def drain() -> int:
        count = 0
        while True:
            try:
                assert sock.recv(64) == b"WATCHDOG=1"
            except BlockingIOError:
                return count
            count += 1

    async def scenario() -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        pinged = loop.create_future()
        count = 0

        def readable() -> None:
            nonlocal count
            count += drain()
            if count >= 3 and not pinged.done():
                pinged.set_result(None)

        loop.add_reader(sock.fileno(), readable)
        watchdog.start()
        assert watchdog.running
        async with asyncio.timeout(5):
            await pinged
        loop.remove_reader(sock.fileno())
        drain()
        time.sleep(0.2)  # the loop is stuck: ten intervals without a chance to ping
        stuck = drain()
        watchdog.stop()
        return count, stuck

    try:
        healthy, stuck = asyncio.run(scenario())
    finally:
        notifier.close()
    assert healthy >= 3
    assert stuck == 0
    assert not watchdog.running
