"""Session.rescan when a disk changes size on the target, asked for (``-R``) or after the
target said so in a unit attention. tgtd cannot resize a LUN that is in use (`tgtadm --op
update ... size=` is refused and it reads the size once) nor report a unit attention on
demand, so the scripted target (tests/fake_target.py), whose READ CAPACITY follows its disk,
stands in."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pyiscsid.daemon.config import DaemonConfig
from pyiscsid.daemon.control import Peer
from pyiscsid.daemon.nbd import NbdServer
from pyiscsid.daemon.nbd_export import Answered, LunExport
from pyiscsid.daemon.nodedb import NodeDB
from pyiscsid.daemon.supervisor import Supervisor

from tests.fake_target import BLOCK_SIZE, DISK_SIZE, FakeTarget
from tests.integration.sessions import make_session
from tests.writer import TIMEOUT

INITIATOR = "iqn.2026-11.test.pyiscsid:rescan"
ROOT = Peer(pid=1, uid=0, gid=0, may_change=True)
CAPACITY_CHANGED = (0x2A, 0x09)


async def test_a_grown_then_shrunk_disk_takes_its_new_size() -> None:
    async with FakeTarget() as target:
        session = make_session(INITIATOR, target)
        await session.login()
        try:
            (lun,) = session.luns
            assert (lun.size, lun.block_size) == (DISK_SIZE, BLOCK_SIZE)
            nothing = await session.rescan()
            assert (nothing.added, nothing.resized) == ((), ())

            target.disk.extend(bytes(DISK_SIZE))
            grown = await session.rescan()
            assert grown.added == () and grown.resized == ((lun.lun, DISK_SIZE, 2 * DISK_SIZE),)
            assert session.luns[0].size == 2 * DISK_SIZE

            del target.disk[DISK_SIZE // 2 :]
            shrunk = await session.rescan()
            assert shrunk.resized == ((lun.lun, 2 * DISK_SIZE, DISK_SIZE // 2),)
            assert session.luns[0].size == DISK_SIZE // 2
            assert session.luns[0].identity == lun.identity  # the same disk, resized
        finally:
            await session.logout()


@pytest.mark.parametrize("path", ["full", "started"])
async def test_a_capacity_changed_unit_attention_resizes_the_export(
    tmp_path: Path, path: str
) -> None:
    """The daemon rescans by itself when a command on either path (the full way, or
    started by the NBD fast path and judged) meets 'capacity data has changed'."""
    config = DaemonConfig()
    nbd = NbdServer()
    async with FakeTarget() as target:
        with NodeDB(tmp_path / "state", config.node_defaults) as nodedb:
            supervisor = Supervisor(config, nodedb, INITIATOR, nbd=nbd)
            node = {"target": target.name, "portal": target.portal}
            await supervisor.handle("node.new", node, ROOT)
            (login,) = (await supervisor.handle("node.login", node, ROOT))["logins"]
            assert login["ok"], login
            try:
                export = nbd.exports[f"{target.name}/{target.lun}"]
                assert isinstance(export, LunExport) and export.size == DISK_SIZE
                target.disk.extend(bytes(DISK_SIZE))
                target.unit_attentions = [CAPACITY_CHANGED]
                if path == "full":
                    assert len(await export.read(0, 4096)) == 4096
                else:
                    started = export.start(0, 4096, None, False)
                    assert started is not None
                    answer, _ = started
                    await asyncio.wait([answer], timeout=TIMEOUT)
                    assert export.judge(answer, 0, False) is Answered.RETRY
                assert target.unit_attentions == []
                async with asyncio.timeout(TIMEOUT):  # the rescan runs in the background
                    await asyncio.gather(*supervisor._background)
                assert export.size == 2 * DISK_SIZE
                assert supervisor.sessions[login["sid"]].luns[0].size == 2 * DISK_SIZE
            finally:
                await supervisor.shutdown({})
                await nbd.close()
