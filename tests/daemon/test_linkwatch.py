"""LinkWatch against the real kernel: a veth pair inside a fresh network namespace (the host's
interfaces are never touched), changed with ``ip``, while a LinkWatch follows that namespace."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import socket
import struct
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import pytest
import structlog
from pyiscsid.daemon import linkwatch, rtnetlink
from pyiscsid.daemon.linkwatch import InterfaceUp, LinkWatch
from pyiscsid.daemon.localtarget import tool_path
from pyiscsid.daemon.rtnetlink import RTM_DELADDR, RTM_NEWLINK

ADDRESS = "198.18.1.1"  # RFC 2544 benchmarking range, and only inside the namespace
OTHER = "198.18.1.5"
PEER = "198.18.1.2"  # the other end of ADDRESS's /30: a target would be there
MARK = "198.18.1.9"  # added and removed as a marker in the stream of news
WAIT = 5.0  # seconds for the kernel's news to arrive; it takes milliseconds
STORM_WAIT = 30.0  # seconds for what a storm of events makes happen (load on the machine)

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


async def ip_batch(netns: str, commands: str) -> None:
    """``ip -n NETNS -batch -``: many changes in one process, the kernel's news queued by the
    time it returns."""
    proc = await asyncio.create_subprocess_exec(
        tool_path("ip"), "-n", netns, "-batch", "-",
        stdin=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await proc.communicate(commands.encode())
    assert proc.returncode == 0, f"ip -n {netns} -batch: {err.decode()}"


@contextlib.asynccontextmanager
async def storm(netns: str, links: int = 4) -> AsyncIterator[None]:
    """Links s0..s3 set up and down without pause until the block ends: one ``ip -batch``
    fed through a pipe by a task. Their peers stay down, so each change is one RTM_NEWLINK
    (no carrier, no addresses). On entry the storm is on: a listener of our own has had
    news of it, and ``ip`` has thousands of changes queued."""
    await ip_batch(
        netns, "".join(f"link add s{i} type veth peer name t{i}\n" for i in range(links))
    )
    proc = await asyncio.create_subprocess_exec(
        tool_path("ip"), "-n", netns, "-force", "-batch", "-",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stdin is not None
    stdin = proc.stdin
    flaps = "".join(f"link set s{i} up\nlink set s{i} down\n" for i in range(links)).encode()
    chunk = flaps * ((128 << 10) // len(flaps))

    async def feed() -> None:
        while True:
            stdin.write(chunk)
            await stdin.drain()

    feeder = asyncio.create_task(feed())
    try:
        await storm_on(netns)
        yield
    finally:
        feeder.cancel()
        await asyncio.gather(feeder, return_exceptions=True)
        proc.kill()
        await proc.wait()


async def storm_on(netns: str, messages: int = 100) -> None:
    """Until a listener of our own in ``netns`` has had ``messages`` link news."""
    sock = await asyncio.to_thread(rtnetlink.open_socket_in, netns)
    try:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(STORM_WAIT):
            while messages > 0:
                try:
                    data = await loop.sock_recv(sock, rtnetlink.RECV_SIZE)
                except OSError as exc:  # news came faster than it was read: on indeed
                    if exc.errno != errno.ENOBUFS:
                        raise
                    return
                messages -= sum(1 for h, _ in rtnetlink.decode(data) if h.type == RTM_NEWLINK)
    finally:
        sock.close()


def ip_json(netns: str, *args: str) -> str:
    """What ``ip -n NETNS -json ARGS`` shows."""
    command = [tool_path("ip"), "-n", netns, "-json", *args]
    return subprocess.run(command, check=True, capture_output=True, timeout=10, text=True).stdout


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
    interfaces: list[InterfaceUp] = field(default_factory=list)  # every on_interface_up

    def lost(self, address: str) -> None:
        self.queue.put_nowait(("lost", address))

    def interface_up(self, event: InterfaceUp) -> None:
        self.interfaces.append(event)
        self.queue.put_nowait(("interface", event.name))

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

    async def expect_interfaces(self, *names: str) -> None:
        """Until each of ``names`` has been reported up, in any order."""
        async with asyncio.timeout(WAIT):
            while not all(("interface", name) in self.seen for name in names):
                self.seen.append(await self.queue.get())

    async def settled(self, netns: str) -> None:
        """Until the watch has read every message the kernel sent so far: the news comes in
        order, and that of a marker (an address added to lo, which is down, and removed:
        "lost", nothing else) comes last."""
        await ip_in(netns, "addr", "add", f"{MARK}/32", "dev", "lo")
        await ip_in(netns, "addr", "del", f"{MARK}/32", "dev", "lo")
        await self.expect("lost", MARK)

    def drain(self) -> list[tuple[str, str | None]]:
        items = []
        while not self.queue.empty():
            items.append(self.queue.get_nowait())
        return items


@dataclass
class Turns:
    """Messages the watch handled, in all and in each turn of the loop."""

    handled: int = 0
    per_turn: list[int] = field(default_factory=list)


@contextlib.contextmanager
def turns(watch: LinkWatch, monkeypatch: pytest.MonkeyPatch) -> Iterator[Turns]:
    """Counts the messages the watch handles (white-box: its _message wrapped) and, by a
    callback that runs once per turn of the loop, how many between two of its runs."""
    loop = asyncio.get_running_loop()
    counted = Turns()
    message = watch._message
    done = False

    def handle(header: rtnetlink.Header, body: rtnetlink.Body | None) -> None:
        counted.handled += 1
        message(header, body)

    def turn(before: int) -> None:
        counted.per_turn.append(counted.handled - before)
        if not done:
            loop.call_soon(turn, counted.handled)

    monkeypatch.setattr(watch, "_message", handle)
    loop.call_soon(turn, 0)
    try:
        yield counted
    finally:
        done = True


@pytest.fixture
async def watched(netns: str) -> AsyncIterator[tuple[str, News, LinkWatch]]:
    news = News()
    watch = LinkWatch(
        on_address_lost=news.lost, on_interface_up=news.interface_up,
        log=structlog.get_logger(), netns=netns,
    )  # fmt: skip
    assert await watch.start()
    try:
        yield netns, news, watch
    finally:
        await watch.close()  # the socket holds the namespace: close it before the delete


async def test_addresses_present_at_start_are_known(netns: str) -> None:
    await ip_in(netns, "addr", "add", f"{ADDRESS}/30", "dev", "lw0")
    watch = LinkWatch(on_address_lost=print, on_interface_up=print, log=structlog.get_logger(),
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
    await ip_in(netns, "link", "set", "lw0", "up")
    await news.expect("interface", "lw0")
    await ip_in(netns, "addr", "add", f"{ADDRESS}/30", "dev", "lw0")
    await news.expect("interface", "lw0")
    assert any(e.name == "lw0" and ADDRESS in e.addresses for e in news.interfaces)
    await ip_in(netns, "addr", "del", f"{ADDRESS}/30", "dev", "lw0")
    await news.expect("lost", ADDRESS)


async def test_link_down_loses_every_address_and_link_up_is_reported(
    watched: tuple[str, News, LinkWatch],
) -> None:
    netns, news, watch = watched
    await ip_in(netns, "addr", "add", f"{ADDRESS}/30", "dev", "lw0")
    await ip_in(netns, "addr", "add", f"{OTHER}/30", "dev", "lw0")
    await ip_in(netns, "link", "set", "lw0", "up")
    await news.expect("interface", "lw0")
    news.drain()
    news.seen.clear()

    await ip_in(netns, "link", "set", "lw0", "down")
    await news.expect_lost(ADDRESS, OTHER)
    # The IPv4 addresses stay on a down link: lost means "cannot carry traffic".
    assert any(ADDRESS in addresses for addresses in watch.addresses().values())

    await ip_in(netns, "link", "set", "lw0", "up")
    await news.expect("interface", "lw0")


async def test_carrier_loss_counts_as_link_down(watched: tuple[str, News, LinkWatch]) -> None:
    """lw0 stays administratively up; its peer going down takes the carrier (NO-CARRIER)."""
    netns, news, _ = watched
    await ip_in(netns, "addr", "add", f"{ADDRESS}/30", "dev", "lw0")
    await ip_in(netns, "link", "set", "lw0", "up")
    await news.expect("interface", "lw0")
    await ip_in(netns, "link", "set", "lw1", "down")
    await news.expect("lost", ADDRESS)
    await ip_in(netns, "link", "set", "lw1", "up")
    await news.expect("interface", "lw0")


async def test_deleted_link_loses_its_addresses(watched: tuple[str, News, LinkWatch]) -> None:
    netns, news, watch = watched
    await ip_in(netns, "addr", "add", f"{ADDRESS}/30", "dev", "lw0")
    await ip_in(netns, "link", "set", "lw0", "up")
    await news.expect("interface", "lw0")
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
    await news.expect("interface", "lw0")
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


async def test_news_in_a_message_that_cannot_be_read_is_recovered_by_dumping_again(
    watched: tuple[str, News, LinkWatch], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel never sends a message cut short, so the test cuts one (a fake, white-box):
    the RTM_DELADDR of a real ``ip addr del`` loses its last bytes on its way to the decoder.
    The watch says why it lost news, dumps again and still reports the address lost."""
    netns, news, watch = watched
    await ip_in(netns, "addr", "add", f"{ADDRESS}/30", "dev", "lw0")
    await ip_in(netns, "link", "set", "lw0", "up")
    await news.expect("interface", "lw0")
    decode = rtnetlink.decode
    cut: list[int] = []

    def cutting(data: bytes) -> rtnetlink.Datagram:
        if not cut and struct.unpack_from("=H", data, 4)[0] == RTM_DELADDR:
            cut.append(len(data))
            return decode(data[:-4])
        return decode(data)

    monkeypatch.setattr(rtnetlink, "decode", cutting)
    with structlog.testing.capture_logs() as logs:
        await ip_in(netns, "addr", "del", f"{ADDRESS}/30", "dev", "lw0")
        await news.expect("lost", ADDRESS)
    assert cut, "no RTM_DELADDR was read"
    [said] = [e for e in logs if e["event"] == "link events unreadable: dumping links again"]
    assert (
        said["reason"]
        == f"{cut[0] - 4} bytes at offset 0 of a {cut[0] - 4}-byte datagram are not a whole message"
    )
    assert said["log_level"] == "warning"
    assert watch.active


async def test_without_netlink_start_says_so_once_and_returns_false(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The one fake here: a sandbox that forbids netlink sockets is simulated by making the
    socket creation raise PermissionError, as socket(AF_NETLINK) does under such a policy."""

    def forbidden() -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(rtnetlink, "open_socket", forbidden)
    calls: list[str] = []
    watch = LinkWatch(
        on_address_lost=calls.append, on_interface_up=lambda event: calls.append("up"),
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


# -- event storms ----------------------------------------------------------------------------


async def test_a_backlog_is_read_a_budget_at_a_time(
    watched: tuple[str, News, LinkWatch], monkeypatch: pytest.MonkeyPatch
) -> None:
    """News queued while the watch did not read (its reader removed: white-box, as a busy
    loop would) is handled READ_BUDGET messages per turn of the loop, not all in one
    callback: a storm of events must not hold up NOP-Out timers and I/O for seconds."""
    netns, news, watch = watched
    sock = watch._sock
    assert sock is not None
    loop = asyncio.get_running_loop()
    loop.remove_reader(sock.fileno())
    await ip_batch(netns, "link set lw1 down\nlink set lw1 up\n" * 100)  # lw0 down: no carrier
    with turns(watch, monkeypatch) as counted:
        loop.add_reader(sock.fileno(), watch._readable)
        await news.settled(netns)
    assert counted.handled >= 200
    assert max(counted.per_turn) <= linkwatch.READ_BUDGET, counted.per_turn


async def test_a_storm_of_overflows_after_start_never_ends_the_watch(
    watched: tuple[str, News, LinkWatch], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The receive buffer shrunk to the kernel's minimum (white-box) while links flap
    without pause: events are dropped (ENOBUFS), and each dump meant to catch up is spoilt
    as well. The watch dumps again and again, with a growing delay, and says so once; after
    the storm its dump completes, and losing an address is news again."""
    netns, news, watch = watched
    await ip_in(netns, "addr", "add", f"{ADDRESS}/30", "dev", "lw0")
    await ip_in(netns, "link", "set", "lw0", "up")
    await news.expect("interface", "lw0")
    failed = 0
    three_failed = asyncio.Event()
    dump_all = watch._dump_all

    async def counted() -> object:  # a probe: changes nothing
        nonlocal failed
        try:
            return await dump_all()
        except Exception:
            failed += 1
            if failed >= 3:
                three_failed.set()
            raise

    monkeypatch.setattr(watch, "_dump_all", counted)
    sock = watch._sock
    assert sock is not None
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 0)
    with structlog.testing.capture_logs() as logs:
        async with storm(netns):
            await asyncio.wait_for(three_failed.wait(), STORM_WAIT)
            assert watch.active
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        await asyncio.wait_for(watch.synchronised(), linkwatch.RETRY_MAX + STORM_WAIT)
    assert watch.active
    # Said once per episode (a dump may complete between two bursts: a new episode), not
    # once per overflow nor per failed dump.
    overflowed, in_sync = "link events overflowed: dumping links again", "link events in sync again"
    said = [entry["event"] for entry in logs if entry["event"].startswith("link events")]
    assert said == [overflowed, in_sync] * (len(said) // 2) and said, said
    assert len(said) // 2 < watch._overflows  # episodes, not overflows
    assert any(ADDRESS in addresses for addresses in watch.addresses().values())
    await ip_in(netns, "addr", "del", f"{ADDRESS}/30", "dev", "lw0")
    await news.expect("lost", ADDRESS)


async def test_a_storm_at_start_is_not_a_reason_to_give_up(
    netns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """start() during a storm, with the kernel's smallest receive buffer: its first dump is
    spoilt (ENOBUFS, then EBUSY if dumped again too soon). That is not "link events
    unavailable": start() returns True at once, follows events, and dumps again until a
    dump is complete."""
    await ip_in(netns, "addr", "add", f"{ADDRESS}/30", "dev", "lw0")
    await ip_in(netns, "link", "set", "lw0", "up")
    monkeypatch.setattr(rtnetlink, "RCVBUF", 0)  # SO_RCVBUFFORCE 0: the kernel's minimum
    news = News()
    watch = LinkWatch(on_address_lost=news.lost, log=structlog.get_logger(), netns=netns)
    try:
        with structlog.testing.capture_logs() as logs:
            async with storm(netns):
                assert await watch.start()
                assert watch.active
            sock = watch._sock
            assert sock is not None
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            await asyncio.wait_for(watch.synchronised(), linkwatch.RETRY_MAX + STORM_WAIT)
        said = [entry["event"] for entry in logs if entry["log_level"] == "warning"]
        assert said and said[0].startswith("link events overflowed at start"), said
        assert not [event for event in said if "unavailable" in event], said
        assert watch.active
        assert any(ADDRESS in addresses for addresses in watch.addresses().values())
        await ip_in(netns, "addr", "del", f"{ADDRESS}/30", "dev", "lw0")
        await news.expect("lost", ADDRESS)
    finally:
        await watch.close()


# -- which interface ---------------------------------------------------------------------------


async def test_leaving_a_bridge_is_not_a_deletion(watched: tuple[str, News, LinkWatch]) -> None:
    """``ip link set lw0 nomaster`` sends an RTM_DELLINK of family AF_BRIDGE: the bridge
    port is gone, lw0 is not. Its address is not lost, and lw0 going down later is news."""
    netns, news, watch = watched
    await ip_in(netns, "link", "add", "lwbr", "type", "bridge")
    await ip_in(netns, "link", "set", "lwbr", "up")
    await ip_in(netns, "link", "set", "lw0", "master", "lwbr")
    await ip_in(netns, "addr", "add", f"{ADDRESS}/30", "dev", "lw0")
    await ip_in(netns, "link", "set", "lw0", "up")
    await news.expect("interface", "lw0")
    await ip_in(netns, "link", "set", "lw0", "nomaster")
    await news.settled(netns)
    assert ("lost", ADDRESS) not in news.seen
    assert any(ADDRESS in addresses for addresses in watch.addresses().values())
    await ip_in(netns, "link", "set", "lw0", "down")
    await news.expect("lost", ADDRESS)


async def test_news_read_together_is_one_report_per_interface(
    watched: tuple[str, News, LinkWatch],
) -> None:
    """lw0 comes up and gets two addresses, all read in one callback (its reader removed
    meanwhile: white-box): one report for lw0 with both addresses, one for lw1 (its carrier
    came with lw0), not one per message."""
    netns, news, watch = watched
    for name in ("lw0", "lw1"):  # no IPv6 link-local address passing DAD a second later
        ip("netns", "exec", netns, "sysctl", "-qw", f"net.ipv6.conf.{name}.disable_ipv6=1")
    sock = watch._sock
    assert sock is not None
    loop = asyncio.get_running_loop()
    loop.remove_reader(sock.fileno())
    await ip_batch(
        netns,
        f"link set lw0 up\naddr add {ADDRESS}/30 dev lw0\naddr add {OTHER}/30 dev lw0\n",
    )
    loop.add_reader(sock.fileno(), watch._readable)
    await news.settled(netns)
    assert [(e.name, e.addresses) for e in news.interfaces] == [
        ("lw0", frozenset({ADDRESS, OTHER})),
        ("lw1", frozenset()),
    ]


async def test_routes_via_tells_whom_an_interface_coming_up_concerns(
    watched: tuple[str, News, LinkWatch],
) -> None:
    """Three unrelated veth pairs come up (containers starting): each is reported by name,
    and routes_via() says that the way to PEER (a target) is lw0, none of them. What the
    supervisor asks before it cuts a session's backoff short."""
    netns, news, watch = watched
    await ip_in(netns, "addr", "add", f"{ADDRESS}/30", "dev", "lw0")
    await ip_in(netns, "link", "set", "lw0", "up")
    await news.expect("interface", "lw0")
    [lw0] = {e.index for e in news.interfaces if e.name == "lw0"}
    pairs = [(f"u{i}", f"v{i}") for i in range(3)]
    await ip_batch(
        netns, "".join(f"link add {u} type veth peer name {v}\n" for u, v in pairs)
        + "".join(f"link set {u} up\nlink set {v} up\n" for u, v in pairs),
    )  # fmt: skip
    names = [name for pair in pairs for name in pair]
    await news.expect_interfaces(*names)
    unrelated = {e.index for e in news.interfaces if e.name in names}
    assert len(unrelated) == len(names)

    assert await watch.route_interface(PEER) == lw0
    assert await watch.routes_via(PEER, lw0)
    for index in unrelated:
        assert not await watch.routes_via(PEER, index)
    assert await watch.route_interface(ADDRESS) == socket.if_nametoindex("lo")  # local
    assert await watch.route_interface("198.18.9.9") is None  # no default route here
    await ip_in(netns, "route", "add", "unreachable", "198.18.2.0/24")
    assert await watch.route_interface("198.18.2.1") is None
    assert await watch.route_interface("fe80::1%lw0") == lw0  # a link-local's scope
    # lw0 down (administratively) takes its prefix route: no route, so no reason to kick.
    await ip_in(netns, "link", "set", "lw0", "down")
    await news.expect("lost", ADDRESS)
    assert not await watch.routes_via(PEER, lw0)


async def test_routes_via_says_true_when_it_cannot_tell() -> None:
    """Without netlink (never started) or for a host name there is no answer: True, for a
    needless reconnect attempt costs less than a missed one."""
    watch = LinkWatch(on_address_lost=print, log=structlog.get_logger())
    assert await watch.routes_via("198.18.1.2", 7)
    assert await watch.routes_via("target.example", 7)
    with pytest.raises(OSError):
        await watch.route_interface("198.18.1.2")


async def dump(netns: str) -> list[tuple[rtnetlink.Header, rtnetlink.Body | None]]:
    """Every link, then every address of ``netns``, as rtnetlink requests and decodes them."""
    sock = await asyncio.to_thread(rtnetlink.open_socket_in, netns)
    loop = asyncio.get_running_loop()
    port = sock.getsockname()[0]
    messages = []
    try:
        async with asyncio.timeout(WAIT):
            for sequence, request in enumerate((rtnetlink.link_dump, rtnetlink.address_dump), 1):
                await loop.sock_sendall(sock, request(sequence, port))
                done = False
                while not done:
                    data = await loop.sock_recv(sock, rtnetlink.RECV_SIZE)
                    for header, body in rtnetlink.decode(data):
                        if (header.port, header.sequence) == (port, sequence):  # not news
                            messages.append((header, body))
                            done = header.type == rtnetlink.NLMSG_DONE
    finally:
        sock.close()
    return messages


async def test_a_real_dump_reads_as_ip_shows_it(netns: str) -> None:
    """rtnetlink's requests and decoding on the kernel's own messages, against ``ip -json``:
    each link's index, name and whether it carries traffic (up, running and with a carrier);
    each address, and whether it is usable (an IPv6 address on a link without a carrier
    stays tentative)."""
    await ip_in(netns, "link", "set", "lo", "up")  # lw1 is up without a carrier; lw0 down
    await ip_in(netns, "addr", "add", f"{ADDRESS}/30", "dev", "lw0")
    await ip_in(netns, "addr", "add", "2001:db8::2/64", "dev", "lw0")  # tentative
    await ip_in(netns, "addr", "add", "2001:db8::1/64", "dev", "lw1", "nodad")
    messages = await dump(netns)
    assert [h.type for h, _ in messages].count(rtnetlink.NLMSG_DONE) == 2
    assert all(b == rtnetlink.Status(0) for h, b in messages if h.type == rtnetlink.NLMSG_DONE)
    links = {b.index: b for _, b in messages if isinstance(b, rtnetlink.LinkInfo)}
    addresses = {(b.index, b.address): b.usable for _, b in messages
                 if isinstance(b, rtnetlink.AddressInfo)}  # fmt: skip

    shown = json.loads(ip_json(netns, "addr", "show"))
    assert {i: (b.name, b.usable, b.family) for i, b in links.items()} == {
        link["ifindex"]: (
            link["ifname"],
            {"UP", "LOWER_UP"} <= set(link["flags"]) and link["operstate"] in ("UP", "UNKNOWN"),
            socket.AF_UNSPEC,
        )
        for link in shown
    }
    assert addresses == {
        (link["ifindex"], info["local"]): not info.get("tentative", False)
        for link in shown
        for info in link["addr_info"]
    }
    names = {b.name: i for i, b in links.items()}
    assert [links[names[n]].usable for n in ("lo", "lw0", "lw1")] == [True, False, False]
    assert addresses[names["lw0"], ADDRESS] and addresses[names["lw1"], "2001:db8::1"]
    assert not addresses[names["lw0"], "2001:db8::2"]


async def test_a_dump_is_read_a_budget_at_a_time(
    watched: tuple[str, News, LinkWatch], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dump's datagram holds hundreds of addresses (up to 32 KiB), each some 100 µs for
    pyroute2 to decode: the watch stops in the middle of one after READ_BUDGET messages and
    goes on at the next turn of the loop."""
    netns, news, watch = watched
    count = 300
    addresses = (f"198.18.{4 + i // 250}.{i % 250}" for i in range(count))
    await ip_batch(netns, "".join(f"addr add {a}/32 dev lo\n" for a in addresses))
    await news.settled(netns)
    per_datagram: list[int] = []
    decode = rtnetlink.decode

    def counted_decode(data: bytes) -> Iterator[tuple[rtnetlink.Header, rtnetlink.Body | None]]:
        per_datagram.append(0)
        for message in decode(data):
            per_datagram[-1] += 1
            yield message

    monkeypatch.setattr(rtnetlink, "decode", counted_decode)
    with turns(watch, monkeypatch) as counted:
        fresh = await watch._dump_all()
    lo = fresh.index_named("lo")
    assert lo is not None and len(fresh.usable_addresses(lo)) >= count
    assert max(per_datagram) > 2 * linkwatch.READ_BUDGET, per_datagram
    assert max(counted.per_turn) <= linkwatch.READ_BUDGET, counted.per_turn
