"""Fault test 4: the initiator's link goes down and comes back, and the kernel's netlink news
(through LinkWatch) beats both the NOP-Out timeout and the reconnect backoff.

tgtd runs in its own network namespace behind a veth pair: 198.18.0.1/30 on our side in the
root namespace, 198.18.0.2/30 on tgtd's side (RFC 2544 benchmarking addresses, nothing
else). An ``unreachable`` route for the /30, below the veth's own route, keeps the packets of
reconnect attempts from wandering out of the default route while our veth is down: they fail
at once with "no route to host", as on a host whose storage network is a separate one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import structlog
from pyiscsid.daemon.driver import IscsiConnection
from pyiscsid.daemon.linkwatch import InterfaceUp, LinkWatch
from pyiscsid.daemon.localtarget import tool_path
from pyiscsid.daemon.recovery import SessionState, backoff
from pyiscsid.daemon.session import Session
from pyiscsid.daemon.supervisor import fail_sessions_using, kick_sessions_routed
from pyiscsid.protocol.config import ConnectionConfig
from pyiscsid.protocol.discovery import parse_portal

from tests.conftest import DISK_IQN, DISK_LUN, DISK_SIZE, DISK_TID, TgtDisk, TgtFactory
from tests.writer import TIMEOUT, Writer, file_reader

pytestmark = pytest.mark.tgtd

INITIATOR = "iqn.2026-11.test.pyiscsid:link-events"
HOST_ADDRESS = "198.18.0.1"
TARGET_ADDRESS = "198.18.0.2"
PREFIX = "198.18.0.0/30"
NOP_INTERVAL = 5.0  # open-iscsi's defaults: without netlink, a dead link costs up to 10 s
NOP_TIMEOUT = 5.0
FAILED_ATTEMPTS = 3  # reconnects that fail while the link is down, before it comes back
DETECTED_WITHIN = 1.0  # seconds from `ip link set down` to the session leaving LOGGED_IN
BACK_WITHIN = 1.0  # seconds from `ip link set up` to LOGGED_IN again


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool_path("ip"), *args], check=check, capture_output=True, text=True, timeout=10
    )


async def ip_async(*args: str) -> None:
    """``ip ARGS`` without blocking the loop that the session and the LinkWatch run on."""
    proc = await asyncio.create_subprocess_exec(
        tool_path("ip"), *args, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    assert proc.returncode == 0, f"ip {' '.join(args)}: {err.decode()}"


@dataclass(frozen=True)
class Veth:
    netns: str  # where tgtd lives, behind ``peer``
    host: str  # our end, in the root namespace, with HOST_ADDRESS
    peer: str  # its end, with TARGET_ADDRESS


@pytest.fixture
def veth() -> Iterator[Veth]:
    """The namespace, the veth pair and the unreachable route; all removed afterwards."""
    tag = os.getpid() % 100000
    link = Veth(netns=f"pyiscsid-le-{tag}", host=f"pyle{tag}h", peer=f"pyle{tag}t")
    try:
        ip("netns", "add", link.netns)
        ip("link", "add", link.host, "type", "veth", "peer", "name", link.peer,
           "netns", link.netns)  # fmt: skip
        ip("-n", link.netns, "link", "set", "lo", "up")
        ip("-n", link.netns, "addr", "add", f"{TARGET_ADDRESS}/30", "dev", link.peer)
        ip("-n", link.netns, "link", "set", link.peer, "up")
        ip("route", "add", "unreachable", PREFIX, "metric", "4096")
        ip("addr", "add", f"{HOST_ADDRESS}/30", "dev", link.host)
        ip("link", "set", link.host, "up")
        yield link
    finally:
        leftovers = [
            r.stderr.strip()
            for r in (
                ip("link", "del", link.host, check=False),  # its peer goes with it
                ip("route", "del", "unreachable", PREFIX, "metric", "4096", check=False),
                ip("netns", "del", link.netns, check=False),
            )
            if r.returncode != 0 and "Cannot find" not in r.stderr and "No such" not in r.stderr
        ]
        assert ip("netns", "list").stdout.count(link.netns) == 0
        assert not leftovers, leftovers


@pytest.fixture
def target(veth: Veth, tgt_factory: TgtFactory, tmp_path: Path) -> TgtDisk:
    """tgtd in the namespace on TARGET_ADDRESS (set up after, and stopped before, ``veth``)."""
    # The target pings too: the reset we sent while our link was down is lost, and tgt
    # keeps a session whose connection looks alive (it does not reinstate it); its own
    # NOP-In is what ends the stale connection, as a real target's would.
    tgtd = tgt_factory(address=TARGET_ADDRESS, netns=veth.netns, nop_interval=1, nop_count=2)
    backing = tgtd.add_disk(DISK_TID, DISK_IQN, tmp_path / "disk1.img", DISK_SIZE, DISK_LUN)
    return TgtDisk(tgtd, DISK_TID, DISK_IQN, DISK_LUN, backing, DISK_SIZE)


@dataclass
class Attempts:
    """When each reconnect attempt ended, and how; wraps the session's connect (a probe, it
    changes nothing) so that the test can wait for failed attempts instead of sleeping."""

    ended: list[tuple[float, bool]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def install(self, session: Session) -> None:
        recovery = session.recovery
        connect = recovery._connect

        async def counted() -> IscsiConnection:
            try:
                connection = await connect()
            except BaseException:
                self._end(ok=False)
                raise
            self._end(ok=True)
            return connection

        recovery._connect = counted

    def _end(self, ok: bool) -> None:
        self.ended.append((time.monotonic(), ok))
        self.changed.set()

    async def wait_failed(self, count: int, timeout: float) -> float:
        """Until ``count`` attempts have failed; returns when the last of them ended."""
        async with asyncio.timeout(timeout):
            while sum(not ok for _, ok in self.ended) < count:
                self.changed.clear()
                await self.changed.wait()
        return [t for t, ok in self.ended if not ok][count - 1]


@dataclass
class RoutedKicks:
    """on_interface_up as the supervisor handles it (kick_sessions_routed: a session
    waiting to reconnect is kicked only when the route to its target now leaves through the
    interface that came up), recording each decision for the test to wait on."""

    sessions: list[Session]
    watch: LinkWatch | None = None
    decided: list[tuple[str | None, bool]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def interface_up(self, event: InterfaceUp) -> None:
        task = asyncio.get_running_loop().create_task(self._decide(event))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _decide(self, event: InterfaceUp) -> None:
        assert self.watch is not None
        decided = await kick_sessions_routed(self.sessions, self.watch.routes_via, event.index)
        self.decided += [(event.name, via) for via in decided.values()]
        self.changed.set()

    async def wait_decided(self, *names: str) -> None:
        async with asyncio.timeout(TIMEOUT):
            while not {n for n, _ in self.decided} >= set(names):
                self.changed.clear()
                await self.changed.wait()


def wire(kicks: RoutedKicks) -> LinkWatch:
    """A LinkWatch wired as the supervisor wires it, for ``kicks.sessions``."""
    watch = LinkWatch(
        on_address_lost=lambda address: fail_sessions_using(kicks.sessions, address),
        on_interface_up=kicks.interface_up,
        log=structlog.get_logger(),
    )
    kicks.watch = watch
    return watch


@pytest.fixture
def kicks() -> RoutedKicks:
    return RoutedKicks([])


@pytest.fixture
async def running(
    veth: Veth, target: TgtDisk, kicks: RoutedKicks
) -> AsyncIterator[tuple[Session, Writer, list[asyncio.Task[None]], Attempts]]:
    """Logged in to tgtd through the veth, the LinkWatch on, the checksummed writer busy."""
    config = ConnectionConfig(
        INITIATOR,
        target.iqn,
        isid=Session.new_isid(),
        noop_out_interval=NOP_INTERVAL,
        noop_out_timeout=NOP_TIMEOUT,
    )
    session = Session(
        1, target.iqn, parse_portal(target.portal), config,
        login_timeout=3, logout_timeout=5, timeouts={"replacement_timeout": 60},
    )  # fmt: skip
    kicks.sessions.append(session)
    watch = wire(kicks)
    assert await watch.start(), "netlink is needed for this test"
    attempts = Attempts()
    tasks: list[asyncio.Task[None]] = []
    writer = Writer(session)
    try:
        await session.login()
        assert session.connection is not None
        assert session.connection.local_address == HOST_ADDRESS
        attempts.install(session)
        tasks = writer.start()
        await writer.wait_acks(50)
        yield session, writer, tasks, attempts
    finally:
        await ip_async("link", "set", veth.host, "up")  # whatever happened, let logout through
        writer.stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await session.logout()
        await watch.close()
        await asyncio.gather(*kicks.tasks, return_exceptions=True)


async def test_link_down_is_noticed_through_netlink_before_nop_timeout_and_link_up_reconnects_before_backoff(  # noqa: E501
    veth: Veth,
    target: TgtDisk,
    running: tuple[Session, Writer, list[asyncio.Task[None]], Attempts],
) -> None:
    """Measures (1) from ``ip link set down`` on our veth to the session leaving LOGGED_IN,
    which NOP-Outs alone would take up to NOP_INTERVAL + NOP_TIMEOUT (10 s) to notice, and
    (2) from ``ip link set up``, after FAILED_ATTEMPTS reconnects failed meanwhile, to
    LOGGED_IN again, against the earliest moment the backoff would have tried again. Then
    no write failed and every acknowledged write is in the backing file."""
    session, writer, _tasks, attempts = running

    down = time.monotonic()
    await ip_async("link", "set", veth.host, "down")
    await session.recovery.wait_for(SessionState.FAILED, SessionState.REOPEN, timeout=TIMEOUT)
    detected = time.monotonic() - down
    assert session.recovery.last_error == f"local address {HOST_ADDRESS} went away"
    assert detected < DETECTED_WITHIN < NOP_INTERVAL + NOP_TIMEOUT

    # Time2Wait, then attempts that fail at once (no route) with growing backoff between.
    last_failure = await attempts.wait_failed(FAILED_ATTEMPTS, timeout=TIMEOUT)
    assert session.state is SessionState.FAILED
    next_try = last_failure + backoff(FAILED_ATTEMPTS, rng=lambda: 0.0)  # its earliest

    up = time.monotonic()
    await ip_async("link", "set", veth.host, "up")
    await session.recovery.wait_for(SessionState.LOGGED_IN, timeout=TIMEOUT)
    back_at = time.monotonic()
    back = back_at - up
    await writer.wait_acks(1)
    resumed = writer.acks[-1] - up
    print(
        f"\nlink down: detected in {detected * 1000:.0f} ms "
        f"(NOP-Out alone: up to {NOP_INTERVAL + NOP_TIMEOUT:.0f} s); "
        f"link up after {FAILED_ATTEMPTS} failed reconnects: logged in {back * 1000:.0f} ms "
        f"later, I/O resumed {resumed * 1000:.0f} ms later; the backoff would have waited "
        f"{next_try - up:.2f} s at least"
    )
    assert back < BACK_WITHIN
    assert back_at < next_try
    assert attempts.ended[-1][1]  # the kicked attempt was the one that worked
    assert session.recovery.reconnects == 1

    await writer.finish(file_reader(target.backing))
    # One I_T nexus in the end (bounded wait: tgt notices the stale one by its NOP-In).
    await asyncio.to_thread(
        target.target.wait_for_sessions, target.tid, lambda sessions: len(sessions) == 1, 15
    )


async def test_an_unrelated_interface_coming_up_leaves_the_backoff_alone(
    veth: Veth,
    target: TgtDisk,
    running: tuple[Session, Writer, list[asyncio.Task[None]], Attempts],
    kicks: RoutedKicks,
) -> None:
    """Our link down, the session waiting to reconnect; then a veth pair unrelated to the
    target comes up (a container starting): reported by name, and the route to the target
    does not go through it, so no kick. Our own link coming back does kick: logged in again
    well before the backoff would have tried."""
    session, writer, _tasks, attempts = running
    await ip_async("link", "set", veth.host, "down")
    await session.recovery.wait_for(SessionState.FAILED, SessionState.REOPEN, timeout=TIMEOUT)
    last_failure = await attempts.wait_failed(FAILED_ATTEMPTS, timeout=TIMEOUT)
    next_try = last_failure + backoff(FAILED_ATTEMPTS, rng=lambda: 0.0)

    other = (f"{veth.host[:-1]}u", f"{veth.host[:-1]}v")
    try:
        await ip_async("link", "add", other[0], "type", "veth", "peer", "name", other[1])
        await ip_async("link", "set", other[0], "up")
        await ip_async("link", "set", other[1], "up")
        await kicks.wait_decided(*other)
        assert {d for d in kicks.decided if d[0] in other} == {(other[0], False), (other[1], False)}
        assert session.state is SessionState.FAILED

        up = time.monotonic()
        await ip_async("link", "set", veth.host, "up")
        await session.recovery.wait_for(SessionState.LOGGED_IN, timeout=TIMEOUT)
        back_at = time.monotonic()
    finally:
        ip("link", "del", other[0], check=False)
    assert (veth.host, True) in kicks.decided
    print(
        f"\nunrelated veth pair: no kick; ours up: logged in {(back_at - up) * 1000:.0f} ms later"
    )
    assert back_at - up < BACK_WITHIN
    assert back_at < next_try
    await writer.wait_acks(1)
    await writer.finish(file_reader(target.backing))
