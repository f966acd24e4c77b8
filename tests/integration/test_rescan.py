"""Session.rescan when a disk changes size on the target. tgtd cannot resize a LUN that is
in use (`tgtadm --op update ... size=` is refused and it reads the size once), so the
scripted target (tests/fake_target.py), whose READ CAPACITY follows its disk, stands in."""

from __future__ import annotations

from tests.fake_target import BLOCK_SIZE, DISK_SIZE, FakeTarget
from tests.integration.sessions import make_session

INITIATOR = "iqn.2026-11.test.pyiscsid:rescan"


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
