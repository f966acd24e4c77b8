"""A SendTargets reply with bad entries, end to end: the real pyiscsid and pyiscsiadm against
a target that answers the discovery with a reply the test writes.

tgtd cannot send such a reply: it builds every TargetAddress from its own listening sockets,
and refuses target names with blanks or control characters. So the discovery is answered by
tests/fake_target.py's target, taught here to serve a discovery session (the one fault this
test needs); the good TargetAddress values point at a real tgtd, which the logins use. A
TargetName that is not an iSCSI name, which tgtd does take, is tested against tgtd alone
(test_daemon_workflow.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from pyiscsid.protocol.pdu import RESERVED_TAG, LoginRequest, Pdu, TextRequest, TextResponse
from pyiscsid.protocol.text import decode_text, encode_text

from tests.conftest import TgtDisk
from tests.daemon_process import Daemon
from tests.fake_target import FakeConnection, FakeTarget

pytestmark = pytest.mark.tgtd

HOSTILE = "iqn.2026-11.test.pyiscsid:hostile"
MIXED = "iqn.2026-11.test.pyiscsid:mixed"
ESCAPE = "\x1b]0;pwned\x07"  # a terminal escape: sets the window title
BIDI = "\u202e"  # right-to-left override: makes text read backwards


class DiscoveryConnection(FakeConnection):
    """A FakeConnection that also takes a discovery session and answers its SendTargets."""

    target: DiscoveryTarget

    def _login_refusal(self, request: LoginRequest, keys: Mapping[str, str]) -> int | None:
        if keys.get("SessionType") == "Discovery" and "InitiatorName" in keys:
            return None
        return super()._login_refusal(request, keys)

    def _handle(self, pdu: Pdu) -> None:
        if self.full_feature and isinstance(pdu, TextRequest):
            self._check_cmd_sn(pdu)
            assert decode_text(pdu.data) == [("SendTargets", "All")]
            self.target.asked += 1
            response = self.make(
                TextResponse,
                final=True,
                initiator_task_tag=pdu.initiator_task_tag,
                target_transfer_tag=RESERVED_TAG,
                data=encode_text(self.target.reply),
            )
            self.send(response)
            return
        super()._handle(pdu)


class DiscoveryTarget(FakeTarget):
    """Answers a discovery session's SendTargets with ``reply``, whatever it holds."""

    def __init__(self, reply: Sequence[tuple[str, str]]) -> None:
        super().__init__()
        self.reply = list(reply)
        self.asked = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: DiscoveryConnection(self), self.address, 0, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]


async def test_bad_target_addresses_are_skipped_and_named_never_quoted(
    tgt: TgtDisk, tmp_path: Path
) -> None:
    """Before, one TargetAddress that could not be parsed failed the whole discovery."""
    good = f"{tgt.address}:{tgt.port}"
    reply = [
        ("TargetAddress", "10.0.0.1:3260,1"),  # before any TargetName
        ("TargetName", tgt.iqn),
        ("TargetAddress", f"{good},1"),
        ("TargetName", HOSTILE),
        ("TargetAddress", f"{ESCAPE}:3260,1"),
        ("TargetName", MIXED),
        ("TargetAddress", "300.1.2.3:3260,1"),
        ("TargetAddress", f"{good},2"),
        ("TargetName", f"iqn.2026-11.test.pyiscsid:{BIDI}live"),  # shows as ...:evil
        ("TargetAddress", f"{good},1"),
    ]
    daemon = Daemon(tmp_path / "daemon").start()
    try:
        async with DiscoveryTarget(reply) as fake:
            found = await asyncio.to_thread(
                daemon.client, "-m", "discovery", "-t", "st", "-p", fake.portal
            )
        assert fake.asked == 1 and fake.errors == []
        assert found.returncode == 0, found.stdout + found.stderr
        assert found.lines == [f"{good},1 {tgt.iqn}", f"{good},2 {MIXED}"]
        rfc = "not ADDRESS[:PORT][,TPGT] (RFC 7143 section 13.8)"
        assert found.stderr.splitlines() == [
            "pyiscsiadm: SendTargets reply: TargetAddress #1 skipped: comes before any TargetName",
            f"pyiscsiadm: SendTargets reply: TargetAddress #1 of {HOSTILE} skipped: {rfc}",
            f"pyiscsiadm: SendTargets reply: TargetAddress #1 of {MIXED} skipped: {rfc}",
            "pyiscsiadm: SendTargets reply: TargetName #4 skipped: "
            "contains blanks, control or formatting characters",
            f"pyiscsiadm: SendTargets reply: TargetName #2 ({HOSTILE}) skipped: "
            "none of its TargetAddress values can be used",
        ]
        assert sorted(daemon.client("-m", "node").lines) == sorted(found.lines)

        events = daemon.events("discovery entry skipped")
        assert [(e["key"], e["number"], e["ISCSI_TARGET"]) for e in events] == [
            ("TargetAddress", 1, None),
            ("TargetAddress", 1, HOSTILE),
            ("TargetAddress", 1, MIXED),
            ("TargetName", 4, None),
            ("TargetName", 2, HOSTILE),
        ]
        shown = found.stdout + found.stderr + daemon.log()
        for hostile in ("\x1b", "pwned", BIDI, "live", "300.1.2.3", "10.0.0.1"):
            assert hostile not in shown

        node = ["-m", "node", "-T", tgt.iqn, "-p", good, "--login"]
        login = await asyncio.to_thread(daemon.client, *node)
        assert login.returncode == 0, login.stdout + login.stderr
        assert len(tgt.sessions()) == 1
    finally:
        daemon.stop()
