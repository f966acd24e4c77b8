"""A unit attention other than the power-on one every session starts with (capacity or
mode parameters changed): the command did not run (SAM-5 5.14), so it is issued again, as
Linux's SCSI layer does, and the news is logged. The scripted target reports them on
demand (tests/fake_target.py); tgtd cannot be made to."""

from __future__ import annotations

from typing import Any

from pyiscsid.protocol import scsi

from tests.fake_target import FakeTarget
from tests.integration.sessions import make_session

INITIATOR = "iqn.2026-11.test.pyiscsid:unit-attention"


class Recorder:
    """The session's warnings; its other log lines are dropped."""

    def __init__(self, logged: list[tuple[str, dict[str, Any]]]) -> None:
        self.logged = logged

    def warning(self, event: str, **fields: Any) -> None:
        self.logged.append((event, fields))

    def __getattr__(self, level: str) -> Any:
        return lambda event, **fields: None


LBA = 64
CAPACITY_CHANGED, MODE_PARAMETERS_CHANGED = (0x2A, 0x09), (0x2A, 0x01)


async def test_a_unit_attention_is_logged_and_the_command_issued_again() -> None:
    async with FakeTarget() as target:
        session = make_session(INITIATOR, target)
        await session.login()
        try:
            logged: list[tuple[str, dict[str, Any]]] = []
            session.log = Recorder(logged)  # type: ignore[assignment]
            target.unit_attentions = [CAPACITY_CHANGED, MODE_PARAMETERS_CHANGED]
            data = bytes(range(256)) * 2
            result = await session.execute(scsi.write10(LBA, 1), lun=target.lun, data_out=data)
            assert result.status == 0 and target.unit_attentions == []
            assert bytes(target.disk[LBA * 512 : LBA * 512 + 512]) == data
            assert [(event, fields["sense"]) for event, fields in logged] == [
                ("unit attention", "0x2a/0x09"),
                ("unit attention", "0x2a/0x01"),
            ]
        finally:
            await session.logout()
