"""What the LUN identity check makes of each answer (daemon/session.py ``lun_identity``): only
"no logical unit behind this number" (peripheral qualifier 3, or LOGICAL UNIT NOT SUPPORTED)
counts towards failing a LUN as removed; a busy LUN, one not connected for now (qualifier 1)
or one without VPD pages is no evidence that it is gone."""

from __future__ import annotations

from typing import Any

import pytest
from pyiscsid.daemon.driver import CommandResult
from pyiscsid.daemon.session import LunIdentityUnknown, lun_identity
from pyiscsid.protocol.scsi import ScsiStatus
from pyiscsid.protocol.sense import parse_sense

from tests.fake_target import fixed_sense

ILLEGAL_REQUEST = 0x05
NOT_READY = 0x02


def answering(status: int, *, sense: bytes = b"", data: bytes = b"") -> Any:
    """An ``execute`` whose every command gets this answer."""

    async def execute(cdb: bytes, **command: Any) -> CommandResult:
        return CommandResult(status, parse_sense(sense) if sense else None, memoryview(data))

    return execute


def vpd_page_0(qualifier: int) -> bytes:
    return bytes([qualifier << 5, 0x00, 0, 1, 0x00])


ABSENT = {
    "qualifier 3": answering(ScsiStatus.GOOD, data=vpd_page_0(3)),
    "logical unit not supported": answering(
        ScsiStatus.CHECK_CONDITION, sense=fixed_sense(ILLEGAL_REQUEST, 0x25)
    ),
}
NOT_ABSENT = {
    "qualifier 1": answering(ScsiStatus.GOOD, data=vpd_page_0(1)),
    "busy": answering(ScsiStatus.BUSY),
    "task set full": answering(ScsiStatus.TASK_SET_FULL),
    "not ready": answering(ScsiStatus.CHECK_CONDITION, sense=fixed_sense(NOT_READY, 0x04, 1)),
    "no VPD pages": answering(ScsiStatus.CHECK_CONDITION, sense=fixed_sense(ILLEGAL_REQUEST, 0x24)),
}


@pytest.mark.parametrize("execute", ABSENT.values(), ids=ABSENT.keys())
async def test_no_logical_unit_behind_the_number_is_absent(execute: Any) -> None:
    with pytest.raises(LunIdentityUnknown) as raised:
        await lun_identity(execute, 2, target="iqn.2026-11.test:t")
    assert raised.value.absent and not raised.value.unsupported
    assert "LUN 2 of iqn.2026-11.test:t" in str(raised.value)


@pytest.mark.parametrize("execute", NOT_ABSENT.values(), ids=NOT_ABSENT.keys())
async def test_other_answers_are_not_absent(execute: Any) -> None:
    with pytest.raises(LunIdentityUnknown) as raised:
        await lun_identity(execute, 2, target="iqn.2026-11.test:t")
    assert not raised.value.absent
