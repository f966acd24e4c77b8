"""The protocol core on a real wire: the asyncio driver against a real tgtd on loopback."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from pyiscsid.daemon.driver import IscsiConnection, discover, open_connection
from pyiscsid.daemon.localtarget import TgtSession
from pyiscsid.protocol import scsi
from pyiscsid.protocol.chap import ChapAlgorithm, ChapCredentials
from pyiscsid.protocol.config import ConnectionConfig
from pyiscsid.protocol.discovery import Portal, parse_portal
from pyiscsid.protocol.errors import AuthenticationError, AuthenticationFailed, NegotiationError
from pyiscsid.protocol.events import Event, TargetPinged
from pyiscsid.protocol.framing import PduReader
from pyiscsid.protocol.negotiation import SessionParameters
from pyiscsid.protocol.pdu import Buffer, ScsiCommand
from pyiscsid.protocol.serial import sn_le

from tests.conftest import TgtDisk, TgtFactory

pytestmark = pytest.mark.tgtd

INITIATOR = "iqn.2026-11.test.pyiscsid:initiator"
BLOCK = 512
TIMEOUT = 30


def config_for(tgt: TgtDisk, **changes: object) -> ConnectionConfig:
    return replace(ConnectionConfig(INITIATOR, tgt.iqn, noop_out_interval=0), **changes)  # type: ignore[arg-type]


def portal_of(tgt: TgtDisk) -> Portal:
    return parse_portal(tgt.portal)


async def login(tgt: TgtDisk, **changes: object) -> IscsiConnection:
    return await open_connection(portal_of(tgt), config_for(tgt, **changes))


def logged_in_parameters(conn: IscsiConnection) -> SessionParameters:
    result = conn.login_result
    assert result is not None
    return result.parameters


async def write(conn: IscsiConnection, lba: int, data: bytes) -> None:
    (await conn.execute(scsi.write16(lba, len(data) // BLOCK), lun=1, data_out=data)).check()


async def read(conn: IscsiConnection, lba: int, length: int) -> bytes:
    result = await conn.execute(scsi.read16(lba, length // BLOCK), lun=1, read_length=length)
    return bytes(result.check().data)


async def sessions_become(tgt: TgtDisk, predicate: Callable[[list[TgtSession]], bool]) -> None:
    """Poll tgtadm in a thread, so that the event loop goes on closing our sockets."""
    await asyncio.to_thread(tgt.target.wait_for_sessions, tgt.tid, predicate, 10)


def backing_bytes(tgt: TgtDisk, offset: int, length: int) -> bytes:
    with open(tgt.backing, "rb") as f:
        f.seek(offset)
        return f.read(length)


async def test_send_targets_discovery_lists_every_target(tgt: TgtDisk) -> None:
    second = "iqn.2026-11.test.pyiscsid:disk2"
    tgt.target.add_disk(2, second, tgt.backing.with_name("disk2.img"), 1 << 20)
    targets = await asyncio.wait_for(discover(portal_of(tgt), ConnectionConfig(INITIATOR)), TIMEOUT)
    assert sorted(t.name for t in targets) == sorted([tgt.iqn, second])
    for target in targets:
        assert [(p.address, p.port, p.tpgt) for p in target.portals] == [(tgt.address, tgt.port, 1)]


async def test_read_capacity_matches_the_backing_file(tgt: TgtDisk) -> None:
    conn = await login(tgt)
    result = (await conn.execute(scsi.read_capacity16(), lun=1, read_length=32)).check()
    capacity = scsi.parse_read_capacity16(result.data)
    assert capacity.block_size == BLOCK
    assert capacity.size_bytes == os.path.getsize(tgt.backing) == tgt.size
    inquiry = (await conn.execute(scsi.inquiry(), lun=1, read_length=255)).check()
    assert scsi.parse_standard_inquiry(inquiry.data).device_type == 0  # a disk
    await conn.logout()


async def test_logout_leaves_no_session_on_the_target(tgt: TgtDisk) -> None:
    conn = await login(tgt)
    assert len(tgt.sessions()) == 1
    logout = await conn.logout()
    assert logout.response == 0
    await sessions_become(tgt, lambda sessions: not sessions)


async def test_relogin_with_the_same_isid_after_a_lost_connection_leaks_no_session(
    tgt: TgtDisk,
) -> None:
    """Recovery logs in again with the old ISID and TSIH 0 (RFC 7143 6.3.5): the target
    must end up with one session, not two. (tgt does not reinstate a session whose old
    connection is still alive: it keeps both, so the old connection must be closed first.)"""
    isid = 0x80_12_34_56_00_00
    first = await login(tgt, isid=isid)
    first._transport.abort()  # type: ignore[union-attr]  # a lost connection, no logout
    await asyncio.wait_for(first.wait_closed(), TIMEOUT)
    second = await login(tgt, isid=isid)
    await sessions_become(tgt, lambda sessions: len(sessions) == 1)
    await second.ping()
    await second.logout()


# ------------------------------------------------------------------ CHAP

USER, SECRET = "pyiscsid-user", "initiator-secret-1"
TARGET_USER, TARGET_SECRET = "tgt-user", "target-secret-22"


@pytest.fixture
def chap_tgt(tgt: TgtDisk) -> TgtDisk:
    tgt.target.add_account(USER, SECRET)
    tgt.target.bind_account(tgt.tid, USER)
    return tgt


async def test_chap_md5_login(chap_tgt: TgtDisk) -> None:
    conn = await login(chap_tgt, chap=ChapCredentials.from_config(USER, SECRET))
    assert await conn.ping() >= 0
    await conn.logout()


async def test_default_chap_algorithms_work_with_tgt(chap_tgt: TgtDisk) -> None:
    """tgt computes CHAP_A=7 as SHA-1: offering SHA-256 first would fail (DESIGN.md)."""
    config = config_for(chap_tgt, chap=ChapCredentials.from_config(USER, SECRET))
    assert ChapAlgorithm.SHA256 not in config.chap_algorithms
    conn = await open_connection(portal_of(chap_tgt), config)
    await conn.logout()


async def test_wrong_secret_fails_with_an_authentication_error(chap_tgt: TgtDisk) -> None:
    wrong = "not-the-secret-xyz"
    with pytest.raises(AuthenticationFailed) as info:
        await login(chap_tgt, chap=ChapCredentials.from_config(USER, wrong))
    assert "authentication failed" in str(info.value)
    assert wrong not in str(info.value) and SECRET not in str(info.value)


async def test_missing_credentials_fail_with_an_authentication_error(chap_tgt: TgtDisk) -> None:
    with pytest.raises(AuthenticationError):
        await login(chap_tgt)


async def test_mutual_chap_login(chap_tgt: TgtDisk) -> None:
    chap_tgt.target.add_account(TARGET_USER, TARGET_SECRET)
    chap_tgt.target.bind_account(chap_tgt.tid, TARGET_USER, outgoing=True)
    creds = ChapCredentials.from_config(USER, SECRET, TARGET_USER, TARGET_SECRET)
    conn = await login(chap_tgt, chap=creds)
    await write(conn, 0, os.urandom(4096))
    await conn.logout()


async def test_mutual_chap_rejects_a_target_that_does_not_know_our_secret(
    chap_tgt: TgtDisk,
) -> None:
    chap_tgt.target.add_account(TARGET_USER, TARGET_SECRET)
    chap_tgt.target.bind_account(chap_tgt.tid, TARGET_USER, outgoing=True)
    creds = ChapCredentials.from_config(USER, SECRET, TARGET_USER, "what-we-expect-123")
    with pytest.raises(AuthenticationError) as info:
        await login(chap_tgt, chap=creds)
    assert "mutual" in str(info.value)
    assert "what-we-expect-123" not in str(info.value)


# ------------------------------------------------------------------ data


def _extents() -> list[tuple[int, int]]:
    """(byte offset, length) pairs adding up to 4 MiB, crossing FirstBurstLength (64 KiB
    on tgt), MaxBurstLength (256 KiB) and the target's 8 KiB MaxRecvDataSegmentLength."""
    sizes = [512, 8192, 8192 + 512, 65536, 65536 + 4096, 262144, 262144 + 512, 1 << 20]
    sizes.append((4 << 20) - sum(sizes))
    extents, offset = [], 0
    for size in sizes:
        extents.append((offset, size))
        offset += size + 7 * BLOCK  # leave gaps so that misplaced data shows
    return extents


@pytest.mark.parametrize(
    "target_params",
    [
        {},  # tgt's defaults: InitialR2T=Yes, ImmediateData=Yes
        {"InitialR2T": "No"},  # unsolicited Data-Out up to FirstBurstLength
        {"ImmediateData": "No", "InitialR2T": "No"},
        {"ImmediateData": "No"},  # R2T only
    ],
    ids=["defaults", "unsolicited", "unsolicited-no-immediate", "r2t-only"],
)
async def test_four_mib_written_and_read_back(tgt: TgtDisk, target_params: dict[str, str]) -> None:
    for name, value in target_params.items():
        tgt.target.set_target_param(tgt.tid, name, value)
    conn = await login(tgt)
    params = logged_in_parameters(conn)
    for name, value in target_params.items():
        agreed = {"InitialR2T": params.initial_r2t, "ImmediateData": params.immediate_data}
        assert agreed[name] is (value == "Yes")
    extents = _extents()
    payloads = [os.urandom(size) for _, size in extents]
    await asyncio.gather(
        *(write(conn, off // BLOCK, data) for (off, _), data in zip(extents, payloads, strict=True))
    )
    for (offset, size), data in zip(extents, payloads, strict=True):
        assert await read(conn, offset // BLOCK, size) == data
        assert backing_bytes(tgt, offset, size) == data
    await conn.logout()


async def test_crc32c_digests_when_the_target_requires_them(tgt: TgtDisk) -> None:
    tgt.target.set_target_param(tgt.tid, "HeaderDigest", "CRC32C")
    tgt.target.set_target_param(tgt.tid, "DataDigest", "CRC32C")
    conn = await login(tgt, operational={"HeaderDigest": "CRC32C,None", "DataDigest": "CRC32C"})
    params = logged_in_parameters(conn)
    assert params.header_digest and params.data_digest
    data = os.urandom(1 << 20)
    await write(conn, 2048, data)
    assert await read(conn, 2048, len(data)) == data
    assert backing_bytes(tgt, 2048 * BLOCK, len(data)) == data
    await conn.logout()


async def test_requiring_a_digest_the_target_does_not_offer_fails_clearly(tgt: TgtDisk) -> None:
    """tgt's default is HeaderDigest=None; an initiator that insists on CRC32C cannot agree."""
    with pytest.raises(NegotiationError) as info:
        await login(tgt, operational={"HeaderDigest": "CRC32C"})
    assert "HeaderDigest" in str(info.value)
    await sessions_become(tgt, lambda sessions: not sessions)


# ------------------------------------------------------------------ the CmdSN window


class _WindowWatch:
    """Decodes every PDU the core hands the driver to send, and checks each command
    against the MaxCmdSN the core knew at that moment."""

    def __init__(self, conn: IscsiConnection) -> None:
        self.core = conn.core
        self.reader = PduReader()
        self.commands = 0
        self.most_waiting = 0
        self.violations: list[tuple[int, int]] = []
        self._data_to_send = self.core.data_to_send
        self.core.data_to_send = self._spy  # type: ignore[method-assign]

    def _spy(self) -> list[Buffer]:
        buffers = self._data_to_send()
        self.most_waiting = max(self.most_waiting, self.core.waiting)
        for buffer in buffers:
            self.reader.feed(buffer)
        while (pdu := self.reader.next_pdu()) is not None:
            if isinstance(pdu, ScsiCommand) and not pdu.immediate:
                self.commands += 1
                if not sn_le(pdu.cmd_sn, self.core.max_cmd_sn):
                    self.violations.append((pdu.cmd_sn, self.core.max_cmd_sn))
        return buffers


@pytest.mark.parametrize(("count", "initial_cmd_sn"), [(64, 1), (300, 0xFFFFFF80)])
async def test_commands_at_once_never_exceed_max_cmd_sn(
    tgt: TgtDisk, count: int, initial_cmd_sn: int
) -> None:
    """64 fit in tgt's window of 128; 300 must queue, and cross the 2**32 CmdSN wrap."""
    conn = await login(tgt, initial_cmd_sn=initial_cmd_sn)
    watch = _WindowWatch(conn)
    await write(conn, 0, os.urandom(count * BLOCK))
    watch.commands = 0
    results = await asyncio.wait_for(
        asyncio.gather(*(read(conn, lba, BLOCK) for lba in range(count))), TIMEOUT
    )
    assert len(results) == count and watch.commands == count
    assert watch.violations == []
    assert results == [backing_bytes(tgt, lba * BLOCK, BLOCK) for lba in range(count)]
    if count > 128:
        assert watch.most_waiting > 0  # the window really closed and commands queued
    await conn.logout()


# ------------------------------------------------------------------ NOP


async def test_nop_out_ping_is_answered(tgt: TgtDisk) -> None:
    conn = await login(tgt)
    rtts = [await conn.ping(b"ping-data-%d" % i) for i in range(5)]
    assert all(0 <= rtt < 5 for rtt in rtts)
    await conn.logout()


async def test_target_pings_are_answered_and_the_session_stays_up(
    tgt_factory: TgtFactory, tmp_path: Path
) -> None:
    target = tgt_factory(nop_interval=1, nop_count=2)
    iqn = "iqn.2026-11.test.pyiscsid:nop"
    backing = target.add_disk(1, iqn, tmp_path / "nop.img", 1 << 20)
    disk = TgtDisk(target, 1, iqn, 1, backing, 1 << 20)
    conn = await login(disk)
    pinged = asyncio.Event()
    count = 0

    def on_event(event: Event) -> None:
        nonlocal count
        if isinstance(event, TargetPinged):
            count += 1
            if count >= 4:  # well past nop_count=2 unanswered pings
                pinged.set()

    conn.on_event = on_event
    await asyncio.wait_for(pinged.wait(), 15)
    assert len(disk.sessions()) == 1
    await conn.ping()
    await conn.logout()
