"""LinkWatch against the real kernel: a veth pair inside a fresh network namespace (the host's
interfaces are never touched), changed with ``ip``, while a LinkWatch follows that namespace."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import pytest
import structlog
from pyiscsid.daemon import linkwatch
from pyiscsid.daemon.linkwatch import LinkWatch
from pyiscsid.daemon.localtarget import tool_path

ADDRESS = "198.18.1.1"  # RFC 2544 benchmarking range, and only inside the namespace
OTHER = "198.18.1.5"
WAIT = 5.0  # seconds for the kernel's news to arrive; it takes milliseconds

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")


def ip(*args: str) -> None:
    subprocess.run([tool_path("ip"), *args], check=True, capture_output=True, timeout=10)


async def ip_in(netns: str, *args: str) -> None:
    """``ip -n NETNS ARGS``, without blocking the loop the LinkWatch runs on."""
    proc = await asyncio.create_subprocess_exec(
        tool_path("ip"), "-n", netns, *args, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    assert proc.returncode == 0, f"ip -n {netns} {' '.join(args)}: {err.decode()}"


@pytest.fixture
def netns() -> Iterator[str]:
    """A new namespace holding a veth pair lw0 <-> lw1, lw1 up; deleted (veth with it) after."""
    name = f"pyiscsid-lw-{os.getpid()}"
    ip("netns", "add", name)
    try:
        ip("-n", name, "link", "add", "lw0", "type", "veth", "peer", "name", "lw1")
        ip("-n", name, "link", "set", "lw1", "up")
        yield name
    finally:
        ip("netns", "del", name)


@dataclass
class News:
    """What the LinkWatch reported, in order, for the test to wait on."""

    queue: asyncio.Queue[tuple[str, str | None]] = field(default_factory=asyncio.Queue)
    seen: list[tuple[str, str | None]] = field(default_factory=list)

    def lost(self, address: str) -> None:
        self.queue.put_nowait(("lost", address))

    def up(self) -> None:
        self.queue.put_nowait(("up", None))

    async def expect(self, kind: str, address: str | None = None) -> None:
        """Until ``kind`` (for ``address``) is reported; TimeoutError after WAIT seconds."""
        async with asyncio.timeout(WAIT):
            while True:
                item = await self.queue.get()
                self.seen.append(item)
                if item[0] == kind and (address is None or item[1] == address):
                    return

    async def expect_lost(self, *addresses: str) -> None:
        """Until each of ``addresses`` has been reported lost, in any order."""
        async with asyncio.timeout(WAIT):
            while not all(("lost", a) in self.seen for a in addresses):
                self.seen.append(await self.queue.get())

    def drain(self) -> list[tuple[str, str | None]]:
        items = []
        while not self.queue.empty():
            items.append(self.queue.get_nowait())
        return items


@pytest.fixture
async def watched(netns: str) -> AsyncIterator[tuple[str, News, LinkWatch]]:
    news = News()
    watch = LinkWatch(
        on_address_lost=news.lost, on_link_up=news.up, log=structlog.get_logger(), netns=netns
    )
    assert await watch.start()
    try:
        yield netns, news, watch
    finally:
        await watch.close()  # the socket holds the namespace: close it before the delete


async def test_addresses_present_at_start_are_known(netns: str) -> None:
    await ip_in(netns, "addr", "add", f"{ADDRESS}/30", "dev", "lw0")
    watch = LinkWatch(on_address_lost=print, on_link_up=print, log=structlog.get_logger(),
                      netns=netns)  # fmt: skip
    try:
        assert await watch.start()
        assert watch.active
        assert any(ADDRESS in addresses for addresses in watch.addresses().values())
    finally:
        await watch.close()
    assert not watch.active


async def test_address_added_then_removed(watched: tuple[str, News, LinkWatch]) -> None:
    netns, news, _ = watched
    await ip_in(netns, "addr", "add", f"{ADDRESS}/30", "dev", "lw0")
    await news.expect("up")
    await ip_in(netns, "addr", "del", f"{ADDRESS}/30", "dev", "lw0")
    await news.expect("lost", ADDRESS)


async def test_link_down_loses_every_address_and_link_up_is_reported(
    watched: tuple[str, News, LinkWatch],
) -> None:
    netns, news, watch = watched
    await ip_in(netns, "addr", "add", f"{ADDRESS}/30", "dev", "lw0")
    await ip_in(netns, "addr", "add", f"{OTHER}/30", "dev", "lw0")
    await ip_in(netns, "link", "set", "lw0", "up")
    await news.expect("up")
    news.drain()
    news.seen.clear()

    await ip_in(netns, "link", "set", "lw0", "down")
    await news.expect_lost(ADDRESS, OTHER)
    # The IPv4 addresses stay on a down link: lost means "cannot carry traffic".
    assert any(ADDRESS in addresses for addresses in watch.addresses().values())

    await ip_in(netns, "link", "set", "lw0", "up")
    await news.expect("up")


async def test_carrier_loss_counts_as_link_down(watched: tuple[str, News, LinkWatch]) -> None:
    """lw0 stays administratively up; its peer going down takes the carrier (NO-CARRIER)."""
    netns, news, _ = watched
    await ip_in(netns, "addr", "add", f"{ADDRESS}/30", "dev", "lw0")
    await ip_in(netns, "link", "set", "lw0", "up")
    await news.expect("up")
    await ip_in(netns, "link", "set", "lw1", "down")
    await news.expect("lost", ADDRESS)
    await ip_in(netns, "link", "set", "lw1", "up")
    await news.expect("up")


async def test_deleted_link_loses_its_addresses(watched: tuple[str, News, LinkWatch]) -> None:
    netns, news, watch = watched
    await ip_in(netns, "addr", "add", f"{ADDRESS}/30", "dev", "lw0")
    await ip_in(netns, "link", "set", "lw0", "up")
    await news.expect("up")
    await ip_in(netns, "link", "del", "lw0")  # takes its peer lw1 with it
    await news.expect("lost", ADDRESS)
    async with asyncio.timeout(WAIT):  # RTM_DELLINK follows the address's news
        while any(ADDRESS in addresses for addresses in watch.addresses().values()):
            await news.expect("lost")


async def test_lost_events_are_recovered_by_dumping_again(
    watched: tuple[str, News, LinkWatch],
) -> None:
    """A real overflow: the watch stops reading (its reader is removed: white-box), its receive
    buffer is shrunk, and the link goes down among a burst of changes. The kernel drops events
    and says ENOBUFS; the watch dumps again and still reports the address lost."""
    netns, news, watch = watched
    await ip_in(netns, "addr", "add", f"{ADDRESS}/30", "dev", "lw0")
    await ip_in(netns, "link", "set", "lw0", "up")
    await news.expect("up")
    sock = watch._sock
    assert sock is not None
    loop = asyncio.get_running_loop()
    loop.remove_reader(sock.fileno())
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 0)  # the kernel's minimum
    for flap in range(20):
        await ip_in(netns, "link", "set", "lw1", "down" if flap % 2 == 0 else "up")
    await ip_in(netns, "link", "set", "lw0", "down")
    # Events are lost by now (the error waits for the next recv); room again for the dump.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    with structlog.testing.capture_logs() as logs:
        loop.add_reader(sock.fileno(), watch._readable)
        await news.expect("lost", ADDRESS)
    assert any(entry["event"].startswith("link events overflowed") for entry in logs), logs
    assert watch.active


async def test_without_netlink_start_says_so_once_and_returns_false(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The one fake here: a sandbox that forbids netlink sockets is simulated by making the
    socket creation raise PermissionError, as socket(AF_NETLINK) does under such a policy."""

    def forbidden() -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(linkwatch, "_netlink_socket", forbidden)
    calls: list[str] = []
    watch = LinkWatch(
        on_address_lost=calls.append, on_link_up=lambda: calls.append("up"),
        log=structlog.get_logger(),
    )  # fmt: skip
    with structlog.testing.capture_logs() as logs:
        assert await watch.start() is False
        await watch.close()
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert len(warnings) == 1, logs
    assert warnings[0]["event"].startswith("link events unavailable (PermissionError")
    assert warnings[0]["event"].endswith("relying on NOP-Out pings")
    assert logs == warnings  # nothing else was said
    assert not watch.active and calls == []
