"""Two ends of recovery against tgtd: a command our own core refuses is the caller's error and
leaves the session up; a session recovery gave up on (node.session.reopen_max) leaves the
supervisor, with its NBD exports, so that the node can be logged in again (as open-iscsi)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pyiscsid.daemon.config import DaemonConfig
from pyiscsid.daemon.control import Peer
from pyiscsid.daemon.nbd import NbdServer
from pyiscsid.daemon.nodedb import NodeDB
from pyiscsid.daemon.recovery import SessionState
from pyiscsid.daemon.supervisor import Supervisor
from pyiscsid.protocol import scsi
from pyiscsid.protocol.errors import InitiatorProtocolError

from tests.conftest import TgtDisk
from tests.integration.sessions import make_session
from tests.writer import TIMEOUT

pytestmark = pytest.mark.tgtd

INITIATOR = "iqn.2026-11.test.pyiscsid:edges"
ROOT = Peer(pid=1, uid=0, gid=0, may_change=True)


async def test_a_command_our_core_refuses_fails_alone_and_the_session_stays_up(
    tgt: TgtDisk,
) -> None:
    session = make_session(INITIATOR, tgt)
    await session.login()
    try:
        with pytest.raises(InitiatorProtocolError, match="CDB length 261"):
            async with asyncio.timeout(5):  # refused at once, not held as for an outage
                await session.execute(bytes(261), lun=tgt.lun)
        assert session.state is SessionState.LOGGED_IN
        read = await session.execute(scsi.read10(0, 1), lun=tgt.lun, read_length=512)
        assert read.check().status == 0
    finally:
        await session.logout()


async def test_a_session_given_up_is_removed_and_the_node_logs_in_again(
    tgt: TgtDisk, tmp_path: Path
) -> None:
    config = DaemonConfig()
    nbd = NbdServer()
    with NodeDB(tmp_path / "state", config.node_defaults) as nodedb:
        supervisor = Supervisor(config, nodedb, INITIATOR, nbd=nbd)
        node = {"target": tgt.iqn, "portal": tgt.portal}
        await supervisor.handle("node.new", node, ROOT)
        for key, value in [
            ("node.session.reopen_max", "2"),
            ("node.conn[0].timeo.login_timeout", "1"),
        ]:
            await supervisor.handle("node.update", {**node, "key": key, "value": value}, ROOT)
        (login,) = (await supervisor.handle("node.login", node, ROOT))["logins"]
        assert login["ok"], login
        session = supervisor.sessions[login["sid"]]
        assert f"{tgt.iqn}/{tgt.lun}" in nbd.exports
        try:
            await asyncio.to_thread(tgt.target.kill)  # the target is gone for good
            await session.recovery.wait_for(SessionState.LOGGED_OUT, timeout=TIMEOUT)
            assert supervisor.sessions == {}
            assert supervisor.status_line() == "0 sessions"
            assert nbd.exports == {}
            await asyncio.to_thread(tgt.target.restart)  # back, on the same portal
            (again,) = (await supervisor.handle("node.login", node, ROOT))["logins"]
            assert again["ok"], again
            assert list(supervisor.sessions) == [again["sid"]]
        finally:
            await supervisor.shutdown({})
            await nbd.close()
